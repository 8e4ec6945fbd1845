"""Federated variants vs the centralised reference, per round (paper 004, digest Sec. 8), from a finished suite.

Run:  python experiments/pathloss/federated_plots.py results/suite-pathloss

Reads the runs of ``experiments/pathloss/suite.toml`` and writes into the suite folder:

- ``federated_vs_round.png``: NMSE of f, held-out NMSE of s and client-to-server bytes per round for FedStats,
  coverage-weighted averaging, FedAvg and the centralised node (dense mismatch r = 0.1, hybrid and baseline
  window), mean over seeds with the min-max band;
- ``federated.md``: the last round's values (mean +- std over seeds) and the ratio to the centralised run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedsim.results import read_run  # noqa: E402

METHODS = {"fedstats": "-fedstats", "coverage": "-coverage", "fedavg": "-fedavg", "centralised": "-central"}
WINDOWS = {"hybrid": "", "baseline": "-baseline"}
PREFIX = "madrid-dense-r0.1"
KEYS = (("eval-nmse-f", "NMSE of f"), ("eval-loss", "held-out NMSE of s"), ("bytes-up", "bytes up per round"))


def setting_name(method: str, window: str) -> str:
    if method == "fedstats" and window == "baseline":
        return f"{PREFIX}-fedstats-baseline"
    return PREFIX + METHODS[method] + WINDOWS[window]


def load_curves(folder: Path, key: str) -> np.ndarray | None:
    """(seeds, rounds) array of one metric over the finished runs (with a summary), or None when there is none."""
    series = []
    for run_dir in sorted(p for p in folder.glob("*") if (p / "summary.json").exists()):
        _, rounds = read_run(run_dir)
        series.append([r.get(key, np.nan) for r in rounds])
    if not series:
        return None
    table = np.full((len(series), max(map(len, series))), np.nan)
    for i, s in enumerate(series):
        table[i, : len(s)] = s
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path, help="output folder of `fedsim suite experiments/pathloss/suite.toml`")
    args = parser.parse_args(argv)
    fig, axes = plt.subplots(len(WINDOWS), len(KEYS), figsize=(13, 6.4), squeeze=False)
    lines = ["| window | method | seeds | NMSE(f) | NMSE(s) | bytes up / round | NMSE(f) / centralised |",
             "|---|---|---|---|---|---|---|"]
    for row, window in enumerate(WINDOWS):
        last = {}
        for method in METHODS:
            folder = args.suite / setting_name(method, window)
            for col, (key, label) in enumerate(KEYS):
                table = load_curves(folder, key)
                if table is None:
                    continue
                x = np.arange(1, table.shape[1] + 1)
                ax = axes[row][col]
                ax.plot(x, np.nanmean(table, 0), label=method, marker="o", ms=3)
                if len(table) > 1:
                    ax.fill_between(x, np.nanmin(table, 0), np.nanmax(table, 0), alpha=0.2)
                ax.set_title(f"{window}: {label}", fontsize=9)
                ax.set_xlabel("round")
                ax.set_yscale("log")
                ax.grid(alpha=0.3)
                last.setdefault(method, {})[key] = table[:, -1]
        for method, values in last.items():
            f = values.get("eval-nmse-f")
            central = last.get("centralised", {}).get("eval-nmse-f")
            ratio = f"{np.mean(f) / np.mean(central):.2f}" if central is not None and f is not None else "-"
            cells = [f"{np.mean(values[k]):.4g} +- {np.std(values[k]):.2g}" if k in values else "-" for k, _ in KEYS]
            lines.append(f"| {window} | {method} | {len(f) if f is not None else 0} | " + " | ".join(cells)
                         + f" | {ratio} |")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{PREFIX}: federated variants vs one centralised node with the same links", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.suite / "federated_vs_round.png", dpi=110)
    plt.close(fig)
    text = "\n".join(lines)
    (args.suite / "federated.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
