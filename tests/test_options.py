"""Options declared once: TrainConfig's field metadata makes `convzoo train`'s flags,
compare's subset, check_config and to_argv, and they agree with each other."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convzoo.cli import build_parser, main
from convzoo.cli.options import config_overrides
from convzoo.errors import ConfigError
from convzoo.train.argv import to_argv
from convzoo.train.config import (
    RESUME_OPTIONS,
    TrainConfig,
    check_config,
    field_problem,
    merge_resume,
    option_of,
    options,
    parse_option,
)
from convzoo.train.recipes import build_config

# The flags of every command before their options were generated (flag sets, not texts).
BASELINE = {
    "list": "--num-classes --small-input",
    "summary": "--input --num-classes --small-input --width",
    "train": "--amp --batch-size --channels-last --compile --crop-padding --cutmix --data-dir "
    "--dataset --deterministic --device --ema --epochs --erasing --flip --image-size "
    "--label-smoothing --limit-train --lr --mixup --model-option --momentum --nesterov --no-amp "
    "--no-channels-last --no-compile --no-deterministic --no-flip --no-nesterov "
    "--no-small-input --no-sync-bn --no-tta --optimizer --out --quiet --recipe --resume "
    "--save-every-steps --schedule --seed --small-input --sync-bn --threads --time-budget --tta "
    "--val-size --warmup --weight-decay --width",
    "eval": "--backend --batch-size --data-dir --device --json --no-ema --no-tta --tta --which",
    "predict": "--backend --device --json --no-ema --no-tta --topk --tta --which",
    "export": "--format --out --which",
    "compare": "--all --batch-size --data-dir --dataset --device --epochs --limit-train "
    "--no-speed --out --quiet --recipe --runs --seed --threads --time-budget --val-size --width",
    "report": "--data-dir --device --no-speed --out --quiet",
    "bench throughput": "--backend --batch --compile --input --json --num-classes --repeats "
    "--small-input --threads --warmup --width",
    "bench train": "--batch --input --json --num-classes --repeats --small-input --threads "
    "--variants --warmup --width",
    "data where": "--data-dir",
    "data fetch": "--dest --mirror --timeout",
}


def subparsers() -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser by its name after `convzoo`."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, p in action.choices.items():
                    found[f"{name} {sub}".strip()] = p
                    walk(p, f"{name} {sub}".strip())

    walk(build_parser(), "")
    return found


def flags(parser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")}


# Flags added since, each by the feature that needed it (bf16/int8 inference).
ADDED = {
    "eval": "--max-accuracy-drop",
    "predict": "--max-accuracy-drop --data-dir",
    "export": "--int8 --max-accuracy-drop --data-dir",
    "compare": "--no-explain",  # the report's side-by-side explained images
    # fine-tuning from pretrained weights (docs/pretrained.md)
    "train": "--pretrained --freeze-epochs --backbone-lr-scale --freeze-bn --no-freeze-bn "
    "--normalize --center-crop --no-center-crop",
}


@pytest.mark.parametrize("command", sorted(BASELINE))
def test_every_command_offers_the_same_flags_as_before(command):
    want = set(BASELINE[command].split()) | set(ADDED.get(command, "").split())
    assert flags(subparsers()[command]) == want


@pytest.mark.parametrize("command", sorted(BASELINE) + ["explain", "ablate"])
def test_every_option_has_a_description_that_shows_its_default(command):
    for action in subparsers()[command]._actions:
        if not action.option_strings or "--help" in action.option_strings:
            continue
        assert action.help and len(action.help) > 10, (command, action.option_strings)
        text = action.help.lower()
        assert "default" in text or "required" in text, (command, action.option_strings)


def test_every_train_flag_comes_from_a_field():
    parser = subparsers()["train"]
    generated = {o.dest for a in [parser] for o in a._actions if o.option_strings}
    declared = {name for name, opt in options() if opt.action}
    assert declared <= generated
    assert generated - declared == {"help", "resume"}


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def test_to_argv_reads_back_as_the_same_options():
    overrides = {
        "epochs": 3,
        "time_budget": 90.0,
        "lr": 0.1,
        "nesterov": False,
        "flip": True,
        "warmup": 0.25,
        "val_size": 500,
        "ema": 0.999,
        "quiet": True,
        "small_input": False,
        "model_options": {"aux_logits": True, "name": "x", "text": "1", "sizes": [1, 2]},
        "seed": 7,
    }
    overrides.pop("time_budget")  # epochs and a budget are exclusive on the command line
    argv = to_argv("googlenet", overrides, recipe="none", resume="runs/x")
    args = parse(argv)
    assert config_overrides(args) == {**overrides, "recipe": "none"}
    assert args.resume == "runs/x"


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--lr", "inf"),
        ("--lr", "nan"),
        ("--weight-decay", "nan"),
        ("--width", "inf"),
        ("--momentum", "nan"),
        ("--mixup", "inf"),
        ("--warmup", "inf"),
        ("--val-size", "nan"),
        ("--time-budget", "inf"),
        ("--ema", "nan"),
        ("--erasing", "-inf"),
    ],
)
def test_float_flags_must_be_finite(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "nin", flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert flag in err


def test_check_config_refuses_what_the_flags_refuse():
    for name in ("lr", "weight_decay", "width", "momentum", "mixup", "gamma", "time_budget"):
        for bad in (math.inf, -math.inf, math.nan):
            with pytest.raises(ConfigError, match="finite"):
                check_config(dataclasses.replace(TrainConfig("nin"), **{name: bad}))
    # The smallest EMA decay: one rule for the flag and for a recipe or a config.
    assert field_problem("ema", 0.3) is not None
    with pytest.raises(ConfigError, match="--ema"):
        check_config(TrainConfig("nin", ema=0.3))
    with pytest.raises(SystemExit):
        parse(["train", "nin", "--ema", "0.3"])
    assert parse(["train", "nin", "--ema"]).ema == 0.999
    check_config(TrainConfig("nin", ema=0.0))
    check_config(TrainConfig("nin", ema=0.5))


@pytest.mark.parametrize("name", [n for n, o in options() if o.number is not None])
def test_argparse_type_and_check_config_agree(name):
    """For each numeric field, a value the flag accepts passes check_config and a value
    check_config refuses is refused by the flag."""
    opt = option_of(name)
    for text in ("0", "1", "0.5", "-1", "2", "1e9", "nan", "inf", "10%"):
        try:
            value = opt.parse(text) if opt.parse else opt.number.convert(text)
        except ConfigError:
            continue
        assert (opt.check(value) is None) == (field_problem(name, value) is None)


def test_model_options_may_not_repeat_a_flag(capsys):
    for key, flag in (("width", "--width"), ("small_input", "--small-input")):
        with pytest.raises(ConfigError, match=flag):
            parse_option(f"{key}=2")
        with pytest.raises(SystemExit) as exc:
            main(["train", "nin", "--model-option", f"{key}=2"])
        assert exc.value.code == 2
        assert flag in capsys.readouterr().err
    with pytest.raises(ConfigError, match="comes from the dataset"):
        build_config("nin", {"model_options": {"num_classes": 3}}, recipe="none")


@pytest.fixture
def recipes(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    (folder / "fashion-mnist").mkdir(parents=True)
    monkeypatch.setenv("CONVZOO_RECIPES", str(folder))
    return folder / "fashion-mnist"


def test_a_recipes_small_input_option_is_left_out_for_the_faithful_form(recipes):
    (recipes / "resnet.toml").write_text("epochs = 2\n[model_options]\nstem_stride = 2\n")
    notes: list[str] = []
    cfg = build_config("resnet18", {"small_input": False}, note=notes.append)
    assert "stem_stride" not in cfg.model_options
    assert len(notes) == 1 and "stem_stride" in notes[0] and "small-input form only" in notes[0]
    # a large --image-size asks for the faithful form too; the small-input form keeps it
    assert "stem_stride" not in build_config("resnet18", {"image_size": 224}).model_options
    assert build_config("resnet18", {"small_input": True}).model_options == {"stem_stride": 2}
    assert build_config("resnet18", {}).model_options == {"stem_stride": 2}
    # given by the user, it is the user's: kept (and the model says what is wrong)
    cfg = build_config(
        "resnet18", {"small_input": False, "model_options": {"stem_stride": 2}}, note=notes.append
    )
    assert cfg.model_options == {"stem_stride": 2}


def test_a_bad_recipe_value_names_the_recipe(recipes):
    (recipes / "nin.toml").write_text("lr = -1.0\n")
    with pytest.raises(ConfigError, match=r"lr in recipe .*nin\.toml must be a positive number"):
        build_config("nin", {})


def test_resume_takes_only_the_resume_options(tmp_path):
    saved = TrainConfig("nin", epochs=3, seed=1).to_dict()
    cfg = merge_resume(saved, {"threads": 2, "quiet": True}, where="config.json")
    assert (cfg.threads, cfg.quiet, cfg.epochs, cfg.seed) == (2, True, 3, 1)
    with pytest.raises(ConfigError, match="--seed cannot change when resuming"):
        merge_resume(saved, {"seed": 2}, where="config.json")
    assert "device" in RESUME_OPTIONS and "data_dir" in RESUME_OPTIONS


def test_train_resume_refuses_other_options(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(
        __import__("json").dumps(TrainConfig("nin", epochs=3).to_dict())
    )
    code = main(["train", "nin", "--resume", str(run), "--epochs", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "--epochs cannot change when resuming" in err
    assert len(err.strip().splitlines()) == 1


# -- property tests: every value of a numeric flag gives a config or exit 2 --------------

NUMERIC_TRAIN_FLAGS = [
    "--epochs", "--time-budget", "--batch-size", "--lr", "--momentum", "--weight-decay",
    "--warmup", "--label-smoothing", "--ema", "--crop-padding", "--erasing", "--mixup",
    "--cutmix", "--seed", "--threads", "--limit-train", "--val-size", "--image-size",
    "--width", "--save-every-steps",
]  # fmt: skip

numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "nan", "-inf", "1e400", "10%", "150%", "5m", "0x10", " 3 ", "1_000"]),
    st.text(max_size=6),
)


def _train_setup(argv: list[str]) -> int:
    """`convzoo train` up to a checked configuration: parsing and build_config."""
    from convzoo.cli import Parser  # noqa: F401  (the parser main uses)
    from convzoo.cli.train_cmd import overrides_from_args

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code)
    try:
        build_config(args.model, overrides_from_args(args), recipe="none")
    except ConfigError:
        return 2
    return 0


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(flag=st.sampled_from(NUMERIC_TRAIN_FLAGS), value=numbers)
def test_train_numeric_flags_never_give_a_traceback(flag, value, capsys):
    if value.startswith("-"):
        argv = ["train", "nin", f"{flag}={value}"]
    else:
        argv = ["train", "nin", flag, value]
    assert _train_setup(argv) in (0, 2)
    err = capsys.readouterr().err
    assert "Traceback" not in err


NUMERIC_BENCH_FLAGS = ["--batch", "--threads", "--repeats", "--warmup", "--width", "--num-classes"]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    what=st.sampled_from(["throughput", "train"]),
    flag=st.sampled_from([*NUMERIC_BENCH_FLAGS, "--input"]),
    value=st.one_of(numbers, st.sampled_from(["1x28x28", "0x28x28", "1x1x99999999999"])),
)
def test_bench_numeric_flags_never_give_a_traceback(what, flag, value, capsys, monkeypatch):
    """Parsing and the options' check (the benchmark itself is replaced: no model is built)."""
    from convzoo import bench

    def checked_only(name, **kwargs):
        wanted = inspect.signature(bench.check_options).parameters
        bench.check_options(**{k: v for k, v in kwargs.items() if k in wanted})
        raise SystemExit(0)

    monkeypatch.setattr(bench, "bench_throughput", checked_only)
    monkeypatch.setattr(bench, "bench_train", checked_only)
    argv = ["bench", what, "nin", f"{flag}={value}"]
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code in (0, 2)
    assert "Traceback" not in capsys.readouterr().err
