"""One tune trial's endings that need no training: a trial whose sampled settings cannot
take a step in the trial budget is pruned (a hopeless trial), and the study goes on."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest

from convzoo.train.budget import BudgetTooShort
from convzoo.tune import trial as trial_module
from convzoo.tune.outputs import trial_line
from convzoo.tune.worker import StopFlag


def test_a_trial_too_slow_for_its_budget_is_pruned_not_fatal(tmp_path, monkeypatch):
    def too_slow(cfg, **kwargs):
        raise BudgetTooShort("time budget 1m00s is too short: set-up took 40.0s")

    monkeypatch.setattr(trial_module, "train", too_slow)
    plan = SimpleNamespace(
        space=SimpleNamespace(sample=lambda trial, base: {"width": 1.0}),
        base=None,
        out=tmp_path,
        trial_config=lambda options, run_dir: SimpleNamespace(tta=False),
    )
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize")
    t = study.ask()
    with pytest.raises(optuna.TrialPruned, match="too slow"):
        trial_module.run_trial(t, plan, StopFlag())
    study.tell(t, state=optuna.trial.TrialState.PRUNED)
    frozen = study.trials[0]
    assert "too short" in frozen.user_attrs["too_slow"]
    assert "pruned (too slow for the trial budget)" in trial_line(study, frozen)
