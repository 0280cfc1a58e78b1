"""The training agent: configuration, the trio run loop, estimators, checkpoints, logs.

The command line lives in ``agent.cli`` (``pgt``); this package exposes what a
script driving a run needs.
"""

from agent._checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from agent._config import ConfigError, config_to_toml, load_config
from agent._data import DataError, Dataset, load_dataset
from agent._estimators import ESTIMATORS, Probe, make_estimator
from agent._logging import configure_logging, get_logger
from agent._runloop import RunDirError, RunInterrupted, evaluate_run, run_training
from agent._schema import Config
from agent._trainer import Trainer

__all__ = [
    "ESTIMATORS", "CheckpointError", "Config", "ConfigError", "DataError", "Dataset", "Probe",
    "RunDirError", "RunInterrupted", "Trainer", "config_to_toml", "configure_logging",
    "evaluate_run", "get_logger", "latest_checkpoint", "load_checkpoint", "load_config",
    "load_dataset", "make_estimator", "run_training", "save_checkpoint",
]
