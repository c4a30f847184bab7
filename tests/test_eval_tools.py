"""Feature extraction (order, flip TTA) and ranked-list pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from magnifier.evaluation.features import extract_features, resolve_device
from magnifier.evaluation.visualize import (JUNK, MATCH, PART_COLORS, QUERY, WRONG, colorize_parts,
                                            ranked_list_image, top_k)


class _ColumnNet(torch.nn.Module):
    """Embedding = normalised per-column means of the first channel: sensitive to mirroring."""

    def forward(self, x):
        return F.normalize(x[:, 0].mean(dim=1), dim=1)


def _batches(images, order, batch=3):
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        yield {"image": images[idx], "pid": torch.tensor(idx) // 2, "camid": torch.tensor(idx) % 3,
               "is_query": torch.tensor(idx) < 4, "index": torch.tensor(idx),
               "path": [f"img{i}.jpg" for i in idx]}


def test_extract_features_orders_by_index_and_flips():
    torch.manual_seed(0)
    images = torch.rand(10, 3, 4, 6)
    order = [7, 2, 9, 0, 5, 1, 8, 3, 6, 4]  # the loader's order must not matter
    out = extract_features(_ColumnNet(), list(_batches(images, order)), flip=False, progress=False)
    np.testing.assert_array_equal(out["index"], np.arange(10))
    np.testing.assert_array_equal(out["pids"], np.arange(10) // 2)
    np.testing.assert_array_equal(out["is_query"], np.arange(10) < 4)
    assert list(out["paths"][:2]) == ["img0.jpg", "img1.jpg"]
    expected = F.normalize(images[:, 0].mean(dim=1), dim=1).numpy()
    np.testing.assert_allclose(out["features"], expected, atol=1e-6)

    flipped = extract_features(_ColumnNet(), list(_batches(images, order)), flip=True, progress=False)
    mirror = F.normalize(images.flip(3)[:, 0].mean(dim=1), dim=1)
    want = F.normalize(torch.from_numpy(expected) + mirror, dim=1).numpy()
    np.testing.assert_allclose(flipped["features"], want, atol=1e-6)
    assert not np.allclose(flipped["features"], expected, atol=1e-3)


def test_extract_features_empty_loader_and_devices():
    with pytest.raises(ValueError, match="no batches"):
        extract_features(_ColumnNet(), [], progress=False)
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="0 CUDA devices"):
            resolve_device("cuda")


def test_top_k_marks_matches_wrong_and_junk():
    d = np.array([0.5, 0.1, 0.3, 0.2, 0.3, 0.9])
    g_pids = np.array([1, 1, 2, 1, 3, 2])
    g_cams = np.array([0, 0, 1, 1, 0, 0])
    items = top_k(d, g_pids, g_cams, q_pid=1, q_camid=0, paths=[f"g{i}" for i in range(6)], k=4)
    # Order by distance, ties by gallery index: g1 (junk), g3 (match), g2 (wrong), g4 (wrong).
    assert [i.path for i in items] == ["g1", "g3", "g2", "g4"]
    assert [i.status for i in items] == ["junk", "match", "wrong", "wrong"]


def _image(path, colour, size=(16, 32)):
    Image.new("RGB", size, colour).save(path)
    return str(path)


def test_ranked_list_picture(tmp_path):
    query = _image(tmp_path / "q.png", (0, 0, 255))
    items = top_k(np.array([0.1, 0.2, 0.3]), np.array([1, 2, 1]), np.array([1, 0, 0]), 1, 0,
                  [_image(tmp_path / f"g{i}.png", (200, 200, 0)) for i in range(3)])
    parts = np.zeros((8, 4), dtype=np.int64)
    parts[:2] = 1  # head on top
    cell = (20, 40)
    pic = ranked_list_image(query, items, parts, title="q", cell=cell)
    tile_w, tile_h, header, gap = cell[0] + 8, cell[1] + 8, 16, 12
    assert pic.size == (2 * tile_w + gap + 3 * tile_w, header + tile_h + 14)
    px = np.asarray(pic)
    assert tuple(px[header + 1, 1]) == QUERY
    # The part map cell: head colour blended over the blue query at its top.
    head = px[header + 6, tile_w + 10]
    assert head[0] > 100 and head[1] > 80  # yellowish, not the pure blue query
    x0 = 2 * tile_w + gap
    frames = [tuple(px[header + 1, x0 + k * tile_w + 1]) for k in range(3)]
    assert frames == [MATCH, WRONG, JUNK]
    # The junk image is faded to grey; the others keep their colour.
    inner = [px[header + 20, x0 + k * tile_w + 10] for k in range(3)]
    assert inner[0][2] < 60 and inner[2][0] == inner[2][1] == inner[2][2]
    # Without a part map the row is one cell shorter; an unreadable file becomes a dark tile.
    items[0].path = str(tmp_path / "missing.jpg")
    pic = ranked_list_image(query, items, None, cell=cell)
    assert pic.size[0] == tile_w + gap + 3 * tile_w


def test_colorize_parts():
    labels = np.arange(8).reshape(2, 4)
    np.testing.assert_array_equal(colorize_parts(labels)[1, 3], PART_COLORS[7])
