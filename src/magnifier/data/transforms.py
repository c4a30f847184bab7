"""Joint image + part-label-map augmentation with albumentations.

Geometric transforms move the label map with the image (nearest neighbour only, so labels are
never blended); photometric ones (random erasing) touch the image alone.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transforms(
    height: int,
    width: int,
    train: bool,
    flip_p: float = 0.5,
    pad: int = 10,
    erasing_p: float = 0.5,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> A.Compose:
    """The strong-baseline recipe: resize, flip, pad + random crop, normalise, random erasing.

    Call as ``t(image=hwc_uint8, mask=hw_uint8)``; returns ``image`` (3, height, width) float
    and ``mask`` (height, width) uint8.
    """
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
        # After normalisation a fill of 0 is the ImageNet mean pixel, as in the strong baseline;
        # fill_mask=None leaves the label map untouched (the person is still there).
        ops.append(A.Erasing(p=erasing_p, scale=(0.02, 0.4), ratio=(0.3, 3.3), fill=0, fill_mask=None))
    ops.append(ToTensorV2())
    return A.Compose(ops)
