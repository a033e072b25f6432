"""Training/evaluation helpers shared by tools/train_net.py and the other entry points."""
from .checkpoint import BreastCheckpointer, CheckpointError, load_pickle_restricted
from .defaults import (
    ConfigError,
    apply_epoch_schedule,
    build_breast_evaluator,
    build_breast_test_loader,
    build_breast_train_loader,
    configure_fold,
    load_breast_config,
    train_dataset_dicts,
)
from .weights import WeightsUnavailableError, resolve_weights

__all__ = [
    "BreastCheckpointer",
    "CheckpointError",
    "ConfigError",
    "load_breast_config",
    "load_pickle_restricted",
    "apply_epoch_schedule",
    "build_breast_evaluator",
    "build_breast_test_loader",
    "build_breast_train_loader",
    "configure_fold",
    "train_dataset_dicts",
    "WeightsUnavailableError",
    "resolve_weights",
]
