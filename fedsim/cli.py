"""The ``fedsim`` command: what ``flwr`` does not do.

``fedsim run``
    Check the run configuration (defaults + preset + overrides) before anything
    starts, then hand it to ``flwr run`` with this machine's simulation settings
    (ClientApp actors per core, see :func:`default_actors`) and a Flower home,
    SuperLink port and results folder private to the app folder. A wrong key or
    value, a malformed preset or a missing data folder is reported in one line and
    nothing is started.
``fedsim report RUN_DIR...``
    Compare finished runs: a table (mean +- std over seeds) and a combined plot.
``fedsim suite SUITE.toml``
    Run a benchmark suite (many seeds and strategies) and write its report.
``fedsim bench``
    Time fedsim against a plain PyTorch loop and Flower's built-in FedAvg: seconds per
    round, time to round 1 and peak memory at 10, 100 and 1,000 clients (table, JSON, plot).
``fedsim stop``
    Stop the local SuperLink daemon that ``flwr run`` started for this app folder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zlib
from pathlib import Path
from typing import Any

from flwr.common.config import flatten_dict

from fedsim.config import ConfigError, RunConfig
from fedsim.deploy import add_deploy_parser


class UsageError(Exception):
    """A command-line problem; the message is one line."""


def flower_env(app_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for ``flwr`` commands on this app folder.

    A Flower home and a local-SuperLink port derived from the folder's path (so
    two checkouts never share a daemon), runtime dependency installation,
    telemetry and update checks off, Hugging Face offline, results under the
    app folder. Variables already set in ``base`` are kept.
    """
    env = dict(os.environ if base is None else base)
    app_dir = app_dir.resolve()
    defaults = {
        "FLWR_HOME": str(app_dir / ".flwr"),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(39100 + zlib.crc32(str(app_dir).encode()) % 800),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        "RAY_DEDUP_LOGS": "0",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "FEDSIM_RESULTS_ROOT": str(app_dir),
    }
    for key, value in defaults.items():
        env.setdefault(key, value)
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def parse_overrides(text: str) -> dict[str, Any]:
    """Parse ``"key=value key2='text'"`` as Flower does (TOML values); bare words are strings."""
    pairs = re.findall(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)", text)
    leftover = re.sub(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)", "", text).strip()
    if leftover:
        raise UsageError(f"cannot read '{leftover}' in the run config: use key=value pairs")
    values: dict[str, Any] = {}
    for key, raw in pairs:
        try:
            values[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            if not re.fullmatch(r"[\w.\-/]+", raw):
                raise UsageError(f"cannot read the value of {key} ({raw}): quote text, e.g. {key}='{raw}'") from None
            values[key] = raw
    return values


def read_preset(path: Path) -> dict[str, Any]:
    """Read a TOML preset of run-config keys (flat, or nested tables flattened with '.')."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"preset '{path}' does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"preset '{path}' is not valid TOML: {err}") from None
    try:
        return flatten_dict(data)  # as `flwr run` reads a run-config file
    except ValueError as err:
        raise UsageError(f"preset '{path}': {err}") from None


def app_defaults(app_dir: Path) -> dict[str, Any]:
    """The run-config defaults of a Flower app folder (its ``[tool.flwr.app.config]``, flattened)."""
    try:
        with open(app_dir / "pyproject.toml", "rb") as fh:
            return flatten_dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])
    except (FileNotFoundError, KeyError):
        raise UsageError(f"'{app_dir}' is not a Flower app folder (no [tool.flwr.app.config])") from None


def resolve_run_config(app_dir: Path, presets: list[Path], overrides: list[str]) -> tuple[dict[str, Any], RunConfig]:
    """Return ``(overrides to send, validated config)`` from the app's defaults, presets and overrides."""
    defaults = app_defaults(app_dir)
    chosen: dict[str, Any] = {}
    for preset in presets:
        chosen.update(read_preset(preset))
    for text in overrides:
        chosen.update(parse_overrides(text))
    config = RunConfig.from_mapping({**defaults, **chosen})
    from fedsim.data.sources import check_available

    check_available(config.dataset, config.data_dir)
    return chosen, config


FAB_FILES = (".py", ".toml", ".md", ".yaml", ".yml", ".json", ".jsonl")
"""Suffixes of the files Flower puts in a FAB (``flwr.common.constant.FAB_INCLUDE_PATTERNS``), plus LICENSE."""
NEVER_IN_A_FAB = {".venv", ".flwr", ".git", "results", "__pycache__", ".pytest_cache", "build", "dist"}
"""Folders whose files Flower's FAB rules (and this project's .gitignore) always leave out."""


def stage_app(app_dir: Path, into: Path) -> Path:
    """Hard-link (or copy) the files of ``app_dir`` that can go into its FAB into ``into``; return ``into``.

    ``flwr run DIR`` walks every file under DIR before it filters them, and a checkout holds its virtual
    environment and its results: 72,000 files, 5.2 s of every run before the SuperLink heard of it. The
    staged folder yields the same FAB (same files, same hash) without the walk. Symbolic links are left out,
    as Flower leaves them out.
    """
    for folder, subfolders, names in os.walk(app_dir):
        subfolders[:] = [d for d in subfolders if d not in NEVER_IN_A_FAB and not d.endswith(".egg-info")]
        for name in names:
            source = Path(folder) / name
            if not (name.endswith(FAB_FILES) or name in ("LICENSE", ".gitignore")) or source.is_symlink():
                continue
            target = into / source.relative_to(app_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:  # another file system
                shutil.copy2(source, target)
    return into


MANY_CLIENTS = 300
"""From this many simulated clients on, :func:`default_actors` starts two actors per core."""


def default_actors(num_clients: int, cpus_per_client: int = 1) -> int:
    """ClientApp actors of a simulation: one per share of ``cpus_per_client`` cores, two from
    :data:`MANY_CLIENTS` clients on.

    While one actor waits for Flower's engine to hand it the next message (several ms per message), another
    computes: at 1,000 digits clients on 2 cores a FedAvg round took 5.7 s with 4 actors and 8.3 s with 2. At
    100 clients they tie (0.91 vs 0.95 s) and the extra actors only delay round 1 (39 vs 28 s: each imports
    torch on the same cores) and hold ~0.5 GB each.
    """
    per_core = 2 if num_clients >= MANY_CLIENTS else 1
    return max(1, per_core * ((os.cpu_count() or 1) // cpus_per_client))


def cmd_run(args: argparse.Namespace) -> int:
    """``fedsim run``: validate, then ``flwr run``."""
    app_dir = Path(args.app_dir).resolve()
    chosen, config = resolve_run_config(app_dir, [Path(p) for p in args.preset], args.run_config)
    if not args.federation:  # a simulation: the number of clients is known now
        config.check_population(args.nodes)
    print(f"fedsim: {config.strategy} / {config.client_role} / {config.task} on {config.dataset} "
          f"({config.partitioning}), {config.num_server_rounds} rounds, {args.nodes} clients", flush=True)
    for warning in config.warnings():
        print(f"fedsim: warning: {warning}", file=sys.stderr, flush=True)
    if args.dry_run:
        return 0
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as fh:
        for key, value in chosen.items():
            fh.write(f"{_toml_key(key)} = {_toml_value(value)}\n")
        run_config_file = fh.name
    env = flower_env(app_dir)
    Path(env["FLWR_HOME"]).mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix="app-", dir=env["FLWR_HOME"]))
    command = ["flwr", "run", str(stage_app(app_dir, staged))]
    if args.federation:
        command.append(args.federation)
    command += ["--stream"]
    if not args.federation:
        actors = args.actors or default_actors(args.nodes, args.cpus_per_client)
        # Ray makes floor(its CPUs / CPUs per client) actors
        command += ["--federation-config", f"num-supernodes={args.nodes} client-resources-num-cpus="
                    f"{args.cpus_per_client} init-args-num-cpus={actors * args.cpus_per_client}"]
    if chosen:
        command += ["--run-config", run_config_file]
    try:
        rc, run_id = _stream(command, env, app_dir)
    finally:
        os.unlink(run_config_file)
        shutil.rmtree(staged, ignore_errors=True)
    if rc != 0 or run_id is None or args.federation:
        return rc
    status = _run_status(run_id, env, app_dir)
    if status != "finished:completed":  # `flwr run` exits 0 even when the ServerApp failed
        print(f"fedsim: run {run_id} ended with status '{status}' (see the lines above)", file=sys.stderr)
        return 1
    return 0


def _stream(command: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str | None]:
    """Run ``command``, echo its output as it comes, and pick up the run id it reports."""
    run_id = None
    with subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            found = re.search(r"Successfully started run (\d+)", line)
            if found:
                run_id = found.group(1)
    return proc.returncode, run_id


def _run_status(run_id: str, env: dict[str, str], cwd: Path) -> str:
    """The SuperLink's final status of a run (``finished:completed`` when all went well)."""
    out = subprocess.run(["flwr", "ls", "--run-id", run_id, "--format", "json"], env=env, cwd=cwd,
                         capture_output=True, text=True).stdout
    try:
        return json.loads(out)["runs"][0]["status"]
    except (ValueError, KeyError, IndexError):
        return "unknown"


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_\-]+", key) else f'"{key}"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def cmd_report(args: argparse.Namespace) -> int:
    """``fedsim report``: table and plot of finished runs."""
    from fedsim.report import write_report

    text = write_report([Path(p) for p in args.run_dirs], Path(args.out) if args.out else None)
    print(text)
    return 0


def cmd_suite(args: argparse.Namespace) -> int:
    """``fedsim suite``: run a benchmark suite and write its report."""
    import datetime as dt

    from fedsim.suite import load_suite, run_suite

    suite_file = Path(args.suite_file)
    if not suite_file.is_file():
        raise UsageError(f"suite file '{suite_file}' does not exist")
    suite = load_suite(suite_file)
    if args.seeds:
        suite.seeds = args.seeds
    if args.settings:
        unknown = sorted(set(args.settings) - {s.name for s in suite.settings})
        if unknown:
            raise UsageError(f"suite '{suite.name}' has no setting {', '.join(unknown)}; it has "
                             f"{', '.join(s.name for s in suite.settings)}")
        suite.settings = [s for s in suite.settings if s.name in args.settings]
    out = Path(args.out) if args.out else Path("results") / f"suite-{suite.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    runs = sum(len(s.strategies) for s in suite.settings) * len(suite.seeds)
    print(f"fedsim: suite '{suite.name}': {runs} runs with {args.workers} workers -> {out}", flush=True)
    print(run_suite(suite, out, workers=args.workers, rounds=args.rounds))
    return 0


def stop_listener(port: int | str, wait: float = 10.0) -> list[str]:
    """SIGTERM the processes listening on TCP ``port`` and wait up to ``wait`` s for them to exit; their pids."""
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    pids = sorted(set(re.findall(r"pid=(\d+)", out)))
    for pid in pids:
        os.kill(int(pid), 15)
    deadline = time.monotonic() + wait
    while pids and time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.1)
    return pids


def stop_local_superlink(app_dir: Path, wait: float = 10.0) -> tuple[str, list[str]]:
    """Stop the local SuperLink of ``app_dir`` (see :func:`stop_listener`); return its port and pids."""
    port = flower_env(Path(app_dir))["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]
    return port, stop_listener(port, wait)


def cmd_stop(args: argparse.Namespace) -> int:
    """``fedsim stop``: stop this app folder's local SuperLink."""
    port, pids = stop_local_superlink(Path(args.app_dir))
    print(f"stopped local SuperLink on port {port} (pid {', '.join(pids)})" if pids
          else f"no local SuperLink on port {port}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``fedsim bench``: framework overhead against a plain PyTorch loop and stock Flower."""
    from fedsim.bench.harness import SYSTEMS, run_bench

    unknown = sorted(set(args.systems) - set(SYSTEMS))
    if unknown:
        raise UsageError(f"unknown system {', '.join(unknown)}; known: {', '.join(SYSTEMS)}")
    overrides = {}
    for text in args.run_config:
        overrides.update(parse_overrides(text))
    RunConfig.from_mapping({**app_defaults(Path(__file__).resolve().parents[1]), **overrides})  # fail early
    import datetime as dt

    out = Path(args.out) if args.out else Path("results") / f"bench-{dt.datetime.now():%Y%m%d-%H%M%S}"
    table = run_bench(out, args.sizes, args.rounds, args.systems, overrides, actors=args.actors,
                      checkpointed=not args.no_checkpointed)
    print((out / "table.md").read_text())
    print(f"fedsim bench: {len(table)} rows; results in {out} (bench.jsonl, bench.json, table.md, bench.png)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fedsim`` command."""
    parser = argparse.ArgumentParser(prog="fedsim", description="fedsim: federated-learning simulation on Flower")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="validate the run config, then `flwr run` the app")
    run.add_argument("app_dir", nargs="?", default=".", help="the Flower app folder (default: .)")
    run.add_argument("-c", "--run-config", action="append", default=[],
                     help="overrides, e.g. \"strategy='fedavg' lr=0.01\" (repeatable)")
    run.add_argument("-p", "--preset", action="append", default=[], help="TOML preset under experiments/ (repeatable)")
    run.add_argument("-n", "--nodes", type=int, default=10, help="simulated clients (default 10)")
    run.add_argument("--cpus-per-client", type=int, default=1, help="CPUs reserved per simulated client (default 1)")
    run.add_argument("--actors", type=int, default=None,
                     help="ClientApp processes running clients side by side (default: cores / cpus-per-client, "
                          f"twice that from {MANY_CLIENTS} clients)")
    run.add_argument("--federation", default="", help="a SuperLink connection of the Flower configuration "
                                                        "(deployment); default: local simulation")
    run.add_argument("--dry-run", action="store_true", help="only validate and print the resolved configuration")
    run.set_defaults(func=cmd_run)

    report = sub.add_parser("report", help="compare finished runs: table and plot")
    report.add_argument("run_dirs", nargs="+", help="run folders (results/<run>)")
    report.add_argument("-o", "--out", default="", help="folder for report.md and comparison.png")
    report.set_defaults(func=cmd_report)

    suite = sub.add_parser("suite", help="run a benchmark suite (e.g. experiments/clove/suite.toml)")
    suite.add_argument("suite_file")
    suite.add_argument("-o", "--out", default="", help="output folder (default results/suite-<name>-<time>)")
    suite.add_argument("-w", "--workers", type=int, default=2, help="worker processes (default 2)")
    suite.add_argument("--seeds", type=int, nargs="+", help="override the suite's seeds")
    suite.add_argument("--settings", nargs="+", help="run only these settings (by name)")
    suite.add_argument("--rounds", type=int, help="override every setting's number of rounds (quick look)")
    suite.set_defaults(func=cmd_suite)

    bench = sub.add_parser("bench", help="per-round time and memory of fedsim vs a plain PyTorch loop and stock "
                                         "Flower (rotated digits, MLP)")
    bench.add_argument("-o", "--out", default="", help="output folder (default results/bench-<time>)")
    bench.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000], help="numbers of clients")
    bench.add_argument("--rounds", type=int, default=20, help="rounds per run (default 20)")
    bench.add_argument("--systems", nargs="+", default=["plain", "flower-fedavg", "fedsim-fedavg", "fedsim-ifca",
                                                        "fedsim-clove"], help="what to run (default: all)")
    bench.add_argument("-c", "--run-config", action="append", default=[],
                       help="run-config overrides for every run, e.g. \"hidden-size=128\"")
    bench.add_argument("--actors", type=int, help="ClientApp actors of the fedsim runs (default: fedsim run's)")
    bench.add_argument("--no-checkpointed", action="store_true",
                       help="skip the extra FedAvg run with checkpointing on")
    bench.set_defaults(func=cmd_bench)

    stop = sub.add_parser("stop", help="stop the local SuperLink daemon of this app folder")
    stop.add_argument("app_dir", nargs="?", default=".")
    stop.set_defaults(func=cmd_stop)

    add_deploy_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedsim`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, ConfigError, FileNotFoundError) as err:
        print(f"fedsim: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
