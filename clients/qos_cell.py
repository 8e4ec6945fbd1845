"""Client role of a cell (base station) predicting its QoS distribution one hour ahead (paper 000).

It does what :class:`clients.local_train.LocalTrainRole` does with the full
model (FedAvg pre-training of the global model, the Global and Local baselines),
plus the BCD phase, where the base is frozen and only cluster heads move:

- ``train`` with config ``phase = "head"``: the message carries the head of the
  cell's cluster (and, the first time, the frozen base, which the cell keeps in
  its node state). Paper mode: ``local-epochs`` of Adam (``lr``, ``batch-size``)
  on the head over cached penultimate features. Theory mode (``update =
  "gradients"``): the message carries every head and the cell returns the
  gradient of its loss at each, and its smoothness constant
  ``L_i = 2 lambda_max(Phi_i^T Phi_i) / (n_i m)``.
- ``query.losses``: the cell's training loss under every head; with its
  assignment row ``a-row``, the consistency coupling ``coupling = 2 lam (D A)_i``
  and the step ``eta``, also its Block-2 row update ``z_i = a_i - eta (l_i + coupling)``.
- ``evaluate``: test MSE (standardised), MAE of the predicted mean and standard
  deviation per KPI and the marginal Gaussian NLL per KPI and in total, in the
  modelling domain (log latency, log jitter, RSRP in dBm).
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

from clients.local_train import LocalTrainRole
from fedsim import protocol
from fedsim.data.federation import ClientData
from fedsim.data.qos import FEATURES, HORIZON_WINDOWS, KPIS, WINDOW_S, Federation, decode_gaussian, load_federation

BASE = "base"
"""RecordDict entry (and node-state entry) of the frozen base."""
PHASE = "phase"
HEAD_KEYS = ("head.weight", "head.bias")


def split_base_head(state: ArrayRecord) -> tuple[ArrayRecord, ArrayRecord]:
    """Split a full QosMLP ArrayRecord into (base incl. buffers, head)."""
    base, head = ArrayRecord(), ArrayRecord()
    for name, array in state.items():
        (head if name in HEAD_KEYS else base)[name] = array
    return base, head


class QosCellRole(LocalTrainRole):
    """A cell: full-model training for pre-training and baselines, head training and row updates for BCD."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self._features: dict[tuple, torch.Tensor] = {}

    # -- data --------------------------------------------------------------------------
    def federation(self, num_partitions: int) -> Federation:
        """All cells of this run (generated or read from CSVs), cached per process."""
        cfg = self.config
        csv_dir = cfg.data_dir if cfg.dataset == "qos-csv" else ""
        return load_federation(num_partitions, cfg.qos_days, cfg.qos_samples_per_window, cfg.seed, cfg.qos_drift,
                               cfg.qos_noise_scale, csv_dir, cfg.qos_radio_map, cfg.qos_regimes)

    def data(self, context: Context) -> ClientData:
        """Train and test tensors of this cell (inputs raw; the model standardises)."""
        return _cell_tensors(self, *protocol.partition_of(context))

    def describe(self, context: Context) -> dict:
        """Latent regime (for ARI), moments for standardisation, the training-period Gaussian N_i."""
        pid, n = protocol.partition_of(context)
        fed = self.federation(n)
        cell = fed.cells[pid]
        train = cell.split == "train"
        x, y = cell.x[train], cell.y[train]
        if not train.any() or not (np.all(np.isfinite(fed.means[pid])) and np.all(np.isfinite(fed.covs[pid]))):
            raise ValueError(f"cell {pid + 1} has no usable QoS samples in its training period; it sits this run out")
        return {
            protocol.TRUE_CLUSTER: int(fed.regimes[pid]), protocol.NUM_EXAMPLES: int(train.sum()),
            "qos-count": int(train.sum()), "qos-x-sum": x.sum(0).tolist(), "qos-x-sumsq": (x**2).sum(0).tolist(),
            "qos-y-sum": y.sum(0).tolist(), "qos-y-sumsq": (y**2).sum(0).tolist(),
            "qos-mean": fed.means[pid].tolist(), "qos-cov": fed.covs[pid].ravel().tolist(),
            "qos-windows-dropped": cell.windows_dropped,
        }

    # -- the frozen base -------------------------------------------------------------
    def base_from(self, msg: Message, context: Context) -> ArrayRecord:
        """The base in the message (kept in the node state) or, later, the kept one."""
        if BASE in msg.content.array_records:
            context.state[BASE] = msg.content[BASE]
        if BASE not in context.state:
            raise ValueError("no frozen base: the first BCD message to a cell must carry it")
        return context.state[BASE]

    def head_model(self, base: ArrayRecord, head: ArrayRecord) -> torch.nn.Module:
        """The process's model object holding base + head."""
        full = ArrayRecord()
        for name, array in list(base.items()) + list(head.items()):
            full[name] = array
        return self.model_from(full)

    def features(self, context: Context, base: ArrayRecord) -> torch.Tensor:
        """Penultimate features of all this cell's inputs under ``base`` (cached per base).

        The base is frozen during BCD, so each cell computes its features once
        (dropout off) and every head step is a cheap linear least-squares step.
        """
        fingerprint = hashlib.sha1(b"".join(bytes(a.data) for a in base.values())).hexdigest()
        pid, n = protocol.partition_of(context)
        key = (pid, n, fingerprint)
        if key not in self._features:
            if len(self._features) > 64:
                self._features.clear()
            model = self.task.build_model()
            model.load_state_dict(base.to_torch_state_dict(), strict=False)
            model.eval()
            with torch.no_grad():
                self._features[key] = model.features(_all_rows(self, pid, n)[0])
        return self._features[key]

    def rows(self, context: Context, config) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the training and test rows: the chronological split, or the online clock's.

        With ``time-h`` t in the config (online BCD), a cell trains on the samples
        whose input window began in the last ``qos-history-h`` hours and whose
        one-hour-ahead target is already known at t, and is tested on the samples
        of the next hour (inputs in [t, t + 1 h)).
        """
        pid, n = protocol.partition_of(context)
        cell = self.federation(n).cells[pid]
        if "time-h" not in config:
            return np.flatnonzero(cell.split == "train"), np.flatnonzero(cell.split == "test")
        t = float(config["time-h"])
        start_h = (cell.target_window - HORIZON_WINDOWS) * WINDOW_S / 3600.0
        known_h = (cell.target_window + 1) * WINDOW_S / 3600.0
        train = np.flatnonzero((start_h >= t - self.config.qos_history_h) & (known_h <= t))
        test = np.flatnonzero((start_h >= t) & (start_h < t + 1.0))
        if len(train) == 0 or len(test) == 0:
            raise ValueError(f"no {'training' if len(train) == 0 else 'test'} samples at t = {t:.2f} h "
                             f"(the data covers {cell.x.shape[0]} samples up to {start_h.max() + 1:.1f} h)")
        return train, test

    def current_gaussian(self, context: Context, config) -> dict:
        """Online: the Gaussian of the cell's latest window before the clock (its N_i now)."""
        if "time-h" not in config:
            return {}
        pid, n = protocol.partition_of(context)
        cell = self.federation(n).cells[pid]
        start_h = (cell.target_window - HORIZON_WINDOWS) * WINDOW_S / 3600.0
        latest = np.flatnonzero(start_h < float(config["time-h"]))
        mu, chol = decode_gaussian(cell.x[latest[np.argmax(start_h[latest])], len(FEATURES):])
        return {"qos-mean-now": mu.tolist(), "qos-cov-now": (chol @ chol.T).ravel().tolist()}

    def head_training_data(self, msg: Message, context: Context, config) -> tuple[ArrayRecord, torch.Tensor,
                                                                                  torch.Tensor]:
        """The frozen base, and the features and raw targets of the current training rows."""
        base = self.base_from(msg, context)
        train_rows, _ = self.rows(context, config)
        y_all = _all_rows(self, *protocol.partition_of(context))[1]
        return base, self.features(context, base)[train_rows], y_all[train_rows]

    # -- messages -----------------------------------------------------------------------
    def train(self, msg: Message, context: Context) -> Message:
        """Full-model training, or (``phase = "head"``) head training / head gradients."""
        config = msg.content[protocol.CONFIG]
        if config.get(PHASE, "full") != "head":
            return super().train(msg, context)
        base, phi, y_train = self.head_training_data(msg, context, config)
        if config.get(protocol.UPDATE) == "gradients":
            model = self.head_model(base, protocol.unpack_models(msg.content)[0])
            return self._head_gradients(msg, phi, model.standardise_targets(y_train))
        model = self.head_model(base, msg.content[protocol.ARRAYS])
        target = model.standardise_targets(y_train)
        head = model.head
        loss = self.run_epochs(head.parameters(), torch.optim.Adam, len(phi), int(config[protocol.SERVER_ROUND]),
                               protocol.partition_of(context)[0], lambda idx: (head(phi[idx]) - target[idx]) ** 2)
        reply = RecordDict({
            protocol.ARRAYS: ArrayRecord({k: v for k, v in model.state_dict().items() if k in HEAD_KEYS}),
            protocol.METRICS: MetricRecord({protocol.TRAIN_LOSS: loss, protocol.NUM_EXAMPLES: len(phi)}),
        })
        return Message(reply, reply_to=msg)

    def _head_gradients(self, msg: Message, phi: torch.Tensor, target: torch.Tensor) -> Message:
        """Theory mode: gradient of the cell's loss at every head, and the cell's smoothness constant."""
        heads = protocol.unpack_models(msg.content)
        grads = ArrayRecord()
        losses = []
        for j, head in enumerate(heads):
            w = torch.tensor(head["head.weight"].numpy(), requires_grad=True)
            b = torch.tensor(head["head.bias"].numpy(), requires_grad=True)
            loss = ((phi @ w.T + b - target) ** 2).mean()
            gw, gb = torch.autograd.grad(loss, (w, b))
            grads[f"c{j}/head.weight"], grads[f"c{j}/head.bias"] = Array(gw.numpy()), Array(gb.numpy())
            losses.append(loss.item())
        aug = torch.cat([phi, torch.ones(len(phi), 1)], 1).double()
        lipschitz = 2 * torch.linalg.eigvalsh(aug.T @ aug)[-1].item() / (len(phi) * target.shape[1])
        metrics = MetricRecord({"mean-head-loss": float(np.mean(losses)), "lipschitz": lipschitz,
                                protocol.NUM_EXAMPLES: len(phi)})
        return Message(RecordDict({protocol.ARRAYS: grads, protocol.METRICS: metrics}), reply_to=msg)

    @torch.no_grad()
    def losses(self, msg: Message, context: Context) -> Message:
        """Loss under every head; with ``a-row``, ``coupling`` and ``eta`` also the Block-2 row update z_i."""
        config = msg.content.config_records.get(protocol.CONFIG, {})
        if config.get(PHASE, "full") != "head":
            return super().losses(msg, context)
        base, phi, y_train = self.head_training_data(msg, context, config)
        values = []
        for head in protocol.unpack_models(msg.content):
            model = self.head_model(base, head)
            values.append(float(((model.head(phi) - model.standardise_targets(y_train)) ** 2).mean()))
        metrics = {protocol.LOSSES: values, protocol.NUM_EXAMPLES: len(phi), **self.current_gaussian(context, config)}
        if "a-row" in config:
            a = np.asarray(config["a-row"], float)
            z = a - float(config["eta"]) * (np.asarray(values) + np.asarray(config["coupling"], float))
            metrics["z"] = z.tolist()
        return Message(RecordDict({protocol.METRICS: MetricRecord(metrics)}), reply_to=msg)

    @torch.no_grad()
    def evaluate(self, msg: Message, context: Context) -> Message:
        """Test metrics of the model this cell uses (cluster head on the base, global, or personal)."""
        config = msg.content[protocol.CONFIG]
        if config.get(PHASE, "full") == "head":
            model = self.head_model(self.base_from(msg, context), msg.content[protocol.ARRAYS])
        else:
            model = self.model_from(self.arrays_for(msg, context))
        model.eval()
        pid, n = protocol.partition_of(context)
        cell = self.federation(n).cells[pid]
        _, test = self.rows(context, config)
        x_all, y_all = _all_rows(self, pid, n)
        x_test, y_test = x_all[test], y_all[test]
        prediction = model.predict(x_test).double().numpy()
        metrics = qos_metrics(prediction, y_test.double().numpy(), cell.window_q[cell.target_window[test]])
        metrics["eval-loss"] = float(((model(x_test) - model.standardise_targets(y_test)) ** 2).mean())
        metrics[protocol.NUM_EXAMPLES] = len(prediction)
        return Message(RecordDict({protocol.METRICS: MetricRecord(metrics)}), reply_to=msg)


def qos_metrics(prediction: np.ndarray, target: np.ndarray, realised: np.ndarray) -> dict[str, float]:
    """MAE of mean and standard deviation per KPI, and marginal Gaussian NLL per KPI and in total.

    MAEs are given in the modelling domain (``mae-mean-latency``: log ms) and in
    physical units (``mae-mean-latency-phys``: ms, via the lognormal moments).

    Parameters
    ----------
    prediction, target : ndarray of shape (n, 9)
        Predicted and true ``[mu, log-diagonal Cholesky]`` of the target window.
    realised : ndarray of shape (n, samples, 3)
        The realised QoS of each sample's target window (NaN-padded); the NLL
        averages over them.
    """
    mu, chol = decode_gaussian(prediction)
    mu_t, chol_t = decode_gaussian(target)
    sd = np.sqrt(np.einsum("nij,nij->ni", chol, chol))
    sd_t = np.sqrt(np.einsum("nij,nij->ni", chol_t, chol_t))
    nll = 0.5 * np.log(2 * math.pi * sd[:, None, :] ** 2) + (realised - mu[:, None, :]) ** 2 / (2 * sd[:, None, :] ** 2)
    nll_k = np.nanmean(np.nanmean(nll, axis=1), axis=0)
    out = {}
    for k, kpi in enumerate(KPIS):
        out[f"mae-mean-{kpi}"] = float(np.mean(np.abs(mu[:, k] - mu_t[:, k])))
        out[f"mae-sd-{kpi}"] = float(np.mean(np.abs(sd[:, k] - sd_t[:, k])))
        out[f"nll-{kpi}"] = float(nll_k[k])
        # physical units: latency and jitter are lognormal (ms), RSRP Gaussian (dBm)
        (pm, ps), (pm_t, ps_t) = physical(mu[:, k], sd[:, k], kpi), physical(mu_t[:, k], sd_t[:, k], kpi)
        out[f"mae-mean-{kpi}-phys"] = float(np.mean(np.abs(pm - pm_t)))
        out[f"mae-sd-{kpi}-phys"] = float(np.mean(np.abs(ps - ps_t)))
    out["nll-total"] = float(np.sum(nll_k))
    return out


def physical(mu: np.ndarray, sd: np.ndarray, kpi: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation in physical units: lognormal for latency and jitter, as is for RSRP."""
    if kpi == "rsrp":
        return mu, sd
    mean = np.exp(mu + sd**2 / 2)
    return mean, mean * np.sqrt(np.expm1(sd**2))


@lru_cache(maxsize=4096)
def _all_rows(role: QosCellRole, pid: int, num_partitions: int) -> tuple[torch.Tensor, torch.Tensor]:
    cell = role.federation(num_partitions).cells[pid]
    return torch.as_tensor(cell.x, dtype=torch.float32), torch.as_tensor(cell.y, dtype=torch.float32)


@lru_cache(maxsize=4096)
def _cell_tensors(role: QosCellRole, pid: int, num_partitions: int) -> ClientData:
    fed = role.federation(num_partitions)
    cell = fed.cells[pid]
    x, y = _all_rows(role, pid, num_partitions)
    train, test = torch.as_tensor(cell.split == "train"), torch.as_tensor(cell.split == "test")
    return ClientData(x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test],
                      cluster=int(fed.regimes[pid]))
