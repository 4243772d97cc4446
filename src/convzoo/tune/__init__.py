"""Hyperparameter search with Optuna: ``convzoo tune``.

>>> from convzoo.tune import TuneSpec, tune
>>> result = tune(TuneSpec("resnet18", trial_budget=120, budget=3600))  # doctest: +SKIP

Trials are convzoo training runs that never read the test split (:mod:`.trial`); the
search space is a TOML file beside the recipe (:mod:`.space`); the study lives in an
SQLite file or any SQLAlchemy database that workers on many machines share
(:mod:`.study`, :mod:`.worker`); the study directory holds best.toml, trials.jsonl and
report.html (:mod:`.outputs`, :mod:`.report`). See docs/tune.md.
"""

from .search import TuneResult, tune
from .space import SearchSpace, read_space
from .spec import TuneSpec

__all__ = ["SearchSpace", "TuneResult", "TuneSpec", "read_space", "tune"]
