"""The training agent: configuration, the trio run loop, estimators, checkpoints, logs.

The command line lives in ``pgt.cli`` (``pgt``); this package exposes what a
script driving a run needs.
"""

from pgt._checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from pgt._config import ConfigError, config_to_toml, load_config
from pgt._data import DataError, Dataset, load_dataset
from pgt._estimators import ESTIMATORS, Probe, make_estimator
from pgt._logging import configure_logging, get_logger
from pgt._runloop import RunDirError, RunInterrupted, evaluate_run, run_training
from pgt._schema import Config
from pgt._trainer import Trainer

__all__ = [
    "ESTIMATORS", "CheckpointError", "Config", "ConfigError", "DataError", "Dataset", "Probe",
    "RunDirError", "RunInterrupted", "Trainer", "config_to_toml", "configure_logging",
    "evaluate_run", "get_logger", "latest_checkpoint", "load_checkpoint", "load_config",
    "load_dataset", "make_estimator", "run_training", "save_checkpoint",
]
