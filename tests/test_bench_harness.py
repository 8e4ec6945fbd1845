"""``fedsim bench``: the table's arithmetic, its files, and the command line (no timings are asserted)."""

from __future__ import annotations

import json
import os

import pytest

from fedsim import cli
from fedsim.bench.harness import Measurement, markdown_table, rows, run_bench


def _measure(system, clients, times, stable_from=None):
    return Measurement(system, clients, round_times=list(times), stable_from=stable_from, time_to_round_1=9.0,
                       wall=30.0)


def test_rows_take_ratios_to_the_same_strategy_and_split_clove_at_stability():
    results = [
        _measure("plain-fedavg", 100, [5.0, 1.0, 1.0, 3.0]),            # median of rounds 2.. = 1
        _measure("plain-clove", 100, [5.0, 2.0, 2.0, 1.0, 1.0], stable_from=4),
        _measure("fedsim-fedavg", 100, [9.0, 2.0, 3.0, 2.0]),           # 2
        _measure("flower-fedavg", 100, [9.0, 4.0, 4.0, 4.0]),           # 4
        _measure("fedsim-clove", 100, [9.0, 3.0, 3.0, 1.5, 1.5, 1.5], stable_from=4),
    ]
    table = {r["system"]: r for r in rows(results)}
    assert table["fedsim-fedavg"]["per-round"] == 2.0 and table["fedsim-fedavg"]["vs-plain"] == 2.0
    assert table["flower-fedavg"]["vs-plain"] == 4.0 and table["flower-fedavg"]["vs-fedsim-fedavg"] is None
    before, after = table["fedsim-clove before stability"], table["fedsim-clove after stability"]
    assert before["per-round"] == 3.0 and before["vs-plain"] == 1.5 and before["vs-fedsim-fedavg"] == 1.5
    assert after["per-round"] == 1.5 and after["vs-plain"] == 1.5
    text = markdown_table(list(table.values()))
    assert text.count("\n") == len(table) + 1
    assert "| 100 | fedsim-clove before stability | 3.000 | 1.50 | 1.50 |" in text


def test_rows_without_stability_or_reference_leave_blanks():
    table = rows([_measure("fedsim-clove", 10, [1.0, 2.0, 2.0]), _measure("fedsim-ifca", 10, [1.0])])
    assert [r["system"] for r in table] == ["fedsim-clove", "fedsim-ifca"]
    assert table[0]["vs-plain"] is None and table[1]["per-round"] is None
    assert "|  |" in markdown_table(table)


def test_run_bench_plain_only_writes_jsonl_table_and_plot(tmp_path):
    table = run_bench(tmp_path, sizes=[6], rounds=2, systems=["plain"], overrides={"hidden-size": 16},
                      checkpointed=False)
    assert [r["system"] for r in table] == ["plain-fedavg", "plain-ifca", "plain-clove"]
    lines = [json.loads(line) for line in (tmp_path / "bench.jsonl").read_text().splitlines()]
    assert [len(line["round-times"]) for line in lines] == [2, 2, 2]
    assert all(line["final-accuracy"] is not None for line in lines)
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert "hidden-size" in (tmp_path / "table.md").read_text()


def test_bench_command_refuses_unknown_systems_and_keys(capsys, tmp_path):
    assert cli.main(["bench", "-o", str(tmp_path), "--systems", "plain", "spark"]) == 2
    assert "unknown system spark" in capsys.readouterr().err
    assert cli.main(["bench", "-o", str(tmp_path), "--systems", "plain", "-c", "hiden-size=3"]) == 2
    assert "hiden-size" in capsys.readouterr().err


@pytest.mark.parametrize("actors, nodes, expected", [(None, 4, os.cpu_count()), (None, 300, 2 * os.cpu_count()),
                                                     (3, 300, 3)])
def test_run_passes_the_actor_count_to_ray(monkeypatch, actors, nodes, expected):
    seen = {}

    def fake_stream(command, env, cwd):
        seen["command"] = command
        return 0, None

    monkeypatch.setattr(cli, "_stream", fake_stream)
    argv = ["run", "-n", str(nodes)] + (["--actors", str(actors)] if actors else [])
    assert cli.main(argv) == 0
    federation = seen["command"][seen["command"].index("--federation-config") + 1]
    assert federation == f"num-supernodes={nodes} client-resources-num-cpus=1 init-args-num-cpus={expected}"
