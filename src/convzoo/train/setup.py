"""What a training run is built from: its data split, model, loaders, run directory and
(when resumed) its saved configuration. The trainer calls these in order; each can fail
with one clear :class:`~convzoo.errors.ConvzooError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import glob
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LOCK_FILE,
    METRICS_FILE,
    MODEL_FILE,
    RESULT_FILE,
    RunLock,
)
from ..device import available_cores, busy_machine_warning, resolve_device
from ..errors import CheckpointError, ConfigError, DataError
from .config import (
    DEFAULT_EPOCHS,
    DEFAULT_ONECYCLE_WARMUP,
    TrainConfig,
    merge_resume,
    resume_overrides,
)
from .distributed import (
    Processes,
    SetupFailed,
    convert_sync_batchnorm,
    data_signature,
    global_batch_line,
    rank_seed,
    shard_bounds,
)
from .probes import budget_probe
from .rng import seed_everything
from .schedule import Schedule, as_fraction

SMALL_INPUT_BELOW = 64  # images under this many pixels get the small-input form
DEFAULT_VAL_SIZE = 5000
DEFAULT_FOLDER_VAL_FRACTION = 0.1


# -- resume ------------------------------------------------------------------------------


def resume_config(given: TrainConfig, ckpt: dict, path: Path, run_dir: Path) -> TrainConfig:
    """The configuration a run resumed from checkpoint ``ckpt`` (read from ``path``)
    continues with: the saved one, with the options that may change taken from ``given``
    (:func:`convzoo.train.config.merge_resume`)."""
    if ckpt.get("model_name") != given.model:
        raise CheckpointError(
            f"cannot resume: {run_dir} is a run of {ckpt.get('model_name')}, not {given.model}"
        )
    try:
        cfg = merge_resume(ckpt.get("config") or {}, resume_overrides(given), where=f"{path}")
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(
            f"cannot resume: the config saved in {path} is unusable ({exc})"
        ) from None
    cfg.out = str(run_dir)
    return cfg


def check_resume_dir(run_dir: Path) -> Path:
    """``run_dir`` if it is a run directory, else :class:`CheckpointError`."""
    if not run_dir.exists():
        raise CheckpointError(f"cannot resume: {run_dir} does not exist")
    if not run_dir.is_dir() or not (run_dir / CHECKPOINT_DIR).is_dir():
        raise CheckpointError(
            f"cannot resume: {run_dir} is not a run directory (no checkpoints/ in it)"
        )
    return run_dir


# -- the run directory -------------------------------------------------------------------


def default_run_dir(model: str, dataset_name: str, is_folder: bool) -> str:
    """runs/MODEL-DATASET-YYYYmmdd-HHMMSS (with -2, -3 ... if taken)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = dataset_name if not is_folder else Path(dataset_name).name or "folder"
    base = Path("runs") / f"{model}-{slug}-{stamp}"
    out, i = base, 1
    while out.exists():
        i += 1
        out = base.with_name(f"{base.name}-{i}")
    return str(out)


def _is_leftover(path: Path, top: Path) -> bool:
    """A file a new run may find in its folder: the lock, a temporary file, or what a
    run killed before its first checkpoint wrote (its config.json beside checkpoints/)."""
    rel = path.relative_to(top)
    if rel.name.startswith(".") and (rel.name.endswith(".tmp") or rel.name == LOCK_FILE):
        return True
    if rel == Path(CHECKPOINT_DIR):
        return path.is_dir() and all(p.name.startswith(".") for p in path.iterdir())
    return rel == Path(CONFIG_FILE) and (top / CHECKPOINT_DIR).is_dir()


def check_new_run_dir(out: Path) -> None:
    """A new run starts only in a folder that does not exist or holds nothing of
    anyone's (a run killed before its first checkpoint left nothing to resume)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if any((out / CHECKPOINT_DIR).glob("*.pt")) or (out / RESULT_FILE).exists():
        raise ConfigError(
            f"{out} already holds a run; continue it with --resume {out} or choose another --out"
        )
    others = sorted(p.name for p in out.iterdir() if not _is_leftover(p, out))
    if others:
        shown = ", ".join(others[:3]) + (" ..." if len(others) > 3 else "")
        raise ConfigError(
            f"--out {out} is not empty (it holds {shown}); a new run needs an empty or new "
            "folder: choose another --out"
        )


def open_run_dir(cfg: TrainConfig, data: RunData, *, new: bool) -> tuple[Path, RunLock | None]:
    """Rank 0: the run directory (``cfg.out``, chosen if None) with its checkpoints/
    folder; a new run's is locked before its first byte is written (a resumed run's
    was locked before its checkpoint was read)."""
    if cfg.out is None:
        cfg.out = default_run_dir(cfg.model, data.ds.name, data.is_folder)
    run_dir, lock = Path(cfg.out), None
    if new:
        check_new_run_dir(run_dir)
        lock = RunLock(run_dir).acquire()
        try:
            check_new_run_dir(run_dir)  # again: another run may have just ended there
        except ConfigError:
            lock.release()
            raise
    try:
        (run_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if lock is not None:
            lock.release()
        raise ConfigError(f"cannot create the run directory {run_dir}: {exc.strerror}") from None
    remove_stale_files(run_dir)
    return run_dir, lock


def remove_stale_files(run_dir: Path) -> None:
    """Temporary files a killed writer left in ``run_dir`` (the caller holds its lock,
    so no other process is writing them)."""
    names = (CONFIG_FILE, METRICS_FILE, MODEL_FILE, RESULT_FILE)
    stale = [p for n in names for p in run_dir.glob(f".{glob.escape(n)}.*.tmp")]
    stale.append(run_dir / CHECKPOINT_DIR / ".probe.pt")  # a time budget's measurement
    for path in stale:
        with contextlib.suppress(OSError):
            path.unlink()


# Set (to anything) to skip the busy-machine check at start-up (tests, scripted runs).
NO_BUSY_CHECK = "CONVZOO_NO_BUSY_CHECK"


def warn_if_busy(threads: int, warn: Callable[[str], None]) -> None:
    """Say so when other work leaves fewer than ``threads`` cores free (unless
    ``$CONVZOO_NO_BUSY_CHECK`` is set)."""
    if not os.environ.get(NO_BUSY_CHECK):
        busy = busy_machine_warning(threads)
        if busy:
            warn(busy)


def check_data_dir(d: str | None) -> None:
    if d is None:
        return
    path = Path(d).expanduser()
    if not path.exists():
        raise DataError(f"data directory {d} does not exist")
    if not path.is_dir():
        raise DataError(f"data directory {d} is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise DataError(f"data directory {d} is not readable")


def configure_device(cfg: TrainConfig, procs: Processes) -> torch.device:
    """The run's device (``cfg.device``: resolved), its threads (``cfg.threads``: the
    cores of a machine are shared by the processes running on it; 1 when deterministic)
    and deterministic algorithms; the caller puts the previous torch settings back."""
    device = resolve_device(cfg.device, procs.local_rank if procs.enabled else None)
    cfg.device = device.type
    if cfg.threads is None:
        cores = max(1, available_cores() // procs.local_world_size)
        cfg.threads = 1 if cfg.deterministic else cores
    torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # On CUDA some kernels (e.g. adaptive pooling's backward) have no deterministic
        # form: warn there instead of refusing to train.
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def join_processes(t) -> str:
    """Distributed runs: take rank 0's run directory, check that every rank found the
    same data, wrap the model in DistributedDataParallel (``t.forward_model``), give
    each rank its own dropout RNG. Returns the line that describes the processes."""
    from torch.nn.parallel import DistributedDataParallel

    procs, cfg, data = t.procs, t.cfg, t.data
    signature = data_signature(data.train_y, data.val_y, data.ds.test_labels, data.train_x)
    mine = (cfg.out, signature, data.num_train, data.num_val, len(data.ds.test_labels))
    every = procs.all_gather_object(mine)
    differ = [r for r, theirs in enumerate(every) if theirs[1:] != every[0][1:]]
    if differ:
        lines = ", ".join(
            f"rank {r}: {x[2]} training, {x[3]} validation, {x[4]} test images (fingerprint {x[1]})"
            for r, x in enumerate(every)
            if r == 0 or r in differ
        )
        raise SetupFailed(
            f"the processes found different data ({lines}); every machine needs the same "
            "copy of the dataset (check --data-dir and $CONVZOO_DATA on each)",
            show=procs.is_main,
        )
    cfg.out = every[0][0]
    t.run_dir = Path(cfg.out)
    ids = [t.device.index] if t.device.type == "cuda" else None
    ddp = DistributedDataParallel(t.model, device_ids=ids)
    t.forward_model = torch.compile(ddp) if cfg.compile else ddp
    if procs.rank > 0:  # dropout differs between ranks; rank 0 goes on as one process
        seed_everything(rank_seed(cfg.seed, procs.rank))
    threads = "1 thread" if cfg.threads == 1 else f"{cfg.threads} threads"
    return (
        f"distributed: {procs.world_size} processes ({procs.backend}), "
        f"{global_batch_line(cfg.batch_size, procs.world_size)}, {threads} each"
        + (f", SyncBatchNorm in {t.sync_bn_layers} layers" if t.sync_bn_layers else "")
    )


# -- data --------------------------------------------------------------------------------


@dataclasses.dataclass
class RunData:
    """The dataset of a run, split: training images, validation images, the test set."""

    ds: Any  # convzoo.data.datasets.Dataset
    is_folder: bool
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    stored_size: tuple[int, int]
    resize: int | None
    input_size: tuple[int, int, int]
    start_line: str = ""

    @property
    def num_train(self) -> int:
        return len(self.train_y)

    @property
    def num_val(self) -> int:
        return len(self.val_y)


def load_data(cfg: TrainConfig, saved: dict | None, warn: Callable[[str], None]) -> RunData:
    """Load ``cfg.dataset``, carve the validation split (stratified, seeded), resolve
    ``val_size`` and ``small_input`` in ``cfg``; ``saved`` is a checkpoint's ``data``
    (its normalisation is kept)."""
    from ..data.datasets import DATASET_NAMES, load_dataset
    from ..data.loader import channel_stats, stratified_split

    ds = load_dataset(cfg.dataset, cfg.data_dir, image_size=cfg.image_size,
                      center_crop=cfg.center_crop)  # fmt: skip
    is_folder = ds.name not in DATASET_NAMES
    if not is_folder:
        cfg.dataset = ds.name
    n = len(ds.train_labels)
    if cfg.val_size is None:
        cfg.val_size = round(n * DEFAULT_FOLDER_VAL_FRACTION) if is_folder else DEFAULT_VAL_SIZE
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
            warn(
                f"--limit-train {cfg.limit_train} is more than the {len(train_idx)} "
                "training images left after the validation split; using them all"
            )
        train_idx = train_idx[: cfg.limit_train]
    train_x = ds.train_images.index_select(0, train_idx)
    if saved is not None:
        mean, std = tuple(saved["mean"]), tuple(saved["std"])
    elif cfg.normalize == "imagenet":
        mean, std = imagenet_stats(ds.in_channels)
    else:
        mean, std = channel_stats(train_x)
    h, w = ds.image_size
    resize = cfg.image_size
    if resize is not None and (h, w) == (resize, resize):
        resize = None
    input_size = (ds.in_channels, *((resize, resize) if resize else (h, w)))
    if cfg.small_input is None:
        cfg.small_input = min(input_size[1:]) < SMALL_INPUT_BELOW
        why = (
            f"images under {SMALL_INPUT_BELOW} px; --no-small-input for the paper's form"
            if cfg.small_input
            else f"images of {SMALL_INPUT_BELOW} px or more; --small-input for the 28-32 px form"
        )
    else:
        why = "as asked"
    form = "small-input form" if cfg.small_input else "faithful form"
    data = RunData(
        ds=ds,
        is_folder=is_folder,
        train_x=train_x,
        train_y=ds.train_labels.index_select(0, train_idx),
        val_x=ds.train_images.index_select(0, val_idx),
        val_y=ds.train_labels.index_select(0, val_idx),
        mean=mean,
        std=std,
        stored_size=(h, w),
        resize=resize,
        input_size=input_size,
    )
    data.start_line = (
        f"{cfg.model} on {ds.name}: input {'x'.join(map(str, input_size))}, {form} "
        f"({why}); {data.num_train} training, {data.num_val} validation, "
        f"{len(ds.test_labels)} test images" + (f"; {ds.notes}" if ds.notes else "")
    )
    return data


def imagenet_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet's per-channel mean and std (torchvision's), for ``channels`` channels:
    RGB as published; other counts take the average of the three for every channel
    (a gray image then meets the summed kernels of an adapted first convolution)."""
    from ..pretrained import IMAGENET_MEAN, IMAGENET_STD

    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    mean, std = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3
    return (mean,) * channels, (std,) * channels


# -- model -------------------------------------------------------------------------------


def build_model(
    cfg: TrainConfig,
    data: RunData,
    device: torch.device,
    procs: Processes,
    saved_options: dict | None,
    warn: Callable[[str], None],
) -> tuple[nn.Module, dict[str, Any], int]:
    """(model on ``device``, its get_model options, SyncBatchNorm layers converted)."""
    from ..anatomy import check_memory
    from ..models import check_input_size
    from ..registry import get_model

    options = {
        "num_classes": data.ds.num_classes,
        "in_channels": data.ds.in_channels,
        "small_input": bool(cfg.small_input),
        "width": float(cfg.width),
        **cfg.model_options,
    }
    if saved_options is not None:
        for key in ("num_classes", "in_channels"):
            if saved_options.get(key) != options[key]:
                raise CheckpointError(
                    f"cannot resume: the checkpoint's {cfg.model} has {key}="
                    f"{saved_options.get(key)}, the data here has {options[key]}"
                )
    limit = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    # the memory a training step needs, estimated on the meta device before any is spent
    check_memory(
        cfg.model,
        options,
        data.input_size,
        max(1, cfg.batch_size // procs.world_size),
        training=True,
        what="convzoo train",
        limit=limit,
        fix="lower --batch-size, --width or --image-size",
    )
    model = get_model(cfg.model, **options)
    check_input_size(model, data.input_size)
    model.name = cfg.model
    if cfg.pretrained is not None and saved_options is None:  # a resumed run has its own
        from ..pretrained import load_pretrained

        model.pretrained = load_pretrained(
            model, cfg.model, cfg.pretrained, classes=list(data.ds.classes)
        )
    sync_bn_layers = 0
    if cfg.sync_bn and procs.enabled:
        model, sync_bn_layers = convert_sync_batchnorm(model, device)
        if not sync_bn_layers:
            warn(f"--sync-bn: {cfg.model} has no batch norm; nothing to do")
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model, options, sync_bn_layers


def mixed_precision(cfg: TrainConfig, device: torch.device):
    """(autocast dtype or None, GradScaler or None) for ``--amp``."""
    if not cfg.amp:
        return None, None
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        return (torch.bfloat16, None) if bf16 else (torch.float16, torch.amp.GradScaler("cuda"))
    return torch.bfloat16, None


# -- loaders -----------------------------------------------------------------------------


@dataclasses.dataclass
class Loaders:
    train: Any  # convzoo.data.loader.Loader
    val: Any | None
    eval_batch: int
    common: dict

    def eval_loader(self, images: torch.Tensor, labels: torch.Tensor, procs: Processes):
        """A loader of this rank's contiguous shard of an evaluation set (all of it with
        one process); the shards are disjoint and cover the set, with no padding."""
        from ..data.loader import Loader

        lo, hi = shard_bounds(len(labels), procs.rank, procs.world_size)
        return Loader(images[lo:hi], labels[lo:hi], batch_size=self.eval_batch, **self.common)


def build_loaders(
    cfg: TrainConfig, data: RunData, device: torch.device, procs: Processes
) -> Loaders:
    from ..data.augment import AugmentConfig, build_augment
    from ..data.loader import Loader

    num_classes = data.ds.num_classes
    aug = build_augment(
        AugmentConfig(
            crop_padding=cfg.crop_padding,
            flip=cfg.flip,
            erasing=cfg.erasing,
            mixup=cfg.mixup,
            cutmix=cfg.cutmix,
        ),
        num_classes,
    )
    common = dict(
        mean=data.mean,
        std=data.std,
        device=device,
        resize=data.resize,
        channels_last=cfg.channels_last,
    )
    # batch_size is the global batch; each rank takes its share of every batch.
    train = Loader(
        data.train_x,
        data.train_y,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=data.num_train >= cfg.batch_size,
        seed=cfg.seed,
        augment=aug,
        num_classes=num_classes,
        rank=procs.rank,
        world_size=procs.world_size,
        **common,
    )
    loaders = Loaders(train, None, max(cfg.batch_size * 2, 256), common)
    if data.num_val:
        loaders.val = loaders.eval_loader(data.val_x, data.val_y, procs)
    return loaders


# -- the plan ----------------------------------------------------------------------------


def plan_steps(trainer) -> tuple[Schedule, int]:
    """(learning-rate schedule, total steps) of a run: the checkpoint's plan when it
    resumes, else what the time budget measures fits in it, else ``epochs`` x the
    batches of an epoch; warm-up and milestones in epochs become fractions of the run."""
    cfg, spe, budget = trainer.cfg, trainer.steps_per_epoch, trainer.budget
    if trainer.ckpt is not None:
        total = int(trainer.ckpt["planned_steps"])
        if budget is not None:
            budget.load_state_dict(trainer.ckpt.get("budget_plan"))
    elif budget is not None:
        total = budget.measure_and_plan(
            budget_probe(trainer),
            steps_per_epoch=spe,
            val_images=trainer.data.num_val,
            test_images=trainer.num_test,
        )
        trainer.model.train()
    else:
        if cfg.epochs is None:
            cfg.epochs = DEFAULT_EPOCHS
        total = cfg.epochs * spe
    nominal_epochs = cfg.epochs if cfg.epochs is not None else total / spe
    if cfg.warmup is None:
        cfg.warmup = DEFAULT_ONECYCLE_WARMUP if cfg.schedule == "onecycle" else 0.0
    warm = as_fraction(cfg.warmup, nominal_epochs, "warm-up")
    milestones = [as_fraction(m, nominal_epochs, "milestone") for m in cfg.milestones]
    return Schedule(cfg.schedule, total, warm, milestones, cfg.gamma), total
