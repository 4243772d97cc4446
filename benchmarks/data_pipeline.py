"""One epoch of Fashion-MNIST training batches: convzoo's Loader against the usual way.

Both pipelines make the same batches: 256 images, random crop after 2-px zero padding,
random horizontal flip, normalisation with the training set's mean and std.

* convzoo: the whole split is one uint8 tensor; each batch is gathered by a randperm
  index and augmented as a whole batch with tensor ops (convzoo.data.Loader).
* conventional: a torch.utils.data.Dataset that turns one image at a time into a PIL
  image, pads, crops and flips it with PIL, converts it to a tensor and normalises it,
  behind a DataLoader with 2 worker processes (torchvision's transforms are not used;
  the PIL steps are written out here).

convzoo's figure is the median of ``--repeat`` epochs after one untimed epoch; the
conventional figure is the median of ``--repeat-conventional`` epochs, each including
its workers' start, as every epoch of a DataLoader without persistent workers pays. Prints both and the speed-up, and appends
them to benchmarks/RESULTS.md.

    python benchmarks/data_pipeline.py [--data-dir DIR] [--limit N] [--no-record]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from convzoo.data import AugmentConfig, Loader, build_augment, channel_stats, load_dataset
from convzoo.errors import ConvzooError

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "Data pipeline: one epoch of Fashion-MNIST training batches"


class PILDataset(torch.utils.data.Dataset):
    """One sample at a time: PIL pad + random crop + random flip, to tensor, normalise."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, padding: int, mean: float, std: float
    ):
        self.images, self.labels = images, labels
        self.padding, self.mean, self.std = padding, mean, std

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[i], mode="L")
        w, h = img.size
        p = self.padding
        img = ImageOps.expand(img, border=p, fill=0)
        x0, y0 = random.randint(0, 2 * p), random.randint(0, 2 * p)
        img = img.crop((x0, y0, x0 + w, y0 + h))
        if random.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
        x = (x - self.mean) / self.std
        return x.unsqueeze(0), int(self.labels[i])


def epoch_seconds(batches) -> tuple[float, int]:
    start = time.perf_counter()
    n = 0
    for x, _ in batches:
        n += x.shape[0]
    return time.perf_counter() - start, n


def record(row: list[str], note: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from _record import append_section  # the benchmarks' shared RESULTS.md writer

    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n")
    header = ["pipeline", "batch", "images", "convzoo s/epoch", "conventional s/epoch", "speed-up"]
    append_section(SECTION, header, [row], note)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="where Fashion-MNIST is (default: the usual search)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--padding", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5, help="convzoo epochs to time (median)")
    parser.add_argument(
        "--repeat-conventional", type=int, default=3, help="conventional epochs to time (median)"
    )
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)

    try:
        ds = load_dataset("fashion-mnist", args.data_dir)
    except ConvzooError as exc:
        print(f"data_pipeline: {exc}", file=sys.stderr)
        return 2
    images, labels = ds.train_images, ds.train_labels
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    mean, std = channel_stats(images)
    n = len(images)

    aug = build_augment(AugmentConfig(crop_padding=args.padding, flip=True), ds.num_classes)
    loader = Loader(
        images, labels, batch_size=args.batch, mean=mean, std=std, shuffle=True, seed=0, augment=aug
    )
    epoch_seconds(loader.epoch(0))  # untimed warm-up
    fast = [epoch_seconds(loader.epoch(e))[0] for e in range(1, args.repeat + 1)]
    fast_s = statistics.median(fast)

    pil = PILDataset(images[:, 0].numpy(), labels.numpy(), args.padding, mean[0], std[0])
    dl = torch.utils.data.DataLoader(
        pil, batch_size=args.batch, shuffle=True, num_workers=args.workers
    )
    slow = []
    for _ in range(args.repeat_conventional):
        seconds, seen = epoch_seconds(dl)
        assert seen == n
        slow.append(seconds)
    slow_s = statistics.median(slow)

    speedup = slow_s / fast_s
    print(f"images per epoch:   {n} (batch {args.batch}, crop pad {args.padding}, flip, normalise)")
    print(f"convzoo Loader:     {fast_s:.3f} s/epoch (median of {args.repeat})")
    print(
        f"PIL + DataLoader:   {slow_s:.3f} s/epoch (median of {args.repeat_conventional}, "
        f"{args.workers} workers)"
    )
    print(f"speed-up:           {speedup:.1f}x")
    if not args.no_record:
        note = (
            f"convzoo: median of {args.repeat} epochs after one untimed epoch; conventional: "
            f"PIL per-sample Dataset, DataLoader with {args.workers} workers, median of "
            f"{args.repeat_conventional} epochs, each including its workers' start; torch threads: {torch.get_num_threads()}; load average "
            f"at the end: {os.getloadavg()[0]:.1f} (the machine is shared)."
        )
        row = [
            "crop+flip+normalise",
            str(args.batch),
            str(n),
            f"{fast_s:.3f}",
            f"{slow_s:.2f}",
            f"{speedup:.1f}x",
        ]
        record(row, note)
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
