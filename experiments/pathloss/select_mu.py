"""Choose the hybrid's alpha step ``mu`` by held-out validation, per data set and radius (paper 004, digest A8).

Run:  python experiments/pathloss/select_mu.py -o results/pathloss-mu [--steps 40] [--workers 2]

The paper never states the window's step size; ``mu`` is its fraction of the safe maximum ``(1-eps)/L_k``.
For every configuration the centralised script runs with a learned window (Madrid dense/structured at
r in {0.01, 0.1, 1}; physics and Sionna data at r in {0.1, 1}) this trains one learner per candidate on a
short stream (``--steps`` time steps) and scores the shadowing on validation links that are disjoint from
both the training stream and the centralised script's test links:

- Madrid: the protocol's stream with ``random_state=1`` (the centralised script uses 0) and 2,000 held-out
  links of that stream;
- physics / Sionna: the 30 % training fraction of the centralised script's split, cut 80 / 20 into training
  and validation links (the test links are never seen).

Writes ``mu.json`` (``{"<data>:<r>": mu}``, read by ``centralised.py --mu-file``) and ``mu_scores.json``
(the validation NMSE of every candidate), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
from centralised import FRACTIONS, _realistic  # the sibling script (its folder is on sys.path)

from clients.pathloss import V2X_ETA
from fedsim.data.slf_synthetic import MadridSLFProtocol
from fedsim.pathloss import log_distance_stats, select_alpha_step, solve_log_distance

CANDIDATES = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
MADRID_RADII = (0.01, 0.1, 1.0)
REAL_RADII = (0.1, 1.0)
VALIDATION_LINKS = 2000
TRAIN_FRACTION = 0.3
"""The centralised script's middle training-set size; its test links are the complement of the largest (50 %)."""


def madrid_selection(job: tuple[str, float, int, str]) -> dict:
    mismatch, r, steps, kernel = job
    start = time.monotonic()
    protocol = MadridSLFProtocol(r=r, mismatch=mismatch, links_per_step=120, random_state=1)
    batches = [(b.tx_xy, b.rx_xy, b.s_hat) for b in map(protocol.batch, range(1, steps + 1))]
    held = protocol.heldout(VALIDATION_LINKS)
    best, scores = select_alpha_step(batches, (held.tx_xy, held.rx_xy, held.s_true), protocol.grid.centres,
                                     candidates=CANDIDATES, r=r, kernel=kernel)
    return {"key": f"madrid-{mismatch}:{r:g}", "best": best, "scores": scores, "seconds": time.monotonic() - start}


def realistic_selection(job: tuple[str, float, int, str]) -> dict:
    source, r, steps, kernel = job
    start = time.monotonic()
    data = _realistic(source)
    links = data.links
    order = np.random.default_rng(0).permutation(len(links))  # the centralised script's split
    assert TRAIN_FRACTION <= max(FRACTIONS)
    pool = order[: int(TRAIN_FRACTION * len(links))]
    cut = int(0.8 * len(pool))
    train, validation = pool[:cut], pool[cut:]
    pl0, delta = solve_log_distance(log_distance_stats(links.distance_m[train], links.path_loss_db[train]))
    shadowing = links.path_loss_db - pl0 - 10 * delta * np.log10(links.distance_m)
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(steps):
        pick = train[rng.integers(len(train), size=60)]
        batches.append((links.tx_xy[pick], links.rx_xy[pick], shadowing[pick]))
    held = (links.tx_xy[validation], links.rx_xy[validation], shadowing[validation])
    best, scores = select_alpha_step(batches, held, data.grid.centres, candidates=CANDIDATES, lambda1=6e-4,
                                     lambda2=1e-5, lambda3=6.1e-4, r=r, eta=V2X_ETA, reference_batch_size=60,
                                     kernel=kernel)
    return {"key": f"{source}:{r:g}", "best": best, "scores": scores, "seconds": time.monotonic() - start}


def run(job: tuple) -> dict:
    return madrid_selection(job) if job[0] in ("dense", "structured") else realistic_selection(job)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=Path("results/pathloss-mu"))
    parser.add_argument("--steps", type=int, default=40, help="training time steps per candidate")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kernel", choices=("identity", "rbf"), default="identity")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(m, r, args.steps, args.kernel) for m in ("dense", "structured") for r in MADRID_RADII]
    jobs += [(s, r, args.steps, args.kernel) for s in ("physics", "sionna") for r in REAL_RADII]
    start = time.monotonic()
    with mp.get_context("spawn").Pool(args.workers) as pool:
        results = pool.map(run, jobs)
    wall = time.monotonic() - start
    (args.out / "mu.json").write_text(json.dumps({x["key"]: x["best"] for x in results}, indent=1))
    (args.out / "mu_scores.json").write_text(json.dumps({"kernel": args.kernel, "steps": args.steps,
                                                         "wall_s": wall, "results": results}, indent=1))
    header = "| data:r | " + " | ".join(f"mu={c:g}" for c in CANDIDATES) + " | chosen | s |"
    lines = [header, "|" + "---|" * (len(CANDIDATES) + 3)]
    for x in results:
        cells = " | ".join(f"{x['scores'][c]:.4g}" for c in CANDIDATES)
        lines.append(f"| {x['key']} | {cells} | **{x['best']:g}** | {x['seconds']:.0f} |")
    print("\n".join(lines) + f"\n\nvalidation NMSE of the shadowing; {args.steps} steps; wall {wall:.0f} s")


if __name__ == "__main__":
    main()
