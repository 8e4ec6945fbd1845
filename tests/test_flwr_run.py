"""Real ``flwr run`` simulations (Ray backend) through a private local SuperLink."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.cli import main

ROOT = Path(__file__).resolve().parents[1]
FEDSIM = [sys.executable, "-m", "fedsim.cli"]


@pytest.mark.slow
def test_flwr_run_matches_the_loopback_run_bitwise(flower, tmp_path, loopback):
    keys = {"num-server-rounds": 3, "fraction-train": 0.5, "seed": 3}
    overrides = " ".join(f"{k}={v}" for k, v in keys.items())
    proc = subprocess.run(
        [*FEDSIM, "run", str(ROOT), "-n", "6", "-c", overrides, "-c", f"results-dir='{tmp_path}' run-name='smoke'"],
        env=flower, capture_output=True, text=True, timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "[fedsim] round 3/3" in log
    rounds = [json.loads(line) for line in (tmp_path / "smoke" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert (tmp_path / "smoke" / "curves.png").is_file()

    reference, _ = loopback(num_nodes=6, **{k.replace("-", "_"): v for k, v in keys.items()})
    for real, local in zip(rounds, reference["rounds"]):
        for key in ("eval-accuracy", "eval-loss", "train-loss", "bytes-up"):
            assert real[key] == local[key], key


@pytest.mark.slow
def test_flwr_run_of_bcd_qos(flower, tmp_path):
    overrides = ("strategy='bcd-qos' client-role='qos-cell' task='qos' dataset='vehicular-qos' "
                 "partitioning='cells' model='qos-mlp' num-clusters=12 qos-days=2 qos-samples-per-window=6 "
                 "bcd-pretrain-rounds=1 num-server-rounds=3")
    proc = subprocess.run(
        [*FEDSIM, "run", str(ROOT), "-n", "12", "-c", overrides, "-c", f"results-dir='{tmp_path}' run-name='bcd'"],
        env=flower, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    rounds = [json.loads(line) for line in (tmp_path / "bcd" / "rounds.jsonl").read_text().splitlines()]
    assert [("objective" in r) for r in rounds] == [False, True, True]
    assert sum(rounds[-1]["cluster-sizes"]) == 12


@pytest.mark.slow
def test_a_run_that_fails_inside_the_server_app_fails_the_command(flower, tmp_path):
    """`flwr run` exits 0 when the ServerApp fails; `fedsim run` asks the SuperLink and exits 1."""
    overrides = ("strategy='bcd-qos' client-role='qos-cell' task='qos' dataset='qos-csv' partitioning='cells' "
                 f"model='qos-mlp' num-clusters=2 data-clusters=2 data-dir='{tmp_path}' num-server-rounds=2")
    proc = subprocess.run([*FEDSIM, "run", str(ROOT), "-n", "2", "-c", overrides], env=flower, capture_output=True,
                          text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    assert "no client could start" in log and "no CSV files" in log
    assert "ended with status 'finished:failed'" in log


@pytest.mark.slow
def test_bad_config_reaching_the_server_app_stops_with_one_line(flower):
    """Bypassing `fedsim run`'s check, the ServerApp itself refuses the value before round 1."""
    proc = subprocess.run(
        ["flwr", "run", str(ROOT), "--stream", "--run-config", "strategy='fedavgg'",
         "--federation-config", "num-supernodes=2 client-resources-num-cpus=1"],
        env=flower, capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    log = proc.stdout + proc.stderr
    assert "invalid run config: strategy = 'fedavgg' is unknown (did you mean 'fedavg'?)" in log
    assert "round 1/" not in log


def test_fedsim_run_refuses_bad_input_before_starting_anything(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = [1, 2\n")
    cases = [
        (["-c", "strategy='fedavgg'"], "strategy = 'fedavgg' is unknown (did you mean 'fedavg'?)"),
        (["-c", "lrr=0.1"], "unknown run-config key 'lrr' (did you mean 'lr'?)"),
        (["-c", "dataset='mnist' data-dir='/no/such/folder'"], "data-dir '/no/such/folder' does not exist"),
        (["-p", str(bad)], "is not valid TOML"),
        (["-n", "3", "-c", "num-clusters=4"], "num-clusters = 4 is more than the 3 clients"),
    ]
    for args, message in cases:
        assert main(["run", str(ROOT), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err
