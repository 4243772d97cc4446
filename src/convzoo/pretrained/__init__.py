"""Pretrained weights: torchvision's and timm's files read into convzoo's models.

- :mod:`.tables`: the per-family name tables (convzoo <-> torchvision <-> timm).
- :mod:`.files`: finding (torch hub cache), checking (hash prefix) and reading files.
- :mod:`.adapt`: fitting the first convolution to other input channels.
- :mod:`.load`: :func:`load_pretrained` and :func:`to_source` (the other way).

It sits just above the run artifacts and below the registry, whose
``get_model(..., weights=PATH)`` calls :func:`load_pretrained` on the model it built.
"""

from .adapt import adapt_input_conv
from .files import (
    IMAGENET_MEAN,
    IMAGENET_SIZE,
    IMAGENET_STD,
    TORCHVISION_FILES,
    check_hash_prefix,
    hub_dir,
    read_weights,
    torchvision_file,
)
from .load import LoadReport, load_pretrained, source_num_classes, to_source
from .tables import FAMILIES, REFUSED, SOURCES, family_of, table

__all__ = [
    "FAMILIES",
    "IMAGENET_MEAN",
    "IMAGENET_SIZE",
    "IMAGENET_STD",
    "REFUSED",
    "SOURCES",
    "TORCHVISION_FILES",
    "LoadReport",
    "adapt_input_conv",
    "check_hash_prefix",
    "family_of",
    "hub_dir",
    "load_pretrained",
    "read_weights",
    "source_num_classes",
    "table",
    "to_source",
    "torchvision_file",
]
