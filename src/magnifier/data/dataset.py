"""A torch Dataset over :class:`ImageRecord` lists: image, part label map, pid, camid."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .datasets.base import ImageRecord


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def read_label_map(path: str) -> np.ndarray:
    """(H, W) uint8 part labels from a PNG (mode L or P) or a .npy file."""
    if path.endswith(".npy"):
        return np.load(path).astype(np.uint8)
    with Image.open(path) as img:
        return np.asarray(img)


class ReIDImageDataset(Dataset):
    """Returns dicts: ``image`` (3, H, W) float, ``mask`` (H, W) long when ``with_masks``,
    ``pid``, ``camid``, ``index`` (position in this dataset) and ``path``."""

    def __init__(self, records: Sequence[ImageRecord], transform, with_masks: bool = False):
        self.records = list(records)
        self.transform = transform
        self.with_masks = with_masks
        if with_masks:
            missing = [r.path for r in self.records if r.mask_path is None]
            if missing:
                raise ValueError(f"{len(missing)} image(s) have no label map, e.g. {missing[0]}")

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
            label = read_label_map(rec.mask_path)
            if label.shape != image.shape[:2]:
                # Masks of another size are brought to the image grid by nearest neighbour.
                label = np.asarray(Image.fromarray(label).resize(image.shape[1::-1], Image.NEAREST))
            out = self.transform(image=image, mask=label)
            sample["mask"] = torch.as_tensor(out["mask"]).long()
        else:
            out = self.transform(image=image)
        sample["image"] = out["image"]
        return sample
