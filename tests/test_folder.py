"""A user's own dataset: Market-style folders or a CSV, with and without camera ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from magnifier.data import load_dataset
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
