"""LightTune (paper 003): a UE that adapts the federated BLER predictor online, forward-only.

Two phases, driven by the server (``strategies/deployment.py``):

1. **Offline, federated** (``train`` messages of the first ``deploy-after``
   rounds): every UE trains the forward-forward MLP of
   :mod:`fedsim.forward_forward` on its offline link-adaptation periods (FF local
   losses, Adam, one fresh uniform negative per sample) and FedAvg averages them.
   ``evaluate`` reports the offline class accuracy and BLER error beside the
   majority-class predictor's (the digest's learnability gate).
2. **Deployment** (``evaluate`` messages with ``deploy-episode``): the UE meets
   its own channel (``la-ues``) at one SNR point per round and runs episodes of
   ``la-periods`` CSI-RS periods on identical channels (common random numbers):

   - the prediction stream (``la-prediction-stream``): each predictor of
     ``lt-variants`` predicts every period's BLER and learns from the delayed
     label without changing the decisions: ``frozen`` (the global model),
     ``one-step``, ``adam``, ``sgd`` (LightTune, Alg. 1) and ``backprop`` (the
     same triggers, autograd through all layers). The default stream,
     ``explore``, transmits (rank, CQI) randomised around the table choice as
     the offline data does; under ``olla`` decisions our per-CQI OLLA keeps the
     short-term BLER near 0 (mean 0.03-0.07 measured), so predicting 0 is
     nearly always right and the error says little about the model;
   - plain OLLA, CQI-Tune and RI-CQI-Tune (Algs. 3-4, the last two driven by
     the ``lt-variant`` tuner), for the throughput comparison.

   What a UE fine-tunes stays in its node state (``lt-reset = "never"`` carries
   it across episodes; ``"episode"``, the digest's A12 choice, restarts from the
   global model at every episode while the counters still accumulate) and is
   sent back only with ``lt-send-back`` (continual FL).

Bad input (a NaN feature, a label outside [0, 1], layers that do not fit the
features) raises a ``ValueError`` naming it: that UE's reply becomes an error
reply, which the strategy drops with a warning while the other UEs go on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedsim import protocol
from fedsim.config import ConfigError, RunConfig
from fedsim.forward_forward import (
    AdamState,
    FFSpec,
    adam_update,
    check_params,
    class_scores,
    encode,
    local_gradients,
    one_step_update,
    predict_index,
    sgd_update,
    train_offline,
)
from fedsim.seeding import derive_seed

VARIANTS = ("frozen", "one-step", "adam", "sgd", "backprop")
DEPLOY_EPISODE = "deploy-episode"
"""ConfigRecord key of a deployment round: the 1-based episode index."""
TUNER_STATE = "lighttune-"
"""Prefix of the node-state records of the tuners (``lighttune-<variant>``)."""


@dataclass(frozen=True)
class TuneSettings:
    """How a UE fine-tunes (Alg. 1).

    Parameters
    ----------
    variant : str
        ``one-step`` (Adam restarted at every trigger: a sign-like step, the
        paper's best), ``adam`` (standard Adam; t_A counts executed updates),
        ``sgd`` (the optimiser of Theorem 1), ``backprop`` (baseline: Adam on
        the sum of the layer losses with gradients through all layers, autograd),
        ``frozen`` (no fine-tuning).
    sampling : str
        ``uniform`` negative label over the wrong classes, or ``hard``: the
        current wrong prediction.
    delta : float
        Fine-tune only when the error of the delayed label reaches ``delta``.
    lr : float
        Online learning rate alpha_f.
    layers : str
        ``all`` layers, or only the ``last`` (Theorem 1's scope).
    """

    variant: str = "one-step"
    sampling: str = "uniform"
    delta: float = 0.3
    lr: float = 0.03
    layers: str = "all"


class LightTuner:
    """A BLER predictor that fine-tunes itself on delayed labels (the environment's ``Predictor``).

    Parameters
    ----------
    spec : FFSpec
        The model's architecture and loss.
    thetas : list of ndarray
        Layer parameters; updated in place.
    x_mean, x_std : ndarray
        Feature standardisation, frozen on the device (fitted on the federation's
        offline data, digest Sec. 5.2).
    settings : TuneSettings
        Variant, sampling, threshold, step size.
    rng : numpy.random.Generator
        Draws the uniform negatives.
    """

    def __init__(self, spec: FFSpec, thetas: list[np.ndarray], x_mean: np.ndarray, x_std: np.ndarray,
                 settings: TuneSettings, rng: np.random.Generator) -> None:
        check_params(spec, thetas)
        if settings.variant not in VARIANTS:
            raise ValueError(f"lt variant '{settings.variant}' is not one of {', '.join(VARIANTS)}")
        self.spec, self.thetas, self.settings, self.rng = spec, thetas, settings, rng
        self.x_mean, self.x_std = np.asarray(x_mean, float), np.asarray(x_std, float)
        self.adam = AdamState.zeros(thetas)
        self.periods = 0
        self.triggers = 0
        self._torch_opt = None

    def scaled(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, float))
        if x.shape[1] != self.spec.num_features or not np.all(np.isfinite(x)):
            raise ValueError(f"features must be {self.spec.num_features} finite numbers, got {x[0].tolist()}")
        return (x - self.x_mean) / self.x_std

    def predict(self, x: np.ndarray) -> float:
        """Predicted BLER class value of one feature vector (Alg. 2)."""
        return float(self.spec.classes[predict_index(self.spec, self.thetas, self.scaled(x))[0]])

    def observe(self, x: np.ndarray, p_bler: float) -> None:
        """The delayed label of the period whose (final) features were ``x``: maybe one LightTune step."""
        if not 0.0 <= p_bler <= 1.0:
            raise ValueError(f"BLER label {p_bler!r} is outside [0, 1]")
        xs = self.scaled(x)
        predicted = int(predict_index(self.spec, self.thetas, xs)[0])
        self.periods += 1
        if self.settings.variant == "frozen" or abs(self.spec.classes[predicted] - p_bler) < self.settings.delta:
            return
        positive = int(self.spec.class_index(p_bler))
        if self.settings.sampling == "hard":
            negative = predicted  # never the positive: the error is >= delta > the class spacing (digest A11)
        else:
            negative = (positive + int(self.rng.integers(1, self.spec.num_classes))) % self.spec.num_classes
        z_pos, z_neg = encode(self.spec, xs, [positive]), encode(self.spec, xs, [negative])
        self.update(z_pos, z_neg)
        self.triggers += 1

    def update(self, z_pos: np.ndarray, z_neg: np.ndarray) -> None:
        """One fine-tuning step on one positive and one negative input."""
        s = self.settings
        if s.variant == "backprop":
            self._backprop_step(z_pos, z_neg)
            return
        grads = local_gradients(self.spec, self.thetas, z_pos, z_neg, s.layers)
        if s.variant == "adam":
            adam_update(self.thetas, grads, self.adam, s.lr)
        elif s.variant == "one-step":
            one_step_update(self.thetas, grads, s.lr)
        else:
            sgd_update(self.thetas, grads, s.lr)

    def _backprop_step(self, z_pos: np.ndarray, z_neg: np.ndarray) -> None:
        """Baseline: Adam on the sum of the layers' losses, gradients through every layer (autograd)."""
        if self._torch_opt is None:  # tensors sharing memory with self.thetas: the optimiser updates them in place
            self._torch_params = [torch.from_numpy(t).requires_grad_() for t in self.thetas]
            self._torch_opt = torch.optim.Adam(self._torch_params, lr=self.settings.lr)
        loss = sum(backprop_loss(self.spec, self._torch_params, torch.from_numpy(z), positive)
                   for z, positive in ((z_pos, True), (z_neg, False)))
        self._torch_opt.zero_grad()
        loss.backward()
        self._torch_opt.step()

    # -- node state ------------------------------------------------------------
    def state_record(self) -> tuple[ArrayRecord, MetricRecord]:
        """Parameters and Adam moments (arrays) and counters (metrics), for ``context.state``."""
        arrays = {f"theta-{i}": t for i, t in enumerate(self.thetas)}
        arrays.update({f"m-{i}": m for i, m in enumerate(self.adam.m)})
        arrays.update({f"v-{i}": v for i, v in enumerate(self.adam.v)})
        counters = {"adam-t": self.adam.t, "periods": self.periods, "triggers": self.triggers}
        return ArrayRecord({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}), \
            MetricRecord(counters)

    def load_state(self, arrays: ArrayRecord | None, counters: MetricRecord, parameters: bool) -> None:
        """Restore counters, and (``parameters``) the adapted layers and moments."""
        self.periods, self.triggers = int(counters["periods"]), int(counters["triggers"])
        if parameters and arrays is not None:
            state = arrays.to_torch_state_dict()
            for i in range(len(self.thetas)):
                self.thetas[i][...] = state[f"theta-{i}"].numpy()
                self.adam.m[i][...] = state[f"m-{i}"].numpy()
                self.adam.v[i][...] = state[f"v-{i}"].numpy()
            self.adam.t = int(counters["adam-t"])


def backprop_loss(spec: FFSpec, params: list[torch.Tensor], z: torch.Tensor, positive: bool) -> torch.Tensor:
    """Sum of the layers' quadratic FF losses with inputs NOT detached (autograd through every layer)."""
    h, total = z, 0.0
    sign = -1.0 if positive else 1.0
    for index, theta in enumerate(params):
        if spec.layer_norm and (index > 0 or spec.input_norm):
            h = h / (h.norm(dim=1, keepdim=True) + 1e-4)
        h = torch.relu(torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], 1) @ theta.T)
        g = (h**2).mean(1) if spec.goodness == "mean" else h**2
        t = spec.threshold
        total = total + ((g - t) ** 2 + sign * 4 * (g - t)).mean()
    return total


def ff_spec(config: RunConfig, num_features: int) -> FFSpec:
    """The FF model of a run configuration."""
    return FFSpec(num_features, hidden=tuple(int(v) for v in config.ff_hidden.split(",")),
                  threshold=config.ff_threshold, goodness=config.ff_goodness, layer_norm=config.ff_layer_norm,
                  goodness_layers=config.ff_goodness_layers, label_encoding=config.ff_label_encoding)


def offline_metrics(spec: FFSpec, thetas: list[np.ndarray], x: np.ndarray, p_bler: np.ndarray,
                    train_labels: np.ndarray) -> dict[str, float]:
    """Class accuracy and mean BLER error of the model and of the majority-class predictor.

    ``separation`` is Pr[G(x, y+) > G(x, y-)] over the wrong classes (0.5: the model does not tell
    labels apart; 0: every class gets the same goodness).
    """
    scores = class_scores(spec, thetas, x)
    pred = scores.argmax(axis=1)  # predict_index, from the scores computed once
    label = spec.class_index(p_bler)
    classes = np.asarray(spec.classes)
    majority = np.bincount(train_labels, minlength=spec.num_classes).argmax()
    rows = np.arange(len(x))
    wrong = np.ones_like(scores, bool)
    wrong[rows, label] = False
    separation = float((scores[rows, label][:, None] > scores)[wrong].mean())
    return {"accuracy": float((pred == label).mean()), "bler-error": float(np.abs(classes[pred] - p_bler).mean()),
            "majority-accuracy": float((label == majority).mean()),
            "majority-bler-error": float(np.abs(classes[majority] - p_bler).mean()), "separation": separation}


def simulation(config: RunConfig):
    """The link simulator's settings of a run: the BLER curves of ``la-bler-curves``."""
    from fedsim.data.link_env import SimulationConfig
    from fedsim.data.nr_tables import DEFAULT_BLER_TABLE, LogisticBler, default_bler_model

    if config.la_bler_curves == "closed-form":
        return SimulationConfig(bler_model=LogisticBler(2))
    if config.la_bler_curves == "sionna" and not DEFAULT_BLER_TABLE.is_file():
        raise ValueError(f"la-bler-curves = 'sionna' but {DEFAULT_BLER_TABLE} is missing: make it with "
                         "python datasets/sionna_bler_curves.py")
    return SimulationConfig(bler_model=default_bler_model(2))


@lru_cache(maxsize=256)  # one entry per (run, UE) served by this process: a loopback grid serves them all
def offline_data(config: RunConfig, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
    """This UE's offline periods (features, realised BLER), generated once per process."""
    from fedsim.data.link_env import ChannelConfig, training_data

    if config.la_train_on == "deployment":
        channel = deployment_channel(config, partition_id)
    else:
        channel = ChannelConfig.parse(config.la_train_channel, config.la_train_doppler_hz,
                                      config.la_train_correlation, config.la_csi_period_ms)
    return training_data(channel, (config.la_train_snr_min_db, config.la_train_snr_max_db), config.la_train_periods,
                         derive_seed(config.seed, partition_id, 77), sim=simulation(config))


def deployment_channel(config: RunConfig, partition_id: int):
    """The channel UE ``partition_id`` is deployed on (``la-ues`` entries, cycled)."""
    from fedsim.data.link_env import ChannelConfig

    entries = [e.strip() for e in config.la_ues.split(",")]
    name, doppler, correlation = parse_ue(entries[partition_id % len(entries)])
    return ChannelConfig.parse(name, doppler, correlation, config.la_csi_period_ms)


def parse_ue(entry: str) -> tuple[str, float, str]:
    """``"TDL-B100@50/medium"`` -> ("TDL-B100", 50.0, "medium"); the correlation defaults to low."""
    try:
        name, rest = entry.split("@")
        doppler, _, correlation = rest.partition("/")
        return name, float(doppler), correlation or "low"
    except ValueError as err:
        raise ValueError(f"la-ues entry '{entry}' is not <TDL-name>@<doppler Hz>[/<correlation>]") from err


def check_offline_data(x: np.ndarray, p_bler: np.ndarray) -> None:
    """A clear error for a NaN feature or a BLER label outside [0, 1]."""
    bad_x = np.flatnonzero(~np.all(np.isfinite(x), axis=1))
    if bad_x.size:
        raise ValueError(f"offline period {bad_x[0]} has a non-finite feature ({bad_x.size} such periods)")
    bad_y = np.flatnonzero(~((p_bler >= 0) & (p_bler <= 1)))
    if bad_y.size:
        raise ValueError(f"offline period {bad_y[0]} has BLER label {p_bler[bad_y[0]]!r} outside [0, 1]")


def names(text: str) -> list[str]:
    """The non-empty entries of a comma-separated run-config value."""
    return [v.strip() for v in text.split(",") if v.strip()]


def check_run_config(config: RunConfig) -> None:
    """Raise :class:`~fedsim.config.ConfigError` naming a malformed LightTune / link-adaptation key."""
    from fedsim.data.link_env import ChannelConfig

    def floats(key: str, text: str) -> list[float]:
        try:
            return [float(v) for v in text.split(",")]
        except ValueError:
            raise ConfigError(f"{key} = '{text}' is not a comma-separated list of numbers") from None

    try:
        ChannelConfig.parse(config.la_train_channel, config.la_train_doppler_hz, config.la_train_correlation,
                            config.la_csi_period_ms)
        for entry in config.la_ues.split(","):
            name, doppler, correlation = parse_ue(entry.strip())
            ChannelConfig.parse(name, doppler, correlation, config.la_csi_period_ms)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    floats("la-test-snr-db", config.la_test_snr_db)
    try:
        simulation(config)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if any(v <= 0 for v in floats("ff-hidden", config.ff_hidden)):
        raise ConfigError(f"ff-hidden = '{config.ff_hidden}' must list positive layer widths")
    if config.la_train_snr_min_db > config.la_train_snr_max_db:
        raise ConfigError("la-train-snr-min-db is above la-train-snr-max-db")
    for key, text, allowed in (("lt-variants", config.lt_variants, VARIANTS),
                               ("la-link-policies", config.la_link_policies, ("cqi-tune", "ri-cqi-tune"))):
        for name in names(text):
            if name not in allowed:
                raise ConfigError(f"{key} entry '{name}' is unknown; allowed: {', '.join(allowed)}")


class LightTuneRole:
    """Client role of a UE: federated offline FF training, then on-device LightTune episodes.

    Parameters
    ----------
    config : RunConfig
        The run configuration.
    """

    OFFLINE_TEST_FRACTION = 0.2

    def __init__(self, config: RunConfig) -> None:
        from fedsim.data.link_env import FEATURE_NAMES

        self.config = config
        self.spec = ff_spec(config, len(FEATURE_NAMES))

    # -- data and model ----------------------------------------------------------
    def offline(self, context: Context) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x_train, bler_train, x_test, bler_test): the last 20 % of the UE's offline periods are its test set."""
        x, p = offline_data(self.config, protocol.partition_of(context)[0])
        check_offline_data(x, p)
        cut = int(round(len(x) * (1 - self.OFFLINE_TEST_FRACTION)))
        return x[:cut], p[:cut], x[cut:], p[cut:]

    def unpack(self, arrays: ArrayRecord) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Layers (float64 copies), feature mean and std of a model record."""
        state = arrays.to_torch_state_dict()
        thetas = [state[f"layers.{i}"].double().numpy().copy() for i in range(len(self.spec.hidden))]
        check_params(self.spec, thetas)
        return thetas, state["x_mean"].double().numpy(), state["x_std"].double().numpy()

    @staticmethod
    def pack(thetas: list[np.ndarray], x_mean: np.ndarray, x_std: np.ndarray) -> ArrayRecord:
        """A model record in :class:`~fedsim.models.FFModel`'s state-dict order (buffers, then layers)."""
        record = {"x_mean": torch.from_numpy(x_mean), "x_std": torch.from_numpy(x_std)}
        record.update({f"layers.{i}": torch.from_numpy(t) for i, t in enumerate(thetas)})
        return ArrayRecord(record)

    # -- message handlers --------------------------------------------------------
    def describe(self, context: Context) -> dict:
        """Deployment channel index (the UE's 'true cluster'), data size and feature moments."""
        x, _, _, _ = self.offline(context)
        pid = protocol.partition_of(context)[0]
        return {protocol.TRUE_CLUSTER: pid % len(self.config.la_ues.split(",")), protocol.NUM_EXAMPLES: len(x),
                "la-count": len(x), "la-x-sum": x.sum(0).tolist(), "la-x-sumsq": (x**2).sum(0).tolist()}

    def train(self, msg: Message, context: Context) -> Message:
        """Offline FF training on the UE's periods, or (deployment, ``lt-send-back``) the adapted model."""
        cfg, config = self.config, msg.content[protocol.CONFIG]
        thetas, x_mean, x_std = self.unpack(msg.content[protocol.ARRAYS])
        if protocol.DEPLOY_EPISODE in config:
            key = TUNER_STATE + cfg.lt_variant
            if key in context.state:
                thetas = [context.state[key].to_torch_state_dict()[f"theta-{i}"].numpy().copy()
                          for i in range(len(thetas))]
            metrics = MetricRecord({protocol.NUM_EXAMPLES: cfg.la_periods})
        else:
            x, p, _, _ = self.offline(context)
            pid = protocol.partition_of(context)[0]
            rng = np.random.default_rng(derive_seed(cfg.seed, pid, int(config[protocol.SERVER_ROUND])))
            loss = train_offline(self.spec, thetas, (x - x_mean) / x_std, self.spec.class_index(p), cfg.local_epochs,
                                 cfg.batch_size, cfg.lr, rng)
            metrics = MetricRecord({protocol.TRAIN_LOSS: loss, protocol.NUM_EXAMPLES: len(x)})
        reply = RecordDict({protocol.ARRAYS: self.pack(thetas, x_mean, x_std), protocol.METRICS: metrics})
        return Message(reply, reply_to=msg)

    def evaluate(self, msg: Message, context: Context) -> Message:
        """Offline accuracy (training rounds) or one on-device deployment episode."""
        config: ConfigRecord = msg.content[protocol.CONFIG]
        thetas, x_mean, x_std = self.unpack(msg.content[protocol.ARRAYS])
        if protocol.DEPLOY_EPISODE in config:
            metrics = self.deploy(int(config[protocol.DEPLOY_EPISODE]), thetas, x_mean, x_std, context)
        else:
            _, p_train, x_test, p_test = self.offline(context)
            scores = offline_metrics(self.spec, thetas, (x_test - x_mean) / x_std, p_test,
                                     self.spec.class_index(p_train))
            metrics = {f"eval-{k}": v for k, v in scores.items()}
            metrics[protocol.NUM_EXAMPLES] = len(x_test)
        return Message(RecordDict({protocol.METRICS: MetricRecord(metrics)}), reply_to=msg)

    def deploy(self, episode: int, thetas: list[np.ndarray], x_mean: np.ndarray, x_std: np.ndarray,
               context: Context) -> dict:
        """Run episode ``episode`` of this UE on identical channels under every arm; return its metrics."""
        from fedsim.data.link_env import run_episode

        cfg = self.config
        pid = protocol.partition_of(context)[0]
        snrs = [float(v) for v in cfg.la_test_snr_db.split(",")]
        snr = snrs[(episode - 1) % len(snrs)]
        channel = deployment_channel(cfg, pid)
        seed = derive_seed(cfg.seed, pid, episode, 5)  # the same channel and ACK draws for every arm
        metrics: dict = {"snr-db": snr, protocol.NUM_EXAMPLES: cfg.la_periods}
        settings = TuneSettings(sampling=cfg.lt_sampling, delta=cfg.lt_delta, lr=cfg.lt_lr, layers=cfg.lt_layers)
        arms = [(v, cfg.la_prediction_stream, v) for v in names(cfg.lt_variants)]  # the predictors only learn
        arms += [(p, p, cfg.lt_variant) for p in names(cfg.la_link_policies)]
        sim = simulation(cfg)
        baseline = run_episode(channel, snr, cfg.la_periods, seed, method="olla", olla=cfg.la_olla, sim=sim)
        metrics["tput-olla"] = baseline.mean_throughput / 1e6
        metrics["bler-olla"] = baseline.mean_bler
        for index, (name, method, variant) in enumerate(arms):
            tuner = LightTuner(self.spec, [t.copy() for t in thetas], x_mean, x_std,
                               replace(settings, variant=variant), np.random.default_rng(derive_seed(seed, index)))
            self._restore(tuner, context, name)
            triggers_before = tuner.triggers
            result = run_episode(channel, snr, cfg.la_periods, seed, method=method, predictor=tuner, olla=cfg.la_olla,
                                 sim=sim)
            self._save(tuner, context, name)
            metrics.update(episode_metrics(result, name, tuner.triggers - triggers_before))
        return metrics

    def _restore(self, tuner: LightTuner, context: Context, name: str) -> None:
        key = TUNER_STATE + name
        if key + "-counters" in context.state:
            tuner.load_state(context.state.array_records.get(key), context.state[key + "-counters"],
                             parameters=self.config.lt_reset == "never")

    @staticmethod
    def _save(tuner: LightTuner, context: Context, name: str) -> None:
        arrays, counters = tuner.state_record()
        context.state[TUNER_STATE + name] = arrays
        context.state[TUNER_STATE + name + "-counters"] = counters


def episode_metrics(result, name: str, triggers: int) -> dict[str, float]:
    """Prediction error, false-alarm and missed-detection rates (tau = 0.9), trigger rate, throughput of an episode."""
    predicted, actual = np.asarray(result.predicted), np.asarray(result.p_bler)
    alarm, high = predicted >= 0.9, actual >= 0.9
    return {f"bler-error-{name}": float(np.abs(predicted - actual).mean()),
            f"false-alarm-{name}": float(alarm[~high].mean()) if (~high).any() else 0.0,
            f"missed-detection-{name}": float((~alarm)[high].mean()) if high.any() else 0.0,
            f"trigger-rate-{name}": triggers / len(actual),
            f"tput-{name}": result.mean_throughput / 1e6}
