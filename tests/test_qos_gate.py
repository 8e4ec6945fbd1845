"""The digest's sanity gate (Sec. 6.4) for the vehicular-QoS generator's default regime table."""

import pytest

from fedsim.data.qos import load_federation, sanity_gate


@pytest.fixture(scope="module", params=[0, 1, 2], ids=lambda s: f"seed{s}")
def gate(request):
    return sanity_gate(load_federation(12, 2, 40, request.param, False, 1.0, ""))


def test_regimes_are_apart_in_the_kernel(gate):
    assert gate["kernel-within"] > 0.9 and gate["kernel-across"] < 0.8


def test_pooling_a_regime_beats_per_cell_heads_on_the_spread(gate):
    for kpi in ("latency", "jitter", "rsrp"):
        assert gate[f"local/oracle sd-MAE {kpi}"] >= 1.05, kpi


def test_the_global_head_is_much_worse_than_regime_heads_on_the_mean(gate):
    for kpi in ("latency", "jitter"):
        assert gate[f"global/oracle mean-MAE {kpi}"] >= 1.5, kpi


def test_per_cell_heads_beat_the_global_head_on_the_mean(gate):
    for kpi in ("latency", "jitter"):
        assert gate[f"local/oracle mean-MAE {kpi}"] < gate[f"global/oracle mean-MAE {kpi}"], kpi
