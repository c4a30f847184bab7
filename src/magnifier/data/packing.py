"""Training batches for ``dataset.normalize_on_device`` packed into two tensors on their way to
the device, and unpacked (as views, no copy) once there.

A training batch is 7 tensors (images, part labels, pid, camid, index, replaced, erasing
boxes). Each tensor is a separate piece of shared memory the loader worker hands to the
training process, a separate ``pin_memory`` in the pinning thread and a separate copy to the
GPU; on a GPU the training step is bound by the host, and the pinning thread competes with
the training thread for the interpreter. Packed, the batch is:

* ``pixels``: uint8 (N, 3 [+ 1], H, W), the images with the part labels as a fourth channel;
* ``numbers``: int64 (K, N), one row per number (pid, camid, index, [replaced]) and the erasing
  box's x1, y1, x2, y2 as 4 more rows, so that each row is contiguous;
* ``fields``: the names of the rows and channels (a tuple of strings);

plus what stays as it was (``path``, ``attributes``). :func:`unpack` (the data module's
``on_after_batch_transfer``) gives back the usual keys.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import default_collate, get_worker_info

#: The per-sample numbers that travel in ``numbers``, in this order, where the samples have them.
NUMBERS = ("pid", "camid", "index", "replaced")
#: Rows of ``numbers`` after the named ones: the erasing box.
BOX = 4


def _batch_tensor(like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """An empty tensor of ``like``'s dtype; in a loader worker, in shared memory from the start
    (as ``default_collate`` does), so that handing it over copies nothing."""
    if get_worker_info() is not None:
        storage = like._typed_storage()._new_shared(math.prod(shape), device=like.device)
        return like.new(storage).resize_(*shape)
    return like.new_empty(shape)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``collate_fn`` of the training loader on the ``normalize_on_device`` path: samples of
    :class:`~magnifier.data.dataset.ReIDImageDataset` (uint8 ``image`` (3, H, W), optional uint8
    ``mask`` (H, W), ``erase`` (4,)) into ``pixels``, ``numbers`` and ``fields`` (module doc)."""
    first = samples[0]
    image = first["image"]
    channels, height, width = image.shape
    has_mask = "mask" in first
    pixels = _batch_tensor(image, (len(samples), channels + int(has_mask), height, width))
    for i, sample in enumerate(samples):
        pixels[i, :channels] = sample["image"]
        if has_mask:
            pixels[i, channels] = sample["mask"]
    names = tuple(k for k in NUMBERS if k in first)
    rows = [[int(sample[k]) for sample in samples] for k in names]
    rows += [[int(v) for v in column] for column in zip(*(sample["erase"].tolist() for sample in samples))]
    batch: dict[str, Any] = {"pixels": pixels, "numbers": torch.tensor(rows, dtype=torch.int64),
                             "fields": (*names, *(("mask",) if has_mask else ()), "erase")}
    rest = [k for k in first if k not in (*NUMBERS, "image", "mask", "erase")]  # path, attributes
    if rest:
        batch.update(default_collate([{k: sample[k] for k in rest} for sample in samples]))
    return batch


def unpack(batch: dict[str, Any]) -> dict[str, Any]:
    """A batch made by :func:`collate` with its usual keys again (``image`` uint8, ``mask`` uint8,
    pid, camid, index int64, ``replaced`` bool, ``erase`` (N, 4) int64), views of the two tensors
    wherever they now are; any other batch as it is."""
    if "pixels" not in batch:
        return batch
    pixels, numbers, fields = batch.pop("pixels"), batch.pop("numbers"), batch.pop("fields")
    has_mask = "mask" in fields
    channels = pixels.shape[1] - int(has_mask)
    batch["image"] = pixels[:, :channels]
    if has_mask:
        batch["mask"] = pixels[:, channels]
    names = [f for f in fields if f not in ("mask", "erase")]
    for row, name in enumerate(names):
        batch[name] = numbers[row] != 0 if name == "replaced" else numbers[row]
    batch["erase"] = numbers[len(names):len(names) + BOX].T  # (N, 4): x1, y1, x2, y2
    return batch
