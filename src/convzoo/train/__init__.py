"""Training: ``train(config) -> result`` and its configuration.

>>> from convzoo.train import TrainConfig, train
>>> result = train(TrainConfig("resnet18", epochs=1, width=0.25, limit_train=512))

``build_config(model, overrides, recipe=...)`` applies a TOML recipe under explicit
options, as ``convzoo train`` does. The package itself is callable, so
``convzoo.train(config)`` works as well as ``convzoo.train.train(config)``.
"""

from __future__ import annotations

import sys
import types

from .checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint, save_checkpoint
from .config import TrainConfig, build_config
from .loop import TrainingDiverged, TrainingInterrupted, TrainResult, train

__all__ = [
    "TrainConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "TrainResult",
    "build_config",
    "find_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "save_checkpoint",
    "train",
]


class _CallableModule(types.ModuleType):
    """Lets ``convzoo.train(config)`` call :func:`train` once the package is imported."""

    def __call__(self, config: TrainConfig, **kwargs):
        return train(config, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
