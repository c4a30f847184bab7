"""Ranked-list pictures: a query, its predicted part map and its top-k gallery images.

The captions number only the gallery images the metric ranks (junk ones read "ignored"), name
cameras as the dataset does (pass its ``camera_names``), and an optional legend under the row
explains the frame and part colours, so that a saved picture reads on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from magnifier.parts import PART_COLOURS, PART_NAMES

__all__ = ["PART_COLORS", "LegendEntry", "RankedItem", "camera_label", "caption_lines", "colorize_parts",
           "legend_rows", "ranked_list_image", "top_k"]

#: RGB colour of each EANet part label (0 background ... 7 foot) in part-map pictures.
PART_COLORS = np.array(PART_COLOURS, dtype=np.uint8)

# Frame colours: true match, false match, junk (same id and camera: not ranked), query.
MATCH, WRONG, JUNK, QUERY = (40, 170, 40), (210, 30, 30), (150, 150, 150), (30, 30, 30)
_BORDER = 4
_LINE = 12  # pixels per line of caption or legend text
_LEGEND_GAP = 6  # pixels between the captions and the legend


@dataclass
class RankedItem:
    """One gallery image in a ranked list: ``status`` is ``match``, ``wrong`` or ``junk``.

    ``rank`` is its rank as the CMC/mAP computation counts it (junk items are skipped), None for
    a junk item; ``camera`` is its camera as the dataset names it, None when not known.
    """

    path: str
    status: str
    distance: float
    rank: int | None = None
    camera: str | None = None


def _camera_name(camid: int, camera_names: Mapping[int, str] | None) -> str:
    """The dataset's name of a 0-based ``camid``, ``"?"`` when it gave none."""
    name = (camera_names or {}).get(int(camid))
    return "?" if name is None else str(name)


def camera_label(camid: int, camera_names: Mapping[int, str] | None) -> str:
    """``"cam 3"`` for a 0-based ``camid`` the dataset names ``"3"``; ``"cam ?"`` when unnamed."""
    return f"cam {_camera_name(camid, camera_names)}"


def top_k(distances: np.ndarray, g_pids, g_camids, q_pid: int, q_camid: int, paths, k: int = 10,
          camera_names: Mapping[int, str] | None = None) -> list[RankedItem]:
    """The ``k`` closest gallery items of one query, in (distance, gallery index) order.

    Junk items (same id and camera as the query) stay in the list, marked ``junk`` and without a
    rank, so that the picture shows what the metric ignores while the other items keep the ranks
    the metric gives them (it orders by the same (distance, index) key). With ``camera_names``
    (the dataset's ``camera_names``: 0-based camid -> name) each item carries its camera's name.
    """
    order = np.argsort(distances, kind="stable")[:k]
    items, rank = [], 0
    for j in order:
        same = g_pids[j] == q_pid
        status = ("junk" if g_camids[j] == q_camid else "match") if same else "wrong"
        rank += status != "junk"
        camera = None if camera_names is None else _camera_name(g_camids[j], camera_names)
        items.append(RankedItem(str(paths[j]), status, float(distances[j]),
                                None if status == "junk" else rank, camera))
    return items


def caption_lines(item: RankedItem) -> list[str]:
    """The text under one gallery image: its rank and distance (``ignored`` for a junk item), then
    its camera when known (a junk item shares the query's camera by definition)."""
    if item.status == "junk":
        lines = [f"ignored {item.distance:.2f}"]
        camera = f"(same cam {item.camera})"
    else:
        # An item built by hand without a rank keeps the old unnumbered caption.
        lines = [f"rank {item.rank}  {item.distance:.2f}" if item.rank is not None else f"{item.distance:.2f}"]
        camera = f"cam {item.camera}"
    return lines + ([camera] if item.camera is not None else [])


@dataclass(frozen=True)
class LegendEntry:
    """One legend entry: a swatch (``frame``: an outlined square, ``fill``: a solid one) and its text."""

    text: str
    colour: tuple[int, int, int]
    style: str


def legend_rows(with_parts: bool) -> list[list[LegendEntry]]:
    """The legend's rows: the frame colours, then (with a part map drawn) each part's colour."""
    frames = [LegendEntry("query", QUERY, "frame"), LegendEntry("true match", MATCH, "frame"),
              LegendEntry("wrong id", WRONG, "frame"), LegendEntry("ignored: same id and camera", JUNK, "frame")]
    if not with_parts:
        return [frames]
    parts = [LegendEntry(name.replace("_", " "), tuple(int(c) for c in rgb), "fill")
             for name, rgb in zip(PART_NAMES, PART_COLORS)]
    return [frames, parts]


def _entry_width(entry: LegendEntry, text_width: Callable[[str], float]) -> int:
    """Pixels one legend entry takes: swatch, gap, text, spacing to the next entry."""
    return _LINE + 4 + int(np.ceil(text_width(entry.text))) + 12


def _legend_layout(rows: list[list[LegendEntry]], width: int, text_width: Callable[[str], float]
                   ) -> tuple[list[tuple[LegendEntry, int, int]], int]:
    """(entry, x, y) of every entry, flowed left to right within ``width`` (each row of
    :func:`legend_rows` starts a new line), and the height they take."""
    placed, y = [], 0
    for row in rows:
        x = 0
        for entry in row:
            w = _entry_width(entry, text_width)
            if x and x + w > width:
                x, y = 0, y + _LINE + 2
            placed.append((entry, x, y))
            x += w
        y += _LINE + 2
    return placed, y


def _fit_legend(rows: list[list[LegendEntry]], width: int, font):
    """The legend laid out under a row ``width`` pixels wide: (placed entries, height with the
    gap above it, picture width), the width grown to the widest entry when a short row (a
    small top-k) is narrower."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_width(text: str) -> float:
        return measure.textlength(text, font=font)

    width = max(width, *(_entry_width(e, text_width) for row in rows for e in row))
    placed, height = _legend_layout(rows, width, text_width)
    return placed, height + _LEGEND_GAP, width


def _draw_legend(draw: ImageDraw.ImageDraw, placed, top: int, font) -> None:
    """Draw the entries of :func:`_legend_layout` with their top edge at ``top``."""
    for entry, x, y in placed:
        box = (x + 2, top + y + 1, x + 1 + _LINE - 2, top + y + _LINE - 2)
        if entry.style == "fill":
            draw.rectangle(box, fill=entry.colour, outline=(0, 0, 0))
        else:
            draw.rectangle(box, outline=entry.colour, width=3)
        draw.text((x + _LINE + 4, top + y), entry.text, fill=(0, 0, 0), font=font)


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
    legend: bool = False,
) -> Image.Image:
    """One row: query, its part map (blended over it), a gap, then the ranked gallery images.

    Under each gallery image: its rank as the metric counts it and its distance (``ignored`` for
    a junk item), and its camera when ``items`` carry one (:func:`top_k` with ``camera_names``).

    Args:
        query_path: the query image file.
        items: the ranked gallery items (see :func:`top_k`): green frame for a true match, red
            for a false one; junk items are drawn in faded grey with a grey frame.
        part_map: (h, w) part labels predicted for the query (any resolution; scaled with
            nearest neighbour), or None to leave that cell out.
        title: a line of text above the row (query name, id, AP...).
        cell: (width, height) of each image in pixels.
        legend: add the colour legend under the row (frames, and parts with a ``part_map``);
            off by default so that callers written before it get the same picture size.

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
    captions = [caption_lines(item) for item in items]
    header, footer = 16, 2 + _LINE * max((len(c) for c in captions), default=1)
    width = len(tiles) * tile_w + gap + len(items) * tile_w
    placed, legend_h = [], 0
    if legend:
        placed, legend_h, width = _fit_legend(legend_rows(part_map is not None), width, font)
    canvas = Image.new("RGB", (width, header + tile_h + footer + legend_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), title, fill=(0, 0, 0), font=font)
    x = 0
    for tile in tiles:
        canvas.paste(tile, (x, header))
        x += tile_w
    x += gap
    for item, lines in zip(items, captions):
        image = _load(item.path, cell)
        if item.status == "junk":
            image = Image.blend(ImageOps.grayscale(image).convert("RGB"),
                                Image.new("RGB", image.size, (255, 255, 255)), 0.5)
        colour = {"match": MATCH, "wrong": WRONG}.get(item.status, JUNK)
        canvas.paste(_framed(image, cell, colour), (x, header))
        for i, line in enumerate(lines):
            draw.text((x + 2, header + tile_h + i * _LINE), line, fill=colour, font=font)
        x += tile_w
    _draw_legend(draw, placed, header + tile_h + footer + _LEGEND_GAP, font)
    return canvas
