"""The trainer stopped at any instant, time-budgeted or not: resumable from every
phase; divergence on any step is a failure; the parts of the trainer on their own."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from conftest import write_idx_dataset

import convzoo.evaluate
from convzoo.artifacts import load_checkpoint
from convzoo.errors import CheckpointError
from convzoo.train import TrainConfig, TrainingDiverged, TrainingInterrupted, budget, outputs, train
from convzoo.train.callbacks import Callback
from convzoo.train.checkpoint import check_position
from convzoo.train.trainer import Trainer

PLANNED = 4  # steps of the budgeted runs below: 3 an epoch, so the last epoch is partial


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("phase-data")
    write_idx_dataset(root / "fashion-mnist", n_train=200, n_test=40)
    return root


def config(data_dir, out, **changes) -> TrainConfig:
    options = dict(model="nin", data_dir=str(data_dir), width=0.125, val_size=40,
                   limit_train=96, batch_size=32, epochs=2, deterministic=True, quiet=True,
                   save_every_steps=1, out=str(out))  # fmt: skip
    options.update(changes)
    return TrainConfig(**options)


class Stop(Exception):
    """Stands in for a crash at a chosen instant."""


def test_position_check_allows_a_partial_last_epoch():
    check_position(1, 0, 3, 3, 6)  # an epoch's end
    check_position(1, 1, 4, 3, 6)  # inside an epoch
    check_position(2, 0, 4, 3, 4)  # the end of a run whose last epoch was cut short
    with pytest.raises(CheckpointError, match="does not fit 3 batches"):
        check_position(2, 0, 4, 3, 6)  # ... but only at the planned end
    with pytest.raises(CheckpointError, match="does not fit"):
        check_position(1, 0, 5, 3, 6)


def test_callback_hooks_are_named_and_optional():
    hooks = {"on_train_start", "on_step_end", "on_validation_end", "on_epoch_end",
             "on_train_end", "on_exception", "state_dict", "load_state_dict"}  # fmt: skip
    assert hooks <= set(dir(Callback))
    assert Callback().state_dict() is None


@pytest.fixture
def fixed_plan(monkeypatch):
    """A time budget whose plan is always PLANNED steps (the measuring still runs)."""
    monkeypatch.setattr(budget, "fit_steps", lambda *args, **kwargs: PLANNED)


def _in_the_final_evaluation(monkeypatch, action):
    """Call ``action()`` when the final test pass begins (not in validation passes)."""
    real_finish, real_predict = Trainer._finish, convzoo.evaluate.predict_logits
    final = []

    def finish(self):
        final.append(True)
        return real_finish(self)

    def predict(*args, **kwargs):
        if final:
            action()
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(Trainer, "_finish", finish)
    monkeypatch.setattr(convzoo.evaluate, "predict_logits", predict)


def _stop_at(phase, monkeypatch):
    """An on_step hook, or a patch, that raises Stop at ``phase``."""
    if phase == "final evaluation":

        def stop():
            raise Stop

        _in_the_final_evaluation(monkeypatch, stop)
        return None
    if phase == "final write":

        def write(*args, **kwargs):
            raise Stop

        monkeypatch.setattr(outputs, "write_model_safetensors", write)
        return None
    step = {"start-up": 1, "mid-epoch": 2, "partial last epoch": 4}[phase]

    def hook(s):
        if s == step:
            raise Stop

    return hook


@pytest.mark.slow
@pytest.mark.parametrize(
    "phase", ["start-up", "mid-epoch", "partial last epoch", "final evaluation", "final write"]
)
def test_time_budgeted_run_resumes_from_every_phase(
    data_dir, tmp_path, monkeypatch, fixed_plan, phase
):
    out = tmp_path / "run"
    cfg = config(data_dir, out, epochs=None, time_budget=600.0)
    if phase == "start-up":
        cfg.save_every_steps = 0  # only the start checkpoint (step 0) is there
    with pytest.raises(Stop), monkeypatch.context() as patch:
        train(cfg, on_step=_stop_at(phase, patch))
    assert load_checkpoint(out / "checkpoints" / "last.pt")["planned_steps"] == PLANNED
    result = train(TrainConfig(model="nin", quiet=True), resume=out).result
    assert result["steps"] == PLANNED and result["final_planned_steps"] == PLANNED
    assert result["resumed"] is True and result["diverged"] is False
    assert (out / "model.safetensors").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 4]


@pytest.mark.slow
def test_epoch_run_stopped_after_its_last_step_redoes_only_the_end(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with pytest.raises(Stop), monkeypatch.context() as patch:
        train(config(data_dir, out), on_step=_stop_at("final evaluation", patch))
    steps = []
    result = train(TrainConfig(model="nin", quiet=True), resume=out, on_step=steps.append).result
    assert steps == [] and result["steps"] == 6  # no training step taken again


@pytest.mark.slow
def test_sigterm_in_the_final_evaluation_stops_then_resume_finishes(
    data_dir, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _in_the_final_evaluation(patch, lambda: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(TrainingInterrupted, match="in the final evaluation") as stop:
            train(config(data_dir, out))
    assert stop.value.exit_code == 143 and not (out / "result.json").exists()
    assert train(TrainConfig(model="nin", quiet=True), resume=out).result["steps"] == 6


@pytest.mark.slow
def test_divergence_on_the_last_step_is_a_failure(data_dir, tmp_path, monkeypatch):
    """The loss of the last step is finite, the weights it leaves are not: the run
    fails, result.json says so, no model.safetensors, last.pt stays the last good one."""
    out = tmp_path / "run"
    real = Trainer.train_step

    def poisoned(self, *args, **kwargs):
        loss = real(self, *args, **kwargs)
        if self.step + 1 == self.total_steps and kwargs.get("optimizer") is None:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return loss

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    with pytest.raises(TrainingDiverged, match="weights became NaN"):
        train(config(data_dir, out, save_every_steps=0))
    result = json.loads((out / "result.json").read_text())
    assert result["diverged"] is True and result["test_accuracy"] is None
    assert not (out / "model.safetensors").exists()
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["step"] == 3  # the end of epoch 1; epoch 2's end was not saved
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
