"""Transfer on Fashion-MNIST: pretrain on five classes, fine-tune on the other five from
1,000 labelled images, against training from scratch on the same images in the same time.

1. Image folders are written from the Fashion-MNIST IDX files: ``pretrain/`` holds the
   training and test images of classes 0-4 (T-shirt/top ... Coat), ``target/`` 1,000
   training images of classes 5-9 (Sandal ... Ankle boot; 200 a class, drawn with a
   fixed seed) and all their test images.
2. ``convzoo train MODEL`` on ``pretrain/`` for ``--pretrain-budget``.
3. For each seed, on ``target/``, both for ``--budget``: ``--pretrained`` the run of
   step 2 (a fresh classifier, since the classes differ), and from scratch.
Every run uses the Fashion-MNIST recipe of the model's family (``--recipe``), so the
two arms differ only in their starting weights. It prints a table and, unless
``--no-record``, appends it to RESULTS.md.

    python benchmarks/transfer.py --model resnet18 --pretrain-budget 10m --budget 2m --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _record import append_section  # noqa: E402

from convzoo.data.datasets import load_dataset  # noqa: E402

PRETRAIN_CLASSES = range(0, 5)
TARGET_CLASSES = range(5, 10)
HEADER = ["seed", "start", "target images", "budget", "test accuracy", "epochs", "train s"]


def write_folder(root: Path, images, labels, classes, keep, names) -> None:
    for i in np.flatnonzero(np.isin(labels, list(keep))):
        folder = root / names[labels[i]].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i, 0]).save(folder / f"{i}.png")


def make_folders(out: Path, target_images: int, pretrain_images: int | None, data_dir) -> None:
    ds = load_dataset("fashion-mnist", data_dir)
    names = list(ds.classes)
    train_x, train_y = ds.train_images.numpy(), ds.train_labels.numpy()
    test_x, test_y = ds.test_images.numpy(), ds.test_labels.numpy()
    rng = np.random.default_rng(0)
    pre = np.flatnonzero(np.isin(train_y, list(PRETRAIN_CLASSES)))
    if pretrain_images:
        pre = rng.choice(pre, pretrain_images, replace=False)
    write_folder(out / "pretrain/train", train_x[pre], train_y[pre], None, PRETRAIN_CLASSES, names)
    write_folder(out / "pretrain/test", test_x, test_y, None, PRETRAIN_CLASSES, names)
    per_class = target_images // len(TARGET_CLASSES)
    chosen = np.concatenate(
        [rng.choice(np.flatnonzero(train_y == c), per_class, replace=False) for c in TARGET_CLASSES]
    )
    write_folder(
        out / "target/train", train_x[chosen], train_y[chosen], None, TARGET_CLASSES, names
    )
    write_folder(out / "target/test", test_x, test_y, None, TARGET_CLASSES, names)


def train(model: str, dataset: Path, out: Path, budget: str, seed: int, recipe: str,
          extra: list[str]) -> dict:  # fmt: skip
    argv = [sys.executable, "-m", "convzoo", "train", model, "--dataset", str(dataset),
            "--out", str(out), "--time-budget", budget, "--seed", str(seed), "--recipe", recipe,
            "--quiet", *extra]  # fmt: skip
    print("+", " ".join(argv[2:]), flush=True)
    subprocess.run(argv, check=True)
    return json.loads((out / "result.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--recipe", default=None, help="default: recipes/fashion-mnist/<family>.toml")
    p.add_argument("--pretrain-budget", default="10m")
    p.add_argument("--budget", default="2m", help="of each target run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--target-images", type=int, default=1000)
    p.add_argument("--pretrain-images", type=int, default=None, help="default: all 30,000")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="keep the folders and runs here")
    p.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = p.parse_args()
    from convzoo.train.recipes import family_of, recipes_dir

    recipe = args.recipe or str(recipes_dir() / "fashion-mnist" / f"{family_of(args.model)}.toml")
    out = Path(args.out or tempfile.mkdtemp(prefix="convzoo-transfer-"))
    make_folders(out / "data", args.target_images, args.pretrain_images, args.data_dir)
    # The folders' images are 28 px: the small-input form, as on Fashion-MNIST itself.
    common = ["--small-input", "--val-size", "0.1"]
    pre = train(args.model, out / "data/pretrain", out / "pretrain", args.pretrain_budget, 0,
                recipe, common)  # fmt: skip
    print(f"pretrained on classes 0-4: test accuracy {pre['test_accuracy']:.4f}", flush=True)
    rows = []
    for seed in args.seeds:
        for start, extra in (("pretrained", ["--pretrained", str(out / "pretrain")]),
                             ("scratch", [])):  # fmt: skip
            res = train(args.model, out / "data/target", out / f"{start}-{seed}", args.budget,
                        seed, recipe, common + extra)  # fmt: skip
            rows.append([seed, start, res["train_images"], args.budget,
                         f"{res['test_accuracy']:.4f}", res["epochs"],
                         f"{res['train_seconds']:.0f}"])  # fmt: skip
    print(" | ".join(HEADER))
    for row in rows:
        print(" | ".join(str(c) for c in row))
    if not args.no_record:
        append_section(
            f"Transfer on Fashion-MNIST: {args.model} pretrained on classes 0-4 "
            f"({args.pretrain_budget}), then classes 5-9 from {args.target_images} images",
            HEADER,
            rows,
            note=f"Pretraining reached {pre['test_accuracy']:.4f} on classes 0-4. Each target "
            "run has the same budget and recipe; 'pretrained' starts from the pretraining "
            "run's weights with a fresh classifier.",
        )


if __name__ == "__main__":
    main()
