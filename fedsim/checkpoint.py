"""Checkpoints of a run: what the ServerApp needs to continue after round k, and each client's node state.

Layout inside a run folder::

    checkpoint/server.pkl                      the last complete round: its number, the global ArrayRecord,
                                               the strategy's attributes (models, assignments, centroids,
                                               BCD's assignment matrix, statistics, ...), the server's
                                               RNG states and the round records so far
    checkpoint/node-state/partition-<p>/round-<r>.pkl
                                               a client's ``context.state`` after round r (the two latest
                                               rounds are kept)

The server writes its file every ``checkpoint-every`` rounds, atomically (a temporary file, then a rename),
so a run killed at any moment leaves the last complete checkpoint. Clients write theirs after every message
of a checkpointed round (the server sends the run folder as ``checkpoint-dir`` in the message config);
their node state never travels to the server. ``resume=<run dir>`` makes the ServerApp load
``server.pkl`` and continue with the next round, and each client restore the node state of that round the
first time it handles a message of the resumed run. On one machine (simulation) this reproduces an
uninterrupted run exactly; across machines each client keeps its files under the same path on its own disk.

The strategy is checkpointed as its attribute dictionary (``vars(strategy)``): everything a fedsim
strategy needs lives in attributes. A plug-in strategy whose attributes do not pickle gets a clear error at
the first checkpoint; it can define ``checkpoint_state()`` / ``restore_checkpoint(state)`` instead.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, RecordDict

CHECKPOINT_DIR = "checkpoint"
SERVER_FILE = "server.pkl"
NODE_STATE_DIR = "node-state"
KEEP_NODE_ROUNDS = 2


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message says which and why, in one line."""


@dataclass
class ServerCheckpoint:
    """The server side of a run after a complete round."""

    server_round: int
    arrays: ArrayRecord
    strategy_state: dict[str, Any]
    rng_state: dict[str, Any]
    rounds: list[dict[str, Any]]


def strategy_state(strategy) -> dict[str, Any]:
    """What a strategy needs to continue: ``checkpoint_state()`` if it has one, else its attributes."""
    if hasattr(strategy, "checkpoint_state"):
        return strategy.checkpoint_state()
    return dict(vars(strategy))


def restore_strategy(strategy, state: dict[str, Any]) -> None:
    """Put a checkpointed state back into a freshly built strategy."""
    if hasattr(strategy, "restore_checkpoint"):
        strategy.restore_checkpoint(state)
    else:
        vars(strategy).update(state)


def rng_state() -> dict[str, Any]:
    """The process-wide RNG states the server may draw from (Python, NumPy legacy, torch)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


class _Pickler(pickle.Pickler):
    """Pickles memoryviews as bytes: arrays received over the network (deployment) hold views of the buffer."""

    def reducer_override(self, obj):
        if isinstance(obj, memoryview):
            return bytes, (obj.tobytes(),)
        return NotImplemented


def _atomic_pickle(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as fh:
        try:
            _Pickler(fh, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
        except (pickle.PicklingError, TypeError, AttributeError) as err:
            fh.close()
            os.unlink(fh.name)
            raise CheckpointError(f"cannot checkpoint to {path}: {err}") from None
    os.replace(fh.name, path)


def save_server_checkpoint(run_dir: Path, server_round: int, arrays: ArrayRecord, strategy,
                           rounds: list[dict[str, Any]]) -> Path:
    """Write the server checkpoint of a complete round; return its path."""
    path = Path(run_dir) / CHECKPOINT_DIR / SERVER_FILE
    checkpoint = ServerCheckpoint(server_round, arrays, strategy_state(strategy), rng_state(), list(rounds))
    _atomic_pickle(checkpoint, path)
    return path


def load_server_checkpoint(run_dir: Path) -> ServerCheckpoint:
    """Read the server checkpoint of a run folder.

    Raises
    ------
    CheckpointError
        If the folder has no checkpoint or it cannot be read.
    """
    path = Path(run_dir) / CHECKPOINT_DIR / SERVER_FILE
    if not path.is_file():
        raise CheckpointError(f"resume = '{run_dir}' has no checkpoint ({path} is missing): was the run "
                              "started with checkpoint-every = 0, or killed before its first round ended?")
    try:
        with open(path, "rb") as fh:
            checkpoint = pickle.load(fh)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as err:
        raise CheckpointError(f"cannot read the checkpoint {path}: {err}") from None
    if not isinstance(checkpoint, ServerCheckpoint):
        raise CheckpointError(f"{path} is not a fedsim server checkpoint")
    return checkpoint


def node_state_path(checkpoint_dir: str | Path, partition_id: int, server_round: int) -> Path:
    """Where a client keeps its node state after ``server_round``."""
    return Path(checkpoint_dir) / CHECKPOINT_DIR / NODE_STATE_DIR / f"partition-{partition_id}" / \
        f"round-{server_round}.pkl"


def save_node_state(checkpoint_dir: str | Path, partition_id: int, server_round: int, state: RecordDict) -> None:
    """Write a client's node state after (a message of) ``server_round``; keep the two latest rounds."""
    path = node_state_path(checkpoint_dir, partition_id, server_round)
    _atomic_pickle(state, path)
    rounds = sorted(int(p.stem.split("-")[1]) for p in path.parent.glob("round-*.pkl"))
    for old in rounds[:-KEEP_NODE_ROUNDS]:
        node_state_path(checkpoint_dir, partition_id, old).unlink(missing_ok=True)


def load_node_state(checkpoint_dir: str | Path, partition_id: int, server_round: int) -> RecordDict | None:
    """A client's node state after its last message up to ``server_round``, or None if it kept none."""
    folder = node_state_path(checkpoint_dir, partition_id, server_round).parent
    rounds = [int(p.stem.split("-")[1]) for p in folder.glob("round-*.pkl")]
    rounds = [r for r in rounds if r <= server_round]
    if not rounds:
        return None
    with open(node_state_path(checkpoint_dir, partition_id, max(rounds)), "rb") as fh:
        return pickle.load(fh)


def remap_node_ids(strategy, mapping: dict[int, int]) -> None:
    """Replace old node ids by new ones in the keys of the strategy's dict attributes and in its sets.

    A resumed simulation gets new (random) node ids; the checkpointed strategy keyed its per-client state
    (assignments, latest models, partitions) by the old ones. Node ids are random 63-bit integers, so they do
    not collide with the small integer keys (cluster or partition ids) that attributes also use.
    """
    for name, value in vars(strategy).items():
        if isinstance(value, dict) and any(k in mapping for k in value):
            setattr(strategy, name, {mapping.get(k, k): v for k, v in value.items()})
        elif isinstance(value, set) and value & mapping.keys():
            setattr(strategy, name, {mapping.get(k, k) for k in value})
