"""Training: ``train(config) -> TrainResult`` and its configuration.

>>> from convzoo.train import TrainConfig, train
>>> out = train(TrainConfig("resnet18", epochs=1, width=0.25, limit_train=512))
>>> out.result["test_accuracy"]

``build_config(model, overrides, recipe=...)`` applies a TOML recipe under explicit
options, as ``convzoo train`` does. The trainer is :mod:`convzoo.train.trainer`; its
side effects are the callbacks of :mod:`convzoo.train.callbacks`.
"""

from __future__ import annotations

from .config import TrainConfig
from .recipes import build_config
from .trainer import TrainingDiverged, TrainingInterrupted, TrainResult, train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "TrainingInterrupted",
    "build_config",
    "train",
]
