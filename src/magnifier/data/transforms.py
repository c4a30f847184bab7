"""Joint image + part-label-map augmentation with albumentations.

Geometric transforms move the label map with the image (nearest neighbour only, so labels are
never blended); photometric ones (random erasing) touch the image alone.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ERASING_FILLS = ("authors", "zero")


class RandomErasing(A.Erasing):
    """Random erasing sampled exactly as the strong baseline's ``RandomErasing`` (Zhong et al.).

    Up to 100 attempts: area ~ U(scale) x image area, aspect h/w ~ U(ratio),
    ``h = round(sqrt(area * aspect))``, ``w = round(sqrt(area / aspect))``; the first box with
    ``h < H`` and ``w < W`` is erased at a uniform position, else nothing is. (``A.Erasing`` instead
    clamps the area to what fits every aspect ratio, about 15 % of a 256 x 128 image, not 40 %.)
    Filling and the untouched label map (``fill_mask=None``) are ``A.Erasing``'s.
    """

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        rnd = self.py_random
        for _ in range(100):
            area = rnd.uniform(*self.scale) * height * width
            aspect = rnd.uniform(*self.ratio)
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if w < width and h < height:
                top, left = rnd.randint(0, height - h), rnd.randint(0, width - w)
                holes = np.array([[left, top, left + w, top + h]], dtype=np.int32)
                return {"holes": holes, "seed": self.random_generator.integers(0, 2**32 - 1)}
        return {"holes": np.zeros((0, 4), dtype=np.int32)}


def erasing_fill_value(
    erasing_fill: str | Sequence[float], mean: Sequence[float] = IMAGENET_MEAN
) -> tuple[float, float, float]:
    """The per-channel value random erasing writes into the *normalised* image.

    ``"authors"``: the raw numbers of ``mean`` (0.485, 0.456, 0.406 by default), as the
    MagnifierNet / strong-baseline ``RandomErasing(mean=cfg.INPUT.PIXEL_MEAN)`` does after
    ToTensor + Normalize; in pixel terms that is not the mean colour but mean * (1 + std),
    slightly brighter. ``"zero"``: 0, i.e. the mean pixel. Three numbers: written as given.
    """
    allowed = f"use {' or '.join(repr(f) for f in ERASING_FILLS)}, or a list of 3 numbers"
    if isinstance(erasing_fill, str):
        if erasing_fill == "authors":
            return tuple(float(m) for m in mean)  # type: ignore[return-value]
        if erasing_fill == "zero":
            return (0.0, 0.0, 0.0)
        raise ValueError(f"erasing_fill={erasing_fill!r}: {allowed}")
    try:
        values = tuple(erasing_fill)
    except TypeError:
        raise ValueError(f"erasing_fill={erasing_fill!r}: {allowed}") from None
    if len(values) != 3 or not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"erasing_fill={erasing_fill!r}: {allowed}")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def build_transforms(
    height: int,
    width: int,
    train: bool,
    flip_p: float = 0.5,
    pad: int = 10,
    erasing_p: float = 0.5,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    erasing_fill: str | Sequence[float] = "authors",
) -> A.Compose:
    """The strong-baseline recipe: resize, flip, pad + random crop, normalise, random erasing.

    Random erasing (train only, probability ``erasing_p``, area 2-40 %, aspect 0.3-1/0.3, up to
    100 attempts) runs after normalisation and writes ``erasing_fill`` into the normalised image:
    ``"authors"`` (default) the raw numbers of ``mean`` as the authors' code does, ``"zero"`` the
    mean pixel, or 3 numbers; see :func:`erasing_fill_value`. The label map is never erased.

    Call as ``t(image=hwc_uint8, mask=hw_uint8)``; returns ``image`` (3, height, width) float
    and ``mask`` (height, width) uint8.
    """
    fill = erasing_fill_value(erasing_fill, mean)  # validated even when erasing is off
    ops: list = [A.Resize(height, width, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)]
    if train:
        if flip_p > 0:
            ops.append(A.HorizontalFlip(p=flip_p))
        if pad > 0:
            # Zero padding, label 0 (background) in the padded border of the label map.
            ops.append(
                A.PadIfNeeded(height + 2 * pad, width + 2 * pad, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0)
            )
            ops.append(A.RandomCrop(height, width))
    ops.append(A.Normalize(mean=mean, std=std))
    if train and erasing_p > 0:
        # Runs on Normalize's float32 HWC output, so ``fill`` (a per-channel tuple, which
        # A.Erasing's cutout writes channel by channel) is in normalised units: the authors' mean
        # numbers are NOT the mean pixel (that is "zero"). fill_mask=None leaves the label map
        # untouched (the person is still there).
        ops.append(RandomErasing(p=erasing_p, scale=(0.02, 0.4), ratio=(0.3, 1 / 0.3), fill=fill, fill_mask=None))
    ops.append(ToTensorV2())
    return A.Compose(ops)
