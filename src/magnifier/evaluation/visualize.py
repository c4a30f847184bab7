"""Ranked-list pictures: a query, its predicted part map and its top-k gallery images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

__all__ = ["PART_COLORS", "colorize_parts", "ranked_list_image", "RankedItem", "top_k"]

#: RGB colour of each EANet part label (0 background ... 7 foot) in part-map pictures.
PART_COLORS = np.array(
    [
        (0, 0, 0),  # background
        (255, 200, 0),  # head
        (230, 25, 75),  # torso
        (60, 180, 75),  # upper arm
        (0, 130, 200),  # lower arm
        (145, 30, 180),  # upper leg
        (70, 240, 240),  # lower leg
        (245, 130, 48),  # foot
    ],
    dtype=np.uint8,
)

# Frame colours: true match, false match, junk (same id and camera: not ranked), query.
MATCH, WRONG, JUNK, QUERY = (40, 170, 40), (210, 30, 30), (150, 150, 150), (30, 30, 30)
_BORDER = 4


@dataclass
class RankedItem:
    """One gallery image in a ranked list: ``status`` is ``match``, ``wrong`` or ``junk``."""

    path: str
    status: str
    distance: float


def top_k(distances: np.ndarray, g_pids, g_camids, q_pid: int, q_camid: int, paths, k: int = 10
          ) -> list[RankedItem]:
    """The ``k`` closest gallery items of one query, in (distance, gallery index) order.

    Junk items (same id and camera as the query) stay in the list, marked ``junk``, so that the
    picture shows what the metric ignores.
    """
    order = np.argsort(distances, kind="stable")[:k]
    items = []
    for j in order:
        same = g_pids[j] == q_pid
        status = ("junk" if g_camids[j] == q_camid else "match") if same else "wrong"
        items.append(RankedItem(str(paths[j]), status, float(distances[j])))
    return items


def colorize_parts(labels: np.ndarray) -> np.ndarray:
    """(h, w) integer part labels -> (h, w, 3) uint8 colours of :data:`PART_COLORS`."""
    return PART_COLORS[np.clip(labels, 0, len(PART_COLORS) - 1)]


def _framed(image: Image.Image, size: tuple[int, int], colour) -> Image.Image:
    """The image resized to ``size`` (w, h) inside a ``_BORDER``-pixel frame."""
    inner = image.convert("RGB").resize(size, Image.BILINEAR)
    return ImageOps.expand(inner, border=_BORDER, fill=colour)


def _load(path: str, size: tuple[int, int]) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError:  # an unreadable file is drawn as a dark tile, not an error
        return Image.new("RGB", size, (60, 0, 0))


def ranked_list_image(
    query_path: str,
    items: Sequence[RankedItem],
    part_map: np.ndarray | None = None,
    title: str = "",
    cell: tuple[int, int] = (64, 128),
) -> Image.Image:
    """One row: query, its part map (blended over it), a gap, then the ranked gallery images.

    Args:
        query_path: the query image file.
        items: the ranked gallery items (see :func:`top_k`): green frame for a true match, red
            for a false one; junk items are drawn in faded grey with a grey frame.
        part_map: (h, w) part labels predicted for the query (any resolution; scaled with
            nearest neighbour), or None to leave that cell out.
        title: a line of text above the row (query name, id, AP...).
        cell: (width, height) of each image in pixels.

    Returns:
        an RGB PIL image.
    """
    font = ImageFont.load_default()
    w, h = cell
    tile_w, tile_h = w + 2 * _BORDER, h + 2 * _BORDER
    query = _load(query_path, cell)
    tiles = [_framed(query, cell, QUERY)]
    if part_map is not None:
        colours = Image.fromarray(colorize_parts(np.asarray(part_map)))
        colours = colours.resize(cell, Image.NEAREST)
        tiles.append(_framed(Image.blend(query.resize(cell), colours, 0.6), cell, QUERY))
    gap = 12
    header, footer = 16, 14
    width = len(tiles) * tile_w + gap + len(items) * tile_w
    canvas = Image.new("RGB", (width, header + tile_h + footer), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), title, fill=(0, 0, 0), font=font)
    x = 0
    for tile in tiles:
        canvas.paste(tile, (x, header))
        x += tile_w
    x += gap
    for rank, item in enumerate(items, start=1):
        image = _load(item.path, cell)
        if item.status == "junk":
            image = Image.blend(ImageOps.grayscale(image).convert("RGB"),
                                Image.new("RGB", image.size, (255, 255, 255)), 0.5)
        colour = {"match": MATCH, "wrong": WRONG}.get(item.status, JUNK)
        canvas.paste(_framed(image, cell, colour), (x, header))
        draw.text((x + 2, header + tile_h), f"{rank} {item.distance:.2f}", fill=colour, font=font)
        x += tile_w
    return canvas
