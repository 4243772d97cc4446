"""Transitional: the names callers outside convzoo.train imported from the old loop.

The trainer is :mod:`convzoo.train.trainer`. Import ``TrainingDiverged`` and
``TrainingInterrupted`` from :mod:`convzoo.train`, ``resolve_device`` from
:mod:`convzoo.device`, ``param_groups`` and ``training_loss`` from
:mod:`convzoo.train.optim`; this module goes once no caller uses it.
"""

from ..device import resolve_device
from .optim import param_groups as _param_groups
from .optim import training_loss
from .trainer import TrainingDiverged, TrainingInterrupted, TrainResult, train

__all__ = [
    "TrainResult",
    "TrainingDiverged",
    "TrainingInterrupted",
    "_param_groups",
    "resolve_device",
    "train",
    "training_loss",
]
