"""FedAvg, then deployment rounds in which clients adapt the global model on their devices.

The first ``deploy_after`` rounds are ordinary FedAvg rounds. Each later round
is a deployment round: the global model goes out in ``evaluate`` messages that
carry ``deploy-episode`` (1, 2, ...), and each client runs one on-device episode
with it (LightTune: predict, act, fine-tune on the delayed labels) and reports
its metrics. No ``train`` messages are sent then, unless ``send_back``: the
clients' adapted models then come back and FedAvg merges them (continual FL).

Before the first deployment round the strategy checks the trained model
against a trivial predictor when the clients report both (``eval-<metric>`` and
``eval-majority-<metric>``, lower is better; LightTune's BLER error): a model
that does not beat the majority class is deployed anyway, with a warning and a
``gate`` event in the round's record.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.supercore import log

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

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        metrics = super().aggregate_evaluate(server_round, replies)
        if server_round == self.deploy_after and metrics is not None:
            self.check_gate(metrics)
        return metrics

    def check_gate(self, metrics: MetricRecord, metric: str = "bler-error") -> None:
        """Warn (and record a ``gate`` event) if the trained model is no better than the majority class."""
        ours, trivial = metrics.get(f"eval-{metric}"), metrics.get(f"eval-majority-{metric}")
        if ours is None or trivial is None or ours < trivial:
            return
        reason = (f"the trained model does not beat the majority-class predictor ({metric} {ours:.4g} vs "
                  f"{trivial:.4g}); deploying it anyway")
        log(WARNING, "%s", reason)
        self.events.append({"event": "gate", "stage": "evaluate", "reason": reason})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if self.episode(server_round):
            config[protocol.DEPLOY_EPISODE] = self.episode(server_round)
        return super().configure_evaluate(server_round, arrays, config, grid)


def build(config: RunConfig) -> FedAvgThenDeploy:
    """Build the strategy from a run configuration."""
    return FedAvgThenDeploy(deploy_after=config.deploy_after, send_back=config.lt_send_back, seed=config.seed,
                            **flower_sampling_kwargs(config))
