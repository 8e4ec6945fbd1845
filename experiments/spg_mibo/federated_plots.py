"""Federated SPG-MIBO settings per round, from a finished suite (digest 001 Sec. 10, E7).

Run:  python experiments/spg_mibo/federated_plots.py results/suite-spg-mibo

Writes ``federated_vs_round.png`` (sensing accuracy, localisation error, selection precision and mask IFG vs
round, mean over seeds, one line per setting) and ``federated.md`` (the last round's values with the base rate
of informative subcarriers and the best-round sensing accuracy) into the suite folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SETTINGS = ("spg-mean", "spg-vote", "spg-local", "penalty-mean", "separate-mean", "spg-central", "spg-local-only")
CURVES = (("eval-accuracy", "sensing accuracy"), ("eval-loc-error-m", "localisation error (m)"),
          ("eval-precision", "selection precision"), ("eval-ifg", "mask IFG"))
TABLE = ("eval-accuracy", "eval-loc-error-m", "eval-loc-median-m", "eval-sen-loss", "eval-ifg", "eval-selected",
         "eval-precision", "eval-base-rate")


def load(folder: Path) -> list[list[dict]]:
    """Round records of every finished run (with a summary) of one setting."""
    return [[json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
            for run in sorted(folder.glob("*")) if (run / "summary.json").is_file()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path)
    args = parser.parse_args(argv)
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.3 * len(CURVES), 3.8))
    lines = ["| setting | seeds | " + " | ".join(TABLE) + " | best eval-accuracy |",
             "|---" * (len(TABLE) + 3) + "|"]
    for setting in SETTINGS:
        runs = load(args.suite / setting)
        if not runs:
            continue
        for ax, (key, title) in zip(axes, CURVES):
            table = np.array([[r.get(key, np.nan) for r in run] for run in runs], dtype=float)
            ax.plot(np.arange(1, table.shape[1] + 1), np.nanmean(table, 0), label=setting)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("round")
            ax.grid(alpha=0.3)
        last = np.array([[run[-1].get(k, np.nan) for k in TABLE] for run in runs], dtype=float)
        best = [max(r.get("eval-accuracy", np.nan) for r in run) for run in runs]
        cells = [f"{m:.3g} +- {s:.2g}" for m, s in zip(last.mean(0), last.std(0))]
        lines.append(f"| {setting} | {len(runs)} | " + " | ".join(cells) + f" | {np.mean(best):.3f} |")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.suite / "federated_vs_round.png", dpi=100)
    plt.close(fig)
    text = "\n".join(lines)
    (args.suite / "federated.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
