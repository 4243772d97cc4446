"""`convzoo explain`: Grad-CAM on a toy task, the layers it picks, its errors, its page."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_idx_dataset
from PIL import Image
from torch import nn

import convzoo
from convzoo.cli import main
from convzoo.errors import ConfigError, DataError
from convzoo.explain.gradcam import grad_cam
from convzoo.explain.images import load_images, pick_examples, pick_shared_examples
from convzoo.explain.layers import default_layer, find_layer, stages
from convzoo.explain.page import render_page
from convzoo.explain.run import Example, Explained, Stage

# -- Grad-CAM on a toy task whose object's place decides the class ------------------------


def toy_batch(n: int, g: torch.Generator):
    """16x16 one-channel noise; class 0: a bright 4x4 square in the left half, class 1:
    in the right half, class 2: no square (so that "nothing on the left" cannot stand in
    for "a square on the right"). Returns images, labels and the squares' corners."""
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.2
    y = torch.randint(0, 3, (n,), generator=g)
    rows = torch.randint(0, 13, (n,), generator=g)
    cols = torch.randint(0, 5, (n,), generator=g) + 8 * y
    for i in range(n):
        if y[i] < 2:
            x[i, 0, rows[i] : rows[i] + 4, cols[i] : cols[i] + 4] = 1.0
    return x, y, rows, cols


def toy_model() -> nn.Module:
    """Two convolutions at 16 and 8 px, then each half of the 8x8 maps pooled on its
    own: the head can tell left from right, as a network must for this task."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d((1, 2)),
        nn.Flatten(),
        nn.Linear(32, 3),
    )


@pytest.mark.slow  # trains for 60 steps (a few seconds)
def test_grad_cam_is_highest_over_the_object():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = toy_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(60):
        x, y, _, _ = toy_batch(32, g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y, rows, cols = toy_batch(48, g)
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(dim=1) == y).float().mean() >= 0.95
    layer = default_layer(model, x[:1])
    assert layer == "3"  # the last convolution, at 8x8
    cams = grad_cam(model, find_layer(model, layer), x, target=y)
    assert cams.shape == (48, 16, 16)
    assert float(cams.min()) >= 0
    objects = [i for i in range(48) if y[i] < 2]
    assert len(objects) >= 20
    for i in objects:
        cam = cams[i]
        inside = torch.zeros(16, 16, dtype=torch.bool)
        inside[rows[i] : rows[i] + 4, cols[i] : cols[i] + 4] = True
        assert cam[inside].mean() > 2 * cam[~inside].mean(), i
        peak_col = int(cam.argmax()) % 16
        assert (peak_col < 8) == (int(y[i]) == 0), i
    # the model's own switches are as they were
    assert all(m.inplace for m in model if isinstance(m, nn.ReLU))
    assert not model.training


def test_grad_cam_on_a_family_model_keeps_its_modes():
    model = convzoo.get_model(
        "resnet18", num_classes=10, in_channels=1, small_input=True, width=0.25
    )
    model.train()
    x = torch.randn(2, 1, 28, 28)
    cams = grad_cam(model, find_layer(model, "layer3.1"), x, size=(20, 24))
    assert cams.shape == (2, 20, 24) and float(cams.min()) >= 0
    assert all(m.training for m in model.modules())
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))


# -- layers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, layer, first_stage",
    [
        ("resnet18", "layer4.1", "layer1.1"),
        ("googlenet", "inception5b", "stem.conv1"),
        pytest.param("densenet121", "blocks.6", "blocks.0", marks=pytest.mark.slow),
    ],
)
def test_default_layer_and_stages(name, layer, first_stage):
    model = convzoo.get_model(name, num_classes=10, in_channels=1, small_input=True, width=0.125)
    x = torch.zeros(1, 1, 28, 28)
    assert default_layer(model, x) == layer
    found = stages(model, x)
    assert found[0].name == first_stage
    sizes = [b.shape[1:] for b in found]
    assert len(set(sizes)) == len(sizes)  # one block per resolution
    assert all(h * w > 1 for h, w in sizes)


def test_unknown_layer_names_valid_ones():
    model = convzoo.get_model("resnet18", num_classes=10, in_channels=1, small_input=True)
    with pytest.raises(ConfigError) as exc:
        find_layer(model, "layer9.1")
    text = str(exc.value)
    assert "\n" not in text and "layer9.1" in text and "layer4.1" in text


# -- picked test images and image files ---------------------------------------------------


def test_pick_examples_right_ones_and_confident_mistakes():
    probs = torch.tensor(
        [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.95, 0.05], [0.55, 0.45]]
    )
    labels = torch.tensor([0, 0, 1, 0, 1, 1])
    picked = pick_examples(probs, labels, right=2, wrong=2)
    # right: the most confident of class 0 (#0), of class 1 (#2); mistakes: #4 (0.95), #3 (0.7)
    assert picked == [(0, "right"), (2, "right"), (4, "mistake"), (3, "mistake")]


def save(path: Path, pixels: np.ndarray, mode: str) -> Path:
    Image.fromarray(pixels.astype(np.uint8), mode).save(path)
    return path


def test_pick_shared_examples_agreed_right_then_shared_confident_mistakes():
    """Images for several models at once: right by most of them, one per class, then
    the mistakes the models make with the most confidence on average."""
    labels = torch.tensor([0, 0, 1, 1, 2])

    def probs(rows):
        return torch.tensor(rows, dtype=torch.float)

    a = probs([[0.9, 0.1, 0], [0.6, 0.4, 0], [0.1, 0.9, 0], [0.95, 0.05, 0], [0, 0.1, 0.9]])
    b = probs([[0.8, 0.2, 0], [0.7, 0.3, 0], [0.2, 0.8, 0], [0.9, 0.1, 0], [0.6, 0, 0.4]])
    c = probs([[0.1, 0.9, 0], [0.9, 0.1, 0], [0.3, 0.7, 0], [0.2, 0.8, 0], [0.7, 0.3, 0]])
    picked = pick_shared_examples([a, b, c], labels, right=3, wrong=2)
    # class 0: image 1 is right by all three (image 0 by two); class 1: image 2 (all);
    # class 2: image 4 is right by one model of three, so no class-2 image.
    assert picked[:2] == [(1, "right"), (2, "right")]
    # mistakes: image 3 (two models sure of class 0: mean 0.617), image 4 (0.433), then 0
    assert picked[2:] == [(3, "mistake"), (4, "mistake")]
    assert pick_shared_examples([a], labels, right=0, wrong=0) == []


def test_load_images_checks_files_and_channels(tmp_path):
    rng = np.random.default_rng(0)
    gray = save(tmp_path / "gray.png", rng.integers(0, 255, (10, 12)), "L")
    colour = save(tmp_path / "colour.png", rng.integers(0, 255, (10, 12, 3)), "RGB")
    gray_rgb = save(
        tmp_path / "gray_rgb.png", np.repeat(rng.integers(0, 255, (10, 12, 1)), 3, 2), "RGB"
    )
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    batch = load_images([gray, gray_rgb], 1, (28, 28))
    assert batch.shape == (2, 1, 28, 28) and batch.dtype == torch.uint8
    assert load_images([colour], 3, (8, 8)).shape == (1, 3, 8, 8)
    for paths, channels, words in (
        ([colour], 1, "colour"),
        ([gray], 3, "grayscale"),
        ([text], 1, "not a readable image"),
        ([tmp_path / "missing.png"], 1, "no such image file"),
    ):
        with pytest.raises(DataError, match=words):
            load_images(paths, channels, (28, 28))


# -- the page ----------------------------------------------------------------------------

HOSTILE = "<script>alert('x')</script>&\"quoted\""


def test_page_escapes_class_and_file_names(tmp_path):
    explained = Explained(
        run_dir=tmp_path / "run",
        out_dir=tmp_path / "run" / "explain",
        model="resnet18",
        dataset="folder",
        classes=[HOSTILE, "ok"],
        test_accuracy=0.5,
        layer="layer4.1",
        layer_default=True,
        examples=[Example(HOSTILE + ".png", "given", HOSTILE, [(HOSTILE, 0.7)], "cam-01.png")],
        filters_layer="stem.0",
        filters_shape=(8, 1, 3, 3),
        filters_file="filters.png",
        feature_image=HOSTILE,
        stages=[Stage("layer1.1", (8, 28, 28), "features-01.png", 8)],
        command="convzoo explain run " + HOSTILE,
    )
    html = render_page(explained)
    assert "<script" not in html and "'x'" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&#34;quoted&#34;" in html
    assert "8&times;1&times;3&times;3" in html


# -- the command on a trained run ---------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run directory of a one-epoch resnet18 (width 1/8) on a synthetic Fashion-MNIST."""
    root = tmp_path_factory.mktemp("explain")
    data = write_idx_dataset(root / "data", n_train=120, n_test=40)
    run = root / "run"
    argv = ["train", "resnet18", "--width", "0.125", "--data-dir", data, "--val-size", "20"]
    argv += ["--epochs", "1", "--batch-size", "50", "--out", run, "--quiet"]
    assert main([str(a) for a in argv]) == 0
    return run


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["explain", *(str(a) for a in argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(capsys, *argv, match: str) -> None:
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert match in lines[0], lines[0]


@pytest.mark.slow
def test_explain_picks_test_images_and_writes_the_page(trained, capsys):
    rc, out, err = run_cli(capsys, trained)
    assert rc == 0, err
    folder = trained / "explain"
    summary = json.loads((folder / "explain.json").read_text())
    assert summary["layer"] == "layer4.1"
    kinds = [e["kind"] for e in summary["examples"]]
    assert "right" in kinds and "mistake" in kinds  # 1 epoch on 100 images: some of each
    for e in summary["examples"]:
        probs = [t["probability"] for t in e["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert (folder / e["cam"]).is_file()
    assert summary["filters"]["shape"][1] == 1
    assert [s["name"] for s in summary["stages"]] == [
        "layer1.1",
        "layer2.1",
        "layer3.1",
        "layer4.1",
    ]
    html = (folder / "explain.html").read_text()
    for name in ["filters.png", *(s["file"] for s in summary["stages"])]:
        assert f'src="{name}"' in html and (folder / name).is_file()
    with Image.open(folder / "cam-01.png") as im:  # image | overlay, each enlarged 4 times
        assert im.size == (2 * 28 * 4 + 2, 28 * 4)


@pytest.mark.slow
def test_explain_given_images_with_a_hostile_name(trained, tmp_path, capsys):
    image = save(tmp_path / "<b>&'x'.png", np.full((28, 28), 200), "L")
    out = tmp_path / "out"
    rc, stdout, err = run_cli(
        capsys, trained, image, "--out", out, "--layer", "layer2.1", "--topk", "2"
    )
    assert rc == 0, err
    html = (out / "explain.html").read_text()
    assert "&lt;b&gt;&amp;&#39;x&#39;.png" in html and "<b>&" not in html
    summary = json.loads((out / "explain.json").read_text())
    assert summary["layer"] == "layer2.1"
    assert [e["kind"] for e in summary["examples"]] == ["given"]
    assert len(summary["examples"][0]["top"]) == 2


@pytest.mark.slow
def test_explain_chosen_test_images(trained, tmp_path):
    from convzoo.explain import explain_run

    result = explain_run(trained, test_indices=[3, 0], out=tmp_path / "chosen", device="cpu")
    assert [(e.index, e.kind) for e in result.examples] == [(3, "chosen"), (0, "chosen")]
    summary = json.loads((tmp_path / "chosen" / "explain.json").read_text())
    assert [e["test_index"] for e in summary["examples"]] == [3, 0]
    with pytest.raises(ConfigError, match="indices"):
        explain_run(trained, test_indices=[40], out=tmp_path / "bad", device="cpu")


@pytest.mark.slow
def test_explain_user_mistakes_are_one_line(trained, tmp_path, capsys):
    rng = np.random.default_rng(0)
    colour = save(tmp_path / "colour.png", rng.integers(0, 255, (28, 28, 3)), "RGB")
    text = tmp_path / "notes.png"
    text.write_text("hello")
    one_line_error(capsys, trained, text, match="not a readable image")
    one_line_error(capsys, trained, colour, match="colour image")
    one_line_error(capsys, trained, "--layer", "nope", match="layer4.1")
    one_line_error(capsys, trained, "--layer", "head.2", match="not feature maps")
    one_line_error(capsys, tmp_path / "missing", match="does not exist")
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    one_line_error(capsys, unfinished, match="did not finish")
    one_line_error(capsys, trained, "--out", trained / "config.json", match="--out")


@pytest.mark.slow  # drives a browser
def test_explain_page_opens_in_chromium(trained, tmp_path_factory, capsys):
    from test_report_browser import CHROMIUM, Browser

    if CHROMIUM is None:
        pytest.skip("chromium is not installed")
    out = tmp_path_factory.mktemp("explain-page")
    assert run_cli(capsys, trained, "--out", out)[0] == 0
    browser = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        page = browser.visit((out / "explain.html").resolve().as_uri())
    finally:
        browser.close()
    assert page["errors"] == []
    for url in page["requests"]:
        assert url.startswith("file://"), url  # the page and its own PNG files only
    summary = json.loads((out / "explain.json").read_text())
    # the maps, the filters, the stages
    assert len(page["images"]) == len(summary["examples"]) + 1 + len(summary["stages"])
    for complete, width, height, alt, _ in page["images"]:
        assert complete and width > 0 and height > 0, alt
    assert {"cam", "filters", "features"} <= set(page["ids"])
