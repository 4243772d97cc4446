"""Image files for ``convzoo explain``, and test images picked from the run's dataset."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..data.folders import load_image
from ..errors import DataError

__all__ = ["load_images", "pick_examples"]

_GRAY_BANDS = {"1", "L", "I", "F", "A"}


def _bands(path: Path) -> tuple[str, ...]:
    from PIL import Image

    with Image.open(path) as img:  # already read whole by load_image: the header only
        return tuple(img.getbands())


def load_images(
    paths: list[str | os.PathLike], in_channels: int, size: tuple[int, int]
) -> torch.Tensor:
    """uint8 (N, C, H, W) of image files, converted and resized as the training images
    were. :class:`DataError` for a missing or unreadable file, and for an image whose
    channels are not the model's: a colour image for a model of grayscale images (unless
    its pixels are all gray), a grayscale image for a model of colour images."""
    out = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise DataError(f"{name}: no such image file")
        rgb = load_image(path, 3, size)  # DataError for anything that is not an image
        if in_channels == 1:
            if not (torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[0], rgb[2])):
                raise DataError(
                    f"{name}: a colour image, but the model takes grayscale (1-channel) "
                    "images; convert it to grayscale first"
                )
            out.append(load_image(path, 1, size))
        else:
            if set(_bands(path)) <= _GRAY_BANDS:
                raise DataError(
                    f"{name}: a grayscale image, but the model takes colour (RGB) images; "
                    "give a colour image"
                )
            out.append(rgb)
    return torch.stack(out)


def pick_examples(
    probs: torch.Tensor, labels: torch.Tensor, right: int = 4, wrong: int = 4
) -> list[tuple[int, str]]:
    """(index, "right" | "mistake") of test images to explain: ``right`` images predicted
    right, each of another class (the most confident of its class), then the ``wrong``
    most confident mistakes. ``probs`` is (N, K), ``labels`` (N,)."""
    confidence, predicted = probs.max(dim=1)
    correct = predicted == labels
    chosen: list[tuple[int, str]] = []
    for k in range(probs.shape[1]):
        if len(chosen) >= right:
            break
        idx = torch.nonzero(correct & (labels == k)).flatten()
        if len(idx):
            chosen.append((int(idx[confidence[idx].argmax()]), "right"))
    mistakes = torch.nonzero(~correct).flatten()
    order = confidence[mistakes].argsort(descending=True)[:wrong]
    chosen += [(int(mistakes[i]), "mistake") for i in order]
    return chosen


def pick_shared_examples(
    probs: list[torch.Tensor], labels: torch.Tensor, right: int = 3, wrong: int = 3
) -> list[tuple[int, str]]:
    """(index, "right" | "mistake") of test images to explain with several models at
    once (``probs``: one (N, K) tensor per model, on the same test set).

    ``right`` images that most models predict right, each of another class (the one the
    most models get right, then the most confidently), then the ``wrong`` images the
    models get wrong with the most confidence on average (a model that is right counts
    as zero confidence in a mistake)."""
    stacked = torch.stack([p.float() for p in probs])  # (M, N, K)
    confidence, predicted = stacked.max(dim=2)  # (M, N)
    correct = predicted == labels.unsqueeze(0)
    votes = correct.sum(dim=0)  # (N,)
    true_prob = stacked.gather(2, labels.view(1, -1, 1).expand(len(probs), -1, 1))
    score = votes.float() * 2 + true_prob.squeeze(2).mean(dim=0)  # votes first
    chosen: list[tuple[int, str]] = []
    for k in range(stacked.shape[2]):
        if len(chosen) >= right:
            break
        idx = torch.nonzero((labels == k) & (votes * 2 > len(probs))).flatten()
        if len(idx):
            chosen.append((int(idx[score[idx].argmax()]), "right"))
    wrongness = (confidence * ~correct).mean(dim=0)  # (N,)
    mistakes = torch.nonzero(wrongness > 0).flatten()
    order = wrongness[mistakes].argsort(descending=True)[:wrong]
    chosen += [(int(mistakes[i]), "mistake") for i in order]
    return chosen
