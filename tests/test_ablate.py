"""`convzoo ablate`: the variant tables, one end-to-end ablation and its rerun, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_idx_dataset
from PIL import Image

from convzoo import get_model
from convzoo.ablate import ABLATIONS, ablation_table, format_table, plan_ablation, select_variants
from convzoo.cli import main
from convzoo.errors import ConfigError
from convzoo.registry import list_models
from convzoo.train.recipes import family_of

pytestmark = pytest.mark.usefixtures("one_thread")

# How each variant's parameter count compares with its family's baseline (small-input
# form, 10 classes), as the models' docstrings say it should.
PARAMS_VS_BASELINE = {
    "alexnet": {"no-dropout": "=", "lrn": "="},  # neither dropout nor LRN has weights
    "vgg": {"no-bn": "<"},  # the batch norms' scales and shifts
    "nin": {"no-1x1": "<", "dense-head": ">"},  # 1x1 convs gone; a dense layer in
    "googlenet": {"no-1x1": "<", "no-3x3": "<", "no-5x5": "<", "no-pool": "<"},
    "resnet": {"plain": "<"},  # the three 1x1 projections
    "densenet": {"chain": ">"},  # each chained layer outputs the concatenation's width
}


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("convzoo ablate: error:"), lines[0]
    return lines[0]


def test_every_family_has_a_table_of_valid_variants():
    assert set(ABLATIONS) == set(PARAMS_VS_BASELINE)
    for family, ablation in ABLATIONS.items():
        assert ablation.model in list_models() and family_of(ablation.model) == family
        names = [v.name for v in ablation.variants]
        assert len(set(names)) == len(names)
        baseline, *others = ablation.variants
        assert baseline.removes == "" and all(v.removes for v in others)
        # options are JSON values, as config.json stores them (so reruns match)
        for v in ablation.variants:
            assert json.loads(json.dumps(v.options)) == v.options


@pytest.mark.parametrize("family", list(ABLATIONS))
def test_each_variant_changes_the_parameters_as_documented(family):
    ablation = ABLATIONS[family]

    def params(options) -> int:
        with torch.device("meta"):
            shape = dict(num_classes=10, in_channels=1, small_input=True)
            return n_params(get_model(ablation.model, **shape, **options))

    base = params(ablation.variants[0].options)
    for v in ablation.variants[1:]:
        got = params(v.options)
        expected = PARAMS_VS_BASELINE[family][v.name]
        assert {"<": got < base, "=": got == base, ">": got > base}[expected], (v.name, got)


def test_resnet_plain_loses_exactly_the_projections():
    """The plain ResNet-34 differs from the residual one by its three 1x1 projections
    (conv and batch norm), at the recipe's width 0.5: 64, 128, 256 channels."""
    with torch.device("meta"):
        res = get_model("resnet34", num_classes=10, in_channels=1, small_input=True, width=0.5)
        plain = get_model(
            "resnet34", num_classes=10, in_channels=1, small_input=True, width=0.5, shortcut=False
        )
    projections = sum(a * b + 2 * b for a, b in ((32, 64), (64, 128), (128, 256)))
    assert n_params(res) - n_params(plain) == projections


def test_plans_use_the_recipe_and_the_variants_options(tmp_path):
    plans = plan_ablation("resnet", {"epochs": 1, "seed": 5}, tmp_path, seeds=2)
    assert [p.label for p in plans] == [
        "residual seed 5", "residual seed 6", "plain seed 5", "plain seed 6",
    ]  # fmt: skip
    for p in plans:
        assert p.model == "resnet34" and p.config.recipe == "fashion-mnist/resnet"
        assert p.config.model_options["stem_stride"] == 2  # the recipe's
        assert p.run_dir == tmp_path / "runs" / p.label.split()[0] / f"seed{p.config.seed}"
        assert p.state is None
    assert plans[2].config.model_options["shortcut"] is False
    assert [v.name for v in select_variants("googlenet", ["no-pool", "baseline"])] == [
        "baseline",
        "no-pool",
    ]
    with pytest.raises(ConfigError, match="varies"):
        plan_ablation("resnet", {"model_options": {"shortcut": True}}, tmp_path)
    lowered = plan_ablation("densenet", {"epochs": 1, "lr": 0.02}, tmp_path / "d")
    assert {p.config.lr for p in lowered} == {0.02}  # every variant alike


def test_a_diverged_run_is_named_in_the_table_not_averaged(tmp_path):
    plans = plan_ablation("densenet", {"epochs": 1}, tmp_path)
    runs = {p.run_dir.parent.name: p.run_dir for p in plans}
    runs["dense"].mkdir(parents=True)
    (runs["dense"] / "result.json").write_text(json.dumps(
        {"seed": 0, "test_accuracy": 0.9, "params": 10, "macs": 20, "epochs": 1.0}))  # fmt: skip
    runs["chain"].mkdir(parents=True)
    (runs["chain"] / "result.json").write_text(json.dumps(
        {"seed": 0, "diverged": True, "test_accuracy": None,
         "reason": "the training loss became NaN in epoch 1 (by step 10)"}))  # fmt: skip
    dense, chain = ablation_table(plans, "densenet")
    assert dense.test_accuracy == [0.9] and dense.diverged == []
    assert chain.test_accuracy == [] and chain.accuracy_mean is None
    assert chain.to_dict()["diverged"] == [
        "seed 0 diverged: the training loss became NaN in epoch 1 (by step 10)"
    ]
    table = format_table([dense, chain])
    assert "| 0 |" in table and "seed 0 diverged: the training loss became NaN" in table


def test_ablate_bad_inputs_are_one_line(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["resnett"], "no ablations for 'resnett'; families: alexnet"),
        (["resnet", "--only", "plain,shortcutless"], "no variant 'shortcutless'"),
        (["resnet", "--model", "vgg11"], "--model vgg11 is not a resnet model"),
        (["resnet", "--model", "resnet19"], "unknown model 'resnet19'"),
        (["nin", "--out", str(a_file)], "is not a directory"),
        (["nin", "--model-option", "head=dense"], "--model-option head"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(["ablate", *argv, "--epochs", "1"]) == 2, argv
        line = one_line_error(capsys)
        assert message in line, line
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit) as exc:
        main(["ablate", "resnet", "--seeds", "0"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_ablate_trains_writes_the_table_and_chart_then_reuses_its_runs(tmp_path, capsys):
    data = write_idx_dataset(tmp_path / "data", n_train=120, n_test=40)
    out = tmp_path / "abl"
    tiny = ["--model", "resnet18", "--width", "0.125", "--epochs", "2", "--val-size", "20"]
    tiny += ["--batch-size", "50", "--threads", "1", "--data-dir", str(data), "--out", str(out)]
    assert main(["ablate", "resnet", *tiny, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| residual | (baseline) |" in printed and "| plain | the shortcuts |" in printed
    for variant in ("residual", "plain"):
        r = json.loads((out / "runs" / variant / "seed0" / "result.json").read_text())
        assert r["model"] == "resnet18" and r["model_options"]["shortcut"] is (variant != "plain")
    table = json.loads((out / "ablation.json").read_text())
    rows = {row["variant"]: row for row in table["variants"]}
    assert list(rows) == ["residual", "plain"]
    assert rows["residual"]["params"] > rows["plain"]["params"] > 0
    assert rows["plain"]["macs"] > 0 and len(rows["plain"]["final_train_loss"]) == 1
    metrics = (out / "runs" / "plain" / "seed0" / "metrics.jsonl").read_text().splitlines()
    assert rows["plain"]["final_train_loss"][0] == json.loads(metrics[-1])["train_loss"]
    assert (out / "ablation.md").read_text().startswith("# resnet18 ablation (resnet)")
    with Image.open(out / "loss-curves.png") as im:
        assert im.format == "PNG" and im.size[0] > 500
    assert "data:image/png;base64," in (out / "ablation.html").read_text()

    # Again with two seeds of one variant: seed 0 is reused, seed 1 trained.
    before = (out / "runs" / "plain" / "seed0" / "result.json").stat().st_mtime_ns
    assert main(["ablate", "resnet", *tiny, "--only", "plain", "--seeds", "2"]) == 0
    assert "plain seed 0: already trained" in capsys.readouterr().err
    assert (out / "runs" / "plain" / "seed0" / "result.json").stat().st_mtime_ns == before
    row = json.loads((out / "ablation.json").read_text())["variants"][0]
    assert row["variant"] == "plain" and row["seeds"] == [0, 1]
    assert row["test_accuracy_std"] is not None
    # The same --out with other settings is refused, not mixed in.
    assert main(["ablate", "resnet", *tiny, "--only", "plain", "--width", "0.25"]) == 2
    assert "already holds a resnet18 run with --width" in one_line_error(capsys)
