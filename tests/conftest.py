import os
import socket
import subprocess
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fedsim.cli import flower_env, stop_listener  # noqa: E402
from fedsim.client_app import app as client_app  # noqa: E402
from fedsim.config import RunConfig  # noqa: E402
from fedsim.runner import run_rounds  # noqa: E402
from fedsim.testing import LoopbackGrid  # noqa: E402


def run_loopback(num_nodes: int = 8, node_seed: int = 0, recorder=None, strategy_obj=None, **keys):
    """Run a fedsim experiment in-process; keys are run-config keys with '_' for '-'."""
    config = RunConfig.from_mapping({k.replace("_", "-"): v for k, v in keys.items()})
    grid = LoopbackGrid(client_app, num_nodes, config.to_dict(), node_seed=node_seed)
    return run_rounds(grid, config, recorder=recorder, strategy=strategy_obj), grid


@pytest.fixture
def loopback():
    return run_loopback


def _flwr_run(env: dict, keys: dict, nodes: int, results: Path, name: str, *extra: str) -> list[dict]:
    """``fedsim run`` the app for real (``flwr run``, Ray backend) with run-config ``keys``; return its rounds.

    ``extra`` are further ``-c`` overrides (applied last). Fails the test with the output's tail if it fails.
    """
    import json
    import sys

    root = Path(__file__).resolve().parents[1]
    overrides = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in keys.items())
    command = [sys.executable, "-m", "fedsim.cli", "run", str(root), "-n", str(nodes), "-c", overrides,
               "-c", f"results-dir='{results}' run-name='{name}'"]
    for override in extra:
        command += ["-c", override]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return [json.loads(line) for line in (Path(results) / name / "rounds.jsonl").read_text().splitlines()]


@pytest.fixture
def flwr_run(flower):
    """``flwr_run(keys, nodes, results_dir, run_name, *overrides)``: a real ``fedsim run``; returns its rounds."""
    return lambda *args: _flwr_run(flower, *args)


class RecordingPredictor:
    """A link-adaptation ``Predictor`` that always predicts ``value`` and records every call."""

    def __init__(self, value=0.3):
        self.value, self.calls, self.observed = value, [], []

    def predict(self, x):
        self.calls.append(np.array(x))
        return self.value

    def observe(self, x, p_bler):
        self.observed.append((np.array(x), p_bler))


@pytest.fixture
def recording_predictor():
    return RecordingPredictor


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def flower(tmp_path_factory):
    """Environment with a private Flower home and SuperLink port; stops the SuperLink afterwards."""
    home = tmp_path_factory.mktemp("flwr-home")
    port = _free_port()
    root = Path(__file__).resolve().parents[1]
    env = flower_env(root, {**os.environ, "FLWR_HOME": str(home), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(port)})
    yield env
    stop_listener(port)
