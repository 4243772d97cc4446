"""Training checkpoints: written atomically, read without running arbitrary code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (see
``FORMAT`` and the keys below), written with :func:`torch.save` and read back with
``torch.load(weights_only=True)``, so a file that would need arbitrary code to unpickle
is refused instead of executed.

Keys: ``format``, ``model_name``, ``model_options`` (num_classes, in_channels,
small_input, width and family options), ``model`` (state dict), ``ema`` (state dict or
None), ``data`` (dataset, data_dir, classes, mean, std, image_size, resize,
in_channels), ``config`` (the resolved training config), ``optimizer``, ``scheduler``,
``rng``, ``epoch``, ``step``, ``metrics``, ``best_val_accuracy``; training adds a few
of its own (position inside the epoch, partial epoch sums, planned steps).
"""

from __future__ import annotations

# The file-level functions live in convzoo.artifacts and the model rebuilders in
# convzoo.registry; they are imported here for the training code that uses them.
from ..artifacts import (
    CHECKPOINT_FORMAT as FORMAT,
)
from ..artifacts import (
    CHECKPOINT_NAMES as NAMES,
)
from ..artifacts import (
    CheckpointWriteError,
    UnsafeCheckpointError,
    find_checkpoint,
    fsync_dir,
    link_or_copy,
    load_checkpoint,
    save_checkpoint,
)
from ..registry import check_state_dict, model_from_checkpoint, model_from_weights

__all__ = [
    "FORMAT",
    "NAMES",
    "CheckpointWriteError",
    "UnsafeCheckpointError",
    "check_state_dict",
    "find_checkpoint",
    "fsync_dir",
    "link_or_copy",
    "load_checkpoint",
    "model_from_checkpoint",
    "model_from_weights",
    "save_checkpoint",
]
