"""Datasets, where they live, and a fast in-memory batch pipeline.

Data knows nothing about models: it hands out uint8 image tensors and labels
(:mod:`.datasets`), finds and fetches the files (:mod:`.locate`), and turns a split into
normalised, augmented batches on the training device (:mod:`.loader`, :mod:`.augment`).
"""

from .augment import AugmentConfig, build_augment
from .datasets import DATASET_NAMES, Dataset, load_dataset, load_image
from .idx import read_idx, write_idx
from .loader import Loader, channel_stats, stratified_split

__all__ = [
    "DATASET_NAMES",
    "AugmentConfig",
    "Dataset",
    "Loader",
    "build_augment",
    "channel_stats",
    "load_dataset",
    "load_image",
    "read_idx",
    "stratified_split",
    "write_idx",
]
