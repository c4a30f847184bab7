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


class ErasingBox(RandomErasing):
    """:class:`RandomErasing` for images normalised on the training device: the box is sampled
    exactly as there (same random draws) but the uint8 image is left as it is; the box is kept
    in ``box`` ((x1, y1, x2, y2), or None when nothing was erased) for
    :func:`apply_with_erasing_box`, and :func:`normalize_on_device` fills it after normalising."""

    box: np.ndarray | None = None

    def apply(self, img: np.ndarray, holes: np.ndarray, **params: Any) -> np.ndarray:
        self.box = holes[0].copy() if len(holes) else None
        return img


def apply_with_erasing_box(transform: A.Compose, **targets: Any) -> tuple[dict[str, Any], np.ndarray | None]:
    """``transform(**targets)`` and the box its :class:`ErasingBox` sampled ((4,) int32
    x1, y1, x2, y2), or None when it has none or erased nothing this time."""
    boxes = [t for t in getattr(transform, "transforms", ()) if isinstance(t, ErasingBox)]
    for op in boxes:
        op.box = None  # not applied at all this time (probability erasing_p): no box
    out = transform(**targets)
    return out, (boxes[0].box if boxes else None)


def normalize_on_device(
    images: "torch.Tensor",
    boxes: "torch.Tensor | None",
    mean: Sequence[float],
    std: Sequence[float],
    fill: Sequence[float],
) -> "torch.Tensor":
    """uint8 images (N, 3, H, W) on any device -> float32 (N, 3, H, W), normalised as
    ``A.Normalize`` does ((x / 255 - mean) / std), then each image's erasing box (N, 4) int
    (x1, y1, x2, y2; x2 = x1 for none) filled with ``fill`` (the normalised value, see
    :func:`erasing_fill_value`): what :func:`build_transforms` gives on the CPU, to rounding.

    Six kernels and no copy from the host (the constants are made once per device): on a GPU the
    training step is bound by the host, where each dispatched operation costs tens of
    microseconds (27 operations before, 15 now: ``tests/test_device_normalize.py`` counts them).
    """
    import torch

    from magnifier.tensors import device_constant

    device = images.device
    # x * (1 / (255 std)) + (-mean / std): one kernel reads the uint8 images and writes floats.
    scale = tuple(1.0 / (255.0 * float(s)) for s in std)
    shift = tuple(-float(m) / float(s) for m, s in zip(mean, std))
    out = torch.addcmul(device_constant(shift, device, torch.float32, (1, 3, 1, 1)), images,
                        device_constant(scale, device, torch.float32, (1, 3, 1, 1)))
    if boxes is None:
        return out
    height, width = images.shape[2], images.shape[3]
    # Both axes in one pass: positions 0..L-1 against (x1, y1) and (x2, y2), (N, 2, L).
    length = max(height, width)
    positions = device_constant(tuple(range(length)) * 2, device, boxes.dtype, (1, 2, length))
    boxes = boxes.to(device)  # (N, 4), maybe a strided view (magnifier.data.packing)
    low, high = boxes[:, :2, None], boxes[:, 2:, None]  # (N, 2, 1) each: (x1, y1), (x2, y2)
    cols, rows = ((positions >= low) & (positions < high)).unbind(1)  # (N, L) each
    inside = rows[:, :height, None] & cols[:, None, :width]  # (N, H, W): row and column inside
    return torch.where(inside[:, None], device_constant(tuple(float(f) for f in fill), device, torch.float32,
                                                        (1, 3, 1, 1)), out)


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
    on_device: bool = False,
) -> A.Compose:
    """The strong-baseline recipe: resize, flip, pad + random crop, normalise, random erasing.

    ``on_device=True`` stops before normalising: ``image`` stays uint8 (3, H, W) and random
    erasing only samples its box (:class:`ErasingBox`, read with :func:`apply_with_erasing_box`);
    :func:`normalize_on_device` finishes the recipe on the training device.

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
    # On the device's path a no-op holds Normalize's place, so that every later draw (the
    # erasing box) is the one the CPU path makes with the same seed.
    ops.append(A.NoOp(p=1.0) if on_device else A.Normalize(mean=mean, std=std))
    if train and erasing_p > 0:
        # Runs on Normalize's float32 HWC output, so ``fill`` (a per-channel tuple, which
        # A.Erasing's cutout writes channel by channel) is in normalised units: the authors' mean
        # numbers are NOT the mean pixel (that is "zero"). fill_mask=None leaves the label map
        # untouched (the person is still there).
        erasing = ErasingBox if on_device else RandomErasing
        ops.append(erasing(p=erasing_p, scale=(0.02, 0.4), ratio=(0.3, 1 / 0.3), fill=fill, fill_mask=None))
    ops.append(ToTensorV2())
    return A.Compose(ops)
