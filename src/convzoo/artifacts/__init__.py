"""Run artifacts: how convzoo writes and reads the files of a run, in one place.

- Atomic writes: every file goes to a temporary file in the same folder, is flushed
  and fsync'ed, then renamed over its name, and the folder is fsync'ed: a crash at any
  instant leaves the previous file or the new one, whole.
- Strict JSON: non-finite numbers are written as ``null``, never as ``NaN``.
- Checkpoints: plain dicts written with :func:`torch.save`, read back with
  ``torch.load(weights_only=True)``, so a file that needs code to unpickle is refused.
- ``model.safetensors``: one writer, one reader, one metadata schema
  (:data:`MODEL_META_KEYS`). The reader gives the header (metadata and tensor shapes)
  before any tensor is read, so the model it describes can be checked on the meta
  device before memory is spent on it (see :func:`convzoo.registry.model_from_weights`).
- A run directory: :func:`load_run` reads a finished run; :class:`RunLock` gives it one
  owner at a time; :func:`run_inputs` names the files no output may overwrite.
"""

from __future__ import annotations

from .checkpoints import (
    CHECKPOINT_DIR,
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAMES,
    CheckpointWriteError,
    UnsafeCheckpointError,
    find_checkpoint,
    load_checkpoint,
    load_torch_file,
    save_checkpoint,
)
from .files import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    fsync_dir,
    json_safe,
    link_or_copy,
    to_json,
    write_json,
)
from .runs import (
    CONFIG_FILE,
    LOCK_FILE,
    METRICS_FILE,
    MODEL_FILE,
    RESULT_FILE,
    RESULT_REQUIRED,
    Run,
    RunLock,
    load_run,
    read_metrics,
    refuse_overwrite,
    run_inputs,
)
from .weights import (
    MODEL_META_KEYS,
    model_meta,
    read_safetensors_header,
    read_safetensors_tensors,
    write_model_safetensors,
)

__all__ = [
    "CHECKPOINT_DIR",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAMES",
    "CONFIG_FILE",
    "LOCK_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "MODEL_META_KEYS",
    "RESULT_FILE",
    "RESULT_REQUIRED",
    "CheckpointWriteError",
    "Run",
    "RunLock",
    "UnsafeCheckpointError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "find_checkpoint",
    "fsync_dir",
    "json_safe",
    "link_or_copy",
    "load_checkpoint",
    "load_run",
    "load_torch_file",
    "model_meta",
    "read_metrics",
    "read_safetensors_header",
    "read_safetensors_tensors",
    "refuse_overwrite",
    "run_inputs",
    "save_checkpoint",
    "to_json",
    "write_json",
    "write_model_safetensors",
]
