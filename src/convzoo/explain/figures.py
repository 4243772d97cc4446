"""Small pictures as PNG bytes: images, colour maps, overlays and grids of tiles.

Tiles are composed as arrays and written by Pillow; matplotlib gives only its colour
maps (imported when first needed). Nothing is drawn on a canvas, so the pictures are
pixel-exact and quick to make.
"""

from __future__ import annotations

import io

import numpy as np

__all__ = ["colorize", "grid", "image_rgb", "overlay", "png", "upscale"]

PAD = 2  # pixels between tiles
BACKGROUND = 255


def colorize(values: np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """RGB uint8 (H, W, 3) of ``values`` in [0, 1] (clipped) through a matplotlib map."""
    from matplotlib import colormaps

    rgba = colormaps[cmap](np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def image_rgb(image) -> np.ndarray:
    """RGB uint8 (H, W, 3) of a uint8 image tensor or array (C, H, W), C = 1 or 3."""
    a = np.asarray(image, dtype=np.uint8)
    a = np.transpose(a, (1, 2, 0))
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a[..., :3]


def normalise(values: np.ndarray) -> np.ndarray:
    """``values`` scaled to [0, 1] by their own minimum and maximum (zeros if constant)."""
    v = np.asarray(values, dtype=np.float64)
    lo, hi = float(v.min()), float(v.max())
    return (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """An RGB image with a non-negative activation map (same H, W) laid over it, the
    map scaled by its own maximum."""
    peak = float(np.max(cam)) if np.size(cam) else 0.0
    heat = colorize(np.asarray(cam) / peak if peak > 0 else np.zeros_like(cam), "jet")
    mixed = (1 - alpha) * image.astype(np.float64) + alpha * heat.astype(np.float64)
    return mixed.round().clip(0, 255).astype(np.uint8)


def upscale(rgb: np.ndarray, factor: int) -> np.ndarray:
    """``rgb`` enlarged ``factor`` times by repeating pixels (no blur on tiny images)."""
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1) if factor > 1 else rgb


def grid(tiles: list[np.ndarray], columns: int, scale: int = 1) -> np.ndarray:
    """Tiles (all one size, RGB) in rows of ``columns``, ``PAD`` pixels apart."""
    tiles = [upscale(t, scale) for t in tiles]
    h, w = tiles[0].shape[:2]
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    out = np.full(
        (rows * h + (rows - 1) * PAD, columns * w + (columns - 1) * PAD, 3),
        BACKGROUND,
        dtype=np.uint8,
    )
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        out[r * (h + PAD) : r * (h + PAD) + h, c * (w + PAD) : c * (w + PAD) + w] = t
    return out


def png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 array (H, W, 3)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(buf, format="PNG", optimize=True)
    return buf.getvalue()
