"""Device cost of one LightTune update against a backpropagation update of the same FF model (paper Sec. V-D).

    python experiments/lighttune/device_cost.py -o results/lighttune-cost [--updates 5000]

For the paper's FF [13, 32, 32] (scalar label) and for the variant our experiments use (one-hot label,
[22, 32, 32]): multiply-accumulates (analytic, digest Sec. 3.8 / 9.4), optimiser state, wall time per
triggered update (median over ``--updates`` random updates, one thread) and memory allocated per update.
LightTune updates are numpy (closed-form local gradients, no autograd); the backpropagation baseline is
torch autograd through both layers with Adam. Memory: numpy allocations are traced with ``tracemalloc``
(peak within the update); torch's allocator is invisible to it, so the torch figure is the total CPU memory
the profiler saw allocated during the update. Writes ``device_cost.json`` and ``device_cost.md``.
"""

import argparse
import json
import platform
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from clients.lighttune import LightTuner, TuneSettings
from fedsim.forward_forward import FFSpec, encode, init_params

VARIANTS = ("one-step", "adam", "sgd", "backprop")


def macs(spec: FFSpec, variant: str) -> int:
    """MACs of one triggered update: 2 forward passes, the outer products, the optimiser (digest 9.4)."""
    q, n = spec.forward_macs(), spec.num_parameters()
    if variant == "backprop":
        return 2 * q + 2 * 2 * q + 4 * n  # forward with stored activations, backward ~2x forward, Adam
    return 2 * q + 2 * n + {"one-step": n, "sgd": n, "adam": 4 * n}[variant]


def state_floats(spec: FFSpec, variant: str) -> int:
    return 0 if variant in ("one-step", "sgd") else 2 * spec.num_parameters()


def measure(spec: FFSpec, variant: str, updates: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    tuner = LightTuner(spec, init_params(spec, rng), np.zeros(spec.num_features), np.ones(spec.num_features),
                       TuneSettings(variant), rng)
    x = rng.normal(size=(updates, spec.num_features))
    labels = rng.integers(0, spec.num_classes, (updates, 2))
    pairs = [(encode(spec, x[i:i + 1], [a]), encode(spec, x[i:i + 1], [b if b != a else (a + 1) % 10]))
             for i, (a, b) in enumerate(labels)]
    tuner.update(*pairs[0])  # warm-up (torch builds its optimiser on the first step)
    times = []
    for z_pos, z_neg in pairs:
        start = time.perf_counter()
        tuner.update(z_pos, z_neg)
        times.append(time.perf_counter() - start)
    if variant == "backprop":
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            tuner.update(*pairs[1])
        memory = sum(max(e.self_cpu_memory_usage, 0) for e in prof.key_averages())
    else:
        tracemalloc.start()
        tracemalloc.reset_peak()
        tuner.update(*pairs[1])
        memory = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    predict = []
    for i in range(min(updates, 2000)):
        start = time.perf_counter()
        tuner.predict(x[i])
        predict.append(time.perf_counter() - start)
    return {"macs": macs(spec, variant), "state-floats": state_floats(spec, variant),
            "median-us": 1e6 * float(np.median(times)), "memory-bytes": int(memory),
            "predict-median-us": 1e6 * float(np.median(predict)),
            "predict-macs": spec.num_classes * spec.forward_macs()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=Path("results/lighttune-cost"))
    parser.add_argument("--updates", type=int, default=5000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    specs = {"paper [13, 32, 32], scalar label": FFSpec.paper(12),
             "ours [22, 32, 32], one-hot label": FFSpec(12)}
    result = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, 1 thread",
              "updates": args.updates, "models": {}}
    lines = [f"Triggered-update cost, median over {args.updates} updates, one thread ({result['machine']}).", "",
             "| model | variant | MACs | optimiser state (floats) | median time [us] | memory per update [bytes] |",
             "|---|---|---|---|---|---|"]
    for name, spec in specs.items():
        result["models"][name] = {}
        for variant in VARIANTS:
            m = measure(spec, variant, args.updates)
            result["models"][name][variant] = m
            lines.append(f"| {name} | {variant} | {m['macs']:,} | {m['state-floats']:,} | {m['median-us']:.1f} | "
                         f"{m['memory-bytes']:,} |")
        m = result["models"][name]["one-step"]
        lines.append(f"| {name} | prediction (C = 10 passes) | {m['predict-macs']:,} | - | "
                     f"{m['predict-median-us']:.1f} | - |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "device_cost.json").write_text(json.dumps(result, indent=1))
    (args.out / "device_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
