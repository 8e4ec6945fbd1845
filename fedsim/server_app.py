"""The Flower ``ServerApp``: read the run config, run the configured strategy, write results.

Nothing algorithm-specific lives here. A wrong configuration stops the run
before round 1 with one line naming the key, and the run is recorded as failed.
"""

from __future__ import annotations

from logging import ERROR, INFO, WARNING

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from fedsim import flower_fixes
from fedsim.config import ConfigError, RunConfig
from fedsim.data.sources import DataSourceError
from fedsim.results import RunRecorder, new_run_dir, resumed_run_dir
from fedsim.runner import run_rounds

app = ServerApp()


class RunAborted(RuntimeError):
    """The run stopped before or during its rounds; the message says why, in one line.

    Raised (rather than ``sys.exit``) so that Flower records the run as failed:
    the simulation runtime ignores a ``SystemExit`` in the ServerApp thread.
    """


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one fedsim experiment as configured by ``context.run_config``."""
    try:
        config = RunConfig.from_mapping(context.run_config)
    except ConfigError as err:
        log(ERROR, "[fedsim] invalid run config: %s", err)
        raise RunAborted(f"invalid run config: {err}") from None
    for warning in config.warnings():
        log(WARNING, "[fedsim] %s", warning)
    try:
        run_dir = resumed_run_dir(config) if config.resume else new_run_dir(config)
    except ConfigError as err:
        log(ERROR, "[fedsim] %s", err)
        raise RunAborted(str(err)) from None
    log(INFO, "[fedsim] %s with %s on %s/%s, %s rounds; results in %s", config.strategy, config.client_role,
        config.dataset, config.partitioning, config.num_server_rounds, run_dir)
    recorder = RunRecorder(run_dir, config)
    flower_fixes.apply(grid)
    try:
        result = run_rounds(grid, config, recorder)
    except (ConfigError, DataSourceError, RuntimeError) as err:  # CheckpointError is a RuntimeError
        log(ERROR, "[fedsim] %s", err)
        raise RunAborted(str(err)) from None
    summary = result["summary"]
    log(INFO, "[fedsim] done in %.1f s (round 1 after %.1f s, %.2f s per later round); results in %s",
        summary.get("time-total", 0.0), summary.get("time-to-round-1", 0.0), summary.get("time-per-round", 0.0),
        run_dir)
