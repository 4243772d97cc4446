"""Ablations: train a family's network with and without each of its design ideas, alike.

Each family's ablations are data (:data:`ABLATIONS`): named variants, each a table of
model options that switches one idea off (documented in the model's docstring). Every
variant is trained with the family's recipe for the dataset, the same time budget and
the same seeds, into a run directory of its own (``OUT/runs/<variant>/seed<S>``), so
any of them can be evaluated or explained later; a finished run is reused and an
interrupted one resumed when the same command runs again. Then
:func:`write_ablation` writes ``ablation.md``, ``ablation.json``, ``loss-curves.png``
(the training loss of every run, per epoch, overlaid) and ``ablation.html``.

The headline is ResNet's: He et al. ("Deep Residual Learning for Image Recognition",
CVPR 2016, Fig. 4) show the plain 34-layer network training worse than the plain
18-layer one, while with shortcuts the 34-layer network trains better; the ablation of
``resnet`` trains ResNet-34 with and without its shortcuts.

>>> plans = plan_ablation("resnet", {"time_budget": 300}, Path("runs/ablate-resnet"), seeds=2)
>>> finished, failed = train_all(plans)
>>> rows = ablation_table(plans, "resnet")
>>> write_ablation(rows, Path("runs/ablate-resnet"), family="resnet")
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import METRICS_FILE, RESULT_FILE, atomic_write_text, read_metrics, write_json
from .errors import ConfigError
from .registry import check_model_name
from .train import build_config
from .train.plans import Plan, existing_state, train_all
from .train.recipes import family_of

__all__ = [
    "ABLATIONS", "TRAIN_FIELDS", "Ablation", "Variant", "VariantRow", "ablation_table", "check_family",
    "plan_ablation", "train_all", "write_ablation",
]  # fmt: skip

Log = Callable[[str], None]

# The TrainConfig fields `convzoo ablate` passes alike to every run.
TRAIN_FIELDS = (
    "dataset", "data_dir", "epochs", "time_budget", "seed", "width", "limit_train",
    "val_size", "batch_size", "lr", "device", "threads", "quiet", "model_options",
)  # fmt: skip

# What write_ablation writes into OUT.
TABLE_FILE = "ablation.md"
JSON_FILE = "ablation.json"
CHART_FILE = "loss-curves.png"
PAGE_FILE = "ablation.html"
RUNS_DIR = "runs"


@dataclass(frozen=True)
class Variant:
    """One network of an ablation: a name, the model options that make it, and the
    idea it takes away (empty for the baseline)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    removes: str = ""


@dataclass(frozen=True)
class Ablation:
    """A family's ablations: the model they are run on (unless ``--model`` says
    otherwise), why that one, and the variants, the baseline first."""

    model: str
    why: str
    variants: tuple[Variant, ...]


# Options are JSON values (lists, not tuples), as config.json stores them: a rerun
# compares them with the saved run's to reuse it.
ABLATIONS: dict[str, Ablation] = {
    "alexnet": Ablation(
        "alexnet",
        "the one AlexNet",
        (
            Variant("baseline"),  # dropout 0.5 in the dense layers, no LRN
            Variant("no-dropout", {"dropout": 0.0}, "dropout in the dense layers"),
            Variant("lrn", {"lrn": True}, "nothing: adds the paper's LRN (off by default)"),
        ),
    ),
    "vgg": Ablation(
        "vgg11",
        "the shallowest VGG: the one that trains furthest in a few minutes",
        (
            Variant("bn", {"batch_norm": True}),
            Variant("no-bn", {"batch_norm": False}, "batch norm"),
        ),
    ),
    "nin": Ablation(
        "nin",
        "the one NiN",
        (
            Variant("baseline"),
            Variant("no-1x1", {"mlpconv_1x1": False}, "the 1x1 convolutions of each mlpconv"),
            Variant("dense-head", {"head": "dense"}, "global average pooling (a dense head)"),
        ),
    ),
    "googlenet": Ablation(
        "googlenet",
        "the one GoogLeNet",
        (
            Variant("baseline"),
            Variant("no-1x1", {"branches": [2, 3, 4]}, "the 1x1 path of every Inception"),
            Variant("no-3x3", {"branches": [1, 3, 4]}, "the 3x3 path of every Inception"),
            Variant("no-5x5", {"branches": [1, 2, 4]}, "the 5x5 path of every Inception"),
            Variant("no-pool", {"branches": [1, 2, 3]}, "the pool path of every Inception"),
        ),
    ),
    "resnet": Ablation(
        "resnet34",
        "the paper's Fig. 4 shows the plain network falling behind at 34 layers; at 18 "
        "the two train about alike",
        (
            Variant("residual", {"shortcut": True}),
            Variant("plain", {"shortcut": False}, "the shortcuts"),
        ),
    ),
    "densenet": Ablation(
        "densenet121",
        "the smallest DenseNet-BC",
        (
            Variant("dense", {"connect": "dense"}),
            Variant("chain", {"connect": "chain"}, "the concatenation (layers chained)"),
        ),
    ),
}


def check_family(family: str) -> Ablation:
    """The ablations of ``family``; :class:`ConfigError` naming the families otherwise."""
    if family not in ABLATIONS:
        raise ConfigError(f"no ablations for {family!r}; families: {', '.join(ABLATIONS)}")
    return ABLATIONS[family]


def check_model(family: str, model: str | None) -> str:
    """The model to ablate: ``model`` (a registered model of ``family``) or the default."""
    if model is None:
        return ABLATIONS[family].model
    check_model_name(model)
    if family_of(model) != family:
        raise ConfigError(f"--model {model} is not a {family} model")
    return model


def select_variants(family: str, only: list[str] | None = None) -> list[Variant]:
    """The variants of ``family`` named in ``only`` (all by default), in table order."""
    variants = check_family(family).variants
    if not only:
        return list(variants)
    names = [v.name for v in variants]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ConfigError(
            f"no variant {unknown[0]!r} in the {family} ablation; variants: {', '.join(names)}"
        )
    return [v for v in variants if v.name in only]


def seed_list(seed: int, seeds: int) -> list[int]:
    """``seeds`` seeds from ``seed`` on."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    return list(range(seed, seed + seeds))


def plan_ablation(
    family: str,
    overrides: dict[str, Any],
    out: Path,
    *,
    model: str | None = None,
    seeds: int = 1,
    only: list[str] | None = None,
    note: Log | None = None,
) -> list[Plan]:
    """Every variant and seed's run, configured and checked before anything is trained:
    the family's recipe, then ``overrides`` (TrainConfig fields given alike to all), then
    the variant's model options. A run directory that holds another run is a
    :class:`ConfigError`."""
    check_family(family)
    model = check_model(family, model)
    variants = select_variants(family, only)
    given_options = dict(overrides.get("model_options") or {})
    clash = [k for v in variants for k in v.options if k in given_options]
    if clash:
        raise ConfigError(
            f"--model-option {clash[0]} is what the {family} ablation varies; leave it out"
        )
    plans = []
    for variant in variants:
        for seed in seed_list(int(overrides.get("seed", 0)), seeds):
            run_dir = out / RUNS_DIR / variant.name / f"seed{seed}"
            options = {**given_options, **variant.options}
            given = {**overrides, "seed": seed, "model_options": options, "out": str(run_dir)}
            cfg = build_config(model, given, note=note)
            state = existing_state(run_dir, cfg, {k: v for k, v in given.items() if k != "out"})
            label = f"{variant.name} seed {seed}"
            plans.append(Plan(model, run_dir, given, cfg, state, label=label))
    return plans


# ------------------------------------------------------------------------------- table


@dataclass
class VariantRow:
    """One variant's figures over its finished seeds."""

    variant: str
    removes: str
    model: str
    options: dict[str, Any]
    seeds: list[int]
    test_accuracy: list[float]
    params: int | None
    macs: int | None
    final_train_loss: list[float]
    epochs: list[float]
    run_dirs: list[str]
    curves: list[list[tuple[float, float]]]  # per seed: (epoch, training loss)
    diverged: list[str] = field(default_factory=list)  # "seed S: why", runs that diverged

    @property
    def accuracy_mean(self) -> float | None:
        return statistics.fmean(self.test_accuracy) if self.test_accuracy else None

    @property
    def accuracy_std(self) -> float | None:
        return statistics.stdev(self.test_accuracy) if len(self.test_accuracy) > 1 else None

    @property
    def loss_mean(self) -> float | None:
        return statistics.fmean(self.final_train_loss) if self.final_train_loss else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "removes": self.removes,
            "model": self.model,
            "model_options": self.options,
            "seeds": self.seeds,
            "test_accuracy": self.test_accuracy,
            "test_accuracy_mean": self.accuracy_mean,
            "test_accuracy_std": self.accuracy_std,
            "params": self.params,
            "macs": self.macs,
            "final_train_loss": self.final_train_loss,
            "final_train_loss_mean": self.loss_mean,
            "epochs": self.epochs,
            "run_dirs": self.run_dirs,
            "diverged": self.diverged,
        }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _loss_curve(run_dir: Path, steps_per_epoch: Any = None) -> list[tuple[float, float]]:
    """(epoch, training loss) after every epoch, from metrics.jsonl; the epoch is
    step / steps_per_epoch where both are known (a time budget's last epoch may be
    partial)."""
    points: list[tuple[float, float]] = []
    for row in read_metrics(run_dir / METRICS_FILE):
        loss = row.get("train_loss")
        if not isinstance(loss, (int, float)) or not math.isfinite(loss):
            continue
        x = float(row.get("epoch", len(points) + 1))
        if isinstance(steps_per_epoch, int) and steps_per_epoch > 0 and "step" in row:
            x = row["step"] / steps_per_epoch
        points.append((x, float(loss)))
    return points


def ablation_table(plans: list[Plan], family: str) -> list[VariantRow]:
    """One row per variant, from its finished runs (result.json, metrics.jsonl); a run
    that did not finish is left out of its row (the row's seeds say which counted)."""
    removes = {v.name: v.removes for v in check_family(family).variants}
    rows: dict[str, VariantRow] = {}
    for plan in plans:
        variant = plan.run_dir.parent.name
        row = rows.setdefault(
            variant,
            VariantRow(variant, removes.get(variant, ""), plan.model,
                       dict(plan.config.model_options), [], [], None, None, [], [], [], []),
        )  # fmt: skip
        result = _read_json(plan.run_dir / RESULT_FILE)
        if isinstance(result, dict) and result.get("diverged"):
            row.diverged.append(f"seed {plan.config.seed} diverged: {result.get('reason')}")
        if not isinstance(result, dict) or result.get("test_accuracy") is None:
            continue
        row.seeds.append(int(result.get("seed", plan.config.seed)))
        row.test_accuracy.append(float(result["test_accuracy"]))
        row.params, row.macs = result.get("params"), result.get("macs")
        row.epochs.append(float(result.get("epochs") or 0))
        row.run_dirs.append(str(plan.run_dir))
        curve = _loss_curve(plan.run_dir, result.get("steps_per_epoch"))
        row.curves.append(curve)
        if curve:
            row.final_train_loss.append(curve[-1][1])
    return list(rows.values())


def _options_text(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in options.items()) or "-"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def format_table(rows: list[VariantRow]) -> str:
    """The Markdown table: variant, options, test accuracy mean ± std, params, mult-adds,
    final training loss, epochs and seeds."""
    from .units import human

    head = (
        "| variant | takes away | model options | test acc. (mean ± std) | params | "
        "mult-adds | final train loss | epochs | seeds |\n"
        "|:--|:--|:--|--:|--:|--:|--:|--:|--:|\n"
    )
    lines = []
    for r in rows:
        acc = _pct(r.accuracy_mean)
        if r.accuracy_std is not None:
            acc += f" ± {r.accuracy_std * 100:.2f}"
        loss = "-" if r.loss_mean is None else f"{r.loss_mean:.4f}"
        epochs = "-" if not r.epochs else f"{statistics.fmean(r.epochs):.2f}"
        params = "-" if r.params is None else human(r.params)
        macs = "-" if r.macs is None else human(r.macs)
        seeds = "; ".join([", ".join(map(str, r.seeds))] * bool(r.seeds) + r.diverged)
        seeds = seeds or "none finished"
        lines.append(
            f"| {r.variant} | {r.removes or '(baseline)'} | {_options_text(r.options)} | {acc} "
            f"| {params} | {macs} | {loss} | {epochs} | {seeds} |"
        )
    return head + "\n".join(lines) + "\n"


def write_ablation(
    rows: list[VariantRow],
    out: Path,
    *,
    family: str,
    command: str = "",
    budget: str = "",
) -> dict[str, Path]:
    """``ablation.md``, ``ablation.json``, ``loss-curves.png`` and ``ablation.html`` in
    ``out``; returns their paths by kind."""
    from .report.ablation import render_ablation_page
    from .report.plots import plot_loss_curves
    from .report.view import data_uri

    out.mkdir(parents=True, exist_ok=True)
    model = rows[0].model if rows else ABLATIONS[family].model
    title = f"{model} ablation ({family}){f', {budget} per run' if budget else ''}"
    table = format_table(rows)
    md = f"# {title}\n\n- command: `{command}`\n\n{table}" if command else f"# {title}\n\n{table}"
    paths = {
        "table": out / TABLE_FILE,
        "json": out / JSON_FILE,
        "chart": out / CHART_FILE,
        "page": out / PAGE_FILE,
    }
    atomic_write_text(paths["table"], md)
    write_json(
        paths["json"],
        {"family": family, "model": model, "command": command, "variants": [r.to_dict() for r in rows]},
    )  # fmt: skip
    png = plot_loss_curves(
        [(r.variant, r.curves) for r in rows], paths["chart"], title=f"{title}: training loss"
    )
    atomic_write_text(
        paths["page"],
        render_ablation_page(
            title=title,
            command=command,
            why=ABLATIONS[family].why if model == ABLATIONS[family].model else "",
            rows=[r.to_dict() | {"table_row": cells} for r, cells in zip(rows, _cells(rows), strict=True)],
            chart=data_uri(png),
        ),
    )  # fmt: skip
    return paths


def _cells(rows: list[VariantRow]) -> list[list[str]]:
    """The Markdown table's body cells, for the page."""
    body = format_table(rows).splitlines()[2:]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in body]
