"""FedAvg, then deployment rounds in which clients adapt the global model on their devices.

The first ``deploy_after`` rounds are ordinary FedAvg rounds. Each later round
is a deployment round: the global model goes out in ``evaluate`` messages that
carry ``deploy-episode`` (1, 2, ...), and each client runs one on-device episode
with it (LightTune: predict, act, fine-tune on the delayed labels) and reports
its metrics. No ``train`` messages are sent then, unless ``send_back``: the
clients' adapted models then come back and FedAvg merges them (continual FL).
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedsim import protocol
from fedsim.config import RunConfig
from strategies.fedavg import FedAvg, flower_sampling_kwargs


class FedAvgThenDeploy(FedAvg):
    """FedAvg for ``deploy_after`` rounds, then one deployment episode per round.

    Parameters
    ----------
    deploy_after : int
        Training rounds before the first deployment round.
    send_back : bool
        In deployment rounds, also collect and average the clients' adapted models.
    **kwargs
        Passed to :class:`strategies.fedavg.FedAvg`.
    """

    def __init__(self, *, deploy_after: int, send_back: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.deploy_after, self.send_back = deploy_after, send_back

    def episode(self, server_round: int) -> int:
        """The deployment episode of a round (0 for a training round)."""
        return max(server_round - self.deploy_after, 0)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self.episode(server_round):
            if not self.send_back:
                return []
            config[protocol.DEPLOY_EPISODE] = self.episode(server_round)
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if self.episode(server_round):
            config[protocol.DEPLOY_EPISODE] = self.episode(server_round)
        return super().configure_evaluate(server_round, arrays, config, grid)


def build(config: RunConfig) -> FedAvgThenDeploy:
    """Build the strategy from a run configuration."""
    return FedAvgThenDeploy(deploy_after=config.deploy_after, send_back=config.lt_send_back, seed=config.seed,
                            **flower_sampling_kwargs(config))
