"""``fedsim bench``: per-round time, time to round 1 and peak memory of fedsim against its references.

For each federation size the benchmark runs, one after another on this machine:

``plain-<strategy>``
    :func:`fedsim.bench.plain_loop.run_plain` in a fresh process: the same computation with no
    framework (the reference every ratio is taken to);
``flower-fedavg``
    Flower's built-in ``FedAvg`` with a minimal ClientApp (``experiments/bench/flower_fedavg``),
    through ``flwr run``;
``fedsim-<strategy>``
    ``fedsim run`` with fedsim's FedAvg, IFCA and CLoVE (before and after its clustering stabilised).

Every simulated run starts from a stopped local SuperLink (the cold cost a user pays on a fresh
machine), with checkpointing off (``checkpoint-every = 0``; the checkpointed cost is a row of its own).
While a run goes, a sampler reads the proportional set size (PSS) of the simulation process (the
ServerApp and Flower's engine) and of the ClientApp actors every 0.5 s; the table gives their peaks.
Per-round time is the median over rounds 2.. (round 1 includes the actors' warm-up, which is counted
in the time to round 1). Results: ``bench.jsonl`` (one line per system and size, with every round's
time), ``table.md`` and ``bench.png``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from fedsim.cli import app_defaults, flower_env, stop_local_superlink
from fedsim.config import RunConfig

REPO = Path(__file__).resolve().parents[2]
FLOWER_APP = REPO / "experiments" / "bench" / "flower_fedavg"
STRATEGIES = ("fedavg", "ifca", "clove")
MARKERS = {
    "superlink": re.compile(r"Starting local SuperLink"),
    "run-started": re.compile(r"Successfully started run"),
    "server-app": re.compile(r"\[fedsim\] \S+ with |Starting FedAvg strategy"),
    "round-1": re.compile(r"\[fedsim\] round 1/"),
}
"""Lines of a run's output whose arrival times split the time to the end of round 1."""


@dataclass
class Measurement:
    """One system at one federation size."""

    system: str
    clients: int
    round_times: list[float] = field(default_factory=list)
    stable_from: int | None = None
    """CLoVE: the first round run without a loss query."""
    time_to_round_1: float | None = None
    wall: float | None = None
    markers: dict[str, float] = field(default_factory=dict)
    peak_server_mb: float | None = None
    peak_clients_mb: float | None = None
    num_actors: int | None = None
    final_accuracy: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def steady(self, rounds: slice | None = None) -> float | None:
        """Median round time over rounds 2.. (or over ``rounds``, 0-based)."""
        times = self.round_times[rounds] if rounds is not None else self.round_times[1:]
        return statistics.median(times) if times else None

    def as_dict(self) -> dict[str, Any]:
        return {"system": self.system, "clients": self.clients, "round-times": self.round_times,
                "stable-from": self.stable_from, "time-to-round-1": self.time_to_round_1, "wall": self.wall,
                "markers": self.markers, "peak-server-mb": self.peak_server_mb,
                "peak-clients-mb": self.peak_clients_mb, "actors": self.num_actors,
                "final-accuracy": self.final_accuracy, **self.extra}


# -- memory -----------------------------------------------------------------------------------------
class MemorySampler(threading.Thread):
    """Peak PSS of the simulation process and of the sum of ClientApp actors, sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak_server = 0.0
        self.peak_clients = 0.0
        self.max_actors = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            server = clients = 0.0
            actors = 0
            for proc in psutil.process_iter(["cmdline"]):
                cmd = " ".join(proc.info["cmdline"] or [])
                try:
                    if "flwr-simulation" in cmd:
                        server += _pss_mb(proc)
                    elif cmd.startswith("ray::ClientAppActor"):
                        clients += _pss_mb(proc)
                        actors += 1
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.peak_server = max(self.peak_server, server)
            self.peak_clients = max(self.peak_clients, clients)
            self.max_actors = max(self.max_actors, actors)
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()


def _pss_mb(proc: psutil.Process) -> float:
    info = proc.memory_full_info()
    return getattr(info, "pss", info.rss) / 2**20


# -- the systems ----------------------------------------------------------------------------------
def _plain_child(overrides: dict[str, Any], clients: int, rounds: int, queue) -> None:
    from fedsim.bench.plain_loop import run_plain

    config = RunConfig.from_mapping({**app_defaults(REPO), **overrides})
    queue.put(run_plain(config, clients, rounds))


def run_plain_loop(strategy: str, clients: int, rounds: int, overrides: dict[str, Any]) -> Measurement:
    """The plain PyTorch loop in a fresh process (so that its set-up and peak memory are its own)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    start = time.monotonic()
    child = ctx.Process(target=_plain_child, args=({**overrides, "strategy": strategy}, clients, rounds, queue))
    child.start()
    result = queue.get()
    child.join()
    wall = time.monotonic() - start
    records = result["rounds"]
    m = Measurement(f"plain-{strategy}", clients, [r["round-time"] for r in records], wall=wall,
                    time_to_round_1=wall - sum(r["round-time"] for r in records[1:]),
                    peak_clients_mb=result["peak-rss-mb"], final_accuracy=records[-1].get("eval-accuracy"))
    m.extra["setup-time"] = result["setup-time"]
    stable = [r["round"] for r in records if r.get("stable")]
    m.stable_from = stable[0] if stable else None
    return m


def _stream(command: list[str], env: dict[str, str], cwd: Path, log_file: Path) -> tuple[int, float, dict, float]:
    """Run ``command``, log its output, and note when each of :data:`MARKERS` first appears.

    Returns the exit code, the wall time, the markers' times and the start (``time.monotonic()``).
    """
    start = time.monotonic()
    markers: dict[str, float] = {}
    with subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc, open(log_file, "w") as log:
        for line in proc.stdout:
            log.write(line)
            for name, pattern in MARKERS.items():
                if name not in markers and pattern.search(line):
                    markers[name] = time.monotonic() - start
    return proc.returncode, time.monotonic() - start, markers, start


def run_simulation(system: str, clients: int, rounds: int, overrides: dict[str, Any], out: Path,
                   actors: int | None) -> Measurement:
    """One ``fedsim run`` (``fedsim-*``) or stock Flower run (``flower-fedavg``), timed from the command line."""
    tag = f"{system}-n{clients}"
    if system == "flower-fedavg":
        app_dir = FLOWER_APP
        timing = out / f"{tag}.timing.jsonl"
        timing.unlink(missing_ok=True)
        cfg = {"num-server-rounds": rounds, "timing-file": str(timing), "seed": overrides.get("seed", 0)}
        federation = f"num-supernodes={clients} client-resources-num-cpus=1"
        command = ["flwr", "run", str(app_dir), "--stream", "--federation-config", federation,
                   "--run-config", " ".join(f"{k}={json.dumps(v)}" for k, v in cfg.items())]
    else:
        app_dir = REPO
        strategy = system.removeprefix("fedsim-").removesuffix("-checkpointed")
        cfg = {**overrides, "strategy": strategy, "num-server-rounds": rounds, "run-name": f"bench-{tag}",
               "checkpoint-every": 1 if system.endswith("-checkpointed") else 0,
               "results-dir": str(out / "runs")}
        command = [sys.executable, "-m", "fedsim.cli", "run", str(app_dir), "-n", str(clients), "-c",
                   " ".join(f"{k}={json.dumps(v)}" for k, v in cfg.items())]
        if actors is not None:
            command += ["--actors", str(actors)]
    env = flower_env(app_dir)
    stop_local_superlink(app_dir)
    sampler = MemorySampler()
    sampler.start()
    try:
        rc, wall, markers, started = _stream(command, env, app_dir, out / f"{tag}.log")
    finally:
        sampler.stop()
        stop_local_superlink(app_dir)
    if rc != 0:
        raise RuntimeError(f"{system} with {clients} clients failed (exit {rc}); see {out / f'{tag}.log'}")
    m = Measurement(system, clients, wall=wall, markers=markers, peak_server_mb=sampler.peak_server,
                    peak_clients_mb=sampler.peak_clients, num_actors=sampler.max_actors)
    if system == "flower-fedavg":
        stamps = [json.loads(line)["time"] for line in timing.read_text().splitlines()]
        m.round_times = [b - a for a, b in zip(stamps, stamps[1:])]
        markers["round-1"] = stamps[1] - started  # CLOCK_MONOTONIC is one clock for all processes
    else:
        records = [json.loads(line) for line in (out / "runs" / f"bench-{tag}" / "rounds.jsonl").open()]
        m.round_times = [r["round-time"] for r in records]
        m.final_accuracy = records[-1].get("eval-accuracy")
        stable = [r["round"] for r in records if r.get("stable")]
        m.stable_from = stable[0] + 1 if stable else None  # the round that stopped clustering still queried
    m.time_to_round_1 = markers.get("round-1")
    return m


# -- the table and the plot -------------------------------------------------------------------------
def rows(results: list[Measurement]) -> list[dict[str, Any]]:
    """One table row per measured configuration, with its ratios to the plain loop and to fedsim's FedAvg."""
    by_key = {(m.system, m.clients): m for m in results}
    out = []
    for m in results:
        variants = [("", m.steady())]
        if m.system.endswith("clove") and m.stable_from:
            s = m.stable_from - 1  # 0-based index of the first stable round
            variants = [(" before stability", m.steady(slice(1, s)) if s > 1 else None),
                        (" after stability", m.steady(slice(s, None)))]
        for label, per_round in variants:
            strategy = m.system.split("-")[1]
            plain = by_key.get((f"plain-{strategy}", m.clients))
            plain_round = None
            if plain is not None:
                plain_round = plain.steady()
                if label and plain.stable_from:
                    s = plain.stable_from - 1
                    plain_round = plain.steady(slice(1, s) if "before" in label else slice(s, None))
            fedavg = by_key.get(("fedsim-fedavg", m.clients))
            out.append({
                "clients": m.clients, "system": m.system + label, "per-round": per_round,
                "vs-plain": per_round / plain_round if per_round and plain_round else None,
                "vs-fedsim-fedavg": per_round / fedavg.steady() if per_round and fedavg and m.system != "fedsim-fedavg"
                and m.system.startswith("fedsim") else None,
                "time-to-round-1": m.time_to_round_1, "wall": m.wall, "rounds": len(m.round_times),
                "peak-server-mb": m.peak_server_mb, "peak-clients-mb": m.peak_clients_mb, "actors": m.num_actors,
                "final-accuracy": m.final_accuracy,
            })
    return out


def markdown_table(table: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    def fmt(value, spec):
        return "" if value is None else format(value, spec)

    lines = ["| clients | system | s / round | x plain | x fedsim FedAvg | to round 1 (s) | wall (s) | "
             "peak server MB | peak clients MB | actors | accuracy |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        lines.append(f"| {r['clients']} | {r['system']} | {fmt(r['per-round'], '.3f')} | {fmt(r['vs-plain'], '.2f')} | "
                     f"{fmt(r['vs-fedsim-fedavg'], '.2f')} | {fmt(r['time-to-round-1'], '.1f')} | "
                     f"{fmt(r['wall'], '.1f')} | {fmt(r['peak-server-mb'], '.0f')} | "
                     f"{fmt(r['peak-clients-mb'], '.0f')} | {fmt(r['actors'], 'd')} | "
                     f"{fmt(r['final-accuracy'], '.3f')} |")
    return "\n".join(lines)


def plot(table: list[dict[str, Any]], path: Path) -> None:
    """Per-round time against the number of clients (left) and its ratio to the plain loop (right)."""
    from fedsim.plots import plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    colours = plt.get_cmap("tab10").colors
    for index, system in enumerate(dict.fromkeys(r["system"] for r in table)):
        points = [(r["clients"], r["per-round"], r["vs-plain"]) for r in table if r["system"] == system
                  and r["per-round"]]
        if not points:
            continue
        style = dict(ls="--" if system.startswith("plain") else ":" if system.startswith("flower") else "-",
                     marker="o", color=colours[index % len(colours)], label=system)
        left.plot([p[0] for p in points], [p[1] for p in points], **style)
        ratios = [p for p in points if p[2]]
        if ratios and not system.startswith("plain"):
            right.plot([p[0] for p in ratios], [p[2] for p in ratios], **style)
    for ax, ylabel in ((left, "seconds per round (median of rounds 2..)"), (right, "x the plain PyTorch loop")):
        ax.set_xscale("log")
        ax.set_xlabel("simulated clients")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    left.set_yscale("log")
    right.axhline(1.0, color="k", lw=0.8)
    right.axhline(1.5, color="grey", lw=0.8, ls="--")
    right.axhline(1.3, color="grey", lw=0.8, ls=":")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    right.set_title("targets: 1.5x at 100 clients (dashed), 1.3x at 1,000 (dotted)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- the command ------------------------------------------------------------------------------------
SYSTEMS = ("plain", "flower-fedavg", "fedsim-fedavg", "fedsim-ifca", "fedsim-clove")


def run_bench(out: Path, sizes: list[int], rounds: int, systems: list[str], overrides: dict[str, Any],
              actors: int | None = None, checkpointed: bool = True) -> list[dict[str, Any]]:
    """Run every system at every size; write ``bench.jsonl``, ``table.md`` and ``bench.png`` into ``out``."""
    out = out.resolve()  # the apps' processes run in other folders
    out.mkdir(parents=True, exist_ok=True)
    results: list[Measurement] = []
    started = time.strftime("%Y-%m-%d %H:%M")
    with open(out / "bench.jsonl", "w") as jsonl:
        for clients in sizes:
            plan = [f"plain-{s}" for s in STRATEGIES if "plain" in systems]
            plan += [s for s in SYSTEMS[1:] if s in systems]
            if checkpointed and "fedsim-fedavg" in systems:
                plan.append("fedsim-fedavg-checkpointed")
            for system in plan:
                print(f"fedsim bench: {system} with {clients} clients, {rounds} rounds ...", flush=True)
                if system.startswith("plain-"):
                    m = run_plain_loop(system.removeprefix("plain-"), clients, rounds, overrides)
                else:
                    m = run_simulation(system, clients, rounds, overrides, out, actors)
                results.append(m)
                jsonl.write(json.dumps(m.as_dict()) + "\n")
                jsonl.flush()
                print(f"fedsim bench:   {m.steady():.3f} s per round (median of rounds 2..), "
                      f"wall {m.wall:.1f} s", flush=True)
    table = rows(results)
    machine = f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GB"
    header = (f"fedsim bench, {started}, {machine}; rounds = {rounds}; "
              f"overrides: {json.dumps(overrides) if overrides else 'none'}\n\n")
    (out / "table.md").write_text(header + markdown_table(table) + "\n")
    (out / "bench.json").write_text(json.dumps({"started": started, "machine": machine, "rounds": rounds,
                                                "overrides": overrides, "rows": table}, indent=1) + "\n")
    plot(table, out / "bench.png")
    return table
