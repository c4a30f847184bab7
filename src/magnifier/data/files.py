"""Reading images and part label maps from disk (numpy and PIL only, no torch: the parser's
worker processes use these too)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
from PIL import Image

from .masks import LabelScheme, get_scheme, remap
from magnifier.parts import NUM_PARTS

# A label map may differ from its image in size (parsers often work at another resolution) but
# not in shape: beyond this relative aspect-ratio difference it belongs to another image.
MAX_ASPECT_MISMATCH = 0.1


class LabelMapError(ValueError):
    """A part label map that cannot be used; the message names the file."""


class BadFileError(OSError):
    """An image or label map that cannot be decoded (zero bytes, truncated, not an image)."""


# What decoding a broken file raises: PIL's OSError family (UnidentifiedImageError, "image file
# is truncated"), numpy's ValueError/EOFError for a bad .npy, SyntaxError from some PIL plugins.
_DECODE_ERRORS = (OSError, ValueError, EOFError, SyntaxError)


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB; :class:`BadFileError` when the file cannot be decoded."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except _DECODE_ERRORS as err:
        raise BadFileError(f"cannot decode image {path}: {err}") from None


def unreadable_files(paths: Sequence[str]) -> list[str]:
    """The files among ``paths`` that fail a fast header check (empty, or no image header).

    Reads only the first bytes of each file, so a whole training set is scanned in seconds; a file
    truncated after its header passes here and is caught when it is decoded in training.
    """
    bad = []
    for path in paths:
        try:
            if os.path.getsize(path) == 0:
                bad.append(path)
            elif not path.endswith(".npy"):
                with Image.open(path):
                    pass
        except _DECODE_ERRORS:
            bad.append(path)
    return bad


def read_label_map(path: str, scheme: str | LabelScheme = "eanet") -> np.ndarray:
    """(H, W) uint8 8-part labels from a PNG (mode L or P) or a .npy file written in ``scheme``
    (a parser's label set, see :mod:`magnifier.data.masks`), remapped into the 8 parts."""
    try:
        if path.endswith(".npy"):
            label = np.load(path)
        else:
            with Image.open(path) as img:
                label = np.asarray(img)
    except _DECODE_ERRORS as err:
        raise BadFileError(f"cannot decode label map {path}: {err}") from None
    if label.ndim != 2:
        raise LabelMapError(f"label map {path} has shape {label.shape}; expected one channel of part labels (H, W)")
    if get_scheme(scheme).name == "eanet" and label.size and (label.min() < 0 or label.max() >= NUM_PARTS):
        raise LabelMapError(
            f"label map {path} has values {int(label.min())}..{int(label.max())}; part labels must be 0..{NUM_PARTS - 1}"
        )
    try:
        return remap(label, scheme, path)
    except ValueError as err:
        raise LabelMapError(str(err)) from None


def match_label_map(label: np.ndarray, image_hw: tuple[int, int], path: str) -> np.ndarray:
    """Bring ``label`` (h, w) to the image's (H, W) by nearest neighbour, refusing other shapes."""
    if label.shape == tuple(image_hw):
        return label
    h, w = label.shape
    H, W = image_hw
    if _aspect_mismatch((h, w), (H, W)):
        raise LabelMapError(
            f"label map {path} is {h}x{w} but its image is {H}x{W}; the aspect ratios differ, so it cannot be resized to match"
        )
    return np.asarray(Image.fromarray(label).resize((W, H), Image.NEAREST))


def _aspect_mismatch(label_hw: tuple[int, int], image_hw: tuple[int, int]) -> bool:
    (h, w), (H, W) = label_hw, image_hw
    return h == 0 or w == 0 or abs((h / w) / (H / W) - 1) > MAX_ASPECT_MISMATCH


def label_map_problem(mask_path: str, image_path: str, scheme: str | LabelScheme = "eanet") -> str | None:
    """Why a label map would stop training (the :class:`LabelMapError` text), or None.

    Decodes the map (values, channels, label set) and reads only the image's header (its size);
    a file that cannot be decoded at all is left to the header scan and ``on_bad_image``.
    """
    try:
        label = read_label_map(mask_path, scheme)
        with Image.open(image_path) as img:
            width, height = img.size
    except LabelMapError as err:
        return str(err)
    except (BadFileError, *_DECODE_ERRORS):
        return None
    if label.shape != (height, width) and _aspect_mismatch(label.shape, (height, width)):
        h, w = label.shape
        return (f"label map {mask_path} is {h}x{w} but its image is {height}x{width}; "
                "the aspect ratios differ, so it cannot be resized to match")
    return None


def label_map_problems(pairs: Sequence[tuple[str, str]], scheme: str | LabelScheme = "eanet",
                       workers: int | None = None) -> list[str]:
    """:func:`label_map_problem` for every (label map, image) pair, in file order.

    Run at set-up, so that a map a training epoch would stop at is reported before the run
    starts. Decoding is spread over threads (PIL and zlib release the GIL): Market-1501's
    12,936 maps take a few seconds.
    """
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = pool.map(lambda pair: label_map_problem(pair[0], pair[1], scheme), pairs, chunksize=64)
        return [problem for problem in found if problem]
