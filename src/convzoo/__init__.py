"""convzoo: the classic convolutional networks, built, inspected, trained and compared.

AlexNet, VGG, Network in Network, GoogLeNet, ResNet and DenseNet behind one registry,
each faithful to its paper at 224 px or in a small-input form for 28-32 px images.
"""

import importlib

from . import models  # noqa: F401  (registers every family)
from .anatomy import Summary, summary
from .errors import ConvzooError
from .registry import get_model, list_models, register_model

__version__ = "0.1.0"


def __getattr__(name: str):
    # Training pulls in the data and evaluation stacks: import it only when asked.
    # The ``convzoo.train`` package is callable: ``convzoo.train(config)``.
    if name in ("train", "TrainConfig"):
        package = importlib.import_module(".train", __name__)
        return package if name == "train" else package.TrainConfig
    raise AttributeError(f"module 'convzoo' has no attribute {name!r}")


__all__ = [
    "TrainConfig",
    "ConvzooError",
    "Summary",
    "__version__",
    "get_model",
    "list_models",
    "register_model",
    "summary",
    "train",
]
