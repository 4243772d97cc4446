"""convzoo.training.train_run: the plots and report after a run, and signals meanwhile."""

from __future__ import annotations

import os
import signal

import pytest

from convzoo import training
from convzoo.train import TrainConfig, TrainingInterrupted, TrainResult


def _finished(tmp_path) -> TrainResult:
    return TrainResult(
        result={"model": "nin"},
        run_dir=tmp_path,
        model=None,
        metrics=[],
        classes=["a", "b"],
        confusion=[[1, 0], [0, 1]],
        test_logits=None,
        dataset=None,
    )


def test_plots_and_report_follow_the_run(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(training, "train", lambda cfg, **kw: _finished(tmp_path))
    import convzoo.report as report

    monkeypatch.setattr(report, "write_run_files", lambda run_dir, **kw: calls.append(run_dir))
    out = training.train_run(TrainConfig(model="nin"))
    assert out.run_dir == tmp_path and calls == [tmp_path]


def test_a_failing_report_is_one_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(training, "train", lambda cfg, **kw: _finished(tmp_path))
    import convzoo.report as report

    def broken(run_dir, **kw):
        raise RuntimeError("no matplotlib")

    monkeypatch.setattr(report, "write_run_files", broken)
    training.train_run(TrainConfig(model="nin"))
    assert capsys.readouterr().err == "warning: plots and report not written: no matplotlib\n"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_writing_stops_with_the_run_kept(tmp_path, monkeypatch, signum):
    monkeypatch.setattr(training, "train", lambda cfg, **kw: _finished(tmp_path))
    import convzoo.report as report

    def signalled(run_dir, **kw):
        os.kill(os.getpid(), signum)
        raise AssertionError("the signal did not stop the writing")

    monkeypatch.setattr(report, "write_run_files", signalled)
    before = signal.getsignal(signum)
    with pytest.raises(TrainingInterrupted, match="run itself is complete") as info:
        training.train_run(TrainConfig(model="nin"))
    assert info.value.exit_code == 128 + signum
    assert signal.getsignal(signum) is before  # the handlers are put back
