"""BCD joint cell clustering + last-layer QoS aggregation (paper 000, Algorithm 1).

Cells are the clients. Rounds ``1..P`` (``pretrain_rounds``) train the global
QoS-distribution MLP with FedAvg on all cells (sample-weighted). From round
``P + 1`` on, its base is frozen and shared, every one of the ``C_max``
columns of the assignment matrix A gets a copy of its last layer, and each
round is one BCD iteration:

- Block 1 (``train``). Paper mode: each cell takes local Adam steps on the
  head of its hard cluster ``argmax_c a_ic``; the server averages uniformly per
  cluster (eq. 10); an empty cluster keeps its head. Theory mode: each cell
  returns its loss gradient at every head and its smoothness constant L_i; the
  server steps ``theta_c -= sum_i a_ic g_ic / L_c`` with ``L_c = sum_i a_ic L_i``
  (an exact gradient step of F in Theta).
- Block 2 (before ``evaluate``). Each cell gets every head, its row of A, its
  consistency coupling ``2 lam (D A)_i`` and the step eta, and returns its row
  update ``z_i = a_i - eta (l_i + 2 lam (D A)_i)``; the server stacks Z and
  applies SVT with ``tau = beta * eta`` then a row-wise simplex projection
  (paper), or the exact prox of ``tau ||.||_* + simplex`` (theory). Hard
  clusters are the row argmax; the number of clusters is the number of
  non-empty ones.

D is the graph Laplacian of the Bhattacharyya (Hellinger) kernel between the
cells' training-period QoS Gaussians, which each cell reports once (9 numbers).
Choices where the paper is silent follow the digest (000-bcd-qos.md, Sec. 4.5
and 9): A0 one-hot with labels drawn from 6 random columns of C_max = 12, Theta0
= the global head in every column, Adam (lr 1e-3, batch 32, E epochs, fresh
state per round) on cached penultimate features in paper mode, tau = beta * eta.
Metrics per BCD round: the objective F(A_k, Theta_k) (paper eq. 7), number and
sizes of clusters, ARI against the latent regimes, mean row maximum and entropy
of A (near-uniform rows warn of the degenerate stationary point).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore import log

from clients.qos_cell import BASE, PHASE, split_base_head
from fedsim import bcd, protocol
from fedsim.clustering import ari
from fedsim.config import RunConfig
from fedsim.seeding import model_seed
from strategies.base import arrays_of, metrics_of, unweighted_means
from strategies.clustered import join_models, split_models
from strategies.fedavg import FedAvg


def pack(base: ArrayRecord, heads: list[ArrayRecord]) -> ArrayRecord:
    """Base (``base/<name>``) and heads (``c<j>/<name>``) in one ArrayRecord."""
    out = join_models(heads)
    for name, array in base.items():
        out[f"{BASE}/{name}"] = array
    return out


def unpack(packed: ArrayRecord) -> tuple[ArrayRecord, list[ArrayRecord]]:
    """Inverse of :func:`pack`."""
    base, heads = ArrayRecord(), ArrayRecord()
    for key, array in packed.items():
        if key.startswith(f"{BASE}/"):
            base[key[len(BASE) + 1:]] = array
        else:
            heads[key] = array
    return base, split_models(heads)


class BcdQoS(FedAvg):
    """FedAvg pre-training (fedsim's :class:`~strategies.fedavg.FedAvg`), then BCD over (A, cluster heads).

    Parameters
    ----------
    num_columns : int
        C_max, the columns of A (the paper: the number of cells).
    pretrain_rounds : int
        FedAvg rounds of the global model before BCD.
    mode : {"paper", "theory"}
        See the module docstring.
    lam, beta : float
        Weights of the consistency term and of the nuclear norm.
    eta : float
        Assignment step size (1 / L_A).
    initial_clusters : int
        Clusters of the random one-hot A0.
    seed : int
        Seed of the initial model and of A0.
    min_available_nodes : int
        Cells to wait for before round 1.
    """

    def __init__(self, num_columns: int, *, pretrain_rounds: int, mode: str = "paper", lam: float = 0.0005,
                 beta: float = 0.03, eta: float = 80.0, initial_clusters: int = 6, seed: int = 0,
                 min_available_nodes: int = 2, online: bool = False, offline_iterations: int = 10,
                 online_start_h: float = 48.0, freeze_after: int = 0) -> None:
        super().__init__(seed=seed, fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=1,
                         min_evaluate_nodes=1, min_available_nodes=min_available_nodes)
        if mode not in ("paper", "theory"):
            raise ValueError(f"mode must be 'paper' or 'theory', not '{mode}'")
        self.num_columns = num_columns
        self.pretrain_rounds = pretrain_rounds
        self.mode = mode
        self.lam, self.beta, self.eta = lam, beta, eta
        self.initial_clusters = initial_clusters
        self.online, self.offline_iterations, self.online_start_h = online, offline_iterations, online_start_h
        self.freeze_after = freeze_after
        self.a: np.ndarray | None = None
        self.d: np.ndarray | None = None
        self.cells: list[int] = []
        self.base = ArrayRecord()
        self.heads: list[ArrayRecord] = []
        self.global_head = ArrayRecord()
        self._has_base: set[int] = set()
        self._round_metrics: dict = {}

    # -- set-up -------------------------------------------------------------------------
    def initial_arrays(self, task) -> ArrayRecord:
        """The global model, standardised with the cells' pooled moments."""
        return ArrayRecord(task.init_model(model_seed(self.seed)).state_dict())

    def summary(self) -> None:
        """Log the configuration."""
        log(INFO, "\tBCD-QoS: %s mode, C_max=%s, %s pre-training rounds, lambda=%s beta=%s eta=%s", self.mode,
            self.num_columns, self.pretrain_rounds, self.lam, self.beta, self.eta)

    def _start_bcd(self, arrays: ArrayRecord) -> None:
        self.base, head = split_base_head(arrays)
        self.global_head = head
        self.heads = [head] * self.num_columns
        self.cells = sorted(self.partition_of, key=self.partition_of.get)
        means = np.array([self.node_info[n]["qos-mean"] for n in self.cells], float)
        covs = np.array([self.node_info[n]["qos-cov"] for n in self.cells], float).reshape(-1, 3, 3)
        self.d = bcd.laplacian(bcd.bhattacharyya_kernel(means, covs))
        self.a = bcd.initial_assignment(len(self.cells), self.num_columns, self.initial_clusters, self.seed)

    def clock(self, server_round: int) -> float | None:
        """Online protocol: the time (hours) of this round's update period; None before the clock starts."""
        iteration = server_round - self.pretrain_rounds
        if not self.online or iteration <= self.offline_iterations:
            return None
        return self.online_start_h + 0.25 * (iteration - self.offline_iterations - 1)

    def _bcd_config(self, server_round: int, config: ConfigRecord) -> ConfigRecord:
        config[PHASE] = "head"
        t = self.clock(server_round)
        if t is not None:
            config["time-h"] = t
        return config

    def _labels(self) -> dict[int, int]:
        return dict(zip(self.cells, bcd.hard_clusters(self.a).tolist()))

    def _content(self, node: int, records: dict, config: ConfigRecord) -> RecordDict:
        content = RecordDict(dict(records))
        content[protocol.CONFIG] = config
        if node not in self._has_base:
            content[BASE] = self.base
        return content

    # -- Block 1 ------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Pre-training: FedAvg's messages. BCD: each cell's head (paper) or every head (theory)."""
        self._round_metrics = {}
        if server_round <= self.pretrain_rounds:
            return super().configure_train(server_round, arrays, config, grid)
        nodes = self.sample_nodes(grid, server_round, self.fraction_train, self.min_train_nodes, "train")
        config[protocol.SERVER_ROUND] = server_round
        if self.a is None:
            self._start_bcd(arrays)
        else:
            self.base, self.heads = unpack(arrays)
        config = self._bcd_config(server_round, config)
        labels = self._labels()
        messages = []
        for node in nodes:
            if self.mode == "theory":
                cfg = ConfigRecord(dict(config))
                cfg[protocol.UPDATE] = "gradients"
                records = dict(protocol.pack_models(self.heads))
            else:
                cfg = config
                records = {protocol.ARRAYS: self.heads[labels[node]]}
            messages.append(Message(self._content(node, records, cfg), dst_node_id=node,
                                    message_type=MessageType.TRAIN))
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg while pre-training; then uniform per-cluster means (paper) or the exact step (theory)."""
        if server_round <= self.pretrain_rounds:
            return super().aggregate_train(server_round, replies)
        if self.mode == "theory":
            expected = join_models(self.heads)
            valid = self.screen(replies, "train", expect_arrays=expected, metric_keys=("lipschitz",))
            self._has_base.update(m.metadata.src_node_id for m in valid)
            self._theory_step(valid)
        else:
            valid = self.screen(replies, "train", expect_arrays=self.heads[0])
            self._has_base.update(m.metadata.src_node_id for m in valid)
            labels = self._labels()
            for c in range(self.num_columns):
                group = [arrays_of(m.content) for m in valid if labels[m.metadata.src_node_id] == c]
                if group:  # eq. (10): the uniform mean over the cluster's cells
                    self.heads[c] = ArrayRecord({name: Array(np.mean([g[name].numpy() for g in group], axis=0))
                                                 for name in group[0].keys()})
        metrics = aggregate_metricrecords([m.content for m in valid], self.weighted_by_key) if valid else {}
        return pack(self.base, self.heads), MetricRecord(_drop_weight(metrics, "lipschitz"))

    def _theory_step(self, valid: list[Message]) -> None:
        row = {n: i for i, n in enumerate(self.cells)}
        for c in range(self.num_columns):
            weights = [self.a[row[m.metadata.src_node_id], c] for m in valid]
            lipschitz = sum(w * metrics_of(m.content)["lipschitz"] for w, m in zip(weights, valid))
            if lipschitz <= 0:
                continue
            new = ArrayRecord()
            for name, array in self.heads[c].items():
                grad = sum(w * arrays_of(m.content)[f"c{c}/{name}"].numpy() for w, m in zip(weights, valid))
                new[name] = Array((array.numpy() - grad / lipschitz).astype(array.numpy().dtype))
            self.heads[c] = new

    # -- Block 2 and evaluation ------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """BCD rounds: the assignment step first; then every cell is evaluated with its cluster's head."""
        if server_round <= self.pretrain_rounds:
            return super().configure_evaluate(server_round, arrays, config, grid)
        nodes = self.sample_nodes(grid, server_round, self.fraction_evaluate, self.min_evaluate_nodes, "evaluate")
        config[protocol.SERVER_ROUND] = server_round
        self.base, self.heads = unpack(arrays)
        config = self._bcd_config(server_round, config)
        frozen = 0 < self.freeze_after < server_round - self.pretrain_rounds
        self._assignment_step(grid, config, update=not frozen)
        labels = self._labels()
        return [Message(self._content(n, {protocol.ARRAYS: self.heads[labels[n]]}, config), dst_node_id=n,
                        message_type=MessageType.EVALUATE) for n in nodes if n in labels]

    def _assignment_step(self, grid: Grid, config: ConfigRecord, update: bool = True) -> None:
        """Block 2: collect every cell's row update and apply the server's step (``update=False``: keep A)."""
        coupling = 2 * self.lam * self.d @ self.a
        heads = protocol.pack_models(self.heads)
        messages = []
        for i, node in enumerate(self.cells):
            cfg = ConfigRecord(dict(config))
            cfg.update({"a-row": self.a[i].tolist(), "coupling": coupling[i].tolist(), "eta": self.eta})
            messages.append(Message(self._content(node, dict(heads), cfg), dst_node_id=node,
                                    message_type=protocol.QUERY_LOSSES))
        replies = self.screen(grid.send_and_receive(messages), "losses", metric_keys=(protocol.LOSSES, "z"))
        self._has_base.update(m.metadata.src_node_id for m in replies)
        by_node = {m.metadata.src_node_id: metrics_of(m.content) for m in replies}
        z = self.a.copy()  # a cell that did not answer keeps its row
        losses = np.zeros_like(self.a)
        for i, node in enumerate(self.cells):
            if node in by_node and len(by_node[node]["z"]) == self.num_columns:
                z[i] = by_node[node]["z"]
                losses[i] = by_node[node][protocol.LOSSES]
        if update:
            self.a = bcd.assignment_step(z, self.beta, self.eta, self.mode)
        if "time-h" in config and all("qos-mean-now" in by_node.get(n, {}) for n in self.cells):
            means = np.array([by_node[n]["qos-mean-now"] for n in self.cells], float)
            covs = np.array([by_node[n]["qos-cov-now"] for n in self.cells], float).reshape(-1, 3, 3)
            self.d = bcd.laplacian(bcd.bhattacharyya_kernel(means, covs))  # D follows the cells' current QoS
        labels = bcd.hard_clusters(self.a)
        sizes = bcd.cluster_sizes(labels, self.num_columns)
        truth = np.array([self.true_cluster(n) for n in self.cells])
        metrics = {
            "objective": bcd.objective(self.a, losses, self.d, self.lam, self.beta),
            "num-clusters": int(np.count_nonzero(sizes)),
            "cluster-sizes": sorted((int(s) for s in sizes if s), reverse=True),
            "cell-clusters": labels.tolist(),
            "row-max-mean": float(self.a.max(1).mean()),
            "row-entropy-mean": float(bcd.row_entropy(self.a).mean()),
        }
        score = ari(truth, labels)
        if score is not None:
            metrics["ari"] = score
        if "time-h" in config:
            metrics["time-h"] = float(config["time-h"])
        if metrics["row-max-mean"] < 2.0 / self.num_columns:
            log(WARNING, "BCD: assignment rows are near uniform (mean max %.3f): the degenerate stationary point "
                "attracts; lower bcd-lambda / bcd-beta or raise bcd-eta", metrics["row-max-mean"])
        self._round_metrics = metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Unweighted mean over cells of every test metric, plus this round's BCD metrics."""
        valid = self.screen(replies, "evaluate")
        if not valid:
            return MetricRecord(self._round_metrics) if self._round_metrics else None
        out = unweighted_means(valid, self.weighted_by_key)
        out.update(self._round_metrics)
        return MetricRecord(out)


def _drop_weight(metrics, *extra: str) -> dict:
    return {k: v for k, v in dict(metrics).items() if k not in (protocol.NUM_EXAMPLES, *extra)}


def build(config: RunConfig) -> BcdQoS:
    """Build BCD-QoS from a run configuration (``num-clusters`` is C_max)."""
    return BcdQoS(config.num_clusters, pretrain_rounds=config.bcd_pretrain_rounds, mode=config.bcd_mode,
                  lam=config.bcd_lambda, beta=config.bcd_beta, eta=config.bcd_eta,
                  initial_clusters=config.bcd_initial_clusters, seed=config.seed,
                  min_available_nodes=config.min_available_nodes, online=config.qos_online,
                  offline_iterations=config.bcd_offline_iterations, online_start_h=config.qos_online_start_h,
                  freeze_after=config.bcd_freeze_after)
