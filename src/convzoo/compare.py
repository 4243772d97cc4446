"""Compare models: train each the same way (or take finished runs), then rank them.

Each model is trained as ``convzoo train`` would train it (its family's recipe for
Fashion-MNIST, then the options given) into ``OUT/runs/<model>``; a model already
trained there with the same settings is reused, and an interrupted one is resumed.
Then :func:`write_comparison` writes ``OUT/leaderboard.md``, ``OUT/report.html`` and
the report's comparison charts as PNG files.

>>> plans = plan_runs(["resnet18", "nin"], {"epochs": 1}, Path("runs/cmp"))
>>> finished, failed = train_all(plans, train=convzoo.training.train_run)
>>> write_comparison(finished, Path("runs/cmp"))
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import CHECKPOINT_DIR, CONFIG_FILE, RESULT_FILE, load_run, refuse_overwrite
from .errors import ConfigError
from .registry import check_model_name
from .train import TrainConfig, TrainingDiverged, TrainResult, build_config, train
from .train.config import RESUME_OPTIONS, flag_of, to_argv

# The default model of each of the six families.
ALL_MODELS = ("alexnet", "vgg11_bn", "nin", "googlenet", "resnet18", "densenet121")

# The TrainConfig fields a comparison passes to every model's training.
TRAIN_FIELDS = (
    "dataset", "data_dir", "epochs", "time_budget", "seed", "width", "limit_train",
    "val_size", "batch_size", "device", "threads", "quiet",
)  # fmt: skip
# Of those, the ones that still mean something when finished runs are compared.
RUNS_FIELDS = ("quiet", "device", "data_dir")

# What write_comparison writes into OUT (the chart names come from the report).
REPORT_FILE = "report.html"
LEADERBOARD_FILE = "leaderboard.md"

Log = Callable[[str], None]
Trainer = Callable[..., TrainResult]


def _quiet(line: str) -> None:
    pass


def check_models(
    models: list[str],
    *,
    runs: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    recipe: str | None = None,
) -> list[str]:
    """The model names to train, checked, in order, without repeats; [] with ``runs``
    (finished runs to compare), where training options are refused."""
    overrides = overrides or {}
    if runs is not None:
        if models:
            raise ConfigError(
                "give either models to train or --runs RUN_DIR... to compare finished runs, "
                "not both"
            )
        training = [k for k in TRAIN_FIELDS if k in overrides and k not in RUNS_FIELDS]
        if training or recipe:
            flag = flag_of(training[0]) if training else "--recipe"
            raise ConfigError(
                f"{flag} has no effect with --runs (nothing is trained); leave it out"
            )
        return []
    if not models:
        raise ConfigError("no models to compare: give model names, --all, or --runs RUN_DIR...")
    out: list[str] = []
    for name in models:
        check_model_name(name)
        if name not in out:
            out.append(name)
    return out


@dataclass
class Plan:
    """How one model of a comparison is trained."""

    model: str
    run_dir: Path
    overrides: dict[str, Any]  # the TrainConfig fields given, with out = run_dir
    config: TrainConfig
    state: str | None  # "done" (reuse), "partial" (resume) or None (train)
    recipe: str | None = None

    @property
    def command(self) -> str:
        """The `convzoo train` line that trains this model as the comparison does."""
        import shlex

        return shlex.join(["convzoo", *to_argv(self.model, self.overrides, recipe=self.recipe)])


def plan_runs(
    models: list[str],
    overrides: dict[str, Any],
    out: Path,
    *,
    recipe: str | None = None,
    note: Log = _quiet,
) -> list[Plan]:
    """Every model's configuration, built and checked before anything is trained
    (``note`` gets what :func:`~convzoo.train.build_config` says of a recipe)."""
    plans = []
    for model in models:
        run_dir = out / "runs" / model
        given = {**overrides, "out": str(run_dir)}
        cfg = build_config(model, given, recipe=recipe, note=note)
        state = existing_state(run_dir, cfg, overrides)
        plans.append(Plan(model, run_dir, given, cfg, state, recipe))
    return plans


def existing_state(run_dir: Path, cfg: TrainConfig, given: dict[str, Any]) -> str | None:
    """'done' (a finished run of the same settings), 'partial' (interrupted) or None.

    A run of other settings is a :class:`ConfigError` naming the first flag that
    differs: one folder never mixes two comparisons. Options that may change on resume
    (:data:`~convzoo.train.config.RESUME_OPTIONS`) may differ.
    """
    has_run = (run_dir / RESULT_FILE).is_file() or (run_dir / CHECKPOINT_DIR).is_dir()
    if not run_dir.exists() or not has_run:
        return None
    try:
        saved = json.loads((run_dir / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"{run_dir} holds a run without a readable {CONFIG_FILE}; choose another --out"
        ) from None
    if not isinstance(saved, dict) or saved.get("model") != cfg.model:
        other = saved.get("model") if isinstance(saved, dict) else None
        raise ConfigError(
            f"{run_dir} holds a run of {other}, not {cfg.model}; choose another --out"
        )
    wanted = cfg.to_dict()
    for key in [*given, "recipe"]:
        if key in RESUME_OPTIONS or key == "out":
            continue
        if saved.get(key) != wanted.get(key):
            raise ConfigError(
                f"{run_dir} already holds a {cfg.model} run with {flag_of(key)} "
                f"{saved.get(key)!r}, not {wanted.get(key)!r}; choose another --out"
            )
    return "done" if (run_dir / RESULT_FILE).is_file() else "partial"


def train_all(
    plans: list[Plan], *, train: Trainer = train, log: Log = _quiet, warn: Log = _quiet
) -> tuple[list[Path], list[str]]:
    """Train (or reuse, or resume) each planned model: (finished run dirs, failed models).

    ``train`` is :func:`convzoo.train.train` or anything called like it
    (``convzoo compare`` passes :func:`convzoo.training.train_run`, which also draws the
    plots). ``log`` gets the progress lines. A model whose training diverges, or whose
    options turn out unusable for it (say, a time budget too short for it), is
    reported through ``warn`` and the others still run. :class:`~convzoo.train.TrainingInterrupted` is raised as it comes: running the
    same comparison again resumes it.
    """
    finished: list[Path] = []
    failed: list[str] = []
    for i, plan in enumerate(plans, start=1):
        head = f"[{i}/{len(plans)}] {plan.model}"
        if plan.state == "done":
            log(f"{head}: already trained in {plan.run_dir}, reused")
            finished.append(plan.run_dir)
            continue
        started = time.perf_counter()
        try:
            if plan.state == "partial":
                log(f"{head}: resuming the interrupted run in {plan.run_dir}")
                cfg = TrainConfig(model=plan.model)
                for key in RESUME_OPTIONS:
                    if key in plan.overrides:
                        setattr(cfg, key, plan.overrides[key])
                train(cfg, resume=plan.run_dir, command=plan.command, started=started)
            else:
                log(f"{head}: training into {plan.run_dir}")
                train(plan.config, command=plan.command, started=started)
        except (TrainingDiverged, ConfigError) as exc:
            warn(f"{plan.model}: {exc}")
            failed.append(plan.model)
            continue
        finished.append(plan.run_dir)
    return finished, failed


def check_output(out: Path, run_dirs: list[Path]) -> None:
    """:class:`ConfigError` when ``out`` is not a folder, or when what a comparison
    writes there would land on a run's own files."""
    from .report.html import CHART_FILES

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory; choose a folder")
    for run_dir in run_dirs:
        if out.resolve() == Path(run_dir).resolve():
            raise ConfigError(
                f"--out {out} is the run directory {run_dir} itself; choose another --out"
            )
    for name in (REPORT_FILE, LEADERBOARD_FILE, *CHART_FILES):
        refuse_overwrite(out / name, run_dirs, "--out")


def check_runs(run_dirs: list[str]) -> list[Path]:
    """The finished runs to compare, every one read (and checked) before any work."""
    for path in run_dirs:
        load_run(path)
    return [Path(p) for p in run_dirs]


def write_comparison(
    run_dirs: list[Path],
    out: Path,
    *,
    command: str | None = None,
    device: str = "cpu",
    speed: bool = True,
    data_dir: str | None = None,
    log: Log = _quiet,
):
    """``OUT/report.html``, ``OUT/leaderboard.md`` and the charts of ``run_dirs``;
    returns the report (its ``markdown()`` is the leaderboard)."""
    from .infer import optimize
    from .report.html import build_report

    check_output(out, run_dirs)
    out.mkdir(parents=True, exist_ok=True)
    return build_report(
        run_dirs,
        out / REPORT_FILE,
        markdown=out / LEADERBOARD_FILE,
        command=command,
        device="cpu" if device == "auto" else device,
        speed=speed,
        data_dir=data_dir,
        log=log,
        charts=out,
        optimize=optimize,  # images/s with the fast backend, as eval and predict run
    )
