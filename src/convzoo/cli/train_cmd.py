"""convzoo train: train a model, with a recipe, a time budget, checkpoints and resume.

The flags are generated from :class:`convzoo.train.config.TrainConfig`'s declarations
(:mod:`convzoo.cli.options`). Under ``torchrun --nproc-per-node N -m convzoo train ...``
every process runs this command; they train together (see
:mod:`convzoo.train.distributed`) and rank 0 prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .options import add_config_arguments, config_overrides


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
    p.add_argument("model", help="a model name (`convzoo list`)")
    groups = add_config_arguments(p)
    groups["run"].add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint (default: a new run)",
    )
    p.set_defaults(run=run)


def overrides_from_args(args) -> dict:
    """The TrainConfig fields given on the command line (``recipe`` left out)."""
    given = config_overrides(args)
    given.pop("recipe", None)
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
    from ..train import TrainingDiverged, TrainingInterrupted, build_config
    from ..training import train_run

    overrides = overrides_from_args(args)
    recipe = getattr(args, "recipe", None)

    def note(line: str) -> None:
        if procs.is_main:
            sys.stderr.write(f"convzoo train: {line}\n")

    def config():
        if args.resume is not None:
            # Only rank 0 reads the run directory (the others get its checkpoint).
            return resume_config(
                args.model, Path(args.resume), overrides, recipe, read=procs.is_main
            )
        # The recipe applied is printed by train() once the options are known to be usable.
        return build_config(args.model, overrides, recipe=recipe, note=note)

    cfg = procs.agree(config)
    command = _command(args.model, overrides, recipe, args.resume)
    try:
        train_run(cfg, resume=args.resume, command=command, started=started)
    except TrainingInterrupted as exc:
        if procs.is_main:
            sys.stderr.write(f"\nconvzoo train: {exc}\n")
        return exc.exit_code
    except TrainingDiverged as exc:
        if procs.is_main:
            sys.stderr.write(f"convzoo train: error: {exc}\n")
        return 1
    return 0


def _command(model: str, overrides: dict, recipe: str | None, resume: str | None) -> str:
    """The command line as typed, or rebuilt from the options when called as a function."""
    from ..train.argv import to_argv
    from .common import command_line

    if sys.argv[1:2] == ["train"]:
        return command_line(sys.argv[1:])
    return command_line(to_argv(model, overrides, recipe=recipe, resume=resume))


def resume_config(
    model: str, run_dir: Path, overrides: dict, recipe: str | None, *, read: bool = True
):
    """The configuration to hand to ``train(..., resume=run_dir)``: the model and the
    options that may change on resume (:data:`~convzoo.train.config.RESUME_OPTIONS`).

    Options given now that would change the saved run are refused here
    (:func:`~convzoo.train.config.merge_resume`, the one rule). With ``read`` false
    (ranks other than 0 of a distributed run) the run directory is not looked at:
    rank 0 checks it and sends its checkpoint to the others.
    """
    from ..errors import CheckpointError, ConfigError
    from ..registry import check_model_name
    from ..train.config import RESUME_OPTIONS, TrainConfig, merge_resume

    check_model_name(model)
    if recipe is not None:
        raise ConfigError("--recipe cannot be used with --resume (the run keeps its recipe)")
    if read:
        saved = _saved_config(run_dir)
        if saved["model"] != model:
            raise CheckpointError(
                f"cannot resume: {run_dir} is a run of {saved['model']}, not {model}"
            )
        merge_resume(saved, overrides, where=str(run_dir / "config.json"))
        if "out" in overrides and Path(overrides["out"]).resolve() != run_dir.resolve():
            raise ConfigError("--out cannot differ from --resume RUN_DIR; leave --out out")
    cfg = TrainConfig(model=model)
    for key in RESUME_OPTIONS:
        if key in overrides:
            setattr(cfg, key, overrides[key])
    return cfg


def _saved_config(run_dir: Path) -> dict:
    """The ``config.json`` of the run to resume; CheckpointError when there is none."""
    import json

    from ..artifacts import CHECKPOINT_DIR, CONFIG_FILE
    from ..errors import CheckpointError

    if not run_dir.exists():
        raise CheckpointError(f"cannot resume: {run_dir} does not exist")
    config_path = run_dir / CONFIG_FILE
    if not run_dir.is_dir() or not (run_dir / CHECKPOINT_DIR).is_dir() or not config_path.is_file():
        raise CheckpointError(
            f"cannot resume: {run_dir} is not a run directory (no {CONFIG_FILE} and "
            f"{CHECKPOINT_DIR}/); give the folder a `convzoo train` run wrote"
        )
    try:
        saved = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot resume: {config_path} is unreadable ({exc})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), str):
        raise CheckpointError(f"cannot resume: {config_path} is not a convzoo run config")
    return saved
