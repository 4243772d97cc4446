"""convzoo: the classic convolutional networks, built, inspected, trained and compared.

AlexNet, VGG, Network in Network, GoogLeNet, ResNet and DenseNet behind one registry,
each faithful to its paper at 224 px or in a small-input form for 28-32 px images.
"""

from .anatomy import Summary, summary
from .errors import ConvzooError
from .registry import get_model, list_models, register_model

__version__ = "0.1.0"

__all__ = [
    "ConvzooError",
    "Summary",
    "__version__",
    "get_model",
    "list_models",
    "register_model",
    "summary",
]
