"""convzoo train: train a model, with a recipe, a time budget, checkpoints and resume.

Under ``torchrun --nproc-per-node N -m convzoo train ...`` every process runs this
command; they train together (see :mod:`convzoo.train.distributed`) and rank 0 prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import non_negative_float, non_negative_int, positive_float, positive_int

# Options whose values go straight into TrainConfig fields of the same name.
FIELDS = (
    "dataset", "data_dir", "epochs", "time_budget", "batch_size", "optimizer", "lr",
    "momentum", "nesterov", "weight_decay", "schedule", "warmup", "label_smoothing",
    "mixup", "cutmix", "crop_padding", "flip", "erasing", "ema", "tta", "amp",
    "channels_last", "compile", "seed", "deterministic", "device", "threads",
    "limit_train", "val_size", "out", "image_size", "small_input", "width",
    "save_every_steps", "quiet", "sync_bn",
)  # fmt: skip


def _duration(text: str) -> float:
    from ..errors import ConfigError
    from ..train.schedule import parse_duration

    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fraction_below_one(text: str) -> float:
    value = non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _probability(text: str) -> float:
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}")
    return value


def _share(text: str, what: str) -> float:
    """'10%' -> 0.1; otherwise the number itself (>= 0)."""
    t = text.strip()
    if not t.endswith("%"):
        return non_negative_float(t)
    value = non_negative_float(t[:-1]) / 100
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{what} must be under 100%, got {text!r}")
    return value


def _warmup(text: str) -> float:
    """'2' (epochs), '0.1' or '10%' (fraction of the run)."""
    return _share(text, "warm-up")


def _val_size(text: str) -> float:
    """'5000' (images), '0.1' or '10%' (fraction of the training set)."""
    value = _share(text, "validation size")
    if value >= 1:
        if value != int(value):
            raise argparse.ArgumentTypeError(
                f"validation size must be a whole number of images or a fraction, got {text!r}"
            )
        return int(value)
    return value


def _ema(text: str) -> float:
    value = _fraction_below_one(text)
    if value == 0:
        return 0.0
    if value < 0.5:
        raise argparse.ArgumentTypeError(f"EMA decay is usually 0.99-0.9999, got {text!r}")
    return value


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (recipes, time budget, checkpoints, resume)",
        description=(
            "Train MODEL on a dataset. Options left out come from the recipe (for "
            "Fashion-MNIST, recipes/fashion-mnist/<family>.toml when it exists), then "
            "from the defaults. The run directory gets config.json, metrics.jsonl, "
            "checkpoints/, model.safetensors, result.json and plots."
        ),
    )
    S = argparse.SUPPRESS
    bool_opt = argparse.BooleanOptionalAction
    p.add_argument("model", help="a model name (`convzoo list`)")
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset", default=S, help="fashion-mnist (default), mnist, cifar10 or a folder"
    )
    g.add_argument(
        "--data-dir", default=S, metavar="DIR", help="where to look for the dataset first"
    )
    g.add_argument(
        "--val-size",
        type=_val_size,
        default=S,
        metavar="N",
        help="validation images carved from the training set (default 5000; 10%% for folders)",
    )
    g.add_argument(
        "--limit-train",
        type=positive_int,
        default=S,
        metavar="N",
        help="use only the first N training images (after the validation split)",
    )
    g.add_argument(
        "--image-size",
        type=positive_int,
        default=S,
        metavar="PX",
        help="resize images to PX x PX (e.g. 224 for the faithful forms)",
    )
    g = p.add_argument_group("length")
    length = g.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=positive_int, default=S, help="epochs (default 10)")
    length.add_argument(
        "--time-budget",
        type=_duration,
        default=S,
        metavar="T",
        help="wall-clock budget for the whole run: 90s, 5m, 1h30m or seconds",
    )
    g = p.add_argument_group("model")
    g.add_argument("--width", type=positive_float, default=S, help="channel multiplier (default 1)")
    g.add_argument(
        "--small-input",
        action=bool_opt,
        default=S,
        help="the 28-32 px form (default: on for images under 64 px)",
    )
    g.add_argument(
        "--model-option",
        action="append",
        default=S,
        metavar="KEY=VALUE",
        help="a family option, e.g. aux_logits=true (repeatable)",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument(
        "--recipe",
        default=None,
        metavar="NAME",
        help="recipes/<dataset>/NAME.toml, a .toml path, or 'none'",
    )
    g.add_argument("--batch-size", type=positive_int, default=S, help="default 128")
    g.add_argument("--optimizer", choices=("sgd", "adamw"), default=S, help="default sgd")
    g.add_argument("--lr", type=positive_float, default=S, help="peak learning rate")
    g.add_argument("--momentum", type=_fraction_below_one, default=S, help="SGD momentum (0.9)")
    g.add_argument("--nesterov", action=bool_opt, default=S, help="Nesterov momentum (on)")
    g.add_argument("--weight-decay", type=non_negative_float, default=S)
    g.add_argument(
        "--schedule",
        choices=("onecycle", "cosine", "step", "constant"),
        default=S,
        help="learning-rate schedule (default onecycle)",
    )
    g.add_argument(
        "--warmup",
        type=_warmup,
        default=S,
        help="warm-up: epochs (>= 1) or a fraction of the run (0.1 or 10%%)",
    )
    g.add_argument("--label-smoothing", type=_fraction_below_one, default=S)
    g.add_argument(
        "--ema",
        type=_ema,
        nargs="?",
        const=0.999,
        default=S,
        metavar="DECAY",
        help="keep an EMA of the weights (default decay 0.999); it is evaluated and saved",
    )
    g = p.add_argument_group("augmentation")
    g.add_argument(
        "--crop-padding",
        type=non_negative_int,
        default=S,
        metavar="PX",
        help="random crop after zero padding",
    )
    g.add_argument("--flip", action=bool_opt, default=S, help="random horizontal flips")
    g.add_argument("--erasing", type=_probability, default=S, metavar="P", help="random erasing")
    g.add_argument("--mixup", type=non_negative_float, default=S, metavar="ALPHA")
    g.add_argument("--cutmix", type=non_negative_float, default=S, metavar="ALPHA")
    g.add_argument(
        "--tta",
        action=bool_opt,
        default=S,
        help="also report flip test-time augmentation at the final test",
    )
    g = p.add_argument_group("machine")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default=S)
    g.add_argument(
        "--threads",
        type=positive_int,
        default=S,
        help="CPU threads (default: all cores, shared by the processes of a torchrun)",
    )
    g.add_argument(
        "--amp",
        action=bool_opt,
        default=S,
        help="mixed precision (bf16 on CPU; bf16 or fp16 on CUDA)",
    )
    g.add_argument("--channels-last", action=bool_opt, default=S)
    g.add_argument("--compile", action=bool_opt, default=S, help="torch.compile the model")
    g.add_argument(
        "--sync-bn",
        action=bool_opt,
        default=S,
        help="under torchrun: batch norm over the global batch (SyncBatchNorm)",
    )
    g.add_argument("--seed", type=int, default=S, help="default 0")
    g.add_argument(
        "--deterministic",
        action=bool_opt,
        default=S,
        help="deterministic algorithms (one thread unless --threads)",
    )
    g = p.add_argument_group("run")
    g.add_argument(
        "--out",
        default=S,
        metavar="RUN_DIR",
        help="run directory (default runs/<model>-<dataset>-<time>)",
    )
    g.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint",
    )
    g.add_argument(
        "--save-every-steps",
        type=non_negative_int,
        default=S,
        metavar="N",
        help="also checkpoint every N steps (default: every epoch)",
    )
    g.add_argument("--quiet", action="store_true", default=S, help="no progress output")
    p.set_defaults(run=run)


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The TrainConfig fields given on the command line."""
    from ..train.config import parse_option

    given = {k: getattr(args, k) for k in FIELDS if hasattr(args, k)}
    if hasattr(args, "model_option"):
        given["model_options"] = dict(parse_option(t) for t in args.model_option)
    return given


def run(args) -> int:
    from ..train.distributed import SetupFailed, session
    from .common import process_start

    started = process_start()
    try:
        with session() as procs:
            return _run(args, procs, started)
    except SetupFailed as exc:  # every rank stops; rank 0 says why
        if exc.show:
            sys.stderr.write(f"convzoo train: error: {exc}\n")
        return exc.exit_code


def _run(args, procs, started: float) -> int:
    from ..train.config import build_config
    from ..train.loop import TrainingDiverged, TrainingInterrupted
    from ..training import train_run as train

    overrides = overrides_from_args(args)

    def config():
        if args.resume is not None:
            # Only rank 0 reads the run directory (the others get its checkpoint).
            return _resume_config(
                args.model, Path(args.resume), overrides, args.recipe, read=procs.is_main
            )
        # The recipe applied is printed by train() once the options are known to be usable.
        return build_config(args.model, overrides, recipe=args.recipe)

    cfg = procs.agree(config)
    resume = args.resume
    command = _command(args, overrides)
    try:
        train(cfg, resume=resume, command=command, started=started)
    except TrainingInterrupted as exc:
        if procs.is_main:
            sys.stderr.write(f"\nconvzoo train: {exc}\n")
        return exc.exit_code
    except TrainingDiverged as exc:
        if procs.is_main:
            sys.stderr.write(f"convzoo train: error: {exc}\n")
        return 1
    return 0


def _command(args, overrides: dict) -> str:
    """The command line as typed, or rebuilt from the options when called as a function."""
    from .common import command_line

    if sys.argv[1:2] == ["train"]:
        return command_line(sys.argv[1:])
    argv = ["train", args.model]
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{flag[2:]}")
        elif key == "model_options":
            for k, v in value.items():
                argv += ["--model-option", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
        else:
            argv += [flag, str(value)]
    if args.recipe:
        argv += ["--recipe", args.recipe]
    if args.resume:
        argv += ["--resume", args.resume]
    return command_line(argv)


def _resume_config(
    model: str, run_dir: Path, overrides: dict, recipe: str | None, *, read: bool = True
):
    """The saved config of ``run_dir``; options given now must not change it.

    With ``read`` false (ranks other than 0 of a distributed run) the run directory is
    not looked at: rank 0 checks it and sends its checkpoint to the others.
    """
    from ..errors import CheckpointError, ConfigError
    from ..registry import check_model_name
    from ..train.config import RESUME_OPTIONS, TrainConfig

    check_model_name(model)
    if not read:
        if recipe is not None:
            raise ConfigError("--recipe cannot be used with --resume (the run keeps its recipe)")
        cfg = TrainConfig(model=model)
        for key in RESUME_OPTIONS:
            if key in overrides:
                setattr(cfg, key, overrides[key])
        return cfg
    if not run_dir.exists():
        raise CheckpointError(f"cannot resume: {run_dir} does not exist")
    config_path = run_dir / "config.json"
    if not run_dir.is_dir() or not (run_dir / "checkpoints").is_dir() or not config_path.is_file():
        raise CheckpointError(
            f"cannot resume: {run_dir} is not a run directory (no config.json and checkpoints/)"
        )
    try:
        saved = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot resume: {config_path} is unreadable ({exc})") from None
    if not isinstance(saved, dict) or "model" not in saved:
        raise CheckpointError(f"cannot resume: {config_path} is not a convzoo run config")
    if saved["model"] != model:
        raise CheckpointError(f"cannot resume: {run_dir} is a run of {saved['model']}, not {model}")
    if recipe is not None:
        raise ConfigError("--recipe cannot be used with --resume (the run keeps its recipe)")
    for key, value in overrides.items():
        if key in RESUME_OPTIONS or key == "out":
            continue
        if key == "model_options":
            value = {**saved.get("model_options", {}), **value}
        if saved.get(key) != value:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(
                f"{flag} cannot change when resuming (the run has {saved.get(key)!r}); "
                "start a new run instead"
            )
    if "out" in overrides and Path(overrides["out"]).resolve() != run_dir.resolve():
        raise ConfigError("--out cannot differ from --resume RUN_DIR")
    cfg = TrainConfig(model=model)
    for key in RESUME_OPTIONS:
        if key in overrides:
            setattr(cfg, key, overrides[key])
    return cfg
