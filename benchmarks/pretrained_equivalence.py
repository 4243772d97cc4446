"""Check that convzoo's faithful models with converted weights compute what torchvision's
(and timm's) compute with the originals.

Runs where torchvision and timm are installed (never a convzoo dependency); no weights
are downloaded. For each model: the library's model with random initialisation (batch
norm statistics randomised too), its state dict saved to a file, loaded into convzoo
through the name tables, both run in eval mode on one random batch of 224 px images;
the largest absolute difference of the logits must be at most 1e-5. Then convzoo ->
torchvision names -> convzoo must give identical tensors.

    CUDA_VISIBLE_DEVICES= PYTHONPATH=src python benchmarks/pretrained_equivalence.py [--timm]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import convzoo
from convzoo.pretrained import to_source

NAMES = [
    *(f"resnet{d}" for d in (18, 34, 50, 101, 152)),
    *(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")),
    *(f"densenet{d}" for d in (121, 161, 169, 201)),
]
TOLERANCE = 1e-5


def randomise_norms(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Batch norm with non-trivial statistics and affine parameters, so that a
    mismatched norm layer shows."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def build(library: str, name: str) -> torch.nn.Module:
    if library == "timm":
        import timm

        return timm.create_model(name, pretrained=False)
    import torchvision

    return getattr(torchvision.models, name)(weights=None)


def check(library: str, name: str, folder: Path, batch: int) -> tuple[float, bool]:
    gen = torch.Generator().manual_seed(0)
    theirs = build(library, name).eval()
    randomise_norms(theirs, gen)
    path = folder / f"{library}-{name}.pth"
    torch.save(theirs.state_dict(), path)
    ours = convzoo.get_model(name, weights=path).eval()
    x = torch.randn(batch, 3, 224, 224, generator=gen)
    with torch.no_grad():
        diff = (theirs(x) - ours(x)).abs().max().item()
    back = to_source(ours, name, library)
    same = set(back) == set(theirs.state_dict()) and all(
        torch.equal(back[k], v) for k, v in theirs.state_dict().items()
    )
    return diff, same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timm", action="store_true", help="also check timm's models")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("names", nargs="*", default=NAMES)
    args = parser.parse_args()
    torch.manual_seed(0)
    libraries = ["torchvision"] + (["timm"] if args.timm else [])
    failed = 0
    print(f"torch {torch.__version__}; tolerance {TOLERANCE:g}; batch {args.batch}x3x224x224")
    with tempfile.TemporaryDirectory() as tmp:
        for library in libraries:
            for name in args.names:
                t0 = time.perf_counter()
                diff, same = check(library, name, Path(tmp), args.batch)
                ok = diff <= TOLERANCE and same
                failed += not ok
                print(f"{library:12s} {name:12s} max|diff| {diff:.2e}  round trip "
                      f"{'identical' if same else 'DIFFERS'}  {'ok' if ok else 'FAIL'}"
                      f"  ({time.perf_counter() - t0:.1f}s)", flush=True)  # fmt: skip
    print(f"{failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
