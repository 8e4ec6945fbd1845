"""Benchmark suites: many runs from one TOML file, a table per setting with the paper's numbers beside ours.

A suite file (see ``experiments/clove/suite.toml``) names seeds, strategies,
run-config keys shared by all runs, and settings (a preset, a client count,
extra keys, the paper's numbers and what differs from the paper). Every
(setting, strategy, seed) is one run on the in-process loopback grid (the same
ClientApp and strategy code as ``flwr run``, which a test shows to give
bitwise-identical metrics, without the ~35 s fixed cost of a ``flwr run``),
spread over worker processes. Each run writes a normal run folder, so
``fedsim report`` works on any subset of them.

Table columns, per strategy, mean ± std over seeds:

- ``final``: the headline metric after the last round (accuracy, or loss);
- ``final-ari``: ARI of the last round's assignment;
- ``ari@10``: ARI in round 10;
- ``first-ari>=0.9``: the first round whose ARI is at least 0.9, over the
  seeds that got there ("never" if none did; ``(k/n)`` when only k of n did;
  "-" for strategies without clusters).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import signal
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.cli import read_preset
from fedsim.config import RunConfig
from fedsim.plots import plot_comparison
from fedsim.results import headline_metric, read_run

COLUMNS = ("final", "final-ari", "ari@10", "first-ari>=0.9")


@dataclass
class Setting:
    """One experimental setting of a suite."""

    name: str
    nodes: int
    config: dict[str, Any]
    title: str = ""
    paper: dict[str, dict[str, str]] = field(default_factory=dict)
    differences: str = ""
    strategies: list[str] = field(default_factory=list)
    """Strategies of this setting (default: the suite's)."""


@dataclass
class Suite:
    """A suite file, resolved."""

    name: str
    seeds: list[int]
    strategies: list[str]
    settings: list[Setting]
    description: str = ""
    columns: tuple[str, ...] = COLUMNS
    """Table columns: the clustering columns above, or names of metrics read from the last round."""


def load_suite(path: Path) -> Suite:
    """Read and validate a suite file; every run configuration is checked before anything runs."""
    path = Path(path)
    with open(path, "rb") as fh:
        raw = tomllib.load(fh)
    defaults = raw.get("defaults", {})
    settings = []
    for item in raw["setting"]:
        keys = dict(defaults)
        if "preset" in item:
            keys.update(read_preset((path.parent / item["preset"]).resolve()))
        keys.update(item.get("config", {}))
        setting = Setting(name=item["name"], nodes=int(item["nodes"]), config=keys, title=item.get("title", ""),
                          paper=item.get("paper", {}), differences=item.get("differences", ""),
                          strategies=list(item.get("strategies", raw["strategies"])))
        for strategy in setting.strategies:
            RunConfig.from_mapping({**keys, "strategy": strategy}).check_population(setting.nodes)
        settings.append(setting)
    return Suite(name=raw["name"], seeds=list(raw["seeds"]), strategies=list(raw["strategies"]),
                 settings=settings, description=raw.get("description", ""),
                 columns=tuple(raw.get("columns", COLUMNS)))


def _run_job(job: tuple[str, dict[str, Any], int]) -> tuple[str, float]:
    """Worker: one run on the loopback grid, written to its run folder."""
    import torch

    torch.set_num_threads(1)
    from fedsim.client_app import app as client_app
    from fedsim.results import RunRecorder
    from fedsim.runner import run_rounds
    from fedsim.testing import LoopbackGrid

    run_dir, keys, nodes = job
    start = time.monotonic()
    config = RunConfig.from_mapping(keys)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    grid = LoopbackGrid(client_app, nodes, config.to_dict(), node_seed=config.seed)
    run_rounds(grid, config, recorder=RunRecorder(Path(run_dir), config))
    return run_dir, time.monotonic() - start


def run_suite(suite: Suite, out: Path, workers: int = 2, rounds: int | None = None) -> str:
    """Run every (setting, strategy, seed) and write ``report.md``; return its text.

    Parameters
    ----------
    suite : Suite
        The suite to run.
    out : Path
        Output folder; run folders go to ``out/<setting>/<strategy>-s<seed>``.
    workers : int
        Worker processes (one torch thread each).
    rounds : int, optional
        Override every setting's number of rounds (for a quick look).
    """
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for setting in suite.settings:
        for strategy in setting.strategies:
            for seed in suite.seeds:
                # a suite resumes by re-running unfinished runs, so checkpoints would only fill the disk
                # (a path-loss client's node state is tens of MB per round); a setting may still ask for them
                keys = {"checkpoint-every": 0, **setting.config, "strategy": strategy, "seed": seed,
                        "results-dir": str(out), "run-name": f"{setting.name}/{strategy}-s{seed}"}
                if rounds is not None:
                    keys["num-server-rounds"] = rounds
                run_dir = out / setting.name / f"{strategy}-s{seed}"
                if not (run_dir / "summary.json").is_file():  # resumable: finished runs are kept
                    jobs.append((str(run_dir), keys, setting.nodes))
    start = time.monotonic()
    timings: dict[str, float] = {}
    if jobs:
        # a SIGTERM ends the workers too (the pool's context manager terminates them on the way out)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers) as pool:
            for i, (run_dir, seconds) in enumerate(pool.imap_unordered(_run_job, jobs), 1):
                timings[run_dir] = seconds
                print(f"[{i}/{len(jobs)}] {Path(run_dir).relative_to(out)} done in {seconds:.1f} s", flush=True)
    wall = time.monotonic() - start
    text = write_suite_report(suite, out, wall, workers)
    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    return text


def run_metrics(rounds: list[dict[str, Any]], extra: tuple[str, ...] = ()) -> dict[str, float | None]:
    """The table's metrics of one run (plus the last round's value of each name in ``extra``)."""
    headline = headline_metric(rounds)
    aris = [r.get("ari") for r in rounds]
    reached = next((r["round"] for r in rounds if (r.get("ari") or 0) >= 0.9), 0)  # 0: never
    if all(a is None for a in aris):
        reached = None  # no clustering, nothing to reach
    return {
        "final": rounds[-1].get(headline) if headline else None,
        "final-ari": aris[-1],
        "ari@10": aris[9] if len(aris) >= 10 else None,
        "first-ari>=0.9": reached,
        "time-per-round": float(np.mean([r["round-time"] for r in rounds[1:]])) if len(rounds) > 1 else None,
        **{k: rounds[-1].get(k) for k in extra if k not in COLUMNS},
    }


def _cell(values: list[float | None], column: str, scale: float = 1.0) -> str:
    got = [v * scale for v in values if v is not None]
    if column == "first-ari>=0.9":
        never = sum(1 for v in got if v == 0)
        got = [v for v in got if v != 0]
        if not got:
            return "never" if never else "-"
        text = f"{np.mean(got):.1f} ± {np.std(got):.1f}"
        return text if not never else f"{text} ({len(got)}/{len(got) + never})"
    if not got:
        return "-"
    return f"{np.mean(got):.3g} ± {np.std(got):.2g}" if len(got) > 1 else f"{got[0]:.3g}"


def write_suite_report(suite: Suite, out: Path, wall_seconds: float | None = None, workers: int = 1) -> str:
    """Tables (ours beside the paper's) and plots for every setting of a finished suite."""
    lines = [f"# Suite `{suite.name}`", "", suite.description.strip(), ""]
    for setting in suite.settings:
        runs = {s: [read_run(out / setting.name / f"{s}-s{seed}")[1] for seed in suite.seeds
                    if (out / setting.name / f"{s}-s{seed}" / "rounds.jsonl").is_file()] for s in setting.strategies}
        headline = next((headline_metric(r) for rs in runs.values() for r in rs if r), None)
        scale = 100.0 if headline == "eval-accuracy" else 1.0
        unit = "accuracy %" if headline == "eval-accuracy" else (headline or "")
        lines += [f"## {setting.name}: {setting.title}", "",
                  f"{setting.nodes} clients, {len(suite.seeds)} seeds; final = {unit}.", ""]
        columns = suite.columns
        with_paper = [c for c in columns if any(c in p for p in setting.paper.values())]
        header = ["strategy", *[f"{c} (ours)" for c in columns], *[f"{c} (paper)" for c in with_paper], "s/round"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for strategy, member_runs in runs.items():
            metrics = [run_metrics(r, columns) for r in member_runs if r]
            ours = [_cell([m[c] for m in metrics], c, scale if c == "final" else 1.0) for c in columns]
            paper = [setting.paper.get(strategy, {}).get(c, "") for c in with_paper]
            per_round = _cell([m["time-per-round"] for m in metrics], "time")
            lines.append("| " + " | ".join([strategy, *ours, *paper, per_round]) + " |")
        if setting.differences:
            lines += ["", f"Differences from the paper: {setting.differences.strip()}"]
        lines.append("")
        plot_comparison({s: rs for s, rs in runs.items() if rs}, out / f"{setting.name}.png", title=setting.name)
        lines += [f"![{setting.name}]({setting.name}.png)", ""]
    if wall_seconds is not None:
        lines.append(f"Wall time of this invocation: {wall_seconds:.0f} s with {workers} worker processes.")
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text
