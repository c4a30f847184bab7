"""``dataset.normalize_on_device``: uint8 training images normalised (and their erasing boxes
filled) after the copy to the device give what the CPU recipe gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magnifier.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    apply_with_erasing_box,
    build_transforms,
    erasing_fill_value,
    normalize_on_device,
)
from magnifier.errors import UserError

from .conftest import DispatchedOps, compose, fit_tiny_steps, tiny_overrides


@pytest.mark.parametrize("fill", ["authors", "zero", [0.5, -1.0, 2.0]])
def test_device_path_equals_the_cpu_recipe_for_the_same_seed(fill):
    cpu = build_transforms(64, 32, True, erasing_p=0.5, erasing_fill=fill)
    dev = build_transforms(64, 32, True, erasing_p=0.5, erasing_fill=fill, on_device=True)
    rng = np.random.default_rng(0)
    erased, n = 0, 60
    for seed in range(n):
        image = rng.integers(0, 256, (80, 40, 3), dtype=np.uint8)
        label = rng.integers(0, 8, (80, 40), dtype=np.uint8)
        cpu.set_random_seed(seed)
        want = cpu(image=image, mask=label)
        dev.set_random_seed(seed)
        got, box = apply_with_erasing_box(dev, image=image, mask=label)
        assert got["image"].dtype == torch.uint8 and got["image"].shape == (3, 64, 32)
        assert np.array_equal(np.asarray(got["mask"]), np.asarray(want["mask"]))
        boxes = torch.tensor(box if box is not None else (0, 0, 0, 0)).view(1, 4)
        images = normalize_on_device(got["image"][None], boxes, IMAGENET_MEAN, IMAGENET_STD, erasing_fill_value(fill))
        torch.testing.assert_close(images[0], want["image"], rtol=0, atol=2e-6)
        erased += box is not None
    assert 0 < erased < n  # both branches: erased and left alone


def test_normalize_on_device_on_hand_made_boxes():
    images = torch.full((2, 3, 4, 5), 255, dtype=torch.uint8)
    boxes = torch.tensor([[1, 2, 3, 4], [0, 0, 0, 0]])  # x1, y1, x2, y2; the second erases nothing
    out = normalize_on_device(images, boxes, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (-1.0, -2.0, -3.0))
    want = torch.ones(2, 3, 4, 5)
    want[0, :, 2:4, 1:3] = torch.tensor([-1.0, -2.0, -3.0]).view(3, 1, 1)
    torch.testing.assert_close(out, want)


def test_normalize_on_device_dispatches_few_operations():
    """Each dispatched operation is host time on a GPU, where the step is bound by the host: the
    normalisation and erasing run as 6 kernels (15 operations with the views), 27 before."""
    images = torch.randint(0, 256, (4, 3, 64, 32), dtype=torch.uint8)
    boxes = torch.tensor([[2, 3, 20, 40]] * 4, dtype=torch.int32)
    normalize_on_device(images, boxes, IMAGENET_MEAN, IMAGENET_STD, IMAGENET_MEAN)  # the constants, once
    with DispatchedOps() as count:
        normalize_on_device(images, boxes, IMAGENET_MEAN, IMAGENET_STD, IMAGENET_MEAN)
    views = {"aten.slice.Tensor", "aten.select.int", "aten.unsqueeze.default", "aten.view.default", "aten.unbind.int"}
    kernels = [op for op in count.names if op not in views]
    assert len(count.names) <= 15 and len(kernels) <= 6, count.names
    assert not any("_to_copy" in op or "lift_fresh" in op for op in count.names)  # no copy, no constant made


def test_training_with_images_normalised_on_the_device_follows_the_cpu_recipe(tiny_data_dir, tmp_path):
    cpu_losses, cpu_dtypes, _, _ = fit_tiny_steps(tiny_data_dir, tmp_path / "cpu", ["dataset.normalize_on_device=false"])
    dev_losses, dev_dtypes, _, datamodule = fit_tiny_steps(tiny_data_dir, tmp_path / "dev",
                                                           ["dataset.normalize_on_device=true"])
    assert cpu_dtypes == dev_dtypes == {torch.float32}  # the device path was taken and finished
    sample = datamodule.train_set[(0, 123)]
    assert sample["image"].dtype == torch.uint8 and sample["erase"].shape == (4,)
    assert sample["mask"].dtype == torch.uint8  # 8x fewer bytes than int64 through collate, pinning and the copy
    batch = datamodule.on_after_batch_transfer({k: v[None] if torch.is_tensor(v) else v for k, v in sample.items()}, 0)
    assert batch["mask"].dtype == torch.long and torch.equal(batch["mask"][0], sample["mask"].long())
    assert datamodule.query_set[0]["image"].dtype == torch.float32  # evaluation stays float
    # The same images to rounding (2e-6), so the first step's loss is the same; Adam's first
    # updates (about lr * sign(gradient)) turn rounding into whole steps on near-zero gradients,
    # so later losses drift a little (1e-4 here).
    assert dev_losses[0] == pytest.approx(cpu_losses[0], rel=1e-6)
    assert dev_losses == pytest.approx(cpu_losses, rel=1e-3)


def test_auto_is_off_on_the_cpu_and_bad_values_are_refused(tiny_data_dir):
    from magnifier.config import instantiate_config as instantiate

    cfg = compose(tiny_overrides(tiny_data_dir))
    assert cfg.dataset.normalize_on_device == "auto"
    assert instantiate(cfg.dataset)._normalizes_on_device() is False  # no trainer, or a CPU one
    with pytest.raises(UserError, match="dataset.normalize_on_device='sometimes': use auto, true or false"):
        instantiate(compose(tiny_overrides(tiny_data_dir) + ["dataset.normalize_on_device=sometimes"]).dataset)
