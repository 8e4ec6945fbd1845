from pathlib import Path

from fedsim.suite import load_suite, run_metrics, run_suite

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_suites_load_and_validate():
    for path in (ROOT / "experiments").glob("*/suite.toml"):
        suite = load_suite(path)
        assert suite.settings and suite.seeds


def test_run_metrics():
    rounds = [{"round": r, "ari": a, "eval-accuracy": 0.1 * r, "round-time": 1.0} for r, a in
              enumerate([0.2, 0.95, 0.8] + [1.0] * 8, 1)]
    m = run_metrics(rounds)
    assert m["final"] == 1.1 and m["final-ari"] == 1.0 and m["ari@10"] == 1.0 and m["first-ari>=0.9"] == 2
    assert run_metrics([{"round": 1, "eval-loss": 1.0, "round-time": 1.0}])["first-ari>=0.9"] is None


def test_tiny_suite_end_to_end(tmp_path):
    suite_file = tmp_path / "suite.toml"
    suite_file.write_text('''
name = "tiny"
seeds = [0]
strategies = ["clove", "fedavg"]
[defaults]
num-server-rounds = 2
[[setting]]
name = "rot"
title = "rotated digits"
nodes = 8
config = { samples-per-client = 40 }
paper.clove = { final = "99.9" }
''')
    out = tmp_path / "out"
    text = run_suite(load_suite(suite_file), out, workers=1)
    assert (out / "rot" / "clove-s0" / "rounds.jsonl").is_file()
    assert (out / "rot.png").is_file() and (out / "report.md").read_text() == text
    row = next(line for line in text.splitlines() if line.startswith("| clove"))
    assert "99.9" in row
    # finished runs are kept: a second call runs nothing and writes the same table
    assert run_suite(load_suite(suite_file), out, workers=1).split("Wall time")[0] == text.split("Wall time")[0]


def test_suite_command_runs_only_the_named_settings(tmp_path, capsys):
    from fedsim.cli import main

    suite_file = tmp_path / "suite.toml"
    suite_file.write_text('''
name = "two"
seeds = [0]
strategies = ["fedavg"]
[defaults]
num-server-rounds = 1
[[setting]]
name = "a"
nodes = 2
config = { samples-per-client = 20, partitioning = "iid" }
[[setting]]
name = "b"
nodes = 2
config = { samples-per-client = 20, partitioning = "iid" }
''')
    assert main(["suite", str(suite_file), "-o", str(tmp_path / "out"), "-w", "1", "--settings", "b"]) == 0
    assert (tmp_path / "out" / "b" / "fedavg-s0").is_dir() and not (tmp_path / "out" / "a").exists()
    assert main(["suite", str(suite_file), "--settings", "c"]) != 0
    assert "has no setting c; it has a, b" in capsys.readouterr().err
