"""MSMT17 read from its list files: V1 and V2 layouts, train + val, cameras, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from magnifier.data import load_dataset
from magnifier.errors import UserError


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # the index never decodes images


def build_msmt17(root: Path, version: str = "MSMT17_V1") -> Path:
    """A small MSMT17 tree with the real naming: 3 train ids (one only in val), 2 test ids."""
    train_dir, test_dir = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}[version]
    d = root / version
    lists = {
        "list_train.txt": [("0000/0000_000_01_0303morning_0015_0.jpg", 0), ("0000/0000_001_05_0303noon_0020_1.jpg", 0),
                           ("0005/0005_010_15_0303afternoon_0100_0.jpg", 5)],
        "list_val.txt": [("0005/0005_011_02_0303morning_0200_0.jpg", 5), ("0009/0009_000_03_0303noon_0001_0.jpg", 9)],
        "list_query.txt": [("0002/0002_000_07_0113morning_0001_0.jpg", 2), ("0003/0003_004_01_0113noon_0001_0.jpg", 3)],
        "list_gallery.txt": [("0002/0002_001_02_0113morning_0002_0.jpg", 2), ("0003/0003_005_09_0113noon_0002_0.jpg", 3),
                             ("0003/0003_006_10_0113noon_0003_0.jpg", 3)],
    }
    for name, rows in lists.items():
        folder = train_dir if name in ("list_train.txt", "list_val.txt") else test_dir
        for rel, _ in rows:
            _touch(d / folder / rel)
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text("".join(f"{rel} {pid}\n" for rel, pid in rows))
    _touch(d / "masks" / train_dir / "0000" / "0000_000_01_0303morning_0015_0.png")
    return d


@pytest.mark.parametrize("version", ["MSMT17_V1", "MSMT17_V2"])
def test_counts_cameras_relabelling_and_train_plus_val(tmp_path, version):
    d = build_msmt17(tmp_path, version)
    for root in (tmp_path, d):  # the parent or the dataset folder itself
        data = load_dataset("msmt17", root)
        assert (len(data.train), len(data.query), len(data.gallery)) == (5, 2, 3)
        assert data.num_train_pids == 3 and sorted({r.pid for r in data.train}) == [0, 1, 2]
        assert sorted({r.original_pid for r in data.train}) == [0, 5, 9]
        assert [r.camid for r in data.train] == [0, 4, 14, 1, 2]  # third field, 1-based in the name
        assert [r.pid for r in data.query] == [2, 3] and [r.camid for r in data.query] == [6, 0]
        assert [r.camid for r in data.gallery] == [1, 8, 9]
        assert data.train[0].mask_path and data.train[0].mask_path.endswith("0000_000_01_0303morning_0015_0.png")
        assert data.train[1].mask_path is None


def test_list_naming_a_missing_image_stops_with_the_line_number(tmp_path):
    d = build_msmt17(tmp_path)
    with open(d / "list_gallery.txt", "a") as f:
        f.write("0004/0004_000_01_0113morning_0009_0.jpg 4\n")
    with pytest.raises(UserError, match=r"list_gallery.txt:4: image .*0004_000_01_0113morning_0009_0.jpg does not exist"):
        load_dataset("msmt17", tmp_path)
    (d / "list_gallery.txt").write_text("just-one-field\n")
    with pytest.raises(UserError, match=r"list_gallery.txt:1: expected"):
        load_dataset("msmt17", tmp_path)


def test_missing_dataset_names_the_layout(tmp_path):
    with pytest.raises(UserError, match="no MSMT17 found in .*MSMT17_V1/ .*list_train.txt.*MAGNIFIER_DATA"):
        load_dataset("msmt17", tmp_path)


def test_records_paths_npy_maps_blank_lines_and_the_camera_field(tmp_path):
    d = build_msmt17(tmp_path)
    _touch(d / "masks" / "train" / "0005" / "0005_010_15_0303afternoon_0100_0.npy")
    data = load_dataset("msmt17", tmp_path)
    assert (data.name, data.root) == ("msmt17", str(d))
    assert data.train[0].path == str(d / "train/0000/0000_000_01_0303morning_0015_0.jpg")
    assert data.gallery[-1].path == str(d / "test/0003/0003_006_10_0113noon_0003_0.jpg")
    assert data.train[2].mask_path == str(d / "masks/train/0005/0005_010_15_0303afternoon_0100_0.npy")
    # A blank line inside a list is skipped, not the end of the list.
    _touch(d / "test" / "0004" / "0004_000_02_0113noon_0001_0.jpg")
    with open(d / "list_gallery.txt", "a") as f:
        f.write("\n0004/0004_000_02_0113noon_0001_0.jpg 4\n")
    gallery = load_dataset("msmt17", tmp_path).gallery
    assert [(r.pid, r.camid) for r in gallery] == [(2, 1), (3, 8), (3, 9), (4, 1)]
    _touch(d / "test" / "0004" / "0004_x.jpg")
    with open(d / "list_gallery.txt", "a") as f:
        f.write("0004/0004_x.jpg 4\n")
    with pytest.raises(UserError, match=r"list_gallery.txt:6: file name 0004_x.jpg has no camera field"):
        load_dataset("msmt17", tmp_path)
