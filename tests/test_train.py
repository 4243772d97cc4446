"""convzoo.train.train: the run directory, exact resume, damaged checkpoints, divergence."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
import torch.nn.functional as F
from conftest import write_idx_dataset
from safetensors import safe_open

from convzoo.artifacts import load_checkpoint
from convzoo.errors import CheckpointError, ConfigError
from convzoo.registry import get_model, model_from_checkpoint
from convzoo.train import TrainConfig, TrainingDiverged, TrainingInterrupted, train
from convzoo.train.ema import EMA
from convzoo.train.optim import training_loss
from convzoo.train.recipes import build_config, recipes_dir
from convzoo.training import train_run

METRIC_KEYS = {
    "epoch", "step", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
    "seconds", "images_per_second",
}  # fmt: skip
RESULT_KEYS = {
    "model", "dataset", "small_input", "width", "params", "macs", "epochs", "steps",
    "train_seconds", "wall_seconds", "test_accuracy", "best_val_accuracy", "seed", "device",
    "threads", "torch_version", "convzoo_version", "command", "recipe", "date",
}  # fmt: skip
CHECKPOINT_KEYS = {
    "format", "model_name", "model_options", "model", "ema", "data", "config", "optimizer",
    "scheduler", "rng", "epoch", "step", "metrics", "best_val_accuracy",
}  # fmt: skip
STEPS = 18  # 192 images / batch 32 = 6 steps an epoch, 3 epochs


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-data")
    write_idx_dataset(root / "fashion-mnist", n_train=400, n_test=60)
    return root


def config(data_dir, out, **changes) -> TrainConfig:
    """NiN (it has dropout, which draws on the global RNG) on a small synthetic set."""
    options = dict(
        model="nin",
        data_dir=str(data_dir),
        width=0.125,
        val_size=80,
        limit_train=192,
        batch_size=32,
        epochs=3,
        lr=0.05,
        deterministic=True,
        quiet=True,
        flip=True,
        crop_padding=2,
        ema=0.9,
        save_every_steps=4,
        out=str(out),
    )
    options.update(changes)
    return TrainConfig(**options)


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    return out, train_run(config(data_dir, out)).result


def final_weights(run_dir):
    ck = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    return ck["model"], ck["ema"]


def assert_bitwise_equal(run_a, run_b):
    (model_a, ema_a), (model_b, ema_b) = final_weights(run_a), final_weights(run_b)
    assert model_a.keys() == model_b.keys()
    for k in model_a:
        assert torch.equal(model_a[k], model_b[k]), k
        assert torch.equal(ema_a[k], ema_b[k]), k
    rows_a = [json.loads(line) for line in (run_a / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (run_b / "metrics.jsonl").read_text().splitlines()]
    strip = ("seconds", "images_per_second")
    assert [{k: v for k, v in r.items() if k not in strip} for r in rows_a] == [
        {k: v for k, v in r.items() if k not in strip} for r in rows_b
    ]


@pytest.mark.slow
def test_run_directory_has_every_file(reference):
    out, result = reference
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "metrics.jsonl", "checkpoints", "model.safetensors", "result.json",
            "curves.png", "confusion.png"} <= names  # fmt: skip
    for png in ("curves.png", "confusion.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    cfg = json.loads((out / "config.json").read_text())
    assert set(cfg) == set(TrainConfig.__dataclass_fields__)
    assert cfg["lr"] == 0.05 and cfg["small_input"] is True and cfg["threads"] == 1
    assert cfg["weight_decay"] is not None and cfg["warmup"] is not None

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["step"] for r in rows] == [6, 12, 18]
    for r in rows:
        assert set(r) == METRIC_KEYS
        assert 0 <= r["val_accuracy"] <= 1 and r["train_loss"] > 0

    saved = json.loads((out / "result.json").read_text())
    assert RESULT_KEYS <= set(saved) and saved == json.loads(json.dumps(result))
    assert saved["model"] == "nin" and saved["steps"] == STEPS and saved["epochs"] == 3
    assert saved["params"] > 0 and saved["macs"] > 0 and 0 <= saved["test_accuracy"] <= 1
    assert saved["test_images"] == 60 and saved["train_images"] == 192
    assert saved["best_val_accuracy"] == max(r["val_accuracy"] for r in rows)

    last = load_checkpoint(out / "checkpoints" / "last.pt")
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    assert CHECKPOINT_KEYS <= set(last)
    assert last["step"] == STEPS and last["epoch"] == 3 and len(last["metrics"]) == 3
    assert last["data"]["classes"][0] == "T-shirt/top" and last["data"]["image_size"] == [28, 28]
    assert rows[best["epoch"] - 1]["val_accuracy"] == saved["best_val_accuracy"]
    assert set(last["rng"]) >= {"torch", "numpy", "python"}

    # model.safetensors holds the evaluated (EMA) weights and the metadata to use them.
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["convzoo"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["model_name"] == "nin" and meta["model_options"]["num_classes"] == 10
    assert len(meta["classes"]) == 10 and len(meta["mean"]) == len(meta["std"]) == 1
    for k, v in last["ema"].items():
        assert torch.equal(tensors[k], v)
    assert model_from_checkpoint(last).training is False


@pytest.mark.slow
def test_resume_after_a_crash_is_bitwise_equal(data_dir, reference, tmp_path):
    out = tmp_path / "run"

    class Crash(Exception):
        pass

    def crash(step):
        if step == 10:
            raise Crash

    with pytest.raises(Crash):
        train(config(data_dir, out), on_step=crash)
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (ck["epoch"], ck["batch"], ck["step"]) == (1, 2, 8)  # saved every 4 steps
    result = train(TrainConfig(model="nin", quiet=True), resume=out).result
    assert result["steps"] == STEPS and result["resumed"] is True
    assert_bitwise_equal(reference[0], out)
    assert result["test_accuracy"] == reference[1]["test_accuracy"]


@pytest.fixture
def python_sigint():
    """SIGINT handled by Python's own handler, as in a terminal (a shell's background
    job starts with SIGINT ignored); the previous handler is put back after."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.slow
def test_sigint_saves_and_resume_is_bitwise_equal(data_dir, reference, tmp_path, python_sigint):
    out = tmp_path / "run"

    def interrupt(step):
        if step == 7:  # noticed at the next step boundary
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as stop:
        train(config(data_dir, out), on_step=interrupt)
    assert stop.value.exit_code == 130
    assert f"--resume {out}" in str(stop.value)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 8
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    train(TrainConfig(model="nin", quiet=True), resume=out)
    assert_bitwise_equal(reference[0], out)


@pytest.mark.slow
def test_sigterm_exit_code(data_dir, tmp_path):
    out = tmp_path / "run"

    def terminate(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted) as stop:
        train(config(data_dir, out, epochs=1), on_step=terminate)
    assert stop.value.exit_code == 143 and "SIGTERM" in str(stop.value)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_last_checkpoint_falls_back(data_dir, reference, tmp_path, capsys, damage):
    out = tmp_path / "run"

    def interrupt(step):
        if step == 13:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        train(config(data_dir, out), on_step=interrupt)
    last = out / "checkpoints" / "last.pt"
    assert load_checkpoint(out / "checkpoints" / "last.prev.pt")["step"] == 12
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(len(data)))
    capsys.readouterr()
    train(TrainConfig(model="nin", quiet=True), resume=out)
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and "falling back to" in err and "last.prev.pt" in err
    assert "arbitrary code" not in err
    assert_bitwise_equal(reference[0], out)
    assert load_checkpoint(last)["step"] == STEPS  # whole again


@pytest.mark.slow
def test_no_good_checkpoint_is_reported(data_dir, tmp_path):
    out = tmp_path / "run"

    def stop(step):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config(data_dir, out, save_every_steps=0), on_step=stop)
    ckdir = out / "checkpoints"
    assert sorted(p.name for p in ckdir.iterdir()) == ["last.pt"]  # the start checkpoint
    (ckdir / "last.pt").write_bytes((ckdir / "last.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="no usable checkpoint.*truncated or corrupt"):
        train(TrainConfig(model="nin", quiet=True), resume=out)


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="NaN|infinite") as err:
        train(config(data_dir, out, lr=1e30, ema=0.0, save_every_steps=0, epochs=2))
    assert "last good checkpoint" in str(err.value)
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    result = json.loads((out / "result.json").read_text())
    assert result["diverged"] is True and result["test_accuracy"] is None
    assert "NaN" in result["reason"] or "infinite" in result["reason"]
    assert not (out / "model.safetensors").exists()


@pytest.mark.slow
def test_resume_refuses_another_model_and_non_runs(reference, tmp_path):
    out, _ = reference
    with pytest.raises(CheckpointError, match="run of nin, not resnet18"):
        train(TrainConfig(model="resnet18"), resume=out)
    with pytest.raises(CheckpointError, match="does not exist"):
        train(TrainConfig(model="nin"), resume=tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CheckpointError, match="not a run directory"):
        train(TrainConfig(model="nin"), resume=tmp_path / "plain")


@pytest.mark.slow
def test_existing_run_is_not_overwritten(data_dir, reference):
    with pytest.raises(ConfigError, match="already holds a run"):
        train(config(data_dir, reference[0]))


@pytest.mark.slow
def test_time_budget_plans_the_schedule(data_dir, tmp_path):
    out = tmp_path / "run"
    result = train(
        config(data_dir, out, epochs=None, time_budget=20.0, save_every_steps=0, ema=0.0)
    ).result
    assert result["time_budget"] == 20.0 and result["planned_steps"] >= 1
    assert result["steps"] == result["final_planned_steps"]
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ck["scheduler"]["total_steps"] == result["steps"] == ck["step"]
    # The schedule ran to its end: the last learning rate is the schedule's last value.
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["lr"] < 0.05 * 1e-3


@pytest.mark.slow
def test_budget_too_short_is_a_config_error(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="too short"):
        train(config(data_dir, tmp_path / "run", epochs=None, time_budget=0.01))


def test_training_loss_adds_auxiliary_heads():
    torch.manual_seed(0)
    y = torch.randint(0, 5, (8,))
    main, a1, a2 = (torch.randn(8, 5) for _ in range(3))
    expected = F.cross_entropy(main, y) + 0.3 * (F.cross_entropy(a1, y) + F.cross_entropy(a2, y))
    assert torch.allclose(training_loss((main, a1, a2), y, 0.0), expected)
    assert torch.allclose(training_loss(main, y, 0.0), F.cross_entropy(main, y))
    soft = F.one_hot(y, 5).float()
    assert torch.allclose(training_loss(main, soft, 0.0), F.cross_entropy(main, y))


def test_ema_update_rule():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.9)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)  # first update: decay warmed up to min(0.9, 2/11)
    d = 2 / 11
    assert torch.allclose(ema.module[0].weight, d * start + (1 - d) * model[0].weight)
    assert torch.equal(ema.module[1].num_batches_tracked, model[1].num_batches_tracked)
    for _ in range(200):
        ema.update(model)
    assert torch.allclose(ema.module[0].weight, model[0].weight, atol=1e-6)


def test_recipes(tmp_path, monkeypatch):
    recipes = tmp_path / "recipes"
    (recipes / "fashion-mnist").mkdir(parents=True)
    (recipes / "fashion-mnist" / "nin.toml").write_text(
        'description = "test"\nepochs = 7\nlr = 0.02\nflip = true\n'
        "[model_options]\nbatch_norm = true\n"
    )
    (recipes / "fashion-mnist" / "fast.toml").write_text("epochs = 2\nbatch_size = 64\n")
    (recipes / "fashion-mnist" / "bad.toml").write_text("epochs = 2\nlearning_rate = 0.1\n")
    monkeypatch.setenv("CONVZOO_RECIPES", str(recipes))
    lines = []
    cfg = build_config("nin", {"lr": 0.5}, log=lines.append)
    assert (cfg.epochs, cfg.lr, cfg.flip, cfg.recipe) == (7, 0.5, True, "fashion-mnist/nin")
    assert cfg.model_options == {"batch_norm": True}
    assert "fashion-mnist/nin" in lines[0]
    assert build_config("resnet18", {}).recipe is None  # no recipe for the family
    assert build_config("nin", {}, recipe="none").epochs is None
    cfg = build_config("nin", {"epochs": 3}, recipe="fast")
    assert (cfg.epochs, cfg.batch_size, cfg.recipe) == (3, 64, "fast")
    cfg = build_config("nin", {}, recipe=str(recipes / "fashion-mnist" / "fast.toml"))
    assert cfg.batch_size == 64
    # a time budget on the command line replaces the recipe's epochs
    cfg = build_config("nin", {"time_budget": 60.0})
    assert cfg.time_budget == 60.0 and cfg.epochs == 7
    with pytest.raises(ConfigError, match="learning_rate"):
        build_config("nin", {}, recipe="bad")
    with pytest.raises(ConfigError, match="no recipe 'nope'.*fast"):
        build_config("nin", {}, recipe="nope")
    assert build_config("nin", {"dataset": "mnist"}).recipe is None  # only Fashion-MNIST


@pytest.mark.slow
@pytest.mark.realdata
def test_real_fashion_mnist(real_fashion_mnist, tmp_path):
    out = tmp_path / "run"
    result = train_run(
        TrainConfig(
            model="alexnet",
            data_dir=str(real_fashion_mnist),
            width=0.125,
            limit_train=512,
            val_size=256,
            batch_size=32,
            epochs=2,
            optimizer="adamw",  # AlexNet has no batch norm: Adam starts it fast
            lr=2e-3,
            quiet=True,
            out=str(out),
        )
    ).result
    assert result["dataset"] == "fashion-mnist" and result["test_images"] == 10000
    assert result["train_images"] == 512 and result["val_images"] == 256
    assert result["small_input"] is True and result["steps"] == 32
    assert result["test_accuracy"] > 0.2  # chance is 0.1
    assert (out / "model.safetensors").is_file() and (out / "confusion.png").is_file()


@pytest.mark.parametrize(
    "path", sorted((recipes_dir() / "fashion-mnist").glob("*.toml")), ids=lambda p: p.stem
)
def test_shipped_recipes_build(path):
    """Every recipe in recipes/ is valid and builds its family's model for 28 px input."""
    family = path.stem.split("-")[0]
    name = {"vgg": "vgg11_bn", "densenet": "densenet121", "resnet": "resnet18"}.get(family, family)
    cfg = build_config(name, {}, recipe=str(path))
    model = get_model(
        name, num_classes=10, in_channels=1, small_input=True, width=cfg.width,
        **cfg.model_options,
    )  # fmt: skip
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.slow
def test_busy_machine_is_reported_by_train(data_dir, tmp_path, monkeypatch, capsys):
    from convzoo import device as cores

    monkeypatch.setattr(cores, "busy_cores", lambda: 0.0)
    train(config(data_dir, tmp_path / "quiet", epochs=1, threads=1))
    assert "busy" not in capsys.readouterr().err
    monkeypatch.setattr(cores, "busy_cores", lambda: 9.0)
    train(config(data_dir, tmp_path / "busy", epochs=1, threads=1))
    assert "warning: this machine is busy: other processes keep 9.0 of" in capsys.readouterr().err
