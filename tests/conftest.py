import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import pytest  # noqa: E402

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
