"""SPG-MIBO as a client-side bilevel trainer for joint localisation and sensing from CSI (paper 001, digest Sec. 10).

Each client holds the CSI of its own rooms (``partitioning = "rooms"``: client k has rooms k, k+K, ... of
``csi-rooms``, each its own environment: static multipath and interfered subcarriers) or of its own quarter
of one room (``zones``: label skew), from :func:`fedsim.data.csi.make_csi_dataset` (``csi-synthetic``) or
:func:`fedsim.data.csi_sionna.load_sionna_csi` (``csi-sionna``: ray-traced responses of one room, so rooms
differ only in their interfered subcarriers). Features are standardised
with the client's own training moments (local preprocessing: nothing about the data leaves the client);
positions are regressed in room-normalised coordinates ``(x / W, y / H)``.

Messages:

- ``train``: load the global model (a :class:`~fedsim.models.MIBOModel`: localisation net, sensing net,
  relaxed mask), run ``local-epochs`` of the ``mibo-method`` trainer on the local training split and reply
  with the new model. ``spg`` is :class:`~fedsim.spg_mibo.SPGMIBOTrainer` (Algorithm 1), ``penalty`` the same
  with the eq. (24) penalty on the mask instead of the prox (Penalty-MIBO), ``separate`` two
  :class:`~fedsim.spg_mibo.SingleTaskTrainer` s, each task with its own penalised mask (Loc-Only /
  Sen-Only). The cutting planes, their multipliers, the L1-band multipliers mu, the step counter t (one
  ``eta / sqrt(t)`` schedule across rounds) and the running stationarity sums stay in the node state and are
  never sent (``mibo-reset-cuts`` drops the cuts every round). The networks' optimiser is fresh every
  round, as for the other roles. With ``mibo-mask-aggregation = "local"`` the mask is personal: it is kept
  in the node state after the first round and left out of the reply. With the ``local-only`` strategy
  (``personal``) the whole model stays on the node.
- ``evaluate``: score the model with the binary feasible mask (digest A22) on the local test split:
  ``eval-loc-mse`` (normalised coordinates), ``eval-loc-error-m`` / ``eval-loc-median-m`` (metres),
  ``eval-sen-loss`` (cross-entropy or MSE), ``eval-accuracy`` (activity), ``eval-loss`` = the sum of the two
  task losses, ``eval-ifg`` (the relaxed mask's integrality gap), ``eval-selected`` and ``eval-precision``
  (share of the selected subcarriers that are informative in all of this client's rooms; ``eval-base-rate``
  is that share over all subcarriers).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

from fedsim import protocol
from fedsim.config import ConfigError, RunConfig
from fedsim.data.csi import CSIRoom, feature_moments, make_csi_dataset, standardise
from fedsim.data.csi_sionna import load_sionna_csi
from fedsim.registry import tasks
from fedsim.seeding import derive_seed
from fedsim.spg_mibo import (
    SingleTaskTrainer,
    SPGMIBOConfig,
    SPGMIBOTrainer,
    feasible_binary,
    integrality_gap,
    mask_budget,
)

N_ZONES = 4
STATE_KEY = "spg-mibo"
"""Node-state entry of the trainer's client-local pieces (cuts, multipliers, step counter)."""
PERSONAL_MASK_KEY = "spg-mibo-mask"
MASK_KEYS = ("mask", "mask_sen")


@dataclass(frozen=True)
class ClientCSI:
    """One client's CSI: standardised features, normalised positions, sensing targets, ground truth."""

    x_train: torch.Tensor
    pos_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    pos_test: torch.Tensor
    y_test: torch.Tensor
    informative: np.ndarray
    """Subcarriers (flattened links x subcarriers) informative in every room of this client."""
    room_size: np.ndarray
    rooms: tuple[int, ...]


def room(config: RunConfig) -> CSIRoom:
    """The room geometry of the run (digest Sec. 6.3) with the configured subcarriers and snapshots."""
    return CSIRoom(n_subcarriers=config.csi_subcarriers, n_snapshots=config.csi_snapshots)


def client_rooms(config: RunConfig, client: int, num_clients: int) -> tuple[int, ...]:
    """Rooms (environments) of a client: k, k+K, ... for ``rooms``; room 0 for ``zones``."""
    if config.partitioning == "zones":
        return (0,)
    num_rooms = config.csi_rooms or num_clients
    mine = tuple(range(client, num_rooms, num_clients))
    if not mine:
        raise ConfigError(f"csi-rooms = {num_rooms} leaves client {client} of {num_clients} without a room")
    return mine


def sensing_targets(dataset, sensing: str) -> np.ndarray:
    """The upper-level task's targets: activity classes, breathing rate (Hz) or the waveform."""
    if sensing == "activity":
        return dataset.activity.astype(np.int64)
    if sensing == "respiration-rate":
        return dataset.respiration_rate.astype(np.float32)[:, None]
    return dataset.waveform.astype(np.float32)


@lru_cache(maxsize=8)
def _client_csi(frozen: tuple, client: int, num_clients: int) -> ClientCSI:
    config = RunConfig.from_mapping(dict(frozen))
    geometry = room(config)
    parts, informative = [], None
    for index in client_rooms(config, client, num_clients):
        zones = (client % N_ZONES,) if config.partitioning == "zones" else None
        sample_seed = derive_seed(config.seed, client if zones else index, 708)
        make = load_sionna_csi if config.dataset == "csi-sionna" else make_csi_dataset
        data = make(n_samples=config.csi_samples_per_room, room=geometry,
                    env_seed=derive_seed(config.seed, index, 707), seed=sample_seed, zones=zones)
        parts.append(data)
        mask = data.informative.reshape(-1)
        informative = mask if informative is None else informative & mask
    features = np.concatenate([p.features for p in parts])
    position = np.concatenate([p.position for p in parts]) / np.array([geometry.width, geometry.height])
    target = np.concatenate([sensing_targets(p, config.mibo_sensing) for p in parts])
    order = np.random.default_rng(derive_seed(config.seed, client, 709)).permutation(len(features))
    n_test = max(1, int(round(config.test_fraction * len(order))))
    test, train = order[:n_test], order[n_test:]
    mean, std = feature_moments(features[train])
    x = torch.from_numpy(standardise(features, mean, std))
    pos = torch.from_numpy(position.astype(np.float32))
    y = torch.from_numpy(target)
    return ClientCSI(x[train], pos[train], y[train], x[test], pos[test], y[test], informative,
                     np.array([geometry.width, geometry.height]), client_rooms(config, client, num_clients))


def client_csi(config: RunConfig, client: int, num_clients: int) -> ClientCSI:
    """This client's data (cached per process)."""
    return _client_csi(tuple(sorted(config.to_dict().items())), client, num_clients)


def trainer_config(config: RunConfig, mask_update: str = "prox") -> SPGMIBOConfig:
    """The :class:`~fedsim.spg_mibo.SPGMIBOConfig` of the run's ``mibo-*`` keys."""
    return SPGMIBOConfig(
        profile=config.mibo_profile, eta=config.mibo_eta, eta_w=config.mibo_eta_w, theta_lr=config.lr,
        inner_steps=config.mibo_inner_steps, epsilon=config.mibo_epsilon, eta_mu=config.mibo_eta_mu,
        max_cuts=config.mibo_max_cuts, rho=config.mibo_rho, rho_delay_steps=config.mibo_rho_delay,
        rho_warmup_steps=config.mibo_rho_warmup, warm_start=config.mibo_warm_start, mask_update=mask_update,
        penalty_lambda=config.mibo_penalty, l1_projection=config.mibo_l1_projection,
        n_min=config.mibo_n_min or None, n_max=config.mibo_n_max or None,
        sensing_loss="ce" if config.mibo_sensing == "activity" else "mse", batch_size=config.batch_size)


def budget(config: RunConfig, d: int) -> tuple[int, int]:
    """``(N_min, N_max)`` of the run: the configured values or round(d/3), round(d/2)."""
    default_min, default_max = mask_budget(d)
    return config.mibo_n_min or default_min, config.mibo_n_max or default_max


# -- node state ---------------------------------------------------------------------------------------------------


def _to_record(state: dict[str, torch.Tensor | int | float]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.atleast_1d(np.asarray(v.numpy() if torch.is_tensor(v) else v)))
                        for k, v in state.items()})


def save_trainer_state(trainers: dict[str, object], context: Context, reset_cuts: bool) -> None:
    """Keep each trainer's client-local pieces: mu, t, running sums and (SPG-MIBO) the cut pool."""
    flat = {}
    for name, trainer in trainers.items():
        base = trainer._base_state()
        flat.update({f"{name}.mu": base["mu"], f"{name}.t": base["t"], f"{name}.sums": base["sums"]})
        if isinstance(trainer, SPGMIBOTrainer) and not reset_cuts:
            flat.update({f"{name}.cuts.{k}": v for k, v in trainer.cuts.state_dict().items()})
    context.state[STATE_KEY] = _to_record(flat)


def load_trainer_state(trainers: dict[str, object], context: Context) -> None:
    """Restore what :func:`save_trainer_state` kept (nothing on the first round)."""
    if STATE_KEY not in context.state:
        return
    record = {k: torch.from_numpy(a.numpy().copy()) for k, a in context.state[STATE_KEY].items()}
    for name, trainer in trainers.items():
        trainer.mu = record[f"{name}.mu"].double()
        trainer.t = int(record[f"{name}.t"][0])
        trainer._sums = record[f"{name}.sums"].double()
        cuts = {k.split(".cuts.", 1)[1]: v for k, v in record.items() if k.startswith(f"{name}.cuts.")}
        if cuts and isinstance(trainer, SPGMIBOTrainer):
            trainer.cuts.load_state_dict(cuts)


class SPGMIBORole:
    """Client role running SPG-MIBO (or a baseline) on the node's CSI (see the module docstring).

    Parameters
    ----------
    config : RunConfig
        The run configuration.
    """

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.task = tasks.get(config.task)(config)
        self._model = None

    def data(self, context: Context) -> ClientCSI:
        """This node's CSI."""
        return client_csi(self.config, *protocol.partition_of(context))

    def describe(self, context: Context) -> dict:
        """The client's first room (its 'true cluster') and training-set size."""
        data = self.data(context)
        return {protocol.TRUE_CLUSTER: data.rooms[0], protocol.NUM_EXAMPLES: len(data.x_train)}

    def model_from(self, msg: Message, context: Context) -> torch.nn.Module:
        """The model to train or score: the message's, the node's personal one (``local-only``), and the
        personal mask (``mibo-mask-aggregation = "local"``) once the node has one."""
        config = msg.content[protocol.CONFIG]
        arrays = msg.content.array_records.get(protocol.ARRAYS)
        if bool(config.get(protocol.PERSONAL, False)) and protocol.PERSONAL_MODEL in context.state:
            arrays = context.state[protocol.PERSONAL_MODEL]
        if arrays is None:
            raise ValueError(f"{msg.metadata.message_type} message carries no model and this node keeps none")
        if self._model is None:
            self._model = self.task.build_model()
        state = arrays.to_torch_state_dict()
        if self.config.mibo_mask_aggregation == "local" and PERSONAL_MASK_KEY in context.state:
            state.update(context.state[PERSONAL_MASK_KEY].to_torch_state_dict())
        self._model.load_state_dict(state, strict=True)
        return self._model

    def trainers(self, model) -> dict[str, object]:
        """The method's trainers over the model's networks, their masks set to the model's."""
        cfg = self.config
        links, subcarriers = model.input_shape[1], model.input_shape[2]
        if cfg.mibo_method == "separate":
            penalty = trainer_config(cfg, "penalty")
            loc = SingleTaskTrainer(model.loc, links, subcarriers, "loc", penalty, mask_update="penalty", seed=0)
            sen = SingleTaskTrainer(model.sen, links, subcarriers, "sen", penalty, mask_update="penalty", seed=0)
            loc.mask, sen.mask = model.mask, model.mask_sen
            return {"loc": loc, "sen": sen}
        joint = SPGMIBOTrainer(model.loc, model.sen, links, subcarriers,
                               trainer_config(cfg, "prox" if cfg.mibo_method == "spg" else "penalty"), seed=0)
        joint.mask = model.mask
        return {"joint": joint}

    def train(self, msg: Message, context: Context) -> Message:
        """Run ``local-epochs`` of the method on the local data; reply with the model and the training metrics."""
        cfg = self.config
        personal = bool(msg.content[protocol.CONFIG].get(protocol.PERSONAL, False))
        model = self.model_from(msg, context)
        data = self.data(context)
        pid, _ = protocol.partition_of(context)
        server_round = int(msg.content[protocol.CONFIG].get(protocol.SERVER_ROUND, 1))
        trainers = self.trainers(model)
        load_trainer_state(trainers, context)
        shuffle = derive_seed(cfg.seed, pid, server_round)
        metrics = self._fit(trainers, data, shuffle)
        with torch.no_grad():
            if "joint" in trainers:
                model.mask.copy_(trainers["joint"].mask)
            else:
                model.mask.copy_(trainers["loc"].mask)
                model.mask_sen.copy_(trainers["sen"].mask)
        save_trainer_state(trainers, context, cfg.mibo_reset_cuts)
        state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        if personal:
            context.state[protocol.PERSONAL_MODEL] = ArrayRecord(model.state_dict())
        if cfg.mibo_mask_aggregation == "local":
            context.state[PERSONAL_MASK_KEY] = ArrayRecord({k: model.state_dict()[k] for k in MASK_KEYS
                                                            if k in state})
            state = {k: v for k, v in state.items() if k not in MASK_KEYS}
        metrics[protocol.NUM_EXAMPLES] = len(data.x_train)
        if personal:  # local-only: the model stays here, only metrics travel
            return Message(RecordDict({protocol.METRICS: MetricRecord(metrics)}), reply_to=msg)
        reply = RecordDict({protocol.ARRAYS: ArrayRecord({k: Array(v) for k, v in state.items()}),
                            protocol.METRICS: MetricRecord(metrics)})
        return Message(reply, reply_to=msg)

    def _fit(self, trainers: dict[str, object], data: ClientCSI, shuffle: int) -> dict[str, float]:
        """Train and summarise the last epoch; ``train-loss`` is the sum of the two task losses."""
        epochs = self.config.local_epochs
        if "joint" in trainers:
            last = trainers["joint"].fit(data.x_train, data.pos_train, data.y_train, epochs, shuffle)[-1]
            metrics = {"loss-loc": last["loss_loc"], "loss-sen": last["loss_sen"], "J": last["J"],
                       "n-cuts": last["n_cuts"], "mu1": last["mu1"], "mu2": last["mu2"]}
        else:
            loc = trainers["loc"].fit(data.x_train, data.pos_train, epochs, shuffle)[-1]
            last = trainers["sen"].fit(data.x_train, data.y_train, epochs, shuffle)[-1]
            metrics = {"loss-loc": loc["loss_loc"], "loss-sen": last["loss_sen"]}
        metrics.update({protocol.TRAIN_LOSS: metrics["loss-loc"] + metrics["loss-sen"], "ifg": last["ifg"],
                        "mask-l1": last["mask_l1"], "step": float(last["t"]), "A-w": last["A_w"],
                        "A-u": last["A_u"], "A-v": last["A_v"]})
        return {k: float(v) for k, v in metrics.items()}

    @torch.no_grad()
    def evaluate(self, msg: Message, context: Context) -> Message:
        """Score the model with its binary feasible masks on the local test split (module docstring)."""
        model = self.model_from(msg, context)
        data = self.data(context)
        model.eval()
        metrics = score(model, data, self.config)
        metrics[protocol.NUM_EXAMPLES] = len(data.x_test)
        return Message(RecordDict({protocol.METRICS: MetricRecord(metrics)}), reply_to=msg)


@torch.no_grad()
def score(model, data: ClientCSI, config: RunConfig) -> dict[str, float]:
    """Test metrics of a :class:`~fedsim.models.MIBOModel` with the binary feasible masks (A22)."""
    from fedsim.spg_mibo import apply_mask

    _, links, subcarriers, _ = model.input_shape
    n_min, n_max = budget(config, links * subcarriers)
    loc_mask = feasible_binary(model.mask, n_min, n_max)
    sen_mask = feasible_binary(model.mask_sen, n_min, n_max) if hasattr(model, "mask_sen") else loc_mask
    position = model.loc(apply_mask(data.x_test, loc_mask, links, subcarriers))
    sensing = model.sen(apply_mask(data.x_test, sen_mask, links, subcarriers))
    loc_mse = float(((position - data.pos_test) ** 2).mean())
    error_m = torch.linalg.norm((position - data.pos_test) * torch.from_numpy(data.room_size).float(), dim=1)
    if config.mibo_sensing == "activity":
        sen_loss = float(torch.nn.functional.cross_entropy(sensing, data.y_test))
        extra = {"eval-accuracy": float((sensing.argmax(1) == data.y_test).float().mean())}
    else:
        sen_loss = float(((sensing - data.y_test) ** 2).mean())
        extra = {}
    selected = loc_mask.bool().numpy()
    return {"eval-loss": loc_mse + sen_loss, "eval-loc-mse": loc_mse, "eval-loc-error-m": float(error_m.mean()),
            "eval-loc-median-m": float(error_m.median()), "eval-sen-loss": sen_loss, **extra,
            "eval-ifg": integrality_gap(model.mask, n_min, n_max), "eval-selected": float(selected.sum()),
            "eval-precision": float(data.informative[selected].mean()) if selected.any() else 0.0,
            "eval-base-rate": float(data.informative.mean())}
