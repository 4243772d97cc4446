"""convzoo: the classic convolutional networks, built, inspected, trained and compared.

AlexNet, VGG, Network in Network, GoogLeNet, ResNet and DenseNet behind one registry,
each faithful to its paper at 224 px or in a small-input form for 28-32 px images.
"""

from .anatomy import Summary, summary
from .errors import ConvzooError
from .registry import get_model, list_models, register_model

__version__ = "0.1.0"



def __getattr__(name: str):
    # Training pulls in the data and evaluation stacks: import it only when asked.
    if name in ("train", "TrainConfig"):
        from . import train as _train_pkg

        return getattr(_train_pkg, name)
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
