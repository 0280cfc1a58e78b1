"""The configuration schema: every key a run accepts, its type and its default.

A run's configuration is one ``Config``; TOML tables map to the nested dataclasses
below (``[data]`` -> ``DataConfig`` and so on). ``pgt._config`` loads, overrides
and validates it; this module only declares it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    name: str = "digits"            # a dataset that ships: "digits" (scikit-learn's), "digit_rows"
                                    # (the same, as 8 tokens of 8 pixels), "delayed_parity"
                                    # (generated bits), "narma10" or "mackey_glass" (generated
                                    # series, one-step-ahead prediction); see pgt._data
    path: str = ""                  # a .csv or .npz file of your own (replaces name when set)
    label: str = "label"            # .csv: the label column; every other column is a feature
    task: str = "auto"              # auto | classification | regression (auto: text or whole
                                    # numbers are classes; a named dataset knows its task)
    test_fraction: float = 0.25     # share of samples held out for testing (unless the
                                    # file has x_test and y_test)
    val_fraction: float = 0.1       # share of the rest held out for validation: the run's
                                    # best checkpoint is chosen on it (0: no validation)
    batch_size: int = 32            # samples per training step
    split_seed: int = 0             # seeds the splits (and generation)
    seq_len: int = 16               # delayed_parity: bits per sequence
    delay: int = 2                  # delayed_parity: steps between the parity window and the
                                    # end; delayed_recall: how far back the target lies
    parity_bits: int = 2            # delayed_parity: how many consecutive bits are XORed
    window: int = 16                # narma10, mackey_glass: past values per sample (tokens)
    length: int = 2000              # narma10, mackey_glass, delayed_recall: samples generated
    continuous: bool = False        # time series: the ring runs on from sample to sample
                                    # (batches are consecutive samples; each pass starts with
                                    # a washout of the samples before it) — pgt._trainer
    washout: int = 32               # continuous: samples replayed before each pass


@dataclass
class ModelConfig:
    name: str = "dense"             # "dense": input -> dense -> ring -> dense -> classes;
                                    # "transformer": embed -> block -> ring -> block -> pool -> classes
    init_scale: float = 1.0         # scale of the first layer's initial weights
    feature_scale: float = 0.1      # ring features are divided by this before the readout
    d_model: int = 16               # transformer: token width
    heads: int = 2                  # transformer: attention heads (divide d_model)
    mlp_width: int = 32             # transformer: hidden width of each block's MLP
    pool: str = "mean"              # transformer: "mean" over tokens or the "last" token


@dataclass
class ReservoirConfig:
    url: str = "sim://ring"         # where the ring is: sim://, serial://, socket://, emu://
    urls: list[str] = field(default_factory=list)  # several rings at once: a device pool
                                    # (when set, url is not used); see agent/_pool.py
    trial_timeout_s: float = 0.0    # pool: deadline of one trial (0: ten times the device's
                                    # mean time per forward, at least 1 s)
    suspend_limit_s: float = 3600.0  # a run suspended (no device in service) this long
                                    # checkpoints and exits with status 75 (0: wait for ever)
    requires: str = ""              # pgt sweep / report on a Ray cluster: the custom resource
                                    # of the node this ring is attached to (e.g. "ring_a")


@dataclass
class EstimatorConfig:
    name: str = "interface"         # interface | pgt | spsa | readout | ridge | twin | backprop
    k: int = 4                      # perturbation directions per step
    sigma: float = 0.05             # perturbation scale
    form: str = "central"           # central | one-sided
    distribution: str = "rademacher"  # rademacher | gaussian
    spsa_a: float = 0.0             # SPSA: stability constant A of a_k = 1/(k+1+A)^alpha
    spsa_alpha: float = 0.602       # SPSA: step-size decay exponent
    spsa_gamma: float = 0.101       # SPSA: perturbation decay exponent
    twin_kind: str = "grey"         # twin: grey (the ring's map, its physics fitted) | black
                                    # (a tanh network that assumes nothing); pgt._twin
    twin_probes: int = 2            # twin: interface probe pairs on a probing step (0: none,
                                    # plain physics-aware training)
    twin_max_period: int = 16       # twin: steps between probes when the twin agrees with them
    twin_fit_steps: int = 4         # twin: Adam steps on the twin per training step
    twin_lr: float = 0.01           # twin: its learning rate
    twin_batch: int = 64            # twin: samples per fitting step
    twin_buffer: int = 2048         # twin: (input, features) pairs kept for fitting
    twin_hidden: int = 256          # twin: hidden units of the black-box twin


@dataclass
class OptimizerConfig:
    name: str = "adam"              # adam | sgd
    lr: float = 0.01                # learning rate
    momentum: float = 0.9           # sgd only
    beta1: float = 0.9              # adam only
    beta2: float = 0.999            # adam only
    eps: float = 1e-8               # adam only
    weight_decay: float = 0.05      # decoupled, both optimizers
    schedule: str = "cosine"        # cosine (decay to zero over the run) | constant


@dataclass
class TrainConfig:
    steps: int = 3000               # optimizer steps in the run
    eval_every: int = 100           # steps between test-set evaluations
    checkpoint_every: int = 100     # steps between checkpoints (0: only at the end)
    checkpoint_seconds: float = 300.0  # also checkpoint when this much time has passed
    keep_checkpoints: int = 3       # newest checkpoints kept on disk
    on_divergence: str = "stop"     # a non-finite loss, gradient or parameter: "stop" (exit
                                    # status 3) or "rollback" (to the last checkpoint, with
                                    # half the learning rate, at most 5 times)
    log_every: int = 1              # a step event every this many steps (evals, checkpoints
                                    # and the last step are always logged)


@dataclass
class Config:
    seed: int = 0                   # seeds data order, initial weights and perturbations
    device: str = "cpu"             # cpu | gpu (CuPy)
    run_dir: str = "runs"           # parent folder of run directories
    run_name: str = ""              # run directory name; empty: a time-stamped one
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    reservoir: ReservoirConfig = field(default_factory=ReservoirConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
