"""A torch Dataset over :class:`ImageRecord` lists: image, part label map, pid, camid."""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .datasets.base import ImageRecord
from .files import (  # noqa: F401  (re-exported: the data module and tests import them from here)
    BadFileError,
    LabelMapError,
    match_label_map,
    read_image,
    read_label_map,
    unreadable_files,
)
from .masks import LabelScheme, get_scheme, stripe_parts
from .transforms import apply_with_erasing_box


class MissingAttributesError(ValueError):
    """Identities without an attribute vector."""


class ReIDImageDataset(Dataset):
    """Returns dicts: ``image`` (3, H, W) float, ``mask`` (H, W) long when ``with_masks`` (both
    uint8 from a transform built with ``on_device=True``, plus ``erase``),
    ``pid``, ``camid``, ``index`` (position in this dataset) and ``path``; with ``attributes``
    (``{original pid: (A,) float array}``) also ``attributes`` (A,) float32, looked up by each
    record's original pid.

    ``mask_scheme`` names the label set the maps were written in (remapped into the 8 parts);
    ``missing_masks="stripes"`` gives images without a map horizontal-stripe pseudo-parts
    instead of refusing them; ``empty_masks="stripes"`` does the same for maps without any part
    (what ``python -m magnifier.parse`` writes where it found no person), ``"keep"`` trains on
    them as all background. ``on_bad_image="replace"`` (training) answers an image or label
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
        empty_masks: str = "keep",
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
        if empty_masks not in ("keep", "stripes"):
            raise ValueError(f"empty_masks must be 'keep' or 'stripes', got {empty_masks!r}")
        self.empty_masks = empty_masks
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
        label = match_label_map(read_label_map(rec.mask_path, self.mask_scheme), image.shape[:2], rec.mask_path)
        if self.empty_masks == "stripes" and not label.any():  # the parser found no person here
            return image, stripe_parts(*image.shape[:2])
        return image, label

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

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        """``index``, or ``(index, seed)`` to seed this sample's augmentation (see
        ``RandomIdentitySampler(with_seeds=True)``)."""
        if isinstance(index, tuple):
            index, seed = index
            if hasattr(self.transform, "set_random_seed"):  # albumentations' Compose
                self.transform.set_random_seed(int(seed))
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
        targets = {"image": image} if label is None else {"image": image, "mask": label}
        out, box = apply_with_erasing_box(self.transform, **targets)
        on_device = out["image"].dtype == torch.uint8  # normalised on the training device, box filled there
        if label is not None:
            # On the device path the part labels (0..7) travel as uint8 too, 8x fewer bytes to
            # collate, pin and copy than int64; the data module makes them long after the copy.
            mask = torch.as_tensor(out["mask"])
            sample["mask"] = mask.to(torch.uint8) if on_device else mask.long()
        sample["image"] = out["image"]
        if on_device:
            sample["erase"] = torch.as_tensor(box if box is not None else (0, 0, 0, 0), dtype=torch.int32)
        if self.attributes is not None:
            sample["attributes"] = self.attributes[rec.original_pid]
        return sample
