"""The study: its storage (SQLite by default, any SQLAlchemy URL to share it), sampler
and pruner, and the heartbeat that fails and retries the trial of a worker that died.

Optuna's RDB storage keeps every trial in a database; any number of workers, on any
machines, join a study by its name. Each running trial's worker writes a heartbeat
every ``heartbeat`` seconds; a trial whose heartbeat is older than ``grace`` seconds is
marked FAIL by the next worker that starts a trial, and
:class:`optuna.storages.RetryHeartbeatStaleTrialCallback` queues it again with the
same parameters. Connections are checked before use (SQLAlchemy's ``pool_pre_ping``),
so a worker survives a database restart between trials.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any

from ..errors import ConfigError

PRUNERS = ("hyperband", "median", "none")
SAMPLERS = ("tpe", "random")
# The pruning points, in percent of each trial's own schedule (see docs/tune.md).
REPORT_PERCENTS = (20, 40, 60, 80)
FINAL_STEP = 100
# SQLite: how long a writer waits for the lock before "database is locked".
SQLITE_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 10
SCHEMA_ATTEMPTS = 4
MAX_RETRY = 2  # a stale trial is queued again at most this many times


@dataclasses.dataclass(frozen=True)
class StudyOptions:
    """Where the study lives and how it searches."""

    storage: str  # an SQLAlchemy URL
    name: str
    sampler: str = "tpe"
    pruner: str = "hyperband"
    seed: int | None = 0
    heartbeat: int = 20  # seconds
    grace: int = 60  # seconds


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse is shown as given
        return url


def open_storage(options: StudyOptions):
    """An :class:`optuna.storages.RDBStorage` with heartbeats and retries; a URL that
    is wrong or a server that does not answer is one :class:`ConfigError` line."""
    import sqlalchemy.exc

    url = options.storage
    engine: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
    elif url.startswith("postgresql"):
        engine["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            return _rdb_storage(url, engine, options)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            # Workers that start together on a new database race to create its tables.
            if attempt + 1 < SCHEMA_ATTEMPTS:
                time.sleep(1.0 + attempt)
                continue
            raise ConfigError(
                f"cannot open the study storage {redacted(url)}: {_reason(exc)}"
            ) from None
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as exc:
            raise ConfigError(
                f"cannot open the study storage {redacted(url)}: {_reason(exc)}"
            ) from None


def _reason(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _rdb_storage(url: str, engine: dict[str, Any], options: StudyOptions):
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine,
                                          heartbeat_interval=options.heartbeat,
                                          grace_period=options.grace,
                                          heartbeat_stale_trial_callback=retry)  # fmt: skip


def make_sampler(name: str, seed: int | None):
    import optuna

    if name == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                              constant_liar=True)  # fmt: skip
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")


def make_pruner(name: str):
    """Hyperband (Li et al., JMLR 2018) over the reporting points, from the first point
    to the end; median: a trial below the median of the earlier ones at the same point,
    once one has finished; none."""
    import optuna

    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=REPORT_PERCENTS[0], max_resource=FINAL_STEP, reduction_factor=3
        )
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"unknown pruner {name!r}; choose from {', '.join(PRUNERS)}")


def open_study(options: StudyOptions, *, worker: int = 0):
    """The study ``options.name`` in its storage, made if it does not exist yet (it
    maximises validation accuracy). Worker ``k`` samples with seed ``seed + k``."""
    import optuna

    storage = open_storage(options)
    seed = None if options.seed is None else options.seed + worker
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        return optuna.create_study(
            storage=storage,
            study_name=options.name,
            sampler=make_sampler(options.sampler, seed),
            pruner=make_pruner(options.pruner),
            direction="maximize",
            load_if_exists=True,
        )
    except ValueError as exc:  # e.g. an existing study that minimises
        raise ConfigError(f"study {options.name!r}: {exc}") from None


def fail_stale_trials(study) -> None:
    """Mark FAIL (and queue again) the running trials whose worker stopped beating."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
