"""Search spaces and the tune command's bad inputs: one line, exit 2, no training."""

from __future__ import annotations

import optuna  # noqa: F401  (a dev dependency: a missing one fails, never skips)
import pytest

from convzoo.cli import main
from convzoo.errors import ConfigError
from convzoo.train.config import FAMILIES
from convzoo.train.recipes import build_config, recipes_dir
from convzoo.tune.space import default_space_path, read_space

MODELS = {"alexnet": "alexnet", "vgg": "vgg11", "nin": "nin", "googlenet": "googlenet",
          "resnet": "resnet18", "densenet": "densenet121"}  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_a_space_that_holds_its_recipe(family):
    model = MODELS[family]
    path = default_space_path(model, "fashion-mnist")
    assert path.parent == recipes_dir() / "fashion-mnist" / "spaces"
    space = read_space(path)
    params, notes = space.params_of(build_config(model, {}))
    assert notes == []  # the shipped recipe is the first trial, exactly
    assert {"lr", "weight_decay", "batch_size", "width"} <= {p.key for p in space.params}
    assert "optimizer" in params


@pytest.mark.parametrize(
    "text, message",
    [
        ("learning_rate = { low = 0.1, high = 1.0 }", "unknown key 'learning_rate'"),
        ("lr = { low = 0.5, high = 0.1 }", "empty range"),
        ("lr = { low = 0.0, high = 0.1, log = true }", "log range needs bounds > 0"),
        ("weight_decay = { low = -1e-3, high = 0.1, log = true }", "log range"),
        ("batch_size = { choices = [] }", "non-empty list"),
        ("lr = { low = 0.1, hi = 0.2 }", "unknown key 'hi'"),
        ("label_smoothing = { low = 0.0, high = 1.5 }", "label_smoothing"),
        ("time_budget = { low = 10, high = 20 }", "cannot be searched"),
        ("batch_size = { low = 16.5, high = 64 }", "whole numbers"),
        ("lr = 0.1", "must be a table"),
        ("lr = { low = 0.1", "not valid TOML"),
    ],
)
def test_bad_space_files_are_one_clear_error(tmp_path, capsys, text, message):
    path = tmp_path / "space.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        read_space(path)
    code = main(["tune", "resnet18", "--trial-budget", "5s", "--trials", "1",
                 "--space", str(path), "--out", str(tmp_path / "study")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message.split("'")[0] in err
    assert "Traceback" not in err


def test_a_space_by_optimizer_gives_one_parameter_per_optimizer(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(
        'optimizer = { choices = ["sgd", "adamw"] }\n'
        "lr = { sgd = { low = 0.01, high = 0.5, log = true }, "
        "adamw = { low = 1e-4, high = 1e-2, log = true } }\n"
        "[model_options]\nstem_stride = { choices = [1, 2] }\n"
    )
    space = read_space(path)
    assert [p.name for p in space.params] == [
        "optimizer",
        "lr.sgd",
        "lr.adamw",
        "model_options.stem_stride",
    ]
    options = space.from_params({"optimizer": "adamw", "lr.adamw": 3e-3,
                                 "model_options.stem_stride": 1})  # fmt: skip
    assert options == {"optimizer": "adamw", "lr": 3e-3, "model_options": {"stem_stride": 1}}


@pytest.mark.parametrize(
    "storage, message",
    [
        ("not a url", "must be an SQLAlchemy URL"),
        ("nosuchdb://user@host/db", "cannot open the study storage"),
        ("postgresql://tuner:secret@127.0.0.1:1/study", "connection failed"),
    ],
)
def test_bad_or_unreachable_storage_is_one_line(tmp_path, capsys, storage, message):
    code = main(["tune", "resnet18", "--trial-budget", "5s", "--trials", "1",
                 "--storage", storage, "--out", str(tmp_path / "study")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err
    assert "secret" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--trial-budget", "5s"], "one of the arguments --budget --trials is required"),
        (["--trial-budget", "soon", "--trials", "2"], "--trial-budget"),
        (["--trial-budget", "5m", "--budget", "1m"], "at least one --trial-budget"),
        (["--trial-budget", "5s", "--trials", "0"], "--trials"),
        (["--trial-budget", "5s", "--trials", "2", "--workers", "0"], "--workers"),
        (["--trial-budget", "5s", "--trials", "2", "--grace", "5", "--heartbeat", "10"],
         "--grace longer"),
    ],
)  # fmt: skip
def test_bad_tune_options_are_one_line(tmp_path, capsys, argv, message):
    try:
        code = main(["tune", "resnet18", *argv, "--out", str(tmp_path / "s")])
    except SystemExit as stop:  # argparse's own checks
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
