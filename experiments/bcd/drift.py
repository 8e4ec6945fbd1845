"""Analysis of the drift study (experiments/bcd/drift.toml): migration and recovery of the drifted cells.

    python experiments/bcd/drift.py results/suite-bcd-drift

For the online and the frozen setting: the error of the drifted cells (5 and 11; partitions 4 and 10)
against time, the same for the other cells, whether the drifted cells left their pre-drift cluster and
whether they joined the cluster of the suburban cells they now resemble (cells 2 and 4; partitions 1 and
3). Writes ``drift.png`` and ``drift.md`` into the suite folder.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedsim.results import read_run  # noqa: E402

DRIFTED, SUBURBAN, DRIFT_H = (4, 10), (1, 3), 56.0
METRIC = "mae-mean-latency"


def series(run_dir: Path):
    rounds = [r for r in read_run(run_dir)[1] if "time-h" in r]
    t = np.array([r["time-h"] for r in rounds])
    drifted = np.array([np.mean([r["clients"][str(p)][METRIC] for p in DRIFTED]) for r in rounds])
    others = np.array([np.mean([v[METRIC] for p, v in r["clients"].items() if int(p) not in DRIFTED])
                       for r in rounds])
    labels = np.array([r["cell-clusters"] for r in rounds])
    return t, drifted, others, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite_dir")
    args = parser.parse_args()
    out = Path(args.suite_dir)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    lines = ["# Drift study", "", f"Error = {METRIC} of the drifted cells (5, 11), mean over seeds.", "",
             "| setting | before drift (48-54 h) | 0-6 h after (56-62 h) | 10-16 h after (66-72 h) | other cells "
             "66-72 h | drifted cells left their cluster | joined the suburban cells' cluster |",
             "|---|---|---|---|---|---|---|"]
    for setting, style in (("online", "-"), ("frozen", "--")):
        runs = sorted((out / setting).glob("bcd-qos-s*"))
        data = [series(r) for r in runs]
        t = data[0][0]
        drifted = np.mean([d[1] for d in data], axis=0)
        others = np.mean([d[2] for d in data], axis=0)
        ax.plot(t, drifted, style, label=f"{setting}: drifted cells")
        ax.plot(t, others, style, alpha=0.5, label=f"{setting}: other cells")
        left = joined = 0
        for _, _, _, labels in data:
            before = labels[t < DRIFT_H][-1]
            after = labels[-1]
            left += int(any(after[p] != before[p] for p in DRIFTED))
            joined += int(all(after[p] in {after[s] for s in SUBURBAN} for p in DRIFTED))

        def window(lo, hi, values, t=t):
            return float(values[(t >= lo) & (t < hi)].mean())

        lines.append(f"| {setting} | {window(48, 54, drifted):.3f} | {window(56, 62, drifted):.3f} | "
                     f"{window(66, 72, drifted):.3f} | {window(66, 72, others):.3f} | {left}/{len(data)} | "
                     f"{joined}/{len(data)} |")
    ax.axvline(DRIFT_H, color="grey", lw=0.8)
    ax.set_xlabel("time (h)")
    ax.set_ylabel(METRIC)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "drift.png", dpi=110)
    plt.close(fig)
    text = "\n".join(lines) + "\n"
    (out / "drift.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
