"""A torch Dataset over :class:`ImageRecord` lists: image, part label map, pid, camid."""

from __future__ import annotations

import os
import warnings
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .datasets.base import ImageRecord
from .masks import LabelScheme, get_scheme, remap, stripe_parts
from .parts import NUM_PARTS

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
    if h == 0 or w == 0 or abs((h / w) / (H / W) - 1) > MAX_ASPECT_MISMATCH:
        raise LabelMapError(
            f"label map {path} is {h}x{w} but its image is {H}x{W}; the aspect ratios differ, so it cannot be resized to match"
        )
    return np.asarray(Image.fromarray(label).resize((W, H), Image.NEAREST))


class MissingAttributesError(ValueError):
    """Identities without an attribute vector."""


class ReIDImageDataset(Dataset):
    """Returns dicts: ``image`` (3, H, W) float, ``mask`` (H, W) long when ``with_masks``,
    ``pid``, ``camid``, ``index`` (position in this dataset) and ``path``; with ``attributes``
    (``{original pid: (A,) float array}``) also ``attributes`` (A,) float32, looked up by each
    record's original pid.

    ``mask_scheme`` names the label set the maps were written in (remapped into the 8 parts);
    ``missing_masks="stripes"`` gives images without a map horizontal-stripe pseudo-parts
    instead of refusing them. ``on_bad_image="replace"`` (training) answers an image or label
    map that cannot be decoded with another image of the same identity and marks the sample
    ``replaced``, so one broken file never ends a long run; ``"error"`` raises instead."""

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform,
        with_masks: bool = False,
        attributes: Mapping[int, np.ndarray] | None = None,
        mask_scheme: str = "eanet",
        missing_masks: str = "error",
        on_bad_image: str = "error",
    ):
        if on_bad_image not in ("error", "replace"):
            raise ValueError(f"on_bad_image must be 'error' or 'replace', got {on_bad_image!r}")
        self.on_bad_image = on_bad_image
        self.records = list(records)
        self.transform = transform
        self.with_masks = with_masks
        self.mask_scheme = get_scheme(mask_scheme)
        if missing_masks not in ("error", "stripes"):
            raise ValueError(f"missing_masks must be 'error' or 'stripes', got {missing_masks!r}")
        self.missing_masks = missing_masks
        if with_masks and missing_masks == "error":
            missing = [r.path for r in self.records if r.mask_path is None]
            if missing:
                raise ValueError(f"{len(missing)} image(s) have no label map, e.g. {missing[0]}")
        self.attributes = None
        if attributes is not None:
            unknown = sorted({r.original_pid for r in self.records} - set(attributes))
            if unknown:
                raise MissingAttributesError(f"{len(unknown)} identities have no attributes, e.g. pid {unknown[0]}")
            self.attributes = {pid: torch.as_tensor(np.asarray(v, np.float32)) for pid, v in attributes.items()}

    def __len__(self) -> int:
        return len(self.records)

    @property
    def pids(self) -> list[int]:
        return [r.pid for r in self.records]

    def _decode(self, rec: ImageRecord) -> tuple[np.ndarray, np.ndarray | None]:
        image = read_image(rec.path)
        if not self.with_masks:
            return image, None
        if rec.mask_path is None:  # only reachable with missing_masks="stripes"
            return image, stripe_parts(*image.shape[:2])
        return image, match_label_map(read_label_map(rec.mask_path, self.mask_scheme), image.shape[:2], rec.mask_path)

    def _same_identity(self, index: int) -> list[int]:
        """Other samples of ``index``'s identity, in a fixed order starting after it."""
        pid = self.records[index].pid
        if not hasattr(self, "_by_pid"):
            self._by_pid: dict[int, list[int]] = {}
            for i, r in enumerate(self.records):
                self._by_pid.setdefault(r.pid, []).append(i)
        group = self._by_pid[pid]
        k = group.index(index)
        return group[k + 1:] + group[:k]

    def __getitem__(self, index: int) -> dict:
        rec, replaced = self.records[index], False
        try:
            image, label = self._decode(rec)
        except BadFileError as err:
            if self.on_bad_image == "error":
                raise
            for alt in self._same_identity(index):
                try:
                    image, label = self._decode(self.records[alt])
                except BadFileError:
                    continue
                rec, replaced = self.records[alt], True
                warnings.warn(f"{err}; used {rec.path} (same identity) instead", stacklevel=2)
                break
            else:
                raise BadFileError(f"{err}, and no other image of identity {rec.pid} can be decoded") from None
        sample = {"pid": rec.pid, "camid": rec.camid, "index": index, "path": rec.path}
        if self.on_bad_image == "replace":
            sample["replaced"] = replaced
        if label is not None:
            out = self.transform(image=image, mask=label)
            sample["mask"] = torch.as_tensor(out["mask"]).long()
        else:
            out = self.transform(image=image)
        sample["image"] = out["image"]
        if self.attributes is not None:
            sample["attributes"] = self.attributes[rec.original_pid]
        return sample
