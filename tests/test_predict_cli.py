"""`convzoo eval`, `convzoo predict` and `convzoo export` on a real tiny training run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import write_idx_dataset
from PIL import Image

from convzoo.cli import main
from convzoo.data.datasets import FASHION_MNIST_CLASSES

FASHION = FASHION_MNIST_CLASSES


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run directory of a one-epoch resnet18 (width 1/8) on a synthetic Fashion-MNIST."""
    root = tmp_path_factory.mktemp("trained")
    data = write_idx_dataset(root / "data", n_train=120, n_test=40)
    run = root / "run"
    argv = [
        "train",
        "resnet18",
        "--width",
        "0.125",
        "--data-dir",
        str(data),
        "--val-size",
        "20",
        "--epochs",
        "1",
        "--batch-size",
        "50",
        "--out",
        str(run),
        "--quiet",
    ]
    assert main(argv) == 0
    assert (run / "checkpoints" / "best.pt").is_file()
    return run, data


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(capsys, *argv, match: str) -> None:
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert match in lines[0], lines[0]


def argparse_error(capsys, *argv, match: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


def load_model(run):
    from convzoo.artifacts import find_checkpoint, load_checkpoint
    from convzoo.registry import model_from_checkpoint

    ckpt = load_checkpoint(find_checkpoint(run))
    return ckpt, model_from_checkpoint(ckpt)


@pytest.mark.slow
def test_eval_json_agrees_with_training(trained, capsys):
    run, _ = trained
    rc, out, _ = run_cli(capsys, "eval", run, "--json", "--no-tta")
    assert rc == 0
    res = json.loads(out)
    result = json.loads((run / "result.json").read_text())
    assert res["accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-9)
    assert res["num_samples"] == 40 and res["classes"] == FASHION
    assert sum(map(sum, res["confusion"])) == 40
    assert [sum(row) for row in res["confusion"]] == [4] * 10  # balanced synthetic test set
    diag = sum(res["confusion"][i][i] for i in range(10))
    assert res["accuracy"] == pytest.approx(diag / 40)
    assert len(res["per_class_accuracy"]) == 10 and res["tta"] is False


@pytest.mark.slow
def test_eval_text(trained, capsys):
    run, _ = trained
    rc, out, _ = run_cli(capsys, "eval", run)
    assert rc == 0
    assert "accuracy" in out and "confusion matrix" in out
    for name in FASHION:
        assert name in out


@pytest.mark.slow
def test_eval_checkpoint_file_tta_data_dir_and_batch_size(trained, capsys):
    run, data = trained
    rc, out, _ = run_cli(capsys, "eval", run, "--json")
    plain = json.loads(out)
    rc, out, _ = run_cli(
        capsys,
        "eval",
        run / "checkpoints" / "best.pt",
        "--data-dir",
        data,
        "--batch-size",
        "7",
        "--json",
        "--device",
        "cpu",
    )
    assert rc == 0
    assert json.loads(out)["confusion"] == plain["confusion"]
    rc, out, _ = run_cli(capsys, "eval", run, "--tta", "--json")
    assert rc == 0
    tta = json.loads(out)
    assert tta["tta"] is True and tta["num_samples"] == 40


@pytest.mark.slow
def test_eval_defaults_to_the_runs_tta_setting(trained, capsys):
    """With neither --tta nor --no-tta, eval predicts as the run's recipe did."""
    run, _ = trained
    config = json.loads((run / "config.json").read_text())
    result = json.loads((run / "result.json").read_text())
    rc, out, _ = run_cli(capsys, "eval", run, "--json")
    assert rc == 0
    res = json.loads(out)
    assert config["tta"] is True  # the resnet recipe's setting
    assert res["tta"] is True
    assert res["accuracy"] == pytest.approx(result["test_accuracy_tta"], abs=1e-9)


@pytest.mark.slow
def test_predict_matches_the_model_on_a_test_image(trained, capsys, tmp_path):
    from convzoo.data.datasets import load_dataset

    run, data = trained
    ds = load_dataset("fashion-mnist", data)
    png = tmp_path / "test0.png"
    Image.fromarray(ds.test_images[0, 0].numpy(), "L").save(png)
    big = tmp_path / "big.jpg"  # another size and mode: converted as training images were
    Image.fromarray(ds.test_images[1, 0].numpy(), "L").convert("RGB").resize((56, 70)).save(big)
    rc, out, _ = run_cli(capsys, "predict", run, png, big, "--topk", "3", "--json")
    assert rc == 0
    preds = json.loads(out)["predictions"]
    assert [p["image"] for p in preds] == [str(png), str(big)]
    ckpt, model = load_model(run)
    mean, std = ckpt["data"]["mean"][0], ckpt["data"]["std"][0]
    x = (ds.test_images[:1].float() / 255 - mean) / std
    with torch.no_grad():
        plain = model(x).softmax(1)[0]
        mirrored = model(x.flip(3)).softmax(1)[0]
    # the run's recipe turned flip TTA on, so predict averages the image and its mirror
    assert json.loads((run / "config.json").read_text())["tta"] is True
    top = ((plain + mirrored) / 2).topk(3)
    for entry, p, i in zip(preds[0]["top"], top.values, top.indices, strict=True):
        assert entry["index"] == int(i) and entry["class"] == FASHION[int(i)]
        assert entry["probability"] == pytest.approx(float(p), abs=1e-5)
    rc, out, _ = run_cli(capsys, "predict", run, png, "--topk", "3", "--json", "--no-tta")
    assert rc == 0
    top = plain.topk(3)
    for entry, p, i in zip(json.loads(out)["predictions"][0]["top"], *top, strict=True):
        assert entry["index"] == int(i) and entry["probability"] == pytest.approx(
            float(p), abs=1e-5
        )
    second = [e["probability"] for e in preds[1]["top"]]
    assert len(second) == 3 and second == sorted(second, reverse=True)
    assert all(0 <= p <= 1 for p in second)


@pytest.mark.slow
def test_predict_text_and_topk_larger_than_the_classes(trained, capsys, tmp_path):
    run, _ = trained
    png = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(
        png
    )
    rc, out, _ = run_cli(capsys, "predict", run, png, "--topk", "50")
    assert rc == 0
    lines = out.strip().splitlines()
    assert lines[0] == str(png)
    assert len(lines) == 1 + 10  # all ten classes, no more
    assert lines[1].strip().startswith("1.") and "%" in lines[1]


@pytest.mark.slow
def test_export_cli_all_formats(trained, capsys, tmp_path):
    import onnxruntime as ort

    from convzoo.export import load_safetensors

    run, _ = trained
    _, model = load_model(run)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x)

    trained_weights = (run / "model.safetensors").read_bytes()
    rc, out, _ = run_cli(capsys, "export", run, "--format", "onnx")
    assert rc == 0 and str(run / "model-best.onnx") in out
    session = ort.InferenceSession(str(run / "model-best.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    rc, _, _ = run_cli(capsys, "export", run, "--format", "torchscript", "--out", tmp_path / "m.pt")
    assert rc == 0
    with torch.jit.optimized_execution(False):
        got = torch.jit.load(str(tmp_path / "m.pt"))(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    rc, _, _ = run_cli(
        capsys, "export", run, "--format", "safetensors", "--out", tmp_path / "m.safetensors"
    )
    assert rc == 0
    with torch.no_grad():
        assert torch.equal(load_safetensors(tmp_path / "m.safetensors")(x), want)
        # The file `convzoo train` wrote has the same layout.
        assert torch.equal(load_safetensors(run / "model.safetensors")(x), want)
    # A plain export goes beside it, named after its weights; training's file is kept.
    rc, out, _ = run_cli(capsys, "export", run, "--format", "safetensors")
    assert rc == 0 and str(run / "model-best.safetensors") in out
    assert (run / "model.safetensors").read_bytes() == trained_weights


@pytest.mark.slow
def test_export_refuses_to_overwrite_the_checkpoint(trained, capsys):
    run, _ = trained
    best = run / "checkpoints" / "best.pt"
    before = best.read_bytes()
    one_line_error(
        capsys,
        "export",
        run,
        "--format",
        "safetensors",
        "--out",
        best,
        match="refusing to overwrite",
    )
    assert best.read_bytes() == before


def test_bad_targets(capsys, tmp_path):
    for cmd in (["eval"], ["predict"], ["export"]):
        extra = (
            ["x.png"] if cmd == ["predict"] else ["--format", "onnx"] if cmd == ["export"] else []
        )
        one_line_error(capsys, *cmd, tmp_path / "no-run", *extra, match="does not exist")
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    one_line_error(capsys, "eval", text, match=str(text))
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    one_line_error(capsys, "eval", foreign, match="not a convzoo checkpoint")
    empty = tmp_path / "empty-run"
    empty.mkdir()
    one_line_error(capsys, "predict", empty, "x.png", match="not a run directory")


@pytest.mark.slow
def test_predict_bad_images(trained, capsys, tmp_path):
    run, _ = trained
    fake = tmp_path / "fake.png"
    fake.write_text("this is text, not a PNG\n")
    one_line_error(capsys, "predict", run, fake, match="not a readable image")
    one_line_error(capsys, "predict", run, tmp_path / "missing.png", match="missing.png")


@pytest.mark.slow
def test_eval_without_the_data(trained, capsys, tmp_path, data_env):
    run, _ = trained
    empty = tmp_path / "empty-data"
    empty.mkdir()
    rc, out, err = run_cli(capsys, "eval", run, "--data-dir", empty)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.slow
def test_argument_errors(trained, capsys, tmp_path):
    run, _ = trained
    argparse_error(capsys, "predict", run, "a.png", "--topk", "0", match="--topk")
    argparse_error(capsys, "predict", run, "a.png", "--topk", "-3", match="--topk")
    argparse_error(capsys, "export", run, "--format", "pdf", match="--format")
    argparse_error(capsys, "export", run, match="--format")
    argparse_error(capsys, "eval", run, "--batch-size", "0", match="--batch-size")


@pytest.mark.slow
def test_eval_json_is_strict(trained, capsys, monkeypatch):
    """A loss that is not a number is null in the JSON, never NaN or Infinity."""
    import convzoo.evaluate as evaluate_module

    real = evaluate_module.evaluate

    def diverged(*args, **kwargs):
        result = real(*args, **kwargs)
        result.loss = float("inf")
        result.per_class_accuracy[0] = float("nan")
        return result

    monkeypatch.setattr(evaluate_module, "evaluate", diverged)
    run, _ = trained
    rc, out, _ = run_cli(capsys, "eval", run, "--json")
    assert rc == 0

    def refuse(constant):
        raise AssertionError(f"{constant} in the JSON output")

    got = json.loads(out, parse_constant=refuse)
    assert got["loss"] is None and got["per_class_accuracy"][0] is None
