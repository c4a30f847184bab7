"""Market-layout readers on fixtures with the real naming: junk, distractors, camera base, relabelling."""

from __future__ import annotations

from pathlib import Path

import pytest

from magnifier.data import load_dataset


def _tree(root: Path, files: dict[str, list[str]]) -> Path:
    for split, names in files.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            (folder / name).write_bytes(b"")
    return root


def test_market_drops_junk_keeps_distractors_in_the_gallery(tmp_path):
    _tree(tmp_path / "Market-1501-v15.09.15", {
        # junk and distractor names sort first: each is skipped and the rest of the folder still read
        "bounding_box_train": ["-1_c1s1_000001_00.jpg", "0000_c1s1_000002_00.jpg", "0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c6s3_085667_02.jpg", "Thumbs.db"],
        "query": ["0001_c1s1_001051_00.jpg", "0003_c3s3_064744_00.jpg"],
        "bounding_box_test": ["-1_c1s1_000401_03.jpg", "0000_c1s1_000151_01.jpg", "0001_c2s1_000301_01.jpg",
                              "0003_c5s3_065187_02.jpg"],
    })
    data = load_dataset("market", tmp_path)
    assert [(r.pid, r.camid) for r in data.train] == [(0, 0), (0, 1), (1, 5)]  # relabelled, 0-based cameras
    assert [r.original_pid for r in data.train] == [2, 2, 7]
    assert [(r.pid, r.camid) for r in data.query] == [(1, 0), (3, 2)]
    assert [(r.pid, r.camid) for r in data.gallery] == [(0, 0), (1, 1), (3, 4)]  # junk (-1) dropped, distractor kept
    assert data.num_train_pids == 2 and data.num_train_cams == 3


@pytest.mark.parametrize("name,folder", [("duke", "DukeMTMC-reID"), ("occluded_duke", "Occluded_Duke")])
def test_duke_naming_and_eight_cameras(tmp_path, name, folder):
    _tree(tmp_path / folder, {
        "bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c8_f0000018.jpg", "0005_c5_f0051781.jpg"],
        "query": ["0005_c2_f0046985.jpg"],
        "bounding_box_test": ["0005_c1_f0043291.jpg", "0019_c7_f0101300.jpg"],
    })
    data = load_dataset(name, tmp_path)
    assert [(r.pid, r.camid) for r in data.train] == [(0, 1), (0, 7), (1, 4)]
    assert [(r.pid, r.camid) for r in data.query] == [(5, 1)]
    assert [(r.pid, r.camid) for r in data.gallery] == [(5, 0), (19, 6)]


@pytest.mark.parametrize("variant", ["labeled", "detected"])
def test_cuhk03_np_png_naming(tmp_path, variant):
    _tree(tmp_path / "cuhk03-np" / variant, {
        "bounding_box_train": ["0001_c1_1.png", "0001_c2_6.png", "0004_c1_2.png"],
        "query": ["1367_c1_2.png"],
        "bounding_box_test": ["1367_c2_7.png", "1400_c1_1.png"],
    })
    data = load_dataset(f"cuhk03_{variant}", tmp_path)
    assert [(r.pid, r.camid) for r in data.train] == [(0, 0), (0, 1), (1, 0)]
    assert [(r.pid, r.camid) for r in data.query] == [(1367, 0)]
    assert len(data.gallery) == 2


def test_training_on_several_datasets_keeps_identities_apart(tmp_path):
    from magnifier.data import ReIDDataModule

    _tree(tmp_path / "Market-1501-v15.09.15", {
        # junk and distractor names sort first: each is skipped and the rest of the folder still read
        "bounding_box_train": ["-1_c1s1_000001_00.jpg", "0000_c1s1_000002_00.jpg", "0002_c1s1_000451_03.jpg", "0007_c6s3_085667_02.jpg"],
        "query": ["0001_c1s1_001051_00.jpg"], "bounding_box_test": ["0001_c2s1_000301_01.jpg"],
    })
    _tree(tmp_path / "DukeMTMC-reID", {
        "bounding_box_train": ["0002_c2_f0046182.jpg", "0002_c8_f0000018.jpg", "0005_c5_f0051781.jpg"],
        "query": ["0005_c2_f0046985.jpg"], "bounding_box_test": ["0005_c1_f0043291.jpg"],
    })
    dm = ReIDDataModule(name="market", root=str(tmp_path), use_masks=False, train=["market", "duke"])
    data = dm.load()
    # Market's pid 2 and Duke's pid 2 are different people: 2 + 2 identities, 6 + 8 cameras.
    assert [r.pid for r in data.train] == [0, 1, 2, 2, 3]
    assert [r.camid for r in data.train] == [0, 5, 7, 13, 10]
    assert dm.num_classes == 4
    assert [r.pid for r in data.query] == [1]  # evaluation stays on the primary dataset


def test_a_file_name_off_the_pattern_is_reported_with_the_pattern(tmp_path):
    from magnifier.errors import UserError

    _tree(tmp_path / "Market-1501-v15.09.15", {
        # junk and distractor names sort first: each is skipped and the rest of the folder still read
        "bounding_box_train": ["-1_c1s1_000001_00.jpg", "0000_c1s1_000002_00.jpg", "0002_c1s1_000451_03.jpg", "copy of 0002.jpg"],
        "query": ["0001_c1s1_001051_00.jpg"], "bounding_box_test": ["0001_c2s1_000301_01.jpg"],
    })
    with pytest.raises(UserError, match=r"1 image\(s\) in .*bounding_box_train do not match the pattern .*copy of 0002.jpg.*0002_c1s1_000451_03.jpg"):
        load_dataset("market", tmp_path)
