"""pgt: train networks with a physical reservoir inside, forward-only.

The Python API (``pgt._api``): ``train`` on arrays in memory or a configured dataset,
with a reservoir URL or any object that has ``info`` and ``async forward(u)``;
``resume``, ``evaluate`` and ``load`` an existing run; ``TrainResult.predict`` through
the ring. ``train_async`` and ``resume_async`` do the same inside a trio program.
The command line is ``pgt.cli`` (``pgt``); the reservoirs are ``pgt.backends``, the
array math ``pgt.kernels``.
"""

from pgt._api import TrainResult, evaluate, load, resume, resume_async, train, train_async
from pgt._checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from pgt._config import ConfigError, config_from, config_to_toml, load_config
from pgt._data import DataError, Dataset, dataset_from_arrays, load_dataset, open_dataset
from pgt._estimators import ESTIMATORS, Probe, make_estimator
from pgt._logging import configure_logging, get_logger
from pgt._runloop import RunDirError, RunInterrupted, evaluate_run, run_training
from pgt._schema import Config
from pgt._trainer import Trainer

__all__ = [
    "ESTIMATORS", "CheckpointError", "Config", "ConfigError", "DataError", "Dataset", "Probe",
    "RunDirError", "RunInterrupted", "TrainResult", "Trainer", "config_from", "config_to_toml",
    "configure_logging", "dataset_from_arrays", "evaluate", "evaluate_run", "get_logger",
    "latest_checkpoint", "load", "load_checkpoint", "load_config", "load_dataset",
    "make_estimator", "open_dataset", "resume", "resume_async", "run_training",
    "save_checkpoint", "train", "train_async",
]
