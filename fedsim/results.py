"""The record of a run: a folder with its configuration, one JSON line per round, a summary and a plot.

Layout of a run folder::

    config.json     the resolved run configuration (every key, defaults included)
    rounds.jsonl    one JSON object per round: metrics, bytes, wall time, events
    summary.json    final and best values, timings, totals
    curves.png      the main curves per round
    final_arrays.npz  the server's final ArrayRecord (for analyses after the run)
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.config import ConfigError, RunConfig

HEADLINE_METRICS = ("eval-accuracy", "eval-loss")
"""The first of these that a run reports is its headline metric."""


def resolve_results_root(results_dir: str) -> Path:
    """Absolute results folder: relative paths start at ``$FEDSIM_RESULTS_ROOT`` or the working directory."""
    path = Path(results_dir).expanduser()
    if not path.is_absolute():
        path = Path(os.environ.get("FEDSIM_RESULTS_ROOT", os.getcwd())) / path
    return path


def new_run_dir(config: RunConfig) -> Path:
    """Create and return a fresh folder for a run."""
    root = resolve_results_root(config.results_dir)
    name = config.run_name or "-".join(
        [dt.datetime.now().strftime("%Y%m%d-%H%M%S"), config.strategy, config.dataset, config.partitioning,
         f"s{config.seed}"]
    )
    path, n = root / name, 1
    while path.exists():
        n += 1
        path = root / f"{name}-{n}"
    path.mkdir(parents=True)
    return path


RESUMABLE_CHANGES = ("resume", "num-server-rounds", "round-timeout", "min-replies", "checkpoint-every",
                     "results-dir", "run-name")
"""Run-config keys a resumed run may change (the last two: the resumed run's folder is ``resume``); every other
key must equal the checkpointed run's."""


def resumed_run_dir(config: RunConfig) -> Path:
    """The folder of the run that ``resume`` continues, after checking the configuration did not change.

    Raises
    ------
    ConfigError
        If the folder is not a run folder, or a key other than :data:`RESUMABLE_CHANGES` differs.
    """
    path = resolve_results_root(config.resume) if not Path(config.resume).is_absolute() else Path(config.resume)
    saved = path / "config.json"
    if not saved.is_file():
        raise ConfigError(f"resume = '{config.resume}' is not a run folder (no {saved})")
    before = json.loads(saved.read_text())
    changed = sorted(k for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES and before.get(k) != v)
    if changed:
        key = changed[0]
        allowed = ", ".join(RESUMABLE_CHANGES[1:5])
        raise ConfigError(f"resume = '{config.resume}': {key} = {config.to_dict()[key]!r} differs from the "
                          f"checkpointed run's {before.get(key)!r}; only {allowed} may change")
    return path


class RunRecorder:
    """Writes a run folder as the run goes.

    Parameters
    ----------
    run_dir : Path
        The run's folder (see :func:`new_run_dir`).
    config : RunConfig
        The resolved configuration, written to ``config.json`` at once.
    """

    def __init__(self, run_dir: Path, config: RunConfig) -> None:
        self.run_dir = Path(run_dir)
        self.config = config
        self.rounds: list[dict[str, Any]] = []
        (self.run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        self._jsonl = open(self.run_dir / "rounds.jsonl", "w", encoding="utf-8")

    def restart(self, rounds: list[dict[str, Any]]) -> None:
        """Start over from the records of a checkpoint (a resumed run continues in the same folder)."""
        self.rounds = []
        self._jsonl.seek(0)
        self._jsonl.truncate()
        for record in rounds:
            self.add_round(record)

    def add_round(self, record: dict[str, Any]) -> None:
        """Append one round's record (flushed at once, so a crash keeps it)."""
        self.rounds.append(record)
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def finish(self, extra: dict[str, Any] | None = None, arrays=None) -> dict[str, Any]:
        """Write ``summary.json``, ``curves.png`` and (given an ArrayRecord) ``final_arrays.npz``."""
        self._jsonl.close()
        if arrays is not None:
            np.savez_compressed(self.run_dir / "final_arrays.npz", **{k: v.numpy() for k, v in arrays.items()})
        summary = summarize(self.rounds)
        summary.update(extra or {})
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if self.rounds:
            from fedsim.plots import plot_run

            plot_run(self.rounds, self.run_dir / "curves.png", title=self.run_dir.name)
        return summary


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Final values, best headline value, timings and traffic of a list of round records."""
    if not rounds:
        return {"rounds": 0}
    last = rounds[-1]
    summary: dict[str, Any] = {"rounds": len(rounds)}
    for key, value in last.items():
        if isinstance(value, (int, float)) and key not in ("round", "round-time", "elapsed"):
            summary[f"final-{key}"] = value
    headline = headline_metric(rounds)
    if headline:
        values = [r[headline] for r in rounds if headline in r]
        summary["headline-metric"] = headline
        summary[f"best-{headline}"] = max(values) if headline == "eval-accuracy" else min(values)
    summary["time-total"] = last["elapsed"]
    summary["time-to-round-1"] = rounds[0]["elapsed"]
    later = [r["round-time"] for r in rounds[1:]]
    summary["time-per-round"] = sum(later) / len(later) if later else rounds[0]["round-time"]
    summary["bytes-down-total"] = sum(r.get("bytes-down", 0) for r in rounds)
    summary["bytes-up-total"] = sum(r.get("bytes-up", 0) for r in rounds)
    return summary


def headline_metric(rounds: list[dict[str, Any]]) -> str | None:
    """The first of :data:`HEADLINE_METRICS` the rounds report."""
    return next((m for m in HEADLINE_METRICS if any(m in r for r in rounds)), None)


def read_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Load ``(config, rounds)`` of a run folder."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    with open(run_dir / "rounds.jsonl", encoding="utf-8") as fh:
        rounds = [json.loads(line) for line in fh if line.strip()]
    return config, rounds


def progress_line(record: dict[str, Any], num_rounds: int) -> str:
    """One human-readable line for a round record."""
    parts = [f"round {record['round']}/{num_rounds}"]
    for key in ("eval-accuracy", "eval-loss", "train-loss", "nll-total", "ari", "clusters-in-use", "num-clusters",
                "objective"):
        if key in record:
            value = record[key]
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    parts.append(f"{record['round-time']:.2f} s (total {record['elapsed']:.1f} s)")
    parts.append(f"down {_mb(record.get('bytes-down', 0))} up {_mb(record.get('bytes-up', 0))}")
    dropped = sum(1 for e in record.get("events", []) if e.get("event") == "dropped")
    if dropped:
        parts.append(f"{dropped} replies dropped")
    return " | ".join(parts)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"
