"""A user's own dataset: Market-style folders or a CSV, with and without camera ids; several
datasets trained on at once (``dataset.train=[...]``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from magnifier.data import load_dataset
from magnifier.data.datasets import combine_train
from magnifier.errors import UserError


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_market_style_folders(tmp_path):
    for rel in ["bounding_box_train/0012_c3_a.jpg", "bounding_box_train/0040_c11_b.png", "bounding_box_train/-1_c1_x.jpg",
                "query/0100_c1_q.jpg", "bounding_box_test/0100_c2_g.jpg", "bounding_box_test/0101_c2_h.jpg"]:
        _touch(tmp_path / rel)
    _touch(tmp_path / "masks" / "bounding_box_train" / "0012_c3_a.png")
    data = load_dataset("folder", tmp_path)
    assert [(r.pid, r.camid, r.original_pid) for r in data.train] == [(0, 2, 12), (1, 10, 40)]
    assert data.train[0].mask_path and data.train[1].mask_path is None
    assert [(r.pid, r.camid) for r in data.query] == [(100, 0)]
    assert [(r.pid, r.camid) for r in data.gallery] == [(100, 1), (101, 1)]
    _touch(tmp_path / "query" / "person7.jpg")
    with pytest.raises(UserError, match="person7.jpg does not match '<pid>_c<camera>"):
        load_dataset("folder", tmp_path)


def test_csv_with_and_without_camera_ids(tmp_path):
    for name in ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]:
        _touch(tmp_path / "imgs" / name)
    _touch(tmp_path / "masks" / "imgs" / "a.png")
    (tmp_path / "list.csv").write_text(
        "path,pid,camid,split\nimgs/a.jpg,7,0,train\nimgs/b.jpg,7,,train\nimgs/c.jpg,9,2,train\n"
        "imgs/d.jpg,5,,query\nimgs/e.jpg,5,,gallery\n"
    )
    data = load_dataset("folder", tmp_path, csv="list.csv")
    assert [(r.pid, r.camid) for r in data.train] == [(0, 0), (0, 0), (1, 2)]
    assert data.train[0].mask_path.endswith("masks/imgs/a.png")
    # No camera ids: queries get camera 0 and gallery images camera 1, so nothing is excluded.
    assert [(r.pid, r.camid) for r in data.query] == [(5, 0)] and [(r.pid, r.camid) for r in data.gallery] == [(5, 1)]


def test_csv_errors_name_the_line(tmp_path):
    _touch(tmp_path / "a.jpg")
    (tmp_path / "l.csv").write_text("path,pid,split\na.jpg,1,train\nb.jpg,2,train\n")
    with pytest.raises(UserError, match=r"l.csv:3: image .*b.jpg does not exist"):
        load_dataset("folder", tmp_path, csv="l.csv")
    (tmp_path / "l.csv").write_text("path,pid,split\na.jpg,1,validation\n")
    with pytest.raises(UserError, match=r"l.csv:2: split must be train, query or gallery"):
        load_dataset("folder", tmp_path, csv="l.csv")
    (tmp_path / "l.csv").write_text("file,pid\na.jpg,1\n")
    with pytest.raises(UserError, match=r"l.csv:1: the header needs columns path,pid,split"):
        load_dataset("folder", tmp_path, csv="l.csv")
    with pytest.raises(UserError, match="takes no options"):
        load_dataset("market", tmp_path, csv="l.csv")


def test_records_point_at_their_images(tmp_path):
    """Every record's path is the image file itself, for folders and for a CSV."""
    for rel in ["bounding_box_train/0012_c3_a.jpg", "query/0100_c1_q.jpg", "bounding_box_test/0100_c2_g.jpg"]:
        _touch(tmp_path / rel)
    data = load_dataset("folder", tmp_path)
    assert (data.name, data.root) == ("folder", str(tmp_path))  # the missing-map message names data.root
    assert [r.path for r in data.train + data.query + data.gallery] == [
        str(tmp_path / "bounding_box_train/0012_c3_a.jpg"), str(tmp_path / "query/0100_c1_q.jpg"),
        str(tmp_path / "bounding_box_test/0100_c2_g.jpg")]
    (tmp_path / "l.csv").write_text("path,pid,split\nbounding_box_train/0012_c3_a.jpg,3,train\n")
    data = load_dataset("folder", tmp_path, csv="l.csv")
    assert (data.name, data.root) == ("folder", str(tmp_path))
    assert [r.path for r in data.train] == [str(tmp_path / "bounding_box_train/0012_c3_a.jpg")]


def test_csv_masks_for_npy_maps_and_images_outside_the_folder(tmp_path):
    """A CSV image's label map is masks/<its path below the dataset folder>, PNG or .npy; an
    image outside the dataset folder (absolute path) is looked up as masks/<file name>."""
    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    _touch(root / "imgs" / "a.jpg")
    _touch(root / "masks" / "imgs" / "a.npy")
    _touch(outside / "b.jpg")
    _touch(root / "masks" / "b.png")
    (root / "l.csv").write_text(f"path,pid,split\nimgs/a.jpg,1,train\n{outside / 'b.jpg'},2,train\n")
    data = load_dataset("folder", root, csv="l.csv")
    assert [r.path for r in data.train] == [str(root / "imgs/a.jpg"), str(outside / "b.jpg")]
    assert [r.mask_path for r in data.train] == [str(root / "masks/imgs/a.npy"), str(root / "masks/b.png")]


def _market_style(folder: Path, train: list[str], probe: str) -> None:
    for name in train:
        _touch(folder / "bounding_box_train" / name)
    _touch(folder / "query" / probe)
    _touch(folder / "bounding_box_test" / probe)


def test_three_datasets_get_disjoint_ids_and_cameras(tmp_path):
    # market: pids 2, 7 on cameras 1 and 3 (0-based 0, 2); duke: pid 5 on camera 2;
    # the user's folder dataset (in the root itself): pids 1, 9 on camera 1.
    _market_style(tmp_path / "Market-1501-v15.09.15", ["0002_c1s1_000451_03.jpg", "0007_c3s1_000451_03.jpg"],
                  "0002_c2s1_000451_03.jpg")
    _market_style(tmp_path / "DukeMTMC-reID", ["0005_c2_f0046182.jpg"], "0005_c1_f0046182.jpg")
    _market_style(tmp_path, ["0001_c1_a.jpg", "0009_c1_b.jpg"], "0001_c2_q.jpg")
    data = load_dataset("market", tmp_path)
    query = list(data.query)
    combined = combine_train(data, ["market", "duke", "folder"], tmp_path)
    # Offsets accumulate: duke starts after market's 2 ids and 3 camera slots (max camid 2 + 1),
    # the folder after market + duke (3 ids; 3 + 2 camera slots).
    assert [(r.pid, r.camid) for r in combined.train] == [(0, 0), (1, 2), (2, 4), (3, 5), (4, 5)]
    assert [r.original_pid for r in combined.train] == [2, 7, 5, 1, 9]
    assert combined.query == query  # evaluated on the first dataset
    assert combined.name == "market (train: market+duke+folder)"
