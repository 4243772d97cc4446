"""``tune(spec)``: the whole search as ``convzoo tune`` runs it: open (or join) the
study, queue the recipe as its first trial, run the workers, write the study
directory, and optionally confirm the best recipe on fresh seeds."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path

from .confirm import Confirmation, confirm
from .outputs import best_trial, write_best, write_trials
from .spec import TuneSpec, plan
from .study import open_study
from .worker import run_workers


@dataclasses.dataclass
class TuneResult:
    """What :func:`tune` returns."""

    out: Path
    study_name: str
    storage: str
    best_number: int | None
    best_value: float | None
    best_params: dict
    best_recipe: Path | None
    report: Path | None
    trials_file: Path
    stopped_by: int | None  # the signal that stopped the search, if any
    confirmation: Confirmation | None = None


def tune(spec: TuneSpec, *, command: str = "", say: Callable[[str], None] = print) -> TuneResult:
    """Run the search that ``spec`` describes (see docs/tune.md)."""
    p = plan(spec)
    p.out.mkdir(parents=True, exist_ok=True)
    study = open_study(p.study)
    params, notes = p.space.params_of(p.base)
    for note in notes:
        say(f"note: the recipe's {note}; the first trial samples it")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.enqueue_trial(params, user_attrs={"queued": "recipe"}, skip_if_exists=True)
    say(
        f"study {p.study.name} in {_shown(p.study.storage)}: {len(p.space.params)} "
        f"parameters, {spec.workers} worker(s), trial budget {spec.trial_budget:g}s"
    )
    stopped = run_workers(p, say=say)
    trials_file = write_trials(study, p.out)
    best_path = write_best(p, study)
    report = None
    try:
        from .report import write_report

        report = write_report(p, study, command)
    except ImportError as exc:
        say(f"warning: report.html not written ({exc}; pip install 'convzoo[report]')")
    best = best_trial(study)
    result = TuneResult(
        p.out,
        p.study.name,
        _shown(p.study.storage),
        None if best is None else best.number,
        None if best is None else best.value,
        {} if best is None else dict(best.params),
        best_path,
        report,
        trials_file,
        stopped,
    )
    if stopped is None and spec.confirm and best_path is not None:
        result.confirmation = confirm(p, best_path, spec.confirm, say=say)
    return result


def _shown(url: str) -> str:
    from .study import redacted

    return redacted(url)
