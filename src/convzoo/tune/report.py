"""report.html of a study: optimization history, each trial's validation curve (pruned
trials marked), parameter importances (Optuna's fANOVA, Hutter et al. 2014), one slice
per parameter, and the top trials with the command that trains each. One file, plots
as embedded PNG (matplotlib, Agg), laid out by a Jinja2 template with autoescape."""

from __future__ import annotations

import datetime
import io
import warnings
from pathlib import Path

from ..artifacts import atomic_write_text
from ..report.view import data_uri
from ..units import format_duration
from .outputs import best_trial, train_command
from .spec import TunePlan

REPORT_FILE = "report.html"
TOP = 10


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return data_uri(buf.getvalue())


def _finished(study):
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]  # fmt: skip


def history_plot(study) -> str | None:
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([t.number for t in done], [t.value for t in done], "o", label="complete")
    pruned = [t for t in _finished(study) if t.state == TrialState.PRUNED and t.value is not None]
    if pruned:
        ax.plot([t.number for t in pruned], [t.value for t in pruned], "x", color="grey",
                label="pruned (last reported)")  # fmt: skip
    best, xs, ys = None, [], []
    for t in sorted(done, key=lambda t: t.number):
        best = t.value if best is None else max(best, t.value)
        xs.append(t.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color="black", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.legend(loc="lower right")
    return _png(fig)


def curves_plot(study) -> str | None:
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    trials = [t for t in _finished(study) if t.intermediate_values]
    if not trials:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for t in trials:
        steps = sorted(t.intermediate_values)
        values = [t.intermediate_values[s] for s in steps]
        pruned = t.state == TrialState.PRUNED
        (line,) = ax.plot(steps, values, "--" if pruned else "-", alpha=0.7)
        if pruned:
            ax.plot(steps[-1], values[-1], "x", color=line.get_color(), markersize=9)
    ax.set_xlabel("percent of the trial's steps")
    ax.set_ylabel("validation accuracy")
    ax.set_xlim(0, 102)
    return _png(fig)


def importance_plot(study) -> tuple[str | None, str]:
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(done) < 2:
        return None, "Needs at least 2 complete trials."
    try:
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as exc:
        return None, f"Not computed: {exc}"
    if not importances:
        return None, "No parameter varied among the complete trials."
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1))
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (fANOVA)")
    return _png(fig), ""


def slices_plot(study, log_names: set[str]) -> str | None:
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    names = sorted({k for t in done for k in t.params})
    if not done or not names:
        return None
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        points = [(t.params[name], t.value) for t in done if name in t.params]
        xs = [str(x) if isinstance(x, str) else x for x, _ in points]
        ax.scatter(xs, [v for _, v in points], c=[t.number for t in done if name in t.params],
                   cmap="viridis", s=18)  # fmt: skip
        ax.set_title(name, fontsize=9)
        if name in log_names:
            ax.set_xscale("log")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def write_report(plan: TunePlan, study, command: str) -> Path:
    """Write ``report.html`` in the study directory."""
    import jinja2
    import matplotlib

    matplotlib.use("Agg")
    from optuna.trial import TrialState

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("convzoo.tune", "templates"), autoescape=True
    )
    trials = study.get_trials(deepcopy=False)
    ranked = sorted((t for t in trials if t.state == TrialState.COMPLETE),
                    key=lambda t: -t.value)[:TOP]  # fmt: skip
    counts = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    importances, note = importance_plot(study)
    html = env.get_template("tune.html.j2").render(
        study=study.study_name,
        model=plan.spec.model,
        dataset=plan.base.dataset,
        trial_budget=format_duration(plan.spec.trial_budget),
        counts=", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials",
        best=best_trial(study),
        command=command,
        history=history_plot(study),
        curves=curves_plot(study),
        importances=importances,
        importance_note=note,
        slices=slices_plot(study, {p.name for p in plan.space.params if p.log}),
        top=[
            {
                "number": t.number,
                "value": f"{t.value:.4f}",
                "state": t.state.name.lower(),
                "params": sorted(
                    (k, f"{v:.4g}" if isinstance(v, float) else v) for k, v in t.params.items()
                ),  # fmt: skip
                "command": train_command(plan, t),
            }
            for t in ranked
        ],
        date=datetime.datetime.now().isoformat(timespec="seconds"),
    )
    path = plan.out / REPORT_FILE
    atomic_write_text(path, html)
    return path
