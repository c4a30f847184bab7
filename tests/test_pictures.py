"""Ranked-list pictures a new user can read: the dataset's camera numbers, ranks that skip the
images the protocol ignores, and a legend of frame and part colours (issue 13)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from magnifier.data import load_dataset
from magnifier.evaluation import evaluate_rank
from magnifier.evaluation.visualize import (JUNK, MATCH, PART_COLORS, QUERY, WRONG, camera_label, caption_lines,
                                            legend_rows, ranked_list_image, top_k)
from magnifier.parts import PART_NAMES


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # the index never decodes images


def _image(path: Path, colour, size=(16, 32)) -> str:
    Image.new("RGB", size, colour).save(path)
    return str(path)


# Query: id 5 on camera 0. Gallery, closest first: g0 junk (id 5, camera 0), g1 the only true
# match (id 5, camera 1), g2 wrong, g3 junk again, g4 wrong.
_DIST = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
_G_PIDS = np.array([5, 5, 7, 5, 8])
_G_CAMS = np.array([0, 1, 1, 0, 2])


def test_ranks_skip_the_ignored_images_as_the_metric_does():
    items = top_k(_DIST, _G_PIDS, _G_CAMS, 5, 0, [f"g{i}" for i in range(5)], k=5)
    assert [i.status for i in items] == ["junk", "match", "wrong", "junk", "wrong"]
    assert [i.rank for i in items] == [None, 1, 2, None, 3]
    # The metric agrees: AP 100 with the first true match at rank 1, not at the 2nd place drawn.
    result = evaluate_rank(_DIST[None], np.array([5]), _G_PIDS, np.array([0]), _G_CAMS, max_rank=3, per_query=True)
    assert result["per_query"]["first_rank"][0] == items[1].rank == 1
    assert result["mAP"] == 1.0
    assert [caption_lines(i)[0] for i in items] == ["ignored 0.10", "rank 1  0.20", "rank 2  0.30", "ignored 0.40",
                                                     "rank 3  0.50"]


def test_captions_show_the_camera_as_the_file_name_says(tmp_path):
    root = tmp_path / "Market-1501-v15.09.15"
    for rel in ["bounding_box_train/0001_c1s1_000001_01.jpg", "query/0195_c1s1_000101_01.jpg",
                "bounding_box_test/0195_c3s1_000151_01.jpg", "bounding_box_test/0195_c1s1_000201_01.jpg"]:
        _touch(root / rel)
    data = load_dataset("market", tmp_path)
    names = data.camera_names
    assert names == {0: "1", 2: "3"}
    q = data.query[0]
    g_pids, g_cams = np.array([r.pid for r in data.gallery]), np.array([r.camid for r in data.gallery])
    paths = [r.path for r in data.gallery]
    # The gallery is sorted by file name: 0195_c1... (junk for this query), then 0195_c3...
    items = top_k(np.array([0.2, 0.1]), g_pids, g_cams, q.pid, q.camid, paths, camera_names=names)
    assert [Path(i.path).name[:7] for i in items] == ["0195_c3", "0195_c1"]
    assert caption_lines(items[0]) == ["rank 1  0.10", "cam 3"]
    assert caption_lines(items[1]) == ["ignored 0.20", "(same cam 1)"]
    assert camera_label(q.camid, names) == "cam 1"
    assert camera_label(4, names) == "cam ?"  # an index the dataset did not name
    # Callers that pass no names keep the old one-line captions.
    assert caption_lines(top_k(np.array([0.2, 0.1]), g_pids, g_cams, q.pid, q.camid, paths)[0]) == ["rank 1  0.10"]


def test_msmt17_and_folder_cameras_are_named_by_their_files(tmp_path):
    from tests.test_msmt17 import build_msmt17

    build_msmt17(tmp_path / "m")
    assert load_dataset("msmt17", tmp_path / "m").camera_names == {6: "7", 0: "1", 1: "2", 8: "9", 9: "10"}
    for rel in ["bounding_box_train/0012_c3_a.jpg", "query/0100_c11_q.jpg", "bounding_box_test/0100_c2_g.jpg"]:
        _touch(tmp_path / "f" / rel)
    assert load_dataset("folder", tmp_path / "f").camera_names == {10: "11", 1: "2"}


def test_legend_names_every_frame_and_part_colour():
    frames, parts = legend_rows(with_parts=True)
    assert [(e.text, e.colour) for e in frames] == [
        ("query", QUERY), ("true match", MATCH), ("wrong id", WRONG), ("ignored: same id and camera", JUNK)]
    assert all(e.style == "frame" for e in frames) and all(e.style == "fill" for e in parts)
    assert [e.text for e in parts] == [n.replace("_", " ") for n in PART_NAMES]
    assert [e.colour for e in parts] == [tuple(int(c) for c in rgb) for rgb in PART_COLORS]
    assert legend_rows(with_parts=False) == [frames]  # no part map drawn, no part colours


def test_saved_picture_carries_the_legend(tmp_path):
    query = _image(tmp_path / "q.png", (0, 0, 255))
    items = top_k(_DIST, _G_PIDS, _G_CAMS, 5, 0, [_image(tmp_path / f"g{i}.png", (200, 200, 0)) for i in range(5)],
                  camera_names={0: "1", 1: "2", 2: "3"})
    parts = np.arange(8).repeat(2)[:, None].repeat(4, axis=1)  # every part, top to bottom
    plain = ranked_list_image(query, items, parts, title="q", cell=(20, 40))
    ranked_list_image(query, items, parts, title="q", cell=(20, 40), legend=True).save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as im:
        saved = np.asarray(im.convert("RGB"))
    assert saved.shape[0] > plain.size[1] and saved.shape[1] >= plain.size[0]
    below = saved[plain.size[1]:].reshape(-1, 3)
    seen = {tuple(int(c) for c in px) for px in below}
    for colour in (QUERY, MATCH, WRONG, JUNK, *(tuple(int(c) for c in rgb) for rgb in PART_COLORS)):
        assert colour in seen, colour


def test_legend_wraps_within_the_picture_width():
    from magnifier.evaluation.visualize import _legend_layout

    rows = legend_rows(with_parts=True)
    placed, height = _legend_layout(rows, 10_000, lambda text: 6 * len(text))
    assert [y for _, _, y in placed] == [0] * 4 + [14] * 8 and height == 28  # parts start a new line
    placed, height = _legend_layout(rows, 200, lambda text: 6 * len(text))
    assert all(x + 16 + 6 * len(e.text) <= 200 for e, x, _ in placed) and height > 28
