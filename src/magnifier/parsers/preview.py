"""A picture to check part maps by eye: images with their maps overlaid, and a legend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from magnifier.parts import NUM_PARTS, PART_NAMES
from magnifier.parts import PART_COLOURS as _PALETTE

#: One colour per part (RGB), background unused: the library's one palette (magnifier.parts), as in the ranked lists' legend.
PART_COLOURS = np.array(_PALETTE, dtype=np.uint8)
assert len(PART_COLOURS) == NUM_PARTS


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """(H, W, 3) uint8: ``image`` with each labelled pixel blended towards its part's colour."""
    out = image.astype(np.float32)
    fg = labels > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * PART_COLOURS[labels[fg]]
    return out.round().astype(np.uint8)


def preview_grid(pairs: list[tuple[np.ndarray, np.ndarray]], tile_hw: tuple[int, int] = (192, 96),
                 columns: int = 8) -> Image.Image:
    """A grid of (image, overlay) tile pairs for ``pairs`` of (image (H, W, 3) uint8, labels
    (H, W)), each resized to ``tile_hw``, and a legend of the part colours underneath."""
    th, tw = tile_hw
    columns = max(1, min(columns, len(pairs)))
    rows = -(-len(pairs) // columns) if pairs else 0
    pad, legend_h = 4, 22
    cell_w = 2 * tw + pad
    width = max(columns * (cell_w + pad) + pad, 8 * 92)
    canvas = Image.new("RGB", (width, rows * (th + pad) + pad + legend_h), (255, 255, 255))
    for k, (image, labels) in enumerate(pairs):
        r, c = divmod(k, columns)
        x, y = pad + c * (cell_w + pad), pad + r * (th + pad)
        canvas.paste(Image.fromarray(image).resize((tw, th), Image.BILINEAR), (x, y))
        over = overlay(image, labels)
        canvas.paste(Image.fromarray(over).resize((tw, th), Image.NEAREST), (x + tw, y))
    draw = ImageDraw.Draw(canvas)
    y = rows * (th + pad) + pad + 4
    for i in range(1, NUM_PARTS):
        x = pad + (i - 1) * 92
        draw.rectangle([x, y, x + 12, y + 12], fill=tuple(int(v) for v in PART_COLOURS[i]))
        draw.text((x + 16, y), f"{i} {PART_NAMES[i]}", fill=(0, 0, 0))
    return canvas


def write_preview(pairs_of_paths: list[tuple[str, str]], out: str | Path, **kwargs) -> Path:
    """Read (image path, map path) pairs, draw :func:`preview_grid`, save a PNG at ``out``."""
    pairs = []
    for image_path, map_path in pairs_of_paths:
        with Image.open(image_path) as img:
            image = np.asarray(img.convert("RGB"))
        with Image.open(map_path) as m:
            labels = np.asarray(m)
        if labels.shape != image.shape[:2]:
            labels = np.asarray(Image.fromarray(labels).resize(image.shape[1::-1], Image.NEAREST))
        pairs.append((image, np.clip(labels, 0, NUM_PARTS - 1)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    preview_grid(pairs, **kwargs).save(out)
    return out
