"""The speed-ups of the simulation path give Flower's answers: the indexed in-memory state, the fast
array reads, the reply polling and the partition fast path."""

from __future__ import annotations

import random
import secrets
import time

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import HEARTBEAT_INTERVAL_INF, NOOP_ACCOUNT_NAME, NOOP_FLWR_AID
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from fedsim import flower_fixes
from fedsim.arrays import to_numpy, to_state_dict, weighted_average
from fedsim.config import RunConfig
from fedsim.data import federation
from fedsim.metering import MeteredGrid


# -- fast array reads --------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.random.default_rng(0).normal(size=(2, 3, 5)),
    np.array([1, -2, 3], dtype=np.int64),
    np.array(3.5, dtype=np.float32),
    np.zeros((0, 4), dtype=np.float32),
    np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),  # Fortran order: Flower's own path
    np.arange(4, dtype=">f4"),  # big-endian: Flower's own path
])
def test_to_numpy_equals_flower(value):
    array = Array(value)
    fast, reference = to_numpy(array), array.numpy()
    assert fast.dtype == reference.dtype and fast.shape == reference.shape
    np.testing.assert_array_equal(fast, reference)


def test_to_numpy_reads_memoryview_payloads():
    array = Array(np.arange(5, dtype=np.float32))
    array.data = memoryview(array.data)  # what deployment replies carry
    np.testing.assert_array_equal(to_numpy(array), np.arange(5, dtype=np.float32))


def test_to_state_dict_equals_flower_and_owns_its_memory():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    record = ArrayRecord(model.state_dict())
    fast, reference = to_state_dict(record), record.to_torch_state_dict()
    assert list(fast) == list(reference)
    for name in fast:
        assert torch.equal(fast[name], reference[name])
        fast[name] += 1  # writable, and the record is untouched
    assert torch.equal(record.to_torch_state_dict()["0.weight"], reference["0.weight"])


def test_weighted_average_is_bitwise_flowers():
    rng = np.random.default_rng(1)
    contents = [RecordDict({"arrays": ArrayRecord({"w": Array(rng.normal(size=(7, 3)).astype(np.float32)),
                                                   "b": Array(rng.normal(size=3).astype(np.float32))}),
                            "metrics": MetricRecord({"num-examples": int(n)})})
                for n in rng.integers(1, 90, size=9)]
    ours, flowers = weighted_average(contents, "num-examples"), aggregate_arrayrecords(contents, "num-examples")
    assert list(ours) == list(flowers)
    for name in ours:
        assert ours[name].dtype == flowers[name].dtype
        assert ours[name].numpy().tobytes() == flowers[name].numpy().tobytes()


# -- the indexed in-memory state ---------------------------------------------------------------------
@pytest.fixture
def state_and_grid():
    """A real in-memory LinkState with 30 nodes and a run, and the simulation's grid on it (as
    ``flwr.simulation.run_simulation`` sets them up)."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
    from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity

    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    state = factory.state()
    nodes = []
    for _ in range(30):
        node = state.create_node(NOOP_FLWR_AID, NOOP_ACCOUNT_NAME, secrets.token_bytes(32),
                                 heartbeat_interval=HEARTBEAT_INTERVAL_INF)
        state.acknowledge_node_heartbeat(node_id=node, heartbeat_interval=HEARTBEAT_INTERVAL_INF)
        nodes.append(node)
    run = Run.create_empty(run_id=1)
    run.federation_id, run.primary_task_id = NOOP_FEDERATION_ID, 1
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[1] = Task(task_id=1, run_id=run.run_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run.run_id, SUPERLINK_NODE_ID, 1
    grid = InMemoryGrid(factory)
    grid.set_run(run)
    yield state, grid, nodes
    flower_fixes.restore()


def _push(grid, nodes, rng, count):
    messages = [Message(RecordDict({"config": ConfigRecord({"i": i})}), dst_node_id=rng.choice(nodes),
                        message_type="train") for i in range(count)]
    return list(grid.push_messages(messages))


def _drain(state, nodes, rng):
    """Sweep the nodes in random order, as the runtime's extractor does, until nothing is left."""
    got = []
    while True:
        batch = []
        for node in rng.sample(nodes, len(nodes)):
            limit = rng.choice([None, 1, 2])
            batch += [(node, m.metadata.message_id) for m in state.get_message_ins(node_id=node, limit=limit)]
        if not batch:
            return got
        got += batch


@pytest.mark.parametrize("indexed", [False, True])
def test_indexed_state_delivers_what_flowers_scan_delivers(state_and_grid, indexed):
    """Same messages, per node in push order, each once; with the index, messages stored before it too."""
    state, grid, nodes = state_and_grid
    rng = random.Random(3)
    before = _push(grid, nodes, rng, 40)
    if indexed:
        flower_fixes.index_message_ins()
    after = _push(grid, nodes, rng, 60)
    delivered = _drain(state, nodes, rng)
    ids = [m for _, m in delivered]
    assert sorted(ids) == sorted(before + after) and len(set(ids)) == len(ids)
    order = {m: i for i, m in enumerate(before + after)}
    for node in nodes:
        mine = [m for n, m in delivered if n == node]
        assert all(state.message_ins_store[m].metadata.dst_node_id == node for m in mine)
        assert mine == sorted(mine, key=order.get)
        assert all(state.message_ins_store[m].metadata.delivered_at for m in mine)


def test_indexed_state_forgets_deleted_and_expired_messages(state_and_grid):
    state, grid, nodes = state_and_grid
    flower_fixes.index_message_ins()
    node = nodes[0]
    first, second = (Message(RecordDict(), dst_node_id=node, message_type="train") for _ in range(2))
    grid.push_messages([first])
    state.delete_messages({first.metadata.message_id})
    second.metadata.ttl = 0.05
    grid.push_messages([second])
    time.sleep(0.1)
    assert state.get_message_ins(node_id=node, limit=None) == []
    assert node not in state._fedsim_ins_by_node
    with pytest.raises(AssertionError):
        state.get_message_ins(node_id=node, limit=0)


def test_apply_only_on_the_simulation_grid(state_and_grid, monkeypatch):
    _, grid, _ = state_and_grid
    assert not flower_fixes.apply(object())
    monkeypatch.setenv("FEDSIM_FLOWER_FIXES", "0")
    assert not flower_fixes.apply(grid)
    monkeypatch.setenv("FEDSIM_FLOWER_FIXES", "1")
    assert flower_fixes.apply(grid)


# -- polling for replies -------------------------------------------------------------------------------
class _SlowGrid(InMemoryGrid):
    """An in-memory grid whose replies appear after a delay (answered by a fake client)."""

    def __init__(self, delays: dict[int, float]) -> None:
        self.delays, self.pushed, self.pulls = delays, {}, 0

    def push_messages(self, messages):
        now = time.monotonic()
        ids = []
        for i, m in enumerate(messages):
            self.pushed[str(i)] = (now + self.delays[m.metadata.dst_node_id], m)
            ids.append(str(i))
        return ids

    def pull_messages(self, message_ids):
        self.pulls += 1
        now = time.monotonic()
        out = []
        for mid in list(message_ids):
            due, m = self.pushed[mid]
            if due <= now and mid != "gone":
                reply = Message(RecordDict({"metrics": MetricRecord({"x": 1.0})}), reply_to=m)
                reply.metadata.__dict__["_reply_to_message_id"] = mid
                out.append(reply)
                self.pushed[mid] = (float("inf"), m)
        return out


def test_metered_grid_polls_until_all_replies_or_timeout():
    grid = MeteredGrid(_SlowGrid({1: 0.0, 2: 0.03, 3: 10.0}))
    msgs = [Message(RecordDict({"config": ConfigRecord({"k": 1})}), dst_node_id=n, message_type="train")
            for n in (1, 2, 3)]
    start = time.monotonic()
    replies = list(grid.send_and_receive(msgs, timeout=0.3))
    took = time.monotonic() - start
    assert len(replies) == 2 and 0.3 <= took < 0.6
    assert grid.take_counts()["messages-up"] == 2
    start = time.monotonic()
    replies = list(grid.send_and_receive(msgs[:2], timeout=None))
    assert len(replies) == 2 and time.monotonic() - start < 0.2  # seen within a few ms, not a 0.1-s poll


# -- partition fast path -------------------------------------------------------------------------------
@pytest.mark.parametrize("partitioning", ["rotation", "label-swap", "label-skew", "one-class"])
def test_client_data_equals_the_dataset_path(partitioning):
    config = RunConfig.from_mapping({"partitioning": partitioning})
    key = tuple(getattr(config, k) for k in federation.DATA_KEYS)
    partitioner = federation._partitioner(key, 12)
    for pid in (0, 5, 11):
        data = federation.load_client_data(config, pid, 12)
        table = partitioner.load_partition(pid).with_format("numpy")[:]
        x, y = np.asarray(table["image"], np.float32), np.asarray(table["label"], np.int64)
        order = np.random.default_rng([config.seed, 3, pid]).permutation(len(x))
        n_test = max(1, int(round(config.test_fraction * len(x))))
        np.testing.assert_array_equal(data.x_test.numpy(), x[order[:n_test]])
        np.testing.assert_array_equal(data.y_train.numpy(), y[order[n_test:]])


# -- the staged app folder -------------------------------------------------------------------------------
def test_staged_app_builds_the_fab_flower_builds_from_the_checkout(tmp_path):
    """Same FAB bytes, without walking .venv/ and results/ (a symbolic link stays out, as Flower leaves it)."""
    from pathlib import Path

    from flwr.cli.build import build_fab_from_disk

    from fedsim.cli import stage_app

    repo = Path(__file__).resolve().parents[1]
    app = tmp_path / "app"
    for name in ("pyproject.toml", ".gitignore", "README.md"):
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_bytes((repo / name).read_bytes())
    for folder in ("fedsim", "strategies", "clients"):
        for source in (repo / folder).rglob("*.py"):
            target = app / source.relative_to(repo)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    for junk in (".venv/lib/site.py", "results/run/rounds.jsonl", "experiments/x/__pycache__/a.json"):
        (app / junk).parent.mkdir(parents=True, exist_ok=True)
        (app / junk).write_text("{}")
    (app / "experiments" / "x" / "kept.json").write_text("{}")
    (app / "clients" / "linked.py").symlink_to(app / "clients" / "__init__.py")
    staged = stage_app(app, tmp_path / "staged")
    assert (staged / "experiments" / "x" / "kept.json").exists() and not (staged / ".venv").exists()
    assert not (staged / "clients" / "linked.py").exists()
    assert build_fab_from_disk(staged) == build_fab_from_disk(app)
