"""What a study leaves in its directory: ``trials.jsonl`` (every trial's parameters,
values and state), ``best.toml`` (a recipe ``convzoo train --recipe`` takes as it is),
and the one line printed per trial."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

from ..artifacts import atomic_write_text
from ..train.config import NOT_IN_RECIPES, field_default
from .spec import TunePlan

TRIALS_FILE = "trials.jsonl"
BEST_FILE = "best.toml"
# Fields best.toml leaves out: they say where a run happens, not how it trains.
NOT_IN_BEST = (*NOT_IN_RECIPES, "seed", "device", "threads", "data_dir", "deterministic",
               "sync_bn", "save_every_steps")  # fmt: skip


def best_trial(study):
    """The best finished trial, or None before any."""
    try:
        return study.best_trial
    except ValueError:
        return None


def trial_line(study, frozen) -> str:
    """One trial: number, parameters, value, state, time; and the best so far."""
    value = "-" if frozen.value is None else f"{frozen.value:.4f}"
    seconds = frozen.user_attrs.get("seconds")
    took = f"{seconds:.0f}s" if isinstance(seconds, (int, float)) else "-"
    params = " ".join(f"{k}={_short(v)}" for k, v in frozen.params.items())
    best = best_trial(study)
    best_text = "none yet" if best is None else f"{best.value:.4f} (trial {best.number})"
    state = frozen.state.name.lower()
    if frozen.user_attrs.get("too_slow"):
        state += " (too slow for the trial budget)"
    elif frozen.user_attrs.get("diverged"):
        state += " (diverged)"
    return f"trial {frozen.number} {state} {value} in {took}: {params} | best {best_text}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_rows(study) -> list[dict[str, Any]]:
    """One JSON-ready row per trial, in trial order."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": dict(t.params),
                "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                "start": t.datetime_start.isoformat() if t.datetime_start else None,
                "complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
                "user_attrs": dict(t.user_attrs),
                "retry_of": t.system_attrs.get("failed_trial"),
            }
        )
    return rows


def write_trials(study, out: Path) -> Path:
    path = out / TRIALS_FILE
    text = "".join(json.dumps(row, default=str) + "\n" for row in trial_rows(study))
    atomic_write_text(path, text)
    return path


def best_options(plan: TunePlan, trial) -> dict[str, Any]:
    return plan.space.from_params(trial.params)


def recipe_text(plan: TunePlan, trial, study_name: str) -> str:
    """best.toml: the trial's configuration as a recipe (every field that differs from
    the defaults, or that the space searched, and the trial budget)."""
    cfg = plan.trial_config(best_options(plan, trial))
    searched = {p.key for p in plan.space.params}
    lines = [
        "description = "
        + _toml(
            f"{cfg.model} on {cfg.dataset}: convzoo tune study {study_name}, trial "
            f"{trial.number}, validation accuracy {trial.value:.4f}, from recipe "
            f"{plan.spec.recipe or cfg.recipe or 'none'}"
        )
    ]
    for name, value in cfg.to_dict().items():
        if name in NOT_IN_BEST or name == "model_options" or value is None:
            continue
        if value == field_default(name) and name not in searched and name != "dataset":
            continue
        lines.append(f"{name} = {_toml(value)}")
    if cfg.model_options:
        lines += ["", "[model_options]"]
        lines += [f"{k} = {_toml(v)}" for k, v in sorted(cfg.model_options.items())]
    return "\n".join(lines) + "\n"


def write_best(plan: TunePlan, study) -> Path | None:
    """best.toml from the best trial; None before any trial finished."""
    trial = best_trial(study)
    if trial is None:
        return None
    path = plan.out / BEST_FILE
    atomic_write_text(path, recipe_text(plan, trial, study.study_name))
    return path


def train_command(plan: TunePlan, trial) -> str:
    """The ``convzoo train`` command line that trains ``trial``'s configuration."""
    return shlex.join(["convzoo", *plan.train_argv(best_options(plan, trial))])


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"no TOML for {value!r}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise ValueError(f"no TOML for {value!r}")
