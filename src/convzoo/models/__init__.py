"""The six families. Importing this package registers every model.

Where a docstring says "d2l", it means the Gluon (MXNet) edition of *Dive into Deep
Learning* (Zhang, Lipton, Li and Smola, https://d2l.ai), whose chapter on modern
convolutional networks builds each of these families from named blocks (``vgg_block``,
``mlpconv``/``nin_block``, ``Inception``, ``Residual``, ``conv_block``, ``DenseBlock``,
``transition_block``); the blocks here keep those names. Each family module says
where it departs from that chapter and from the paper.
"""

from . import alexnet, densenet, googlenet, nin, resnet, vgg  # noqa: F401
from .layers import ConvNet, check_input_size, smallest_input

__all__ = ["ConvNet", "check_input_size", "smallest_input"]
