"""pgt: train networks with a physical reservoir inside, forward-only.

The Python API (``pgt._api``): ``train`` on arrays in memory or a configured dataset,
with a reservoir URL or any object that has ``info`` and ``async forward(u)``;
``resume``, ``evaluate`` and ``load`` an existing run; ``TrainResult.predict`` through
the ring. ``train_async`` and ``resume_async`` do the same inside a trio program.
The command line is ``pgt.cli`` (``pgt``); the reservoirs are ``pgt.backends``, the
array math ``pgt.kernels``.

The names below are imported when first used, so ``pgt``'s command line starts (and
answers a Ctrl-C during start-up) before NumPy, trio and scikit-learn are loaded.
"""

import importlib

_EXPORTS = {
    "pgt._api": ("TrainResult", "evaluate", "load", "resume", "resume_async", "train",
                 "train_async"),
    "pgt._checkpoint": ("CheckpointError", "latest_checkpoint", "load_checkpoint",
                        "save_checkpoint"),
    "pgt._config": ("ConfigError", "config_from", "config_to_toml", "load_config"),
    "pgt._data": ("DataError", "Dataset", "dataset_from_arrays", "load_dataset", "open_dataset"),
    "pgt._estimators": ("ESTIMATORS", "Probe", "make_estimator"),
    "pgt._logging": ("configure_logging", "get_logger"),
    "pgt._runloop": ("RunDirError", "RunDiverged", "RunInterrupted", "SuspendLimitReached",
                     "evaluate_run", "run_training"),
    "pgt._schema": ("Config",),
    "pgt._trainer": ("Trainer",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pgt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
