"""ServerApp: Flower's built-in FedAvg; the centralised-evaluation hook only timestamps the rounds."""

import json
import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedsim.models import MLP

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run FedAvg for ``num-server-rounds`` rounds over all nodes."""
    cfg = context.run_config
    torch.manual_seed(int(cfg["seed"]))
    model = MLP((1, 8, 8), int(cfg["hidden-size"]), 10)
    timing_file = str(cfg["timing-file"])

    def clock(server_round: int, arrays: ArrayRecord) -> None:
        """Called before round 1 (round 0) and after every round: one JSON line per call."""
        if timing_file:
            with open(timing_file, "a") as f:
                f.write(json.dumps({"round": server_round, "time": time.monotonic(), "wall": time.time()}) + "\n")

    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=2)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                   num_rounds=int(cfg["num-server-rounds"]), train_config=ConfigRecord({"lr": float(cfg["lr"])}),
                   evaluate_fn=clock)
