"""Compare finished runs: group them by configuration (seeds pooled), tabulate, plot."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np

from fedsim.plots import plot_comparison
from fedsim.results import read_run, summarize

IGNORED_KEYS = {"seed", "run-name", "results-dir"}
"""Configuration keys that do not make two runs different experiments."""

COLUMNS = ("final-eval-accuracy", "final-eval-loss", "final-ari", "time-per-round")


def group_runs(run_dirs: list[Path]) -> dict[str, list[tuple[dict, list[dict]]]]:
    """Group runs whose configurations differ only in :data:`IGNORED_KEYS`.

    Returns
    -------
    dict
        Label -> list of ``(config, rounds)``; the label names the keys in which
        the groups differ (``strategy=fedavg``), or the run folder if none do.
    """
    runs = [(Path(d), *read_run(Path(d))) for d in run_dirs]
    groups: dict[tuple, list] = {}
    for path, config, rounds in runs:
        key = tuple(sorted((k, v) for k, v in config.items() if k not in IGNORED_KEYS))
        groups.setdefault(key, []).append((path, config, rounds))
    varying = sorted({k for key in groups for k, _ in key
                      if len({dict(other).get(k) for other in groups}) > 1})
    labelled: dict[str, list] = {}
    for key, members in groups.items():
        values = dict(key)
        label = " ".join(f"{k}={values[k]}" for k in varying) or members[0][0].name
        labelled[label] = [(config, rounds) for _, config, rounds in members]
    return labelled


def mean_std(values: list[float]) -> str:
    """``mean ± std`` (population std over seeds), or ``-`` when there are no values."""
    if not values:
        return "-"
    arr = np.asarray(values, dtype=float)
    return f"{arr.mean():.4g} ± {arr.std():.2g}" if len(arr) > 1 else f"{arr[0]:.4g}"


def comparison_table(groups: dict[str, list[tuple[dict, list[dict]]]]) -> str:
    """A Markdown table: one row per group, mean ± std over its seeds."""
    summaries = {label: [summarize(rounds) for _, rounds in members] for label, members in groups.items()}
    columns = [c for c in COLUMNS if any(c in s for ss in summaries.values() for s in ss)]
    header = ["run", "seeds", "rounds", *columns]
    rows = [header, ["---"] * len(header)]
    for label, ss in summaries.items():
        rows.append([label, str(len(ss)), str(max(s["rounds"] for s in ss)),
                     *[mean_std([s[c] for s in ss if c in s]) for c in columns]])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def write_report(run_dirs: list[Path], out: Path | None = None) -> str:
    """Write ``report.md`` and ``comparison.png`` for the runs; return the Markdown text.

    Parameters
    ----------
    run_dirs : list[Path]
        Run folders written by fedsim.
    out : Path, optional
        Output folder; default ``<parent of the first run>/report-<time>``.
    """
    if not run_dirs:
        raise ValueError("no run folders given")
    for d in run_dirs:
        if not (Path(d) / "rounds.jsonl").is_file():
            raise FileNotFoundError(f"'{d}' is not a fedsim run folder (no rounds.jsonl)")
    groups = group_runs(run_dirs)
    out = out or Path(run_dirs[0]).resolve().parent / f"report-{dt.datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(groups)
    text = f"{table}\n\nruns: {', '.join(str(d) for d in run_dirs)}\nplot: {out / 'comparison.png'}\n"
    (out / "report.md").write_text(text)
    (out / "groups.json").write_text(json.dumps({k: len(v) for k, v in groups.items()}, indent=2) + "\n")
    plot_comparison({label: [rounds for _, rounds in members] for label, members in groups.items()},
                    out / "comparison.png")
    return text

