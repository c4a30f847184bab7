"""A folder dataset whose CSV names no cameras says so in the summary printed at set-up: its
query/gallery ranking does not follow the cross-camera protocol (issue 13)."""

from __future__ import annotations

from pathlib import Path

from magnifier.data import load_dataset
from magnifier.data.datasets import combine_train


def _csv_dataset(root: Path, header: str, rows: list[str]) -> None:
    for name in ("a", "b", "c", "d", "e"):
        path = root / "imgs" / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    (root / "list.csv").write_text(header + "\n" + "\n".join(rows) + "\n")


def test_csv_without_a_camera_column_warns_in_the_summary(tmp_path):
    _csv_dataset(tmp_path, "path,pid,split", ["imgs/a.jpg,1,train", "imgs/b.jpg,1,train", "imgs/c.jpg,2,query",
                                              "imgs/d.jpg,2,gallery", "imgs/e.jpg,3,gallery"])
    data = load_dataset("folder", tmp_path, csv="list.csv")
    assert not data.cameras_known
    warning = data.camera_warning
    assert warning.startswith(f"warning: {tmp_path / 'list.csv'} has no camid column")
    assert "not comparable with published numbers" in warning and "add a camid column" in warning
    assert "\n" not in warning  # one line, to print beside the results table too
    assert data.summary().splitlines()[-1] == warning
    assert data.camera_names == {}  # the stand-in cameras 0 and 1 are nobody's names


def test_empty_camid_cells_of_query_or_gallery_are_counted(tmp_path):
    _csv_dataset(tmp_path, "path,pid,camid,split", ["imgs/a.jpg,1,,train", "imgs/b.jpg,1,4,train",
                                                    "imgs/c.jpg,2,0,query", "imgs/d.jpg,2,,gallery",
                                                    "imgs/e.jpg,3,3,gallery"])
    data = load_dataset("folder", tmp_path, csv="list.csv")
    assert data.camera_warning.startswith(f"warning: 1 of 3 query/gallery rows of {tmp_path / 'list.csv'} "
                                          "have an empty camid cell")
    assert "warning:" in data.summary()
    assert data.camera_names == {0: "0", 3: "3"}  # as the CSV writes them (0-based)


def test_cameras_known_means_no_warning(tmp_path):
    # Training rows without a camera do not change the query/gallery protocol.
    _csv_dataset(tmp_path, "path,pid,camid,split", ["imgs/a.jpg,1,,train", "imgs/b.jpg,1,4,train",
                                                    "imgs/c.jpg,2,0,query", "imgs/d.jpg,2,1,gallery",
                                                    "imgs/e.jpg,3,1,gallery"])
    data = load_dataset("folder", tmp_path, csv="list.csv")
    assert data.cameras_known and data.camera_warning is None
    assert "warning" not in data.summary()
    for rel in ["bounding_box_train/0012_c3_a.jpg", "query/0100_c1_q.jpg", "bounding_box_test/0100_c2_g.jpg"]:
        (tmp_path / "f" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "f" / rel).write_bytes(b"")
    folders = load_dataset("folder", tmp_path / "f")
    assert folders.cameras_known and "warning" not in folders.summary()


def test_warning_survives_training_on_several_datasets(tmp_path):
    _csv_dataset(tmp_path, "path,pid,split", ["imgs/a.jpg,1,train", "imgs/c.jpg,2,query", "imgs/d.jpg,2,gallery"])
    data = load_dataset("folder", tmp_path, csv="list.csv")
    combined = combine_train(data, ["folder"], tmp_path)
    assert combined.camera_warning and combined.summary().splitlines()[-1] == combined.camera_warning
