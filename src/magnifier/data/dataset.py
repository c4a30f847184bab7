"""A torch Dataset over :class:`ImageRecord` lists: image, part label map, pid, camid."""

from __future__ import annotations

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


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def read_label_map(path: str, scheme: str | LabelScheme = "eanet") -> np.ndarray:
    """(H, W) uint8 8-part labels from a PNG (mode L or P) or a .npy file written in ``scheme``
    (a parser's label set, see :mod:`magnifier.data.masks`), remapped into the 8 parts."""
    if path.endswith(".npy"):
        label = np.load(path)
    else:
        with Image.open(path) as img:
            label = np.asarray(img)
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
    instead of refusing them."""

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform,
        with_masks: bool = False,
        attributes: Mapping[int, np.ndarray] | None = None,
        mask_scheme: str = "eanet",
        missing_masks: str = "error",
    ):
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

    def __getitem__(self, index: int) -> dict:
        rec = self.records[index]
        image = read_image(rec.path)
        sample = {"pid": rec.pid, "camid": rec.camid, "index": index, "path": rec.path}
        if self.with_masks:
            if rec.mask_path is None:  # only reachable with missing_masks="stripes"
                label = stripe_parts(*image.shape[:2])
            else:
                label = match_label_map(read_label_map(rec.mask_path, self.mask_scheme), image.shape[:2], rec.mask_path)
            out = self.transform(image=image, mask=label)
            sample["mask"] = torch.as_tensor(out["mask"]).long()
        else:
            out = self.transform(image=image)
        sample["image"] = out["image"]
        if self.attributes is not None:
            sample["attributes"] = self.attributes[rec.original_pid]
        return sample
