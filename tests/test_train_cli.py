"""`convzoo train` on the command line: bad input, a whole run, SIGINT and resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import torch
from conftest import write_idx_dataset

from convzoo.artifacts import load_checkpoint
from convzoo.cli import main
from convzoo.train import TrainConfig, train

SMALL = ["--width", "0.125", "--limit-train", "192", "--val-size", "80", "--batch-size", "32"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-data")
    write_idx_dataset(root / "fashion-mnist", n_train=400, n_test=60)
    return root


@pytest.fixture(autouse=True)
def no_recipes(tmp_path, monkeypatch):
    """Runs here use no recipe unless a test writes one into this folder."""
    folder = tmp_path / "recipes"
    (folder / "fashion-mnist").mkdir(parents=True)
    monkeypatch.setenv("CONVZOO_RECIPES", str(folder))
    return folder


def cli(argv, capsys):
    try:
        code = main(["train", *argv])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(result, *needles):
    code, _, err = result
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["resnet19"], ["unknown model", "resnet18"]),
        (["nin", "--dataset", "fashion-mnsit"], ["unknown dataset", "fashion-mnist"]),
        (["nin", "--epochs", "0"], ["--epochs", "positive integer"]),
        (["nin", "--lr", "-1"], ["--lr", "positive number"]),
        (["nin", "--lr", "abc"], ["--lr"]),
        (["nin", "--epochs", "2", "--time-budget", "5m"], ["not allowed with"]),
        (["nin", "--time-budget", "5x"], ["--time-budget", "90s, 5m, 1h30m"]),
        (["nin", "--time-budget", "0"], ["--time-budget"]),
        (["nin", "--warmup", "soon"], ["--warmup"]),
        (["nin", "--ema", "1.5"], ["--ema"]),
        (["nin", "--val-size", "12.5"], ["--val-size"]),
        (["nin", "--model-option", "aux_logits"], ["KEY=VALUE"]),
        (["nin", "--optimizer", "lbfgs"], ["--optimizer"]),
    ],
)
def test_bad_options(argv, needles, capsys):
    assert_usage_error(cli(argv, capsys), *needles)


def test_bad_data_dir(tmp_path, capsys):
    assert_usage_error(
        cli(["nin", "--data-dir", str(tmp_path / "missing")], capsys), "does not exist"
    )
    afile = tmp_path / "file"
    afile.write_text("x")
    assert_usage_error(cli(["nin", "--data-dir", str(afile)], capsys), "not a directory")
    # an empty folder has no dataset: said in one line, with what it lacks
    (tmp_path / "empty").mkdir()
    assert_usage_error(
        cli(["nin", "--data-dir", str(tmp_path / "empty"), "--dataset", "mnist"], capsys),
        "no complete MNIST there",
    )


def test_unreadable_data_dir(tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads every directory")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        assert_usage_error(cli(["nin", "--data-dir", str(locked)], capsys), "not readable")
    finally:
        locked.chmod(0o755)


def test_bad_resume(tmp_path, capsys):
    assert_usage_error(
        cli(["nin", "--resume", str(tmp_path / "missing")], capsys), "does not exist"
    )
    assert_usage_error(cli(["nin", "--resume", str(tmp_path)], capsys), "not a run directory")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "resnet18"}))
    assert_usage_error(cli(["nin", "--resume", str(run)], capsys), "run of resnet18, not nin")


def test_bad_recipe(no_recipes, capsys):
    (no_recipes / "fashion-mnist" / "typo.toml").write_text("epochs = 2\nlerning_rate = 1\n")
    assert_usage_error(cli(["nin", "--recipe", "typo"], capsys), "lerning_rate")
    assert_usage_error(cli(["nin", "--recipe", "missing"], capsys), "no recipe 'missing'")


@pytest.mark.slow
def test_a_whole_run(data_dir, no_recipes, tmp_path, capsys):
    (no_recipes / "fashion-mnist" / "nin.toml").write_text("epochs = 1\nflip = true\n")
    out = tmp_path / "run"
    code, stdout, err = cli(
        ["nin", "--data-dir", str(data_dir), *SMALL, "--out", str(out), "--tta", "--seed", "3"],
        capsys,
    )
    assert code == 0, err
    assert "recipe: fashion-mnist/nin" in err
    assert "small-input form" in err
    assert "epoch 1/1  train loss" in err  # plain per-epoch lines when not a terminal
    assert "test accuracy" in err and str(out) in err
    result = json.loads((out / "result.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert result["recipe"] == "fashion-mnist/nin" and config["flip"] is True
    assert result["seed"] == 3 and "test_accuracy_tta" in result
    assert result["command"].startswith("convzoo train nin")

    # resuming it with another model, or with a changed option, is refused
    assert_usage_error(cli(["resnet18", "--resume", str(out)], capsys), "run of nin", "resnet18")
    assert_usage_error(
        cli(["nin", "--resume", str(out), "--lr", "0.3"], capsys), "--lr cannot change"
    )
    # and its directory is not overwritten by a new run
    assert_usage_error(
        cli(["nin", "--data-dir", str(data_dir), "--out", str(out)], capsys), "already holds"
    )


@pytest.mark.slow
def test_nan_loss_exits_1(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(
        ["nin", "--data-dir", str(data_dir), *SMALL, "--epochs", "2", "--lr", "1e30",
         "--out", str(out), "--quiet"],
        capsys,
    )  # fmt: skip
    assert code == 1
    assert "Traceback" not in err and ("NaN" in err or "infinite" in err)
    assert "last good checkpoint" in err
    load_checkpoint(out / "checkpoints" / "last.pt")


@pytest.mark.slow
def test_sigint_to_a_real_process_then_resume(data_dir, no_recipes, tmp_path):
    """SIGINT stops a running `convzoo train` cleanly; --resume ends bitwise where an
    uninterrupted run ends."""
    out = tmp_path / "interrupted"
    argv = ["nin", "--data-dir", str(data_dir), *SMALL, "--epochs", "8", "--deterministic",
            "--ema", "0.9", "--flip", "--save-every-steps", "5"]  # fmt: skip
    cmd = [sys.executable, "-m", "convzoo", "train"]
    proc = subprocess.Popen(
        [*cmd, *argv, "--out", str(out)], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        for line in proc.stderr:
            if line.startswith("epoch 1/8"):
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "SIGINT" in err and f"--resume {out}" in err and "Traceback" not in err
    stopped = load_checkpoint(out / "checkpoints" / "last.pt")
    assert 0 < stopped["step"] < 48

    done = subprocess.run(
        [*cmd, "nin", "--resume", str(out), "--quiet"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr

    reference = tmp_path / "reference"
    train(
        TrainConfig(
            model="nin", data_dir=str(data_dir), width=0.125, limit_train=192, val_size=80,
            batch_size=32, epochs=8, deterministic=True, ema=0.9, flip=True,
            save_every_steps=5, quiet=True, out=str(reference),
        )
    )  # fmt: skip
    a = load_checkpoint(reference / "checkpoints" / "last.pt")
    b = load_checkpoint(out / "checkpoints" / "last.pt")
    assert b["step"] == a["step"] == 48
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert torch.equal(a["ema"][k], b["ema"][k]), k


@pytest.fixture
def trained_with(monkeypatch):
    """`convzoo train` up to the training itself: the calls it makes, recorded."""
    import convzoo.training

    calls = []

    def record(cfg, **kwargs):
        calls.append((cfg, kwargs))

    monkeypatch.setattr(convzoo.training, "train_run", record)
    monkeypatch.setattr(sys, "argv", ["pytest"])  # the command line is rebuilt
    return calls


def test_no_small_input_leaves_out_the_recipes_small_input_option(no_recipes, trained_with, capsys):
    (no_recipes / "fashion-mnist" / "resnet.toml").write_text(
        "epochs = 1\n[model_options]\nstem_stride = 2\n"
    )
    code, _, err = cli(["resnet18", "--no-small-input"], capsys)
    assert code == 0, err
    ((cfg, _),) = trained_with
    assert cfg.small_input is False and "stem_stride" not in cfg.model_options
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "stem_stride" in lines[0] and "recipe" in lines[0]


def test_the_recorded_command_rebuilds_the_options(trained_with, capsys):
    argv = ["nin", "--epochs", "2", "--no-flip", "--lr", "0.1", "--model-option", "x=1"]
    assert cli(argv, capsys)[0] == 0
    ((cfg, kwargs),) = trained_with
    assert kwargs["command"] == "convzoo train " + " ".join(
        ["nin", "--epochs", "2", "--lr", "0.1", "--no-flip", "--model-option", "x=1"]
    )
    assert (cfg.epochs, cfg.flip, cfg.lr, cfg.model_options) == (2, False, 0.1, {"x": 1})


def test_resume_hands_over_only_the_options_that_may_change(tmp_path, trained_with, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(TrainConfig("nin", epochs=3).to_dict()))
    code, _, err = cli(["nin", "--resume", str(run), "--threads", "1", "--epochs", "3"], capsys)
    assert code == 0, err
    ((cfg, kwargs),) = trained_with
    assert kwargs["resume"] == str(run) and cfg.threads == 1 and cfg.epochs is None
    assert_usage_error(cli(["nin", "--resume", str(run), "--recipe", "fast"], capsys), "--recipe")
