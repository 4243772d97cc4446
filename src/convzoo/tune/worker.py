"""Workers: the loop that runs trials until the study has enough, in this process or in
``--workers N`` processes with cores/N threads each.

A worker starts a trial only while the study holds fewer than ``--trials`` finished or
running trials, or while a whole trial still fits in ``--budget``. SIGINT or SIGTERM
stops the running trial at its next step (recorded as FAIL and queued again with the
same parameters, so that running the same command again trains it) and ends the worker; a worker that is killed
outright is noticed by its heartbeat (:mod:`.study`).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

from ..errors import ConvzooError
from .spec import TunePlan
from .study import fail_stale_trials, open_study
from .trial import TrialInterrupted, run_trial

WAIT_POLL_S = 1.0


class StopFlag:
    """The signal that asked the worker to stop, if any."""

    received: int | None = None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """SIGINT and SIGTERM set the flag instead of killing the worker between trials
    (during a trial the trainer's own handler stops it at its next step)."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handle(signum, frame) -> None:
        flag.received = signum

    old = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def enough(study, plan: TunePlan, started: float) -> bool:
    """Whether this worker should start no more trials."""
    from optuna.trial import TrialState

    spec = plan.spec
    if spec.budget is not None and time.monotonic() - started + spec.trial_budget > spec.budget:
        return True
    if spec.trials is not None:
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        return len(study.get_trials(deepcopy=False, states=states)) >= spec.trials
    return False


def run_worker(
    plan: TunePlan, worker: int = 0, *, say: Callable[[str], None] = print
) -> int | None:
    """Run trials until :func:`enough`; returns the signal that stopped it, or None."""
    from .outputs import trial_line

    study = open_study(plan.study, worker=worker)
    started = time.monotonic()
    prefix = f"[worker {worker}] " if plan.spec.workers > 1 else ""
    with stop_on_signals() as stop:

        def report(study, frozen) -> None:
            say(prefix + trial_line(study, frozen))

        def objective(trial):
            return run_trial(trial, plan, stop)

        while stop.received is None:
            fail_stale_trials(study)
            if enough(study, plan, started):
                break
            try:
                study.optimize(objective, n_trials=1, catch=(TrialInterrupted,),
                               callbacks=[report], gc_after_trial=False)  # fmt: skip
            except KeyboardInterrupt:  # a second Ctrl-C: the trial is FAIL already
                stop.received = signal.SIGINT
        if stop.received is not None:
            return stop.received
        wait_for_running(study, plan, stop)
    return None


def wait_for_running(study, plan: TunePlan, stop: StopFlag) -> None:
    """Wait until no trial of the study runs (other workers finishing theirs, or the
    heartbeat failing a dead worker's), so that every worker reports the same best."""
    from optuna.trial import TrialState

    limit = time.monotonic() + 3 * plan.spec.trial_budget + plan.spec.grace
    while stop.received is None and time.monotonic() < limit:
        fail_stale_trials(study)
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return
        time.sleep(WAIT_POLL_S)


def _worker_process(plan: TunePlan, worker: int) -> None:
    """The body of one of ``--workers N`` processes; its exit code says how it ended."""
    import os

    os.setpgrp()  # a Ctrl-C reaches the parent only, which forwards it once
    try:
        stopped = run_worker(plan, worker, say=lambda line: print(line, flush=True))
    except ConvzooError as exc:
        sys.stderr.write(f"convzoo tune: error: {exc}\n")
        sys.exit(2)
    sys.exit(128 + int(stopped) if stopped else 0)


def run_workers(plan: TunePlan, *, say: Callable[[str], None] = print) -> int | None:
    """Run ``plan.spec.workers`` workers; returns the signal that stopped them, or None.
    Raises :class:`ConvzooError` when a worker stopped on a user mistake."""
    if plan.spec.workers == 1:
        return run_worker(plan, 0, say=say)
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_process, args=(plan, k), daemon=False)
             for k in range(plan.spec.workers)]  # fmt: skip
    for p in procs:
        p.start()
    received: list[int] = []

    def forward(signum, frame) -> None:
        received.append(signum)
        for p in procs:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    import os

                    os.kill(p.pid, signum)

    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for p in procs:
            while p.is_alive():
                p.join(0.5)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    codes = [p.exitcode for p in procs]
    if any(code == 2 for code in codes):
        raise ConvzooError("a worker stopped on the error above")
    if received:
        return received[0]
    stopped = [c - 128 for c in codes if c and c > 128]
    if stopped:
        return stopped[0]
    if any(code != 0 for code in codes):
        raise RuntimeError(f"worker exit codes {codes}")
    return None
