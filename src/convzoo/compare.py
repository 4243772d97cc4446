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

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .artifacts import load_run, refuse_overwrite
from .errors import ConfigError
from .registry import check_model_name
from .train import build_config
from .train.config import flag_of
from .train.plans import Plan, existing_state, train_all

__all__ = [
    "ALL_MODELS", "Plan", "check_models", "check_output", "check_runs", "existing_state",
    "plan_runs", "train_all", "write_comparison",
]  # fmt: skip

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
EXPLAIN_DIR = "explain"  # OUT/explain/<run>: each run's explain page on the shared images
# How many test images the side-by-side section shows: most models right, then mistakes.
EXPLAIN_RIGHT = 3
EXPLAIN_WRONG = 3

Log = Callable[[str], None]


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
    explain: bool = True,
    log: Log = _quiet,
):
    """``OUT/report.html``, ``OUT/leaderboard.md`` and the charts of ``run_dirs``;
    returns the report (its ``markdown()`` is the leaderboard). With ``explain``, the
    report also shows the same test images explained by each run
    (:func:`explain_side_by_side`, pages in ``OUT/explain/``)."""
    from .infer import optimize
    from .report.html import build_report

    check_output(out, run_dirs)
    out.mkdir(parents=True, exist_ok=True)
    side = None
    if explain:
        side = explain_side_by_side(
            run_dirs, out / EXPLAIN_DIR, device=device, data_dir=data_dir, log=log
        )
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
        explained=side,
    )


def explain_side_by_side(
    run_dirs: list[Path],
    out: Path,
    *,
    device: str = "cpu",
    data_dir: str | None = None,
    right: int = EXPLAIN_RIGHT,
    wrong: int = EXPLAIN_WRONG,
    log: Log = _quiet,
):
    """The same test images explained by each run, for the report
    (:class:`~convzoo.report.view.SideBySide`), or None when there is nothing to show.

    The images are picked over all runs at once
    (:func:`~convzoo.explain.images.pick_shared_examples`): ``right`` that most runs get
    right, then the ``wrong`` mistakes the runs make with the most confidence. Each run
    is then explained on those images by :func:`~convzoo.explain.explain_run` (Grad-CAM
    at its default layer), which writes its page into ``out/<NN>-<model>/``. Runs on
    other test sets than the first run's are left out, with a note; a run that cannot
    be explained is a note too, never a failed comparison.
    """
    from .explain.images import pick_shared_examples
    from .explain.run import explain_run, test_probabilities
    from .report.runs import load_runs
    from .report.view import ExplainedCell, ExplainedImage, SideBySide

    runs = load_runs(list(run_dirs))  # labelled as the report labels them
    if not runs:
        return None
    dev = "cpu" if device == "auto" else device
    notes: list[str] = []
    probs, labels, kept = [], None, []
    for run in runs:
        if run.dataset != runs[0].dataset:
            notes.append(f"{run.path} is on {run.dataset}, not {runs[0].dataset}: left out")
            continue
        try:
            p, y = test_probabilities(run.path, device=dev, data_dir=data_dir)
        except Exception as exc:  # noqa: BLE001 - one run must not sink the report
            notes.append(f"{run.path} could not be explained: {exc}")
            continue
        if labels is not None and (p.shape != probs[0].shape or not bool((y == labels).all())):
            notes.append(f"{run.path} was tested on other images than the first run: left out")
            continue
        probs.append(p)
        labels = y
        kept.append(run)
    if not kept:
        return SideBySide([], [], notes=notes) if notes else None
    picked = pick_shared_examples(probs, labels, right, wrong)
    if not picked:
        return None
    indices = [i for i, _ in picked]
    columns: list[list[ExplainedCell]] = []
    layers = []
    for j, run in enumerate(kept, start=1):
        log(f"explaining {run.label} on test images {', '.join(map(str, indices))}")
        folder = out / f"{j:02d}-{run.model}"
        try:
            done = explain_run(run.path, layer=None, out=folder, device=dev,
                               data_dir=data_dir, test_indices=indices)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - one run must not sink the report
            notes.append(f"{run.label} could not be explained: {exc}")
            columns.append([ExplainedCell(None)] * len(indices))
            continue
        layers.append(f"{run.label}: {done.layer}")
        columns.append(
            [ExplainedCell((folder / e.cam_file).read_bytes(), *e.top[0]) for e in done.examples]
        )
    classes = done.classes if layers else []
    images = [
        ExplainedImage(
            f"test image #{i}",
            classes[int(labels[i])] if classes else str(int(labels[i])),
            kind,
            [column[r] for column in columns],
        )
        for r, (i, kind) in enumerate(picked)
    ]
    note = (
        "Each picture is the test image and, beside it, the Grad-CAM of the class the "
        "model predicts (bright: the regions that raised that class's score), at the last "
        "convolutional stage: " + "; ".join(layers) + f". Each model's page is in {out}."
    )
    return SideBySide([r.label for r in kept], images, note, notes)
