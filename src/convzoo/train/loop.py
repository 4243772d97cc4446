"""The training loop: ``train(config) -> result``.

One run: load the data, carve a validation split out of the training set, build the
model, train with the configured optimizer, schedule, augmentation and EMA, validate
after every epoch, keep ``checkpoints/last.pt`` and ``checkpoints/best.pt``, and at the
end evaluate the final model once on the test set and write the run directory
(``config.json``, ``metrics.jsonl``, ``model.safetensors``, ``result.json``, plots).

Resuming (``resume=RUN_DIR``) continues exactly from ``checkpoints/last.pt``: the data
order and augmentation depend only on (seed, epoch, batch), every RNG state is restored,
and validation runs in eval mode without touching the training RNG, so on the CPU with
``deterministic`` an interrupted-then-resumed run ends with the same weights, bit for
bit, as an uninterrupted one.

Launched by ``torchrun`` (see :mod:`convzoo.train.distributed`), the same loop runs on
every process: the model is wrapped in DistributedDataParallel, each rank trains on its
share of every global batch, the evaluations are sharded and their counts summed, and
only rank 0 writes the run directory and prints. Set-up errors, stop signals, the
time-budget plan and divergence are agreed between the ranks, so that they all take the
same steps and stop together.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import io
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..device import available_cores, busy_machine_warning
from ..errors import CheckpointError, ConfigError, DataError, OutputError
from .budget import BudgetPlanning
from .checkpoint import (
    FORMAT,
    UnsafeCheckpointError,
    check_state_dict,
    fsync_dir,
    link_or_copy,
    load_checkpoint,
    save_checkpoint,
)
from .config import (
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_ONECYCLE_WARMUP,
    DEFAULT_WEIGHT_DECAY,
    TrainConfig,
    check_config,
)
from .distributed import (
    Processes,
    SetupFailed,
    convert_sync_batchnorm,
    data_signature,
    global_batch_line,
    global_batch_size,
    rank_seed,
    session,
    shard_bounds,
)
from .ema import EMA
from .progress import Progress
from .rng import rng_state, seed_everything, set_rng_state
from .schedule import Schedule, as_fraction, format_duration

AUX_WEIGHT = 0.3  # GoogLeNet's auxiliary losses (Szegedy et al. 2015)
SMALL_INPUT_BELOW = 64  # images under this many pixels get the small-input form
DEFAULT_VAL_SIZE = 5000
DEFAULT_FOLDER_VAL_FRACTION = 0.1
# Distributed runs agree on stop signals and the time-budget plan every this many steps.
AGREE_EVERY = {"cpu": 1, "cuda": 5}


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns: result.json's contents and what the caller may
    still want from memory (the report and plots are written by the caller)."""

    result: dict[str, Any]  # result.json (rank 0); other ranks: rank, steps, test_accuracy
    run_dir: Path
    model: nn.Module | None  # the final model (EMA weights when used), eval mode
    metrics: list[dict]  # the metrics.jsonl rows
    classes: list[str]
    confusion: list[list[int]] | None  # test-set confusion matrix
    test_logits: tuple[torch.Tensor, torch.Tensor] | None  # (logits, labels); None if distributed
    dataset: Any  # the loaded dataset (the report shows its images)


class TrainingInterrupted(Exception):
    """The run was stopped by SIGINT or SIGTERM after saving a checkpoint."""

    def __init__(self, message: str, signum: int, run_dir: Path) -> None:
        super().__init__(message)
        self.signum = signum
        self.run_dir = run_dir
        self.exit_code = 128 + int(signum)


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    def __init__(self, message: str, run_dir: Path) -> None:
        super().__init__(message)
        self.run_dir = run_dir


def train(
    config: TrainConfig,
    *,
    resume: str | os.PathLike | None = None,
    command: str | None = None,
    started: float | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``config.model`` as ``config`` says; return a :class:`TrainResult`.

    Args:
        config: the run's options; ``None`` fields are chosen automatically and the
            resolved config is written to ``config.json``.
        resume: a run directory to continue from its ``checkpoints/last.pt``; the saved
            config is used (``config.model`` must match it; ``quiet``, ``threads``,
            ``save_every_steps`` and ``data_dir`` may differ).
        command: the command line to record in result.json.
        started: ``time.perf_counter()`` value the time budget counts from (default:
            now).
        on_step: called with the global step after every optimizer step (for tests and
            tools; an exception raised there stops the run as a crash would).

    Under ``torchrun`` every process calls this (``convzoo train`` does); the process
    group is joined here unless the caller has joined one already. Rank 0 returns the
    contents of result.json; the other ranks return a short dict (rank, steps, test
    accuracy).

    Raises:
        ConvzooError subclasses for bad options, data or checkpoints,
        TrainingInterrupted after SIGINT/SIGTERM (checkpoint saved), TrainingDiverged
        when the loss is no longer finite.
    """
    with session() as procs:
        run = _Run(
            config, resume=resume, command=command, started=started, on_step=on_step, procs=procs
        )
        return run.execute()


# ---------------------------------------------------------------------------------------


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """The device of ``--device name``; with ``local_rank``, CUDA means ``cuda:local_rank``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but PyTorch sees no CUDA device")
    if name == "cuda" and local_rank is not None:
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ConfigError(
                f"LOCAL_RANK {local_rank} has no GPU: this machine shows {count}; start at most "
                f"{count} processes per machine (torchrun --nproc-per-node {count})"
            )
        return torch.device("cuda", local_rank)
    return torch.device(name)


def _nothing() -> None:
    pass


def training_loss(output, target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy of the logits, plus 0.3 x that of each auxiliary head (GoogLeNet).

    ``target`` is class indices (N,) or soft targets (N, K) from mixup/cutmix.
    """
    if isinstance(output, (tuple, list)):
        main, *aux = output
        loss = F.cross_entropy(main.float(), target, label_smoothing=label_smoothing)
        for a in aux:
            loss = loss + AUX_WEIGHT * F.cross_entropy(
                a.float(), target, label_smoothing=label_smoothing
            )
        return loss
    return F.cross_entropy(output.float(), target, label_smoothing=label_smoothing)


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed over it: ``path`` is
    either the old file or the new one, whole. When the file system refuses the write
    the temporary file is removed and :class:`OutputError` says why."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        reason = exc.strerror or str(exc)
        kept = "; the previous version is unchanged" if path.exists() else ""
        error = OutputError(f"cannot write {path}: {reason}{kept}")
        error.errno = exc.errno
        raise error from None
    fsync_dir(path.parent)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights only: biases and normalisation parameters are not decayed.

    Departure from the papers, which decayed every parameter; this is the usual modern
    practice (e.g. Goyal et al. 2017) and matters little.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class _Signals:
    """SIGINT/SIGTERM set a flag; the loop saves and stops at the next step boundary.

    A second SIGINT interrupts at once (checkpoints are written atomically, so this is
    safe too).
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@dataclasses.dataclass
class _EpochSums:
    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    seconds: float = 0.0

    @classmethod
    def zero(cls, device: torch.device) -> _EpochSums:
        return cls(torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long))

    def state(self) -> dict:
        return {
            "loss_sum": self.loss_sum.detach().cpu().clone(),
            "correct": self.correct.detach().cpu().clone(),
            "seen": self.seen,
            "seconds": self.seconds,
        }

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> _EpochSums:
        return cls(
            state["loss_sum"].to(device),
            state["correct"].to(device),
            int(state["seen"]),
            float(state["seconds"]),
        )


class _Run(BudgetPlanning):
    def __init__(self, config, *, resume, command, started, on_step, procs=None) -> None:
        self.procs: Processes = procs if procs is not None else Processes()
        if not isinstance(config, TrainConfig):
            raise ConfigError(f"train() needs a TrainConfig, got {type(config).__name__}")
        self.started = time.perf_counter() if started is None else started
        self.cfg = copy.deepcopy(config)
        self.resume_dir = Path(resume) if resume is not None else None
        self.command = command
        self.on_step = on_step
        self.ckpt: dict | None = None
        self.resumed_from: Path | None = None
        self.last_is_good = True

    # ------------------------------------------------------------------ setup

    def execute(self) -> TrainResult:
        from ..registry import check_model_name

        procs = self.procs

        def check() -> None:
            check_config(self.cfg)
            check_model_name(self.cfg.model)
            if self.resume_dir is not None and procs.is_main:
                self._load_resume()

        procs.agree(check)  # an error on any rank stops every rank
        if self.resume_dir is not None and procs.enabled:
            # Only rank 0 reads the run directory; the others get its checkpoint.
            ckpt, path = procs.broadcast_object((self.ckpt, self.resumed_from))
            if not procs.is_main:
                self._apply_resume(ckpt, path)
        if procs.is_main:
            self.progress = Progress(0, quiet=self.cfg.quiet)
        else:  # only rank 0 prints
            self.progress = Progress(0, quiet=True, stream=io.StringIO())
        saved_threads = torch.get_num_threads()
        saved_det = torch.are_deterministic_algorithms_enabled()
        saved_det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
        try:
            with _Signals() as self.signals:
                return self._execute()
        finally:
            torch.set_num_threads(saved_threads)
            torch.use_deterministic_algorithms(saved_det, warn_only=saved_det_warn)

    def _check_data_dir(self) -> None:
        d = self.cfg.data_dir
        if d is None:
            return
        path = Path(d).expanduser()
        if not path.exists():
            raise DataError(f"data directory {d} does not exist")
        if not path.is_dir():
            raise DataError(f"data directory {d} is not a directory")
        if not os.access(path, os.R_OK | os.X_OK):
            raise DataError(f"data directory {d} is not readable")

    def _load_resume(self) -> None:
        run_dir = self.resume_dir
        if not run_dir.exists():
            raise CheckpointError(f"cannot resume: {run_dir} does not exist")
        ckdir = run_dir / "checkpoints"
        if not run_dir.is_dir() or not ckdir.is_dir():
            raise CheckpointError(
                f"cannot resume: {run_dir} is not a run directory (no checkpoints/ in it)"
            )
        ckpt, path = load_latest_checkpoint(run_dir, warn=self._early_warn)
        self._apply_resume(ckpt, path)

    def _apply_resume(self, ckpt: dict, path: Path) -> None:
        """Take the run's saved config (and the options that may change) from ``ckpt``."""
        run_dir = self.resume_dir
        saved = ckpt.get("config") or {}
        if ckpt.get("model_name") != self.cfg.model:
            raise CheckpointError(
                f"cannot resume: {run_dir} is a run of {ckpt.get('model_name')}, not {self.cfg.model}"
            )
        given = self.cfg
        try:
            cfg = TrainConfig.from_dict(saved, where=f"{path}")
        except (ConfigError, TypeError) as exc:
            raise CheckpointError(
                f"cannot resume: the config saved in {path} is unusable ({exc})"
            ) from None
        cfg.quiet = given.quiet
        if given.device != "auto":  # e.g. finishing on the CPU a run begun on a GPU
            cfg.device = given.device
        for name in ("threads", "data_dir", "save_every_steps", "sync_bn"):
            value = getattr(given, name)
            if value:  # None, 0 or False: keep the saved value
                setattr(cfg, name, value)
        cfg.out = str(run_dir)
        self.cfg = cfg
        self.ckpt = ckpt
        self.resumed_from = path

    def _early_warn(self, line: str) -> None:
        if self.procs.is_main:
            print(f"warning: {line}", file=sys.stderr, flush=True)

    def _execute(self) -> TrainResult:
        cfg = self.cfg
        log = self.progress.info
        self.procs.agree(self._setup)  # an error on any rank stops every rank
        # The run directory is made once the run is known to be able to start.
        self.procs.agree(self._make_run_dir if self.procs.is_main else _nothing)
        self._join()
        if cfg.recipe and self.ckpt is None:
            log(f"recipe: {cfg.recipe}")
        log(self._start_line)
        if self.procs.enabled:
            log(self._distributed_line)
        if self.device.type == "cpu" and not self.procs.enabled:
            # (other ranks of a distributed run start at the same moment and would count)
            busy = busy_machine_warning(cfg.threads)
            if busy:
                self.progress.warn(busy)
        self.epoch, self.batch, self.step = 0, 0, 0
        self.metrics: list[dict] = []
        self.best_val: float | None = None
        self.best_epoch: int | None = None
        self.train_seconds = 0.0
        self.resume_sums: dict | None = None
        self._plan()
        if self.ckpt is not None:
            self._restore(self.ckpt)
            log(
                f"resuming {self.run_dir} from {self.resumed_from.name}: epoch {self.epoch + 1}, "
                f"batch {self.batch}, step {self.step}" + self._resume_world_note()
            )
        self._write_config()
        self.progress.epochs = self.planned_epochs
        if self.ckpt is None:
            self._save()  # a good checkpoint to fall back on from the start
        self._loop()
        return self._finish()

    def _setup(self) -> None:
        """Everything up to the optimizer that can fail on one rank alone (its data, its
        device, the run directory on rank 0); run under :meth:`Processes.agree`."""
        cfg = self.cfg
        procs = self.procs
        self._check_data_dir()
        self.device = resolve_device(cfg.device, procs.local_rank if procs.enabled else None)
        cfg.device = self.device.type
        if cfg.threads is None:
            # the cores of a machine are shared by the processes running on it
            cores = max(1, available_cores() // procs.local_world_size)
            cfg.threads = 1 if cfg.deterministic else cores
        torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            if self.device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            # On CUDA some kernels (e.g. adaptive pooling's backward) have no deterministic
            # form: warn there instead of refusing to train.
            torch.use_deterministic_algorithms(True, warn_only=self.device.type == "cuda")
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        seed_everything(cfg.seed)  # the same on every rank: the same initial weights

        if procs.is_main:
            self._check_run_dir()
        self._load_data()
        self._build_model()
        self._build_loaders()
        self._build_optimizer()
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"no training batches: {self.num_train} training images with batch size "
                f"{cfg.batch_size}"
                + (f" shared by {procs.world_size} processes" if procs.enabled else "")
            )

    def _join(self) -> None:
        """Distributed runs: take rank 0's run directory, check that every rank found the
        same data, wrap the model in DistributedDataParallel, give each rank its own
        dropout RNG."""
        procs = self.procs
        if not procs.enabled:
            return
        from torch.nn.parallel import DistributedDataParallel

        cfg = self.cfg
        signature = data_signature(self.train_y, self.val_y, self.ds.test_labels, self.train_x)
        mine = (cfg.out, signature, self.num_train, self.num_val, len(self.ds.test_labels))
        every = procs.all_gather_object(mine)
        differ = [r for r, theirs in enumerate(every) if theirs[1:] != every[0][1:]]
        if differ:
            lines = ", ".join(
                f"rank {r}: {t[2]} training, {t[3]} validation, {t[4]} test images "
                f"(fingerprint {t[1]})"
                for r, t in enumerate(every)
                if r == 0 or r in differ
            )
            raise SetupFailed(
                f"the processes found different data ({lines}); every machine needs the same "
                "copy of the dataset (check --data-dir and $CONVZOO_DATA on each)",
                show=procs.is_main,
            )
        cfg.out = every[0][0]
        self.run_dir = Path(cfg.out)
        self.ck_dir = self.run_dir / "checkpoints"
        ddp = DistributedDataParallel(
            self.model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
        )
        self.forward_model = torch.compile(ddp) if cfg.compile else ddp
        if procs.rank > 0:  # dropout differs between ranks; rank 0 goes on as one process
            seed_everything(rank_seed(cfg.seed, procs.rank))
        threads = "1 thread" if cfg.threads == 1 else f"{cfg.threads} threads"
        self._distributed_line = (
            f"distributed: {procs.world_size} processes ({procs.backend}), "
            f"{global_batch_line(cfg.batch_size, procs.world_size)}, {threads} each"
            + (f", SyncBatchNorm in {self.sync_bn_layers} layers" if self.sync_bn_layers else "")
        )

    def _resume_world_note(self) -> str:
        saved = int(self.ckpt.get("world_size") or 1)
        if saved == self.procs.world_size:
            return ""
        return (
            f" (a run of {saved} process{'es' if saved > 1 else ''}, now {self.procs.world_size})"
        )

    def _load_data(self) -> None:
        from ..data.datasets import DATASET_NAMES, load_dataset
        from ..data.loader import channel_stats, stratified_split

        cfg = self.cfg
        ds = load_dataset(cfg.dataset, cfg.data_dir, image_size=cfg.image_size)
        self.ds = ds
        self.is_folder = ds.name not in DATASET_NAMES
        if not self.is_folder:
            cfg.dataset = ds.name
        n = len(ds.train_labels)
        if cfg.val_size is None:
            cfg.val_size = (
                round(n * DEFAULT_FOLDER_VAL_FRACTION) if self.is_folder else DEFAULT_VAL_SIZE
            )
        val_n = int(round(cfg.val_size * n)) if cfg.val_size < 1 else int(cfg.val_size)
        if cfg.val_size >= 1 and cfg.val_size != int(cfg.val_size):
            raise ConfigError(
                f"validation size must be a whole number of images or a fraction under 1, got {cfg.val_size}"
            )
        if cfg.val_size >= 1:
            cfg.val_size = int(cfg.val_size)
        if val_n >= n:
            raise ConfigError(
                f"validation size {val_n} leaves no training images (the training set has {n})"
            )
        train_idx, val_idx = stratified_split(ds.train_labels, val_n, cfg.seed)
        if cfg.limit_train is not None:
            if cfg.limit_train > len(train_idx):
                self.progress.warn(
                    f"--limit-train {cfg.limit_train} is more than the {len(train_idx)} "
                    "training images left after the validation split; using them all"
                )
            train_idx = train_idx[: cfg.limit_train]
        self.train_x = ds.train_images.index_select(0, train_idx)
        self.train_y = ds.train_labels.index_select(0, train_idx)
        self.val_x = ds.train_images.index_select(0, val_idx)
        self.val_y = ds.train_labels.index_select(0, val_idx)
        self.num_train = len(train_idx)
        self.num_val = len(val_idx)
        if self.ckpt is not None:
            data = self.ckpt["data"]
            self.mean, self.std = tuple(data["mean"]), tuple(data["std"])
        else:
            self.mean, self.std = channel_stats(self.train_x)
        h, w = ds.image_size
        self.stored_size = (h, w)
        resize = cfg.image_size
        if resize is not None and (h, w) == (resize, resize):
            resize = None
        self.resize = resize
        self.input_size = (ds.in_channels, *((resize, resize) if resize else (h, w)))
        if cfg.small_input is None:
            cfg.small_input = min(self.input_size[1:]) < SMALL_INPUT_BELOW
            why = (
                f"images under {SMALL_INPUT_BELOW} px; --no-small-input for the paper's form"
                if cfg.small_input
                else f"images of {SMALL_INPUT_BELOW} px or more; --small-input for the 28-32 px form"
            )
        else:
            why = "as asked"
        form = "small-input form" if cfg.small_input else "faithful form"
        self._start_line = (
            f"{cfg.model} on {ds.name}: input {'x'.join(map(str, self.input_size))}, {form} "
            f"({why}); {self.num_train} training, {self.num_val} validation, "
            f"{len(ds.test_labels)} test images"
        )

    def _make_run_dir(self) -> None:
        cfg = self.cfg
        if cfg.out is None:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            slug = self.ds.name if not self.is_folder else Path(self.ds.name).name or "folder"
            base = Path("runs") / f"{cfg.model}-{slug}-{stamp}"
            out, i = base, 1
            while out.exists():
                i += 1
                out = base.with_name(f"{base.name}-{i}")
            cfg.out = str(out)
        self.run_dir = Path(cfg.out)
        self._check_run_dir()
        self.ck_dir = self.run_dir / "checkpoints"
        try:
            self.ck_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the run directory {self.run_dir}: {exc.strerror}"
            ) from None

    def _check_run_dir(self) -> None:
        """A new run never writes into the directory of another."""
        if self.ckpt is not None or self.cfg.out is None:
            return
        out = Path(self.cfg.out)
        if out.exists():
            # a run killed before its first checkpoint left nothing to resume: start over
            if any((out / "checkpoints").glob("*.pt")) or (out / "result.json").exists():
                raise ConfigError(
                    f"{out} already holds a run; continue it with --resume {out} or choose "
                    "another --out"
                )
            if not out.is_dir():
                raise ConfigError(f"--out {out} exists and is not a directory")

    def _build_model(self) -> None:
        from ..registry import get_model

        cfg = self.cfg
        self.model_options = {
            "num_classes": self.ds.num_classes,
            "in_channels": self.ds.in_channels,
            "small_input": bool(cfg.small_input),
            "width": float(cfg.width),
            **cfg.model_options,
        }
        if self.ckpt is not None:
            saved = self.ckpt.get("model_options", {})
            for key in ("num_classes", "in_channels"):
                if saved.get(key) != self.model_options[key]:
                    raise CheckpointError(
                        f"cannot resume: the checkpoint's {self.cfg.model} has {key}="
                        f"{saved.get(key)}, the data here has {self.model_options[key]}"
                    )
        model = get_model(cfg.model, **self.model_options)
        min_size = getattr(model, "min_input_size", None)
        if min_size is not None and min(self.input_size[1:]) < min_size:
            form = "small-input" if cfg.small_input else "faithful"
            fix = f"--image-size {min_size}" + ("" if cfg.small_input else " or --small-input")
            raise ConfigError(
                f"{cfg.model} ({form} form) needs images of at least {min_size} px, these "
                f"are {self.input_size[1]}x{self.input_size[2]}; use {fix}"
            )
        model.name = cfg.model
        self.sync_bn_layers = 0
        if cfg.sync_bn and self.procs.enabled:
            model, self.sync_bn_layers = convert_sync_batchnorm(model, self.device)
            if not self.sync_bn_layers:
                self.progress.warn(f"--sync-bn: {cfg.model} has no batch norm; nothing to do")
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
        self.forward_model: nn.Module = model
        if cfg.compile:
            self.forward_model = torch.compile(model)
        self.autocast_dtype = None
        self.scaler = None
        if cfg.amp:
            if self.device.type == "cuda":
                bf16 = torch.cuda.is_bf16_supported()
                self.autocast_dtype = torch.bfloat16 if bf16 else torch.float16
                if not bf16:
                    self.scaler = torch.amp.GradScaler("cuda")
            else:
                self.autocast_dtype = torch.bfloat16

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _build_loaders(self) -> None:
        from ..data.augment import AugmentConfig, build_augment
        from ..data.loader import Loader

        cfg = self.cfg
        aug = build_augment(
            AugmentConfig(
                crop_padding=cfg.crop_padding,
                flip=cfg.flip,
                erasing=cfg.erasing,
                mixup=cfg.mixup,
                cutmix=cfg.cutmix,
            ),
            self.ds.num_classes,
        )
        common = dict(
            mean=self.mean,
            std=self.std,
            device=self.device,
            resize=self.resize,
            channels_last=cfg.channels_last,
        )
        # batch_size is the global batch; each rank takes its share of every batch.
        self.train_loader = Loader(
            self.train_x,
            self.train_y,
            batch_size=cfg.batch_size,
            shuffle=True,
            drop_last=self.num_train >= cfg.batch_size,
            seed=cfg.seed,
            augment=aug,
            num_classes=self.ds.num_classes,
            rank=self.procs.rank,
            world_size=self.procs.world_size,
            **common,
        )
        self.eval_batch = max(cfg.batch_size * 2, 256)
        self._loader_common = common
        self.val_loader = self._eval_loader(self.val_x, self.val_y) if self.num_val else None

    def _eval_loader(self, images: torch.Tensor, labels: torch.Tensor):
        """A loader of this rank's contiguous shard of an evaluation set (all of it with
        one process); the shards are disjoint and cover the set, with no padding."""
        from ..data.loader import Loader

        lo, hi = shard_bounds(len(labels), self.procs.rank, self.procs.world_size)
        return Loader(
            images[lo:hi], labels[lo:hi], batch_size=self.eval_batch, **self._loader_common
        )

    def _global_n(self, index: int) -> int:
        """Images in global batch ``index`` of an epoch (all ranks together)."""
        return global_batch_size(self.num_train, self.cfg.batch_size, index)

    def _build_optimizer(self) -> None:
        cfg = self.cfg
        if cfg.lr is None:
            cfg.lr = DEFAULT_LR[cfg.optimizer]
        if cfg.weight_decay is None:
            cfg.weight_decay = DEFAULT_WEIGHT_DECAY[cfg.optimizer]
        self.optimizer = self._new_optimizer(self.model)

    def _new_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        cfg = self.cfg
        groups = _param_groups(model, cfg.weight_decay)
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(
                groups,
                lr=cfg.lr,
                momentum=cfg.momentum,
                nesterov=cfg.nesterov and cfg.momentum > 0,
            )
        return torch.optim.AdamW(groups, lr=cfg.lr)

    # ------------------------------------------------------------------ planning

    def _plan(self) -> None:
        """Total steps, and the schedule scaled to them."""
        cfg = self.cfg
        spe = self.steps_per_epoch
        self.budget_plan: dict[str, Any] | None = None
        if self.ckpt is not None:
            total = int(self.ckpt["planned_steps"])
            self.budget_plan = self.ckpt.get("budget_plan")
        elif cfg.time_budget is not None:
            total = self._plan_budget()
        else:
            if cfg.epochs is None:
                cfg.epochs = DEFAULT_EPOCHS
            total = cfg.epochs * spe
        nominal_epochs = cfg.epochs if cfg.epochs is not None else total / spe
        if cfg.warmup is None:
            cfg.warmup = DEFAULT_ONECYCLE_WARMUP if cfg.schedule == "onecycle" else 0.0
        warm = as_fraction(cfg.warmup, nominal_epochs, "warm-up")
        milestones = [as_fraction(m, nominal_epochs, "milestone") for m in cfg.milestones]
        self.schedule = Schedule(cfg.schedule, total, warm, milestones, cfg.gamma)
        self.total_steps = total

    @property
    def planned_epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def _train_step(self, x, y, lr: float, global_n: int | None = None):
        """One optimizer step; returns (loss, correct) as tensors (no host sync).

        In a distributed run ``global_n`` is the size of the global batch: each rank's
        mean loss is weighted by its share of it, so that the gradient DDP averages is
        the gradient of the mean loss over the global batch even when the shares differ.
        """
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        with self._autocast():
            out = self.forward_model(x)
            loss = training_loss(out, y, self.cfg.label_smoothing)
        objective = loss
        if self.procs.world_size > 1 and global_n:
            share = x.shape[0] * self.procs.world_size / global_n
            if share != 1.0:
                objective = loss * share
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(objective).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            objective.backward()
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        target = y.argmax(1) if y.ndim == 2 else y
        correct = (logits.detach().argmax(1) == target).sum()
        return loss.detach(), correct

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ state

    def _state(self, sums: _EpochSums | None) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "format": FORMAT,
            "model_name": cfg.model,
            "model_options": dict(self.model_options),
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "data": {
                "dataset": self.ds.name,
                # where the data was found, so that it is found again without $CONVZOO_DATA
                "data_dir": cfg.data_dir or str(self.ds.source),
                "classes": list(self.ds.classes),
                "mean": list(self.mean),
                "std": list(self.std),
                "image_size": list(self.stored_size),
                "resize": self.resize,
                "in_channels": self.ds.in_channels,
            },
            "config": cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "scheduler": self.schedule.state_dict(),
            "rng": rng_state(),
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "world_size": self.procs.world_size,
            "planned_steps": self.total_steps,
            "budget_plan": self.budget_plan,
            "epoch_sums": sums.state() if sums is not None else None,
            "metrics": list(self.metrics),
            "best_val_accuracy": self.best_val,
            "best_epoch": self.best_epoch,
            "train_seconds": self.train_seconds,
            "convzoo_version": _version(),
            "torch_version": str(torch.__version__),
        }

    def _save(self, sums: _EpochSums | None = None, *, best: bool = False) -> None:
        """Write checkpoints/last.pt (keeping the previous one as last.prev.pt).

        Distributed runs: every rank calls this (the loss sums are added up and every
        rank's RNG state is collected); rank 0 writes. The weights are those of the
        unwrapped model, so the checkpoint is the same as a one-process run's.
        """
        procs = self.procs
        rngs = None
        if procs.enabled:
            if sums is not None:
                sums = self._global_sums(sums)
            rngs = procs.all_gather_object(rng_state())
            if not procs.is_main:
                return
        last = self.ck_dir / "last.pt"
        state = self._state(sums)
        if rngs is not None:
            state["rng_ranks"] = rngs  # rank r's RNG; "rng" is rank 0's
        if last.exists() and self.last_is_good:
            link_or_copy(last, self.ck_dir / "last.prev.pt")
        save_checkpoint(state, last)
        self.last_is_good = True
        if best:
            link_or_copy(last, self.ck_dir / "best.pt")

    def _restore(self, ckpt: dict) -> None:
        check_state_dict(self.model, ckpt["model"], self.cfg.model)
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None:
            if ckpt.get("ema") is None:
                raise CheckpointError("the checkpoint has no EMA weights but the run uses EMA")
            self.ema.module.load_state_dict(ckpt["ema"])
            self.ema.updates = int(ckpt.get("ema_updates", 0))
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"the optimizer state does not fit: {exc}") from None
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.schedule = Schedule.from_state_dict(ckpt["scheduler"])
        self.total_steps = self.schedule.total_steps
        self.epoch = int(ckpt["epoch"])
        self.batch = int(ckpt.get("batch", 0))
        self.step = int(ckpt["step"])
        self.metrics = list(ckpt.get("metrics") or [])
        self.best_val = ckpt.get("best_val_accuracy")
        self.best_epoch = ckpt.get("best_epoch")
        self.train_seconds = float(ckpt.get("train_seconds", 0.0))
        procs = self.procs
        # The saved loss sums cover every rank's images: rank 0 carries them on.
        self.resume_sums = ckpt.get("epoch_sums") if procs.is_main else None
        saved_world = int(ckpt.get("world_size") or 1)
        rngs = ckpt.get("rng_ranks")
        if saved_world == procs.world_size and rngs and len(rngs) == procs.world_size:
            set_rng_state(rngs[procs.rank])  # an exact continuation
        elif procs.rank == 0:
            set_rng_state(ckpt["rng"])
        else:  # a rank the saved run did not have: a seed of its own, fixed by the step
            seed_everything(rank_seed(self.cfg.seed + self.step, procs.rank))
        if self.step != self.epoch * self.steps_per_epoch + self.batch:
            raise CheckpointError(
                f"the checkpoint's position (epoch {self.epoch}, batch {self.batch}, step "
                f"{self.step}) does not fit {self.steps_per_epoch} batches an epoch: was the "
                "data or batch size changed?"
            )
        # A damaged last.pt we fell back from is not kept as last.prev.pt.
        self.last_is_good = self.resumed_from is not None and self.resumed_from.name == "last.pt"

    def _write_config(self) -> None:
        if not self.procs.is_main:
            return
        _atomic_write_text(
            self.run_dir / "config.json", json.dumps(self.cfg.to_dict(), indent=2) + "\n"
        )

    def _write_metrics(self) -> None:
        if not self.procs.is_main:
            return
        text = "".join(json.dumps(_json_safe(row)) + "\n" for row in self.metrics)
        _atomic_write_text(self.run_dir / "metrics.jsonl", text)

    # ------------------------------------------------------------------ loop

    def _tick(self, sums: _EpochSums) -> None:
        """Count the time since the last tick as training time."""
        now = time.perf_counter()
        dt = now - self._clock
        self._clock = now
        sums.seconds += dt
        self.train_seconds += dt

    def _loop(self) -> None:
        cfg = self.cfg
        spe = self.steps_per_epoch
        check_every = 10 if self.device.type == "cpu" else 50
        distributed = self.procs.enabled
        agree_every = AGREE_EVERY.get(self.device.type, 5)
        every = cfg.save_every_steps
        self._window_step, self._window_seconds = self.step, self.train_seconds
        self._window_time = time.perf_counter()
        if self.budget_plan is not None:
            self._replan_interval = max(0.5, 0.01 * self.budget_plan["time_budget"])
        lr = cfg.lr * self.schedule.factor(max(self.step - 1, 0))
        sums_state, self.resume_sums = self.resume_sums, None
        self.model.train()
        while self.step < self.total_steps or self.batch > 0:
            epoch_batches = min(spe, self.total_steps - self.epoch * spe)
            if sums_state is not None:
                sums = _EpochSums.from_state(sums_state, self.device)
                sums_state = None
            else:
                sums = _EpochSums.zero(self.device)
            self._clock = time.perf_counter()
            if self.batch < epoch_batches:
                for x, y in self.train_loader.epoch(self.epoch, start=self.batch):
                    lr = cfg.lr * self.schedule.factor(self.step)
                    loss, correct = self._train_step(x, y, lr, self._global_n(self.batch))
                    n = x.shape[0]
                    sums.loss_sum += loss * n
                    sums.correct += correct
                    sums.seen += n
                    self.batch += 1
                    self.step += 1
                    self._tick(sums)
                    if self.step % check_every == 0:
                        self._check_finite(sums)
                    if not distributed and self.signals.received is not None:
                        self._sync()
                        self._tick(sums)
                        self._interrupted(sums, self.signals.received)
                    if every and self.step % every == 0 and self.batch < epoch_batches:
                        self._check_finite(sums)
                        self._sync()
                        self._tick(sums)
                        self._save(sums)
                        self._clock = time.perf_counter()
                    self.progress.step(
                        self.epoch + 1,
                        self.batch,
                        epoch_batches,
                        sums.loss_sum,
                        sums.correct,
                        sums.seen,
                        sums.seconds,
                    )
                    if self.on_step is not None:
                        self.on_step(self.step)
                    agree_now = distributed and self.step % agree_every == 0
                    if self.budget_plan is not None and (agree_now or not distributed):
                        self._tick(sums)
                        if self.procs.is_main:
                            self._replan()  # shared with the other ranks just below
                    if agree_now:
                        signum = self._agree_step()
                        if signum is not None:
                            self._sync()
                            self._tick(sums)
                            self._interrupted(sums, signum)
                    if self.budget_plan is not None:
                        epoch_batches = min(spe, self.total_steps - self.epoch * spe)
                    if self.batch >= epoch_batches:
                        break
            self._sync()
            self._tick(sums)
            self._epoch_end(sums, lr)
            signum = self._agree_step() if distributed else self.signals.received
            if signum is not None and self.step < self.total_steps:
                self._interrupted_after_epoch(signum)
            if self.budget_plan is not None:
                self._window_time = time.perf_counter()  # validation is not training time

    def _agree_step(self) -> int | None:
        """Distributed runs: a stop signal received by any rank, and rank 0's planned
        steps, made known to every rank (one small all-reduce), so that all stop at the
        same step and follow the same time-budget plan."""
        mine = torch.tensor(
            [self.signals.received or 0, self.total_steps if self.procs.is_main else 0],
            dtype=torch.int64,
        )
        signum, total = (int(v) for v in self.procs.all_reduce(mine, "max"))
        if total != self.total_steps:
            self.total_steps = total
            self.schedule.total_steps = max(total, 1)
            self.progress.epochs = self.planned_epochs
        return signum or None

    def _global_sums(self, sums: _EpochSums) -> _EpochSums:
        """The loss, correct and seen counts of every rank added up (rank 0's seconds)."""
        if not self.procs.enabled:
            return sums
        local = torch.stack(
            [
                sums.loss_sum.detach().double(),
                sums.correct.detach().double(),
                torch.tensor(float(sums.seen), dtype=torch.float64, device=sums.loss_sum.device),
            ]
        )
        total = self.procs.all_reduce(local)
        return _EpochSums(
            total[0].to(sums.loss_sum.dtype),
            total[1].round().to(sums.correct.dtype),
            int(round(float(total[2]))),
            sums.seconds,
        )

    def _interrupted(self, sums: _EpochSums, signum: int) -> None:
        self._check_finite(sums)
        self._save(sums)
        name = signal.Signals(signum).name
        msg = (
            f"{name} received: stopped at epoch {self.epoch + 1}, step {self.step}; "
            f"checkpoint saved to {self.ck_dir / 'last.pt'}. Resume with: convzoo train "
            f"{self.cfg.model} --resume {self.run_dir}"
        )
        raise TrainingInterrupted(msg, signum, self.run_dir)

    def _interrupted_after_epoch(self, signum: int) -> None:
        name = signal.Signals(signum).name
        msg = (
            f"{name} received: stopped after epoch {self.epoch}, step {self.step}; "
            f"checkpoint saved to {self.ck_dir / 'last.pt'}. Resume with: convzoo train "
            f"{self.cfg.model} --resume {self.run_dir}"
        )
        raise TrainingInterrupted(msg, signum, self.run_dir)

    def _check_finite(self, sums: _EpochSums, *, summed: bool = False) -> None:
        """Raise TrainingDiverged if the loss is no longer finite (on any rank: every
        rank calls this at the same steps and they all stop together)."""
        loss = sums.loss_sum
        if self.procs.enabled and not summed:
            loss = self.procs.all_reduce(loss)
        if bool(torch.isfinite(loss)):
            return
        what = "NaN" if bool(torch.isnan(loss)) else "infinite"
        last = self.ck_dir / "last.pt"
        kept = (
            f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"
        )
        raise TrainingDiverged(
            f"the training loss became {what} in epoch {self.epoch + 1} (by step {self.step}); "
            f"stopped; {kept}. Try a lower --lr (it was {self.cfg.lr:g})",
            self.run_dir,
        )

    def _epoch_end(self, sums: _EpochSums, lr: float) -> None:
        from ..evaluate import evaluate

        sums = self._global_sums(sums)
        self._check_finite(sums, summed=True)
        t0 = time.perf_counter()
        eval_model = self.ema.module if self.ema is not None else self.model
        if self.val_loader is not None:
            res = evaluate(
                eval_model, self.val_loader, self.ds.num_classes, distributed=self.procs.enabled
            )
            val_loss, val_acc = res.loss, res.accuracy
            self._measured_eval(self.num_val, time.perf_counter() - t0)
        else:
            val_loss = val_acc = None
        self.model.train()
        val_s = time.perf_counter() - t0
        seen = max(sums.seen, 1)
        row = {
            "epoch": self.epoch + 1,
            "step": self.step,
            "train_loss": float(sums.loss_sum) / seen,
            "train_accuracy": float(sums.correct) / seen,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": lr,
            "seconds": sums.seconds + val_s,
            "images_per_second": sums.seen / sums.seconds if sums.seconds > 0 else 0.0,
        }
        self.metrics.append(row)
        improved = False
        if val_acc is None:
            improved = True
        elif self.best_val is None or val_acc > self.best_val:
            improved = True
        if improved:
            self.best_val = val_acc
            self.best_epoch = self.epoch + 1
        self.epoch += 1
        self.batch = 0
        self._save(best=improved)
        self._write_metrics()
        if self.budget_plan is not None:
            spent = time.perf_counter() - t0
            self.budget_plan["epoch_end_seconds"] = (
                0.5 * self.budget_plan["epoch_end_seconds"] + 0.5 * spent
            )
        self.progress.epoch_end(row, self.planned_epochs)

    # ------------------------------------------------------------------ the end

    def _finish(self) -> TrainResult:
        from ..anatomy import summary
        from ..evaluate import evaluate, metrics_from_logits, predict_logits

        cfg = self.cfg
        final = self.ema.module if self.ema is not None else self.model
        final.eval()
        # Distributed runs: each rank tests its shard; the counts are added up.
        test_loader = self._eval_loader(self.ds.test_images, self.ds.test_labels)
        dist_eval = self.procs.enabled
        test_logits = None  # kept for the one-run report, so it needs no second test pass
        if dist_eval:
            res = evaluate(final, test_loader, self.ds.num_classes, distributed=True)
        else:
            test_logits = predict_logits(final, test_loader)
            res = metrics_from_logits(*test_logits, self.ds.num_classes)
        res_tta = (
            evaluate(final, test_loader, self.ds.num_classes, tta=True, distributed=dist_eval)
            if cfg.tta
            else None
        )
        if not self.procs.is_main:  # rank 0 writes the files
            short = {
                "rank": self.procs.rank,
                "steps": self.step,
                "test_accuracy": res.accuracy,
                "run_dir": str(self.run_dir),
            }
            return TrainResult(
                short, self.run_dir, final, self.metrics, list(self.ds.classes), None, None, self.ds
            )
        s = summary(final, self.input_size)
        self._save_safetensors(final)
        spe = self.steps_per_epoch
        result: dict[str, Any] = {
            "model": cfg.model,
            "dataset": self.ds.name,
            "small_input": bool(cfg.small_input),
            "width": cfg.width,
            "model_options": dict(self.model_options),
            "input_size": list(self.input_size),
            "num_classes": self.ds.num_classes,
            "params": s.total_params,
            "macs": s.total_macs,
            "epochs": round(self.step / spe, 4),
            "steps": self.step,
            "steps_per_epoch": spe,
            "train_seconds": round(self.train_seconds, 3),
            "wall_seconds": None,
            "test_accuracy": res.accuracy,
            "test_loss": res.loss,
            "test_per_class_accuracy": res.to_dict()["per_class_accuracy"],
            "best_val_accuracy": self.best_val,
            "best_epoch": self.best_epoch,
            "final_val_accuracy": self.metrics[-1]["val_accuracy"] if self.metrics else None,
            "train_images": self.num_train,
            "val_images": self.num_val,
            "test_images": res.num_samples,
            "ema": cfg.ema or None,
            "amp": str(self.autocast_dtype).replace("torch.", "") if self.autocast_dtype else None,
            "seed": cfg.seed,
            "deterministic": cfg.deterministic,
            "device": str(self.device),
            "threads": cfg.threads,
            "world_size": self.procs.world_size,
            "torch_version": str(torch.__version__),
            "convzoo_version": _version(),
            "command": self.command or f"convzoo.train({cfg.model!r})",
            "recipe": cfg.recipe,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "run_dir": str(self.run_dir),
            "resumed": self.resume_dir is not None,
        }
        if cfg.tta:
            result["test_accuracy_tta"] = res_tta.accuracy
            result["test_loss_tta"] = res_tta.loss
        if self.budget_plan is not None:
            plan = self.budget_plan
            result["time_budget"] = plan["time_budget"]
            result["planned_steps"] = plan["planned_steps"]
            result["planned_seconds"] = round(plan["planned_seconds"], 3)
            result["final_planned_steps"] = self.total_steps
            result["replans"] = plan["replans"]
        result["wall_seconds"] = round(time.perf_counter() - self.started, 3)
        if self.budget_plan is not None:
            result["actual_seconds"] = result["wall_seconds"]
            result["budget_used"] = round(
                result["wall_seconds"] / self.budget_plan["time_budget"], 4
            )
        _atomic_write_text(
            self.run_dir / "result.json", json.dumps(_json_safe(result), indent=2) + "\n"
        )
        self._summary(result)
        return TrainResult(
            result=result,
            run_dir=self.run_dir,
            model=final,
            metrics=list(self.metrics),
            classes=list(self.ds.classes),
            confusion=res.confusion,
            test_logits=test_logits,
            dataset=self.ds,
        )

    def _save_safetensors(self, model: nn.Module) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        # Tensors that share memory (tied weights) are stored once each, as copies.
        seen: dict[int, str] = {}
        for k, v in list(state.items()):
            ptr = v.data_ptr()
            if ptr in seen and v.numel():
                state[k] = v.clone()
            seen[ptr] = k
        meta = {
            "format": "pt",
            "convzoo": json.dumps(
                {
                    "model_name": self.cfg.model,
                    "model_options": self.model_options,
                    "classes": list(self.ds.classes),
                    "mean": list(self.mean),
                    "std": list(self.std),
                    "image_size": list(self.stored_size),
                    "resize": self.resize,
                    "in_channels": self.ds.in_channels,
                    "dataset": self.ds.name,
                    "ema": self.ema is not None,
                }
            ),
        }
        path = self.run_dir / "model.safetensors"
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(state, str(tmp), metadata=meta)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(self.run_dir)

    def _summary(self, r: dict) -> None:
        if self.cfg.quiet:
            return
        best = r["best_val_accuracy"]
        lines = [
            f"{r['model']} on {r['dataset']}: test accuracy {r['test_accuracy']:.2%}"
            + (
                f" ({r['test_accuracy_tta']:.2%} with flip TTA)" if "test_accuracy_tta" in r else ""
            ),
            f"best validation accuracy {best:.2%} (epoch {r['best_epoch']})"
            if best is not None
            else "no validation set",
            f"{r['steps']} steps ({r['epochs']:g} epoch{'' if r['epochs'] == 1 else 's'}), training {format_duration(r['train_seconds'])}, "
            f"wall {format_duration(r['wall_seconds'])}"
            + (f" of a {format_duration(r['time_budget'])} budget" if "time_budget" in r else ""),
            f"files in {self.run_dir}: config.json metrics.jsonl result.json model.safetensors "
            "checkpoints/{last,best}.pt curves.png confusion.png",
        ]
        self.progress.info("\n".join(lines))


def _version() -> str:
    from .. import __version__

    return __version__


def load_latest_checkpoint(
    run_dir: Path, warn: Callable[[str], None] | None = None
) -> tuple[dict, Path]:
    """checkpoints/last.pt of a run, or the newest good one if it is damaged.

    Unsafe files are never skipped over silently: they raise at once.
    """
    ckdir = Path(run_dir) / "checkpoints"
    last = ckdir / "last.pt"
    problems = []
    try:
        return load_checkpoint(last), last
    except UnsafeCheckpointError:
        raise
    except CheckpointError as exc:
        problems.append(str(exc))
    good = []
    for name in ("last.prev.pt", "best.pt"):
        path = ckdir / name
        if not path.exists():
            continue
        try:
            ck = load_checkpoint(path)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        good.append((int(ck.get("step", -1)), path, ck))
    if not good:
        raise CheckpointError(
            f"cannot resume {run_dir}: no usable checkpoint ({'; '.join(problems)})"
        )
    step, path, ck = max(good, key=lambda t: t[0])
    if warn is not None:
        warn(f"{problems[0]}; falling back to {path} (epoch {ck.get('epoch')}, step {step})")
    return ck, path
