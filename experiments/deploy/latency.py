"""Per-round latency of a real Flower deployment on loopback, per SuperNode setting.

For each setting: a fresh deployment folder, CA and node keys, a SuperLink with
TLS and SuperNode authentication, N registered SuperNodes, then one FedAvg job
(`flwr run`, digits, iid, tiny MLP) of R rounds. Measured:

* ``node-start-s``: starting the N SuperNodes until the SuperLink accepted them (in parallel);
* ``first-round-s``: from ``flwr run`` to round 1 in ``rounds.jsonl`` (ServerApp start, node
  discovery query, round 1);
* ``round-s``: ``round-time`` of every round (a round = one train and one evaluate message per node),
  ``later-round-s`` its mean over rounds 2..R;
* ``node-message-s``: per message, from the SuperNode's "Receiving" to its "Sending" log line
  (the ClientApp's start, work and hand-back), timestamped by polling the logs every 50 ms;
* ``load``: the 1-min load average before and after (the box is shared).

Usage::

    python experiments/deploy/latency.py --setting fresh --setting warm --rounds 4 \\
        --out experiments/deploy/latency.jsonl
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fedsim import deploy  # noqa: E402

SETTINGS = {
    # Flower 1.41 defaults: a new flwr-clientapp process per message, SuperExec polls every 1 s.
    "fresh": {"clientapp": "fresh", "poll_interval": None, "link_poll": None},
    # The same, with SuperExec polling every 0.2 s (FLWR_SUPEREXEC_TASK_POLL_INTERVAL) on link and nodes.
    "fresh-poll": {"clientapp": "fresh", "poll_interval": 0.2, "link_poll": 0.2},
    # --isolation process + fedsim's warm executor (fork per message), polling every 0.2 s.
    "warm": {"clientapp": "warm", "poll_interval": 0.2, "link_poll": 0.2},
    # Diagnostic, not offered by fedsim: "warm" with Flower's two hard-coded 3-s polls (SuperNode idle
    # poll, ServerApp grid poll) shortened to 0.2 s by a sitecustomize that patches time.sleep(3).
    "warm-patched-polls": {"clientapp": "warm", "poll_interval": 0.2, "link_poll": 0.2, "patch_polls": 0.2},
}

SITECUSTOMIZE = """# written by experiments/deploy/latency.py: a diagnostic, never used by fedsim itself.
# Flower 1.41 sleeps exactly 3 s between polls in two places: the SuperNode's idle loop
# (flwr/supernode/start_client_internal.py) and the ServerApp's HttpGrid.send_and_receive
# (flwr/superlink/grid/http_grid.py). Shorten those (and only 3-s sleeps) to {fast} s.
import time as _time

_sleep = _time.sleep


def _sleep_shorter(seconds):
    _sleep({fast} if seconds == 3 else seconds)


_time.sleep = _sleep_shorter
"""


class LogWatcher(threading.Thread):
    """Poll log files every ``period`` s and timestamp the new lines that match ``pattern``."""

    def __init__(self, files: dict[str, Path], pattern: str, period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.files, self.pattern, self.period = files, re.compile(pattern), period
        self.offsets = {name: (p.stat().st_size if p.exists() else 0) for name, p in files.items()}
        self.events: list[tuple[float, str, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            now = time.monotonic()
            for name, path in self.files.items():
                try:
                    with open(path, "rb") as fh:
                        fh.seek(self.offsets[name])
                        data = fh.read()
                except OSError:
                    continue
                cut = data.rfind(b"\n") + 1
                self.offsets[name] += cut
                for line in data[:cut].decode(errors="replace").splitlines():
                    if self.pattern.search(line):
                        self.events.append((now, name, re.sub(r"\x1b\[[0-9;]*m", "", line).strip()))
            time.sleep(self.period)


def node_message_times(events: list[tuple[float, str, str]]) -> list[float]:
    """Seconds from each "Receiving: X message" to the node's next "Sending: X message"."""
    out, pending = [], {}
    for t, node, line in events:
        if "Receiving:" in line:
            pending[node] = t
        elif "Sending:" in line and node in pending:
            out.append(t - pending.pop(node))
    return out


def run_setting(name: str, nodes: int, rounds: int, base_port: int, job_timeout: float, keep: bool = False) -> dict:
    """Deploy, run one job, measure, stop; return the measurements."""
    setting = SETTINGS[name]
    folder = Path(tempfile.mkdtemp(prefix=f"fedsim-latency-{name}-"))
    load_before = os.getloadavg()[0]
    result: dict = {"setting": name, "nodes": nodes, "rounds": rounds, **setting}
    old_pythonpath = os.environ.get("PYTHONPATH")
    if setting.get("patch_polls"):
        (folder / "diag").mkdir()
        (folder / "diag" / "sitecustomize.py").write_text(SITECUSTOMIZE.format(fast=setting["patch_polls"]))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder / "diag"), old_pythonpath]))
    try:
        deploy.init_pki(folder, ["127.0.0.1"])
        for i in range(nodes):
            deploy.make_node_key(folder, f"node{i}")
        link = deploy.start_superlink(folder, "127.0.0.1", base_port, task_poll_interval=setting["link_poll"])
        deploy.write_connection(folder / "cli", "probe", link.address, folder / "pki" / "ca.crt")
        for i in range(nodes):
            deploy.register_node(folder, f"node{i}", "probe")
        t0 = time.monotonic()
        with cf.ThreadPoolExecutor(nodes) as pool:
            list(pool.map(lambda i: deploy.start_supernode(
                folder, link.address, i, nodes, port=base_port + 1 + i, clientapp=setting["clientapp"],
                poll_interval=setting["poll_interval"]), range(nodes)))
        result["node-start-s"] = round(time.monotonic() - t0, 1)
        watcher = LogWatcher({f"node{i}": folder / "nodes" / f"node{i}" / "supernode.log" for i in range(nodes)},
                             r"Receiving: |Sending: ")
        watcher.start()
        result["job-s"], result["first-round-s"], run_dir = run_job(folder, nodes, rounds, job_timeout)
        watcher.halt.set()
        watcher.join(5)
        records = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
        result["round-s"] = [round(r["round-time"], 2) for r in records]
        result["later-round-s"] = round(statistics.mean(result["round-s"][1:]), 2) if rounds > 1 else None
        result["final-eval-accuracy"] = records[-1].get("eval-accuracy")
        per_message = node_message_times(watcher.events)
        result["node-message-s"] = {"n": len(per_message), "median": round(statistics.median(per_message), 2),
                                    "max": round(max(per_message), 2)} if per_message else None
    finally:
        if old_pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_pythonpath
        result["stopped"] = deploy.stop(folder)
        result["load"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        if keep:
            result["folder"] = str(folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return result


def run_job(folder: Path, nodes: int, rounds: int, timeout: float) -> tuple[float, float | None, Path]:
    """``flwr run`` a FedAvg job; return (job seconds, seconds to round 1, run folder)."""
    run_dir = folder / "results" / "probe"
    keys = (f"strategy='fedavg' partitioning='iid' samples-per-client=60 num-server-rounds={rounds} "
            f"min-available-nodes={nodes} results-dir='{folder / 'results'}' run-name='probe' round-timeout=300.0")
    with open(ROOT / "pyproject.toml", "rb") as fh:
        if "checkpoint-every" in tomllib.load(fh)["tool"]["flwr"]["app"]["config"]:
            keys += " checkpoint-every=0"  # not part of what is measured
    env = {**os.environ, "FLWR_HOME": str(folder / "cli"), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1"}
    argv = [deploy._tool("flwr"), "run", str(ROOT), "probe", "--stream", "--run-config", keys]
    log = open(folder / "flwr-run.log", "w")
    t0 = time.monotonic()
    first = None
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        while proc.poll() is None and time.monotonic() - t0 < timeout:
            if first is None and (run_dir / "rounds.jsonl").is_file() and (run_dir / "rounds.jsonl").stat().st_size:
                first = time.monotonic() - t0
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            raise RuntimeError(f"flwr run did not finish within {timeout:.0f} s (see {folder / 'flwr-run.log'})")
    finally:
        proc.wait(10)
        log.close()
    if not (run_dir / "summary.json").is_file():
        raise RuntimeError(f"the job did not finish: {deploy._tail(folder / 'flwr-run.log', 6)}")
    return round(time.monotonic() - t0, 1), (round(first, 1) if first else None), run_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", action="append", choices=sorted(SETTINGS), help="repeatable; default all")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--port", type=int, default=19500, help="SuperLink port; nodes use the next ports")
    parser.add_argument("--job-timeout", type=float, default=900.0)
    parser.add_argument("--out", default="", help="append one JSON line per run here")
    parser.add_argument("--keep", action="store_true", help="keep each deployment folder (logs) for inspection")
    args = parser.parse_args()
    for _ in range(args.repeat):
        for name in args.setting or list(SETTINGS):
            result = run_setting(name, args.nodes, args.rounds, args.port, args.job_timeout, args.keep)
            line = json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"), **result})
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
