"""Per-round wall time of FedAvg, IFCA and CLoVE (before and after stability) under real `flwr run`.

Runs `fedsim run` (Ray simulation, 2 ClientApp actors on 2 cores) for each strategy and client count on
the default rotated-digits task, then reads the run folders. "Before stability" averages CLoVE's rounds
2.. up to the round where clustering stopped; "after" averages the rounds after it. Round 1 (actor
start-up, imports) is left out of every average.

    python experiments/clove/round_times.py --nodes 20 200 --rounds 12
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

APP = Path(__file__).resolve().parents[2]


def rounds_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--out", default=str(APP / "results" / "round-times"))
    args = parser.parse_args()
    out = Path(args.out)
    rows = []
    for nodes in args.nodes:
        for strategy in ("fedavg", "ifca", "clove"):
            name = f"{strategy}-n{nodes}"
            run_dir = out / name
            if not (run_dir / "summary.json").is_file():
                subprocess.run([sys.executable, "-m", "fedsim.cli", "run", str(APP), "-n", str(nodes), "-c",
                                f"strategy='{strategy}' num-server-rounds={args.rounds} results-dir='{out}' "
                                f"run-name='{name}'"], check=True, stdout=subprocess.DEVNULL)
            rounds = rounds_of(run_dir)
            summary = json.loads((run_dir / "summary.json").read_text())
            stable = next((r["round"] for r in rounds if r.get("stable") == 1), None)
            later = rounds[1:]
            before = [r["round-time"] for r in later if stable is None or r["round"] <= stable]
            after = [r["round-time"] for r in later if stable is not None and r["round"] > stable]
            rows.append((nodes, strategy, np.mean(before), np.mean(after) if after else float("nan"), stable,
                         summary["time-to-round-1"], summary["time-total"]))
    print("| clients | strategy | s/round (before stability) | s/round (after) | stable in round | "
          "time to round 1 (s) | ServerApp total (s) |")
    print("|---|---|---|---|---|---|---|")
    for nodes, strategy, before, after, stable, first, total in rows:
        after_text = "-" if np.isnan(after) else f"{after:.2f}"
        print(f"| {nodes} | {strategy} | {before:.2f} | {after_text} | {stable or '-'} | {first:.1f} | {total:.1f} |")


if __name__ == "__main__":
    main()
