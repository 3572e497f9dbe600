"""Training: the settings (:class:`TrainConfig`), the loop (:func:`train`), its resumable state and schedule, the run
directory it writes, and how it stops (signals, non-finite losses) and stays bitwise reproducible."""

from lightnets.train.config import TrainConfig, load_config_file, load_run_config
from lightnets.train.loop import train, train_one_epoch, train_step
from lightnets.train.signals import NonFiniteLossError, TrainingError, TrainingInterrupted
from lightnets.train.state import TrainResult

__all__ = [
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "TrainingInterrupted",
    "load_config_file",
    "load_run_config",
    "train",
    "train_one_epoch",
    "train_step",
]
