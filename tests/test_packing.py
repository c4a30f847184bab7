"""``magnifier.data.packing``: the uint8 training batch travels as 2 tensors and is unpacked
into the usual keys, equal to what the default collation gives."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import default_collate

from magnifier.data import packing

from .conftest import TINY


def _samples(n: int = 6, mask: bool = True, replaced: bool = True, attributes: bool = False) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        sample = {"pid": 10 + i // 2, "camid": i % 3, "index": 100 + i, "path": f"img{i}.jpg",
                  "image": torch.randint(0, 256, (3, 8, 4), generator=g, dtype=torch.uint8),
                  "erase": torch.tensor([i % 4, 1, i % 4 + 2, 5] if i % 2 else [0, 0, 0, 0], dtype=torch.int32)}
        if replaced:
            sample["replaced"] = i == 3
        if mask:
            sample["mask"] = torch.randint(0, 8, (8, 4), generator=g, dtype=torch.uint8)
        if attributes:
            sample["attributes"] = torch.rand(5, generator=g)
        out.append(sample)
    return out


@pytest.mark.parametrize("mask, replaced, attributes", [(True, True, False), (False, False, True), (True, False, True)])
def test_unpacked_batch_equals_the_default_collation(mask, replaced, attributes):
    samples = _samples(mask=mask, replaced=replaced, attributes=attributes)
    want = default_collate(samples)
    packed = packing.collate(samples)
    assert sum(torch.is_tensor(v) for v in packed.values()) == 2 + attributes  # not 7
    got = packing.unpack(dict(packed))
    assert set(got) == set(want)
    for key, value in want.items():
        if key == "erase":  # the boxes travel with the other numbers, as int64
            assert got[key].shape == value.shape and torch.equal(got[key], value.long())
        elif torch.is_tensor(value):
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
        else:
            assert got[key] == value, key
    assert got["pid"].is_contiguous()  # the loss's targets need no copy


def test_a_packed_batch_survives_pinning_and_a_copy():
    """What the pinning thread and Lightning's transfer do with it: tensors moved, the rest kept."""
    from lightning_fabric.utilities.apply_func import move_data_to_device

    packed = packing.collate(_samples())
    moved = move_data_to_device(packed, torch.device("cpu"))
    got = packing.unpack(dict(moved))
    assert torch.equal(got["erase"], default_collate(_samples())["erase"].long())


def test_unpack_leaves_other_batches_alone():
    batch = {"image": torch.zeros(2, 3, 4, 4), "pid": torch.tensor([1, 2])}
    assert packing.unpack(batch) is batch


def test_the_training_loader_packs_only_on_the_device_path(tiny_data_dir):
    from magnifier.data import ReIDDataModule

    def first(normalize_on_device):
        dm = ReIDDataModule(name="synthetic", root=str(tiny_data_dir), height=64, width=32, batch_size=8,
                            num_workers=0, synthetic=TINY, normalize_on_device=normalize_on_device)
        dm.setup("fit")
        return dm, next(iter(dm.train_dataloader()))

    _, plain = first(False)
    assert "pixels" not in plain and plain["image"].dtype == torch.float32
    dm, packed = first(True)
    assert packed["pixels"].shape == (8, 4, 64, 32) and packed["numbers"].shape == (3 + 1 + 4, 8)
    batch = dm.on_after_batch_transfer(packed, 0)
    assert batch["image"].dtype == torch.float32 and batch["mask"].dtype == torch.long
    assert torch.equal(batch["pid"], plain["pid"]) and batch["replaced"].dtype == torch.bool
