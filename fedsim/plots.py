"""PNG plots of runs (matplotlib, headless)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

CURVES = ("eval-accuracy", "eval-loss", "train-loss", "ari")


def _present(runs: list[list[dict[str, Any]]]) -> list[str]:
    return [k for k in CURVES if any(k in r for rounds in runs for r in rounds)]


def plot_run(rounds: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Plot each available curve of one run against the round number."""
    plot_comparison({title or "run": [rounds]}, path, title=title)


def plot_comparison(groups: dict[str, list[list[dict[str, Any]]]], path: Path, title: str = "") -> None:
    """Plot the mean (and min-max band over seeds) of each curve, one line per group."""
    keys = _present([rounds for runs in groups.values() for rounds in runs])
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, runs in groups.items():
            series = [[r.get(key, np.nan) for r in rounds] for rounds in runs]
            length = max(len(s) for s in series)
            table = np.full((len(series), length), np.nan)
            for i, s in enumerate(series):
                table[i, : len(s)] = s
            if np.all(np.isnan(table)):
                continue
            x = np.arange(1, length + 1)
            with warnings.catch_warnings():  # rounds without the metric (e.g. deployment rounds) are gaps
                warnings.simplefilter("ignore", RuntimeWarning)
                ax.plot(x, np.nanmean(table, 0), label=label)
                if len(series) > 1:
                    ax.fill_between(x, np.nanmin(table, 0), np.nanmax(table, 0), alpha=0.2)
        ax.set_xlabel("round")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
