"""Data module shapes and dtypes, joint augmentation alignment, dataset reading errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magnifier.data import ReIDDataModule, load_dataset
from magnifier.parts import NUM_PARTS
from magnifier.data.transforms import build_transforms
from magnifier.errors import UserError

from .conftest import TINY


def _datamodule(data_dir, **kwargs) -> ReIDDataModule:
    args = dict(name="synthetic", root=str(data_dir), height=64, width=32, batch_size=8, num_instances=4,
                test_batch_size=16, num_workers=0, synthetic=TINY, val_split="none")  # all 8 identities train
    args.update(kwargs)
    return ReIDDataModule(**args)


def test_train_batches_are_p_by_k_with_aligned_label_maps(tiny_data_dir):
    dm = _datamodule(tiny_data_dir)
    dm.prepare_data()  # already complete: must not rebuild
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 64, 32) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (8, 64, 32) and batch["mask"].dtype == torch.int64
    assert int(batch["mask"].min()) >= 0 and int(batch["mask"].max()) < NUM_PARTS
    assert batch["pid"].dtype == torch.int64 and batch["camid"].dtype == torch.int64
    assert len(batch["path"]) == 8
    # P x K: two identities with four images each.
    _, counts = torch.unique(batch["pid"], return_counts=True)
    assert counts.tolist() == [4, 4]
    assert dm.num_classes == dm.data.num_train_pids == len({r.pid for r in dm.data.train})
    assert sorted({r.pid for r in dm.data.train}) == list(range(dm.num_classes))


def test_eval_batches_are_query_then_gallery_without_masks(tiny_data_dir):
    dm = _datamodule(tiny_data_dir)
    dm.setup("validate")
    batches = list(dm.test_dataloader())
    is_query = torch.cat([b["is_query"] for b in batches])
    index = torch.cat([b["index"] for b in batches])
    assert "mask" not in batches[0]
    assert is_query.sum() == len(dm.data.query) and (~is_query).sum() == len(dm.data.gallery)
    assert index.tolist() == list(range(len(dm.data.query) + len(dm.data.gallery)))
    assert is_query[: len(dm.data.query)].all()


def test_reader_keeps_original_test_pids_and_zero_based_cameras(tiny_data_dir):
    data = load_dataset("synthetic", tiny_data_dir)
    assert min(r.camid for r in data.train + data.query + data.gallery) == 0
    assert max(r.camid for r in data.query + data.gallery) == TINY["num_cams"] - 1
    # Test pids are the file names' pids (after the train pids), not relabelled.
    assert min(r.pid for r in data.query) > data.num_train_pids - 1
    assert all(r.mask_path for r in data.train)
    assert "train" in data.summary() and "gallery" in data.summary()


def test_flip_moves_the_label_map_with_the_image():
    h, w = 16, 8
    image = np.zeros((h, w, 3), np.uint8)
    label = np.zeros((h, w), np.uint8)
    image[:, :3] = (255, 0, 0)  # a red stripe on the left is part 2
    label[:, :3] = 2
    flip = build_transforms(h, w, train=True, flip_p=1.0, pad=0, erasing_p=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    out = flip(image=image, mask=label)
    img, lab = out["image"], torch.as_tensor(out["mask"])
    assert (lab[:, -3:] == 2).all() and (lab[:, :-3] == 0).all()
    red = img[0] > 0.5
    assert torch.equal(red, lab == 2)


def _label_coded_pair(h: int, w: int, block: int, seed: int = 0):
    """A random blocky label map and an image whose red channel encodes the label (30 per class)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, NUM_PARTS, (h // block, w // block)).repeat(block, 0).repeat(block, 1).astype(np.uint8)
    image = np.stack([label * 30, np.zeros_like(label), np.zeros_like(label)], -1).astype(np.uint8)
    return image, label


def test_flip_pad_and_crop_keep_labels_exactly_aligned():
    image, label = _label_coded_pair(64, 32, 4)
    t = build_transforms(64, 32, train=True, flip_p=0.5, pad=6, erasing_p=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    for _ in range(10):
        out = t(image=image, mask=label)
        lab = torch.as_tensor(out["mask"]).long()
        red = (out["image"][0] * 255 / 30).round().long()
        assert torch.equal(red, lab)  # shifts and flips: every pixel, padding included (0 / background)


def test_resize_uses_nearest_neighbour_for_labels():
    image, label = _label_coded_pair(32, 16, 4)
    t = build_transforms(64, 32, train=False, mean=(0, 0, 0), std=(1, 1, 1))
    out = t(image=image, mask=label)
    lab = torch.as_tensor(out["mask"]).long()
    assert set(lab.unique().tolist()) <= set(label.flatten().tolist())  # no blended label values
    expected = torch.as_tensor(label).long().repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(lab, expected)  # an exact 2x upscale of the blocks
    # The bilinear image agrees with the labels away from block borders.
    red = (out["image"][0] * 255 / 30).round().long()
    interior = torch.zeros_like(lab, dtype=torch.bool)
    interior[1:-1, 1:-1] = (
        (lab[1:-1, 1:-1] == lab[:-2, 1:-1]) & (lab[1:-1, 1:-1] == lab[2:, 1:-1])
        & (lab[1:-1, 1:-1] == lab[1:-1, :-2]) & (lab[1:-1, 1:-1] == lab[1:-1, 2:])
    )
    assert torch.equal(red[interior], lab[interior])


def test_random_erasing_touches_the_image_only():
    h, w = 32, 16
    image = np.full((h, w, 3), 200, np.uint8)
    label = np.full((h, w), 3, np.uint8)
    t = build_transforms(h, w, train=True, flip_p=0.0, pad=0, erasing_p=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    out = t(image=image, mask=label)
    assert (out["image"] == 0).any()  # something was erased
    assert (torch.as_tensor(out["mask"]) == 3).all()


def _erase_constant_image(h, w, seed=0, **kwargs):
    """One erasing draw (p=1) on a constant image and label map: (image tensor, the same image
    normalised without erasing, boolean map of the erased pixels)."""
    image = np.full((h, w, 3), 200, np.uint8)
    label = np.full((h, w), 3, np.uint8)
    t = build_transforms(h, w, train=True, flip_p=0.0, pad=0, erasing_p=1.0, **kwargs)
    t.set_random_seed(seed)
    out = t(image=image, mask=label)
    mean, std = kwargs.get("mean", (0.485, 0.456, 0.406)), kwargs.get("std", (0.229, 0.224, 0.225))
    clean = torch.tensor([(200 / 255.0 - m) / s for m, s in zip(mean, std)], dtype=torch.float32)[:, None, None]
    unerased = build_transforms(h, w, train=True, flip_p=0.0, pad=0, erasing_p=0.0, **kwargs)(image=image)["image"]
    assert torch.allclose(unerased, clean.expand_as(unerased), atol=1e-6)  # constant, the normalised pixel
    img = out["image"]
    erased = (img != unerased).any(0)
    assert torch.equal(torch.as_tensor(out["mask"]), torch.as_tensor(label))  # the label map is never erased
    return img, unerased, erased


@pytest.mark.parametrize(
    "fill, expected",
    [
        (None, (0.485, 0.456, 0.406)),  # the default is the authors'
        ("authors", (0.485, 0.456, 0.406)),
        ("zero", (0.0, 0.0, 0.0)),
        ([0.1, -0.2, 0.3], (0.1, -0.2, 0.3)),
        ((1, 2, 3), (1.0, 2.0, 3.0)),
    ],
)
def test_random_erasing_writes_its_fill_into_the_normalised_image(fill, expected):
    """The authors' (strong baseline) RandomErasing runs after Normalize and writes the raw
    numbers 0.485, 0.456, 0.406 into channels 0-2: erased pixels hold exactly those, the rest the
    normalised image value, and the label map is untouched."""
    kwargs = {} if fill is None else {"erasing_fill": fill}
    for seed in range(3):
        img, unerased, erased = _erase_constant_image(64, 32, seed, **kwargs)
        assert erased.any()
        want = torch.tensor(expected, dtype=torch.float32)
        for c in range(3):
            assert (img[c][erased] == want[c]).all()  # exactly the fill, float32
            assert torch.equal(img[c][~erased], unerased[c][~erased])  # the rest is the normalised pixel


def test_random_erasing_area_and_shape_follow_the_strong_baseline():
    """One rectangle per draw, 2-40 % of the image (up to the rounding of its sides), aspect
    within 0.3-1/0.3; over many draws the large areas are reached too (A.Erasing's own sampler
    stopped at about 15 % of a 256 x 128 image)."""
    h, w = 256, 128
    image = np.full((h, w, 3), 200, np.uint8)
    t = build_transforms(h, w, train=True, flip_p=0.0, pad=0, erasing_p=1.0, erasing_fill="zero")
    fractions = []
    for seed in range(4):
        t.set_random_seed(seed)
        for _ in range(25):
            erased = (t(image=image)["image"] == 0).all(0)
            rows, cols = torch.nonzero(erased.any(1)).flatten(), torch.nonzero(erased.any(0)).flatten()
            eh, ew = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
            assert int(erased.sum()) == eh * ew  # a single filled rectangle
            slack = (eh + ew) / 2 + 0.25  # rounding each side to whole pixels
            assert 0.02 * h * w - slack <= eh * ew <= 0.4 * h * w + slack
            assert 0.3 - 1 / min(eh, ew) <= eh / ew <= 1 / 0.3 + 1 / min(eh, ew)
            fractions.append(eh * ew / (h * w))
    assert max(fractions) > 0.3 and min(fractions) < 0.1


@pytest.mark.parametrize("bad", ["mean", "random", "", 0, 0.5, [0.1, 0.2], [0.1, 0.2, 0.3, 0.4], ["a", "b", "c"], None])
def test_bad_erasing_fill_is_rejected(bad):
    with pytest.raises(ValueError, match="'authors' or 'zero'"):
        build_transforms(64, 32, train=True, erasing_fill=bad)


def test_missing_label_maps_stop_with_a_clear_message(tiny_data_dir, tmp_path):
    import shutil

    root = tmp_path / "synthetic"
    shutil.copytree(tiny_data_dir / "synthetic", root)
    first = sorted((root / "masks" / "bounding_box_train").iterdir())[0]
    first.unlink()
    dm = _datamodule(tmp_path)
    with pytest.raises(UserError, match=r"1 of \d+ training images of 'synthetic' have no part label map") as err:
        dm.load()
    assert "make them with `python -m magnifier.parse dataset=synthetic`" in str(err.value)  # the fix


def test_empty_dataset_folder_names_folder_and_fix(tmp_path):
    (tmp_path / "DukeMTMC-reID" / "bounding_box_train").mkdir(parents=True)
    with pytest.raises(UserError) as err:
        load_dataset("duke", tmp_path)
    msg = str(err.value)
    assert "DukeMTMC-reID/bounding_box_train is empty" in msg and "MAGNIFIER_DATA" in msg
    assert "0001_c2_f0046182.jpg" in msg


def _one_record_dataset(tmp_path, label: np.ndarray, suffix: str = ".png"):
    from PIL import Image

    from magnifier.data.dataset import ReIDImageDataset
    from magnifier.data.datasets import ImageRecord

    img_path, mask_path = tmp_path / "0001_c1s1_000001_01.jpg", tmp_path / f"0001_c1s1_000001_01{suffix}"
    Image.fromarray(np.zeros((64, 32, 3), np.uint8)).save(img_path)
    if suffix == ".npy":
        np.save(mask_path, label)
    else:
        Image.fromarray(label).save(mask_path)
    rec = ImageRecord(str(img_path), 0, 0, str(mask_path))
    return ReIDImageDataset([rec], build_transforms(64, 32, train=False), with_masks=True), str(mask_path)


def test_label_values_outside_the_scheme_name_the_file(tmp_path):
    from magnifier.data.dataset import LabelMapError

    label = np.zeros((64, 32), np.uint8)
    label[0, 0] = 12
    ds, path = _one_record_dataset(tmp_path, label)
    with pytest.raises(LabelMapError, match=rf"label map {path} has values 0..12; part labels must be 0..7"):
        ds[0]


def test_label_maps_of_another_size_are_resized_or_refused(tmp_path):
    from magnifier.data.dataset import LabelMapError

    half = np.ones((32, 16), np.uint8) * 3  # same aspect ratio: resized by nearest neighbour
    ds, _ = _one_record_dataset(tmp_path, half, ".npy")
    assert (ds[0]["mask"] == 3).all() and ds[0]["mask"].shape == (64, 32)
    square = np.ones((32, 32), np.uint8)
    ds, path = _one_record_dataset(tmp_path, square)
    with pytest.raises(LabelMapError, match=rf"label map {path} is 32x32 but its image is 64x32"):
        ds[0]
    rgb = np.ones((64, 32, 3), np.uint8)
    ds, path = _one_record_dataset(tmp_path, rgb, ".npy")
    with pytest.raises(LabelMapError, match="expected one channel"):
        ds[0]


def test_missing_masks_stripes_policy_fills_pseudo_parts(tiny_data_dir, tmp_path, capsys):
    import shutil

    from magnifier.data.masks import stripe_parts

    root = tmp_path / "synthetic"
    shutil.copytree(tiny_data_dir / "synthetic", root)
    first = sorted((root / "masks" / "bounding_box_train").iterdir())[0]
    first.unlink()
    dm = _datamodule(tmp_path, missing_masks="stripes", flip_p=0.0, pad=0, erasing_p=0.0)
    dm.setup("fit")
    assert "1 of" in capsys.readouterr().out
    idx = next(i for i, r in enumerate(dm.train_set.records) if r.mask_path is None)
    sample = dm.train_set[idx]
    # The tiny fixture's images are 64x32, the network input size: no resize, so exact stripes.
    assert torch.equal(sample["mask"], torch.as_tensor(stripe_parts(64, 32)).long())


def test_lip_label_maps_are_remapped_into_the_8_parts(tmp_path):
    from PIL import Image

    from magnifier.data.dataset import LabelMapError, read_label_map
    from magnifier.data.masks import SCHEMES

    lip = np.array([[0, 2, 13], [5, 14, 9], [16, 18, 19]], np.uint8)  # bg, hair, face / upper clothes, arm, pants / leg, shoes
    path = tmp_path / "m.png"
    Image.fromarray(lip).save(path)
    parts = read_label_map(str(path), "lip")
    assert parts.tolist() == [[0, 1, 1], [2, 4, 5], [6, 7, 7]]
    assert parts.tolist() == SCHEMES["lip"].lut[lip].tolist()
    bad = tmp_path / "bad.png"
    Image.fromarray(np.full((3, 3), 25, np.uint8)).save(bad)
    with pytest.raises(LabelMapError, match=str(bad)):
        read_label_map(str(bad), "lip")


def _copy_tiny(tiny_data_dir, tmp_path):
    import shutil

    shutil.copytree(tiny_data_dir / "synthetic", tmp_path / "synthetic")
    return tmp_path / "synthetic"


def test_bad_training_files_are_reported_at_setup_and_replaced_by_the_same_identity(tiny_data_dir, tmp_path, capsys):
    root = _copy_tiny(tiny_data_dir, tmp_path)
    images = sorted((root / "bounding_box_train").iterdir())
    empty, truncated = images[0], images[1]
    empty.write_bytes(b"")  # fails the header scan
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # header intact: only decoding finds it
    corrupt_mask = root / "masks" / "bounding_box_train" / (images[2].stem + ".png")
    corrupt_mask.write_bytes(b"not a png")
    dm = _datamodule(tmp_path)
    dm.setup("fit")
    report = capsys.readouterr().out
    assert "2 training file(s) of 'synthetic' cannot be read" in report and empty.name in report
    by_path = {r.path: i for i, r in enumerate(dm.train_set.records)}
    for path in (empty, truncated, images[2]):
        i = by_path[str(path)]
        with pytest.warns(UserWarning, match="same identity"):
            sample = dm.train_set[i]
        assert sample["replaced"] is True and sample["pid"] == dm.train_set.records[i].pid
        assert sample["path"] != str(path) and sample["image"].shape == (3, 64, 32)
    ok = dm.train_set[by_path[str(images[3])]]
    assert ok["replaced"] is False


def test_on_bad_image_error_stops_at_setup_or_when_drawn(tiny_data_dir, tmp_path):
    from magnifier.data.dataset import BadFileError

    root = _copy_tiny(tiny_data_dir, tmp_path)
    images = sorted((root / "bounding_box_train").iterdir())
    images[0].write_bytes(b"")
    with pytest.raises(UserError, match=r"1 training file\(s\) of 'synthetic' cannot be read .*on_bad_image=replace"):
        _datamodule(tmp_path, on_bad_image="error").setup("fit")
    data = images[1].read_bytes()
    images[0].write_bytes(data[: len(data) // 2])  # truncated: passes the scan
    dm = _datamodule(tmp_path, on_bad_image="error")
    dm.setup("fit")
    i = next(k for k, r in enumerate(dm.train_set.records) if r.path == str(images[0]))
    with pytest.raises(BadFileError, match="cannot decode image"):
        dm.train_set[i]


def test_an_unreadable_query_or_gallery_image_stops_at_setup(tiny_data_dir, tmp_path):
    root = _copy_tiny(tiny_data_dir, tmp_path)
    victim = sorted((root / "bounding_box_test").iterdir())[0]
    victim.write_bytes(b"")
    with pytest.raises(UserError, match=rf"1 query/gallery image\(s\) of 'synthetic' cannot be read \(first: {victim}\)"):
        _datamodule(tmp_path).setup("test")


def test_default_train_pipeline_is_the_strong_baseline_recipe():
    """The defaults are the strong baseline's: resize (linear for the image, nearest for the
    labels), flip p=0.5, zero padding of 10 + random crop back to the size, ImageNet
    normalisation, random erasing p=0.5 on the image only (area 2-40 %, aspect 0.3-1/0.3, the
    authors' fill: the mean's raw numbers written into the normalised image)."""
    import albumentations as A
    import cv2

    t = build_transforms(256, 128, train=True).transforms
    names = [type(op).__name__ for op in t]
    assert names == ["Resize", "HorizontalFlip", "PadIfNeeded", "RandomCrop", "Normalize", "RandomErasing", "ToTensorV2"]
    resize, flip, pad, crop, norm, erase = t[:6]
    assert (resize.height, resize.width) == (256, 128)
    assert resize.interpolation == cv2.INTER_LINEAR and resize.mask_interpolation == cv2.INTER_NEAREST
    assert flip.p == 0.5
    assert (pad.min_height, pad.min_width) == (276, 148)
    assert pad.border_mode == cv2.BORDER_CONSTANT and pad.fill == 0 and pad.fill_mask == 0
    assert (crop.height, crop.width) == (256, 128)
    assert tuple(norm.mean) == (0.485, 0.456, 0.406) and tuple(norm.std) == (0.229, 0.224, 0.225)
    assert erase.p == 0.5 and tuple(erase.scale) == (0.02, 0.4) and tuple(erase.ratio) == (0.3, 1 / 0.3)
    assert tuple(erase.fill) == (0.485, 0.456, 0.406) and erase.fill_mask is None
    assert isinstance(build_transforms(256, 128, train=False).transforms[0], A.Resize)
    assert [type(op).__name__ for op in build_transforms(256, 128, train=False).transforms] == [
        "Resize", "Normalize", "ToTensorV2"]


@pytest.mark.parametrize("pad", [10, 1])
def test_padding_shifts_by_at_most_pad_pixels_with_zero_image_and_background_labels(pad):
    """Pad + random crop: over many draws the content moves by up to exactly ``pad`` pixels (10
    by default), and what comes in from the border is a zero image and label 0."""
    h, w = 32, 16
    image = np.full((h, w, 3), 200, np.uint8)
    mask = np.full((h, w), 3, np.uint8)
    kwargs = {} if pad == 10 else {"pad": pad}  # 10 must be the default
    t = build_transforms(h, w, train=True, flip_p=0.0, erasing_p=0.0, mean=(0, 0, 0), std=(1, 1, 1), **kwargs)
    shifts = set()
    for _ in range(300):
        out = t(image=image, mask=mask)
        img, lab = out["image"].numpy(), out["mask"].numpy()
        inside = lab == 3
        assert ((img[0] > 0) == inside).all()  # padded pixels are 0 where the label is 0
        assert set(np.unique(lab)) <= {0, 3}
        rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
        shifts.add((int(rows[0]) if rows[0] else -(h - 1 - int(rows[-1])), int(cols[0]) if cols[0] else -(w - 1 - int(cols[-1]))))
    dy = {abs(s[0]) for s in shifts}
    dx = {abs(s[1]) for s in shifts}
    assert max(dy) == pad and max(dx) == pad


@pytest.mark.parametrize("strategy", ["file_system", "file_descriptor"])
def test_batches_from_workers_are_the_same_whatever_the_sharing_strategy(tiny_data_dir, strategy):
    """dataset.sharing_strategy: the loader workers' batches reach this process whole, equal to
    the batches made in this process (each sample's augmentation is seeded by its position)."""
    before = torch.multiprocessing.get_sharing_strategy()
    try:
        here = _datamodule(tiny_data_dir, num_workers=0, normalize_on_device=True)
        here.setup("fit")
        expected = next(iter(here.train_dataloader()))
        assert torch.multiprocessing.get_sharing_strategy() == before  # no workers: nothing set
        dm = _datamodule(tiny_data_dir, num_workers=2, normalize_on_device=True, sharing_strategy=strategy)
        dm.setup("fit")
        loader = dm.train_dataloader()
        assert torch.multiprocessing.get_sharing_strategy() == strategy
        batch = next(iter(loader))
        for key, value in expected.items():
            if torch.is_tensor(value):
                assert torch.equal(batch[key], value), key
    finally:
        torch.multiprocessing.set_sharing_strategy(before)


def test_a_bad_sharing_strategy_is_one_line(tiny_data_dir):
    with pytest.raises(UserError, match="dataset.sharing_strategy='shm': use file_system or file_descriptor"):
        _datamodule(tiny_data_dir, sharing_strategy="shm")


def test_prefetch_factor_reaches_the_loaders_with_workers(tiny_data_dir):
    dm = _datamodule(tiny_data_dir, num_workers=1, prefetch_factor=4, sharing_strategy=None)
    dm.setup("fit")
    assert dm.train_dataloader().prefetch_factor == 4 and dm.test_dataloader().prefetch_factor == 4
    plain = _datamodule(tiny_data_dir, num_workers=0, prefetch_factor=4)  # no workers: nothing to prefetch
    plain.setup("fit")
    assert plain.train_dataloader().prefetch_factor is None
    with pytest.raises(UserError, match=r"dataset.prefetch_factor=0: use a whole number >= 1"):
        _datamodule(tiny_data_dir, prefetch_factor=0)
