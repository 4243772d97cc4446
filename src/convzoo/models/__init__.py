"""The six families. Importing this package registers every model."""

from . import alexnet, densenet, googlenet, nin, resnet, vgg  # noqa: F401
