"""Tests for the synthetic Market-1501-layout dataset generator."""

import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from magnifier.data import synthetic
from magnifier.data.synthetic import SPLITS, generate, is_complete, main

MARKET_RE = re.compile(r"^(\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")
SMALL = dict(num_ids=12, seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "market"
    summary = generate(root, processes=2, **SMALL)
    return root, summary


def _files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _parse(name: str):
    m = MARKET_RE.match(name)
    assert m, name
    return int(m.group(1)), int(m.group(2))


def _load(root, split, name):
    img = np.asarray(Image.open(root / split / name).convert("RGB"), np.float32)
    lab = Image.open(root / "masks" / split / (name[:-4] + ".png"))
    return img, lab


def _by_split(root):
    return {s: sorted(p.name for p in (root / s).glob("*.jpg")) for s in SPLITS}


def test_determinism(data, tmp_path):
    root, _ = data
    again = tmp_path / "again"
    generate(again, processes=1, **SMALL)  # process count must not change the bytes
    a, b = _files(root), _files(again)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a)
    other = tmp_path / "other"
    generate(other, processes=2, num_ids=12, seed=1)
    c = _files(other)
    shared = [k for k in a if k in c and k.endswith(".jpg")]
    assert a.keys() != c.keys() or any(a[k] != c[k] for k in shared)


def test_layout_and_names(data):
    root, summary = data
    files = _by_split(root)
    pids = {}
    for split, names in files.items():
        assert (root / split).is_dir() and names
        assert len(set(names)) == len(names)
        pids[split] = {_parse(n)[0] for n in names}
        for n in names:
            assert MARKET_RE.match(n).group(3) == "1"
    assert 0 not in pids["bounding_box_train"] and 0 not in pids["query"]
    assert 0 in pids["bounding_box_test"]
    test_pids = (pids["query"] | pids["bounding_box_test"]) - {0}
    assert pids["bounding_box_train"].isdisjoint(test_pids)
    assert pids["bounding_box_train"] == set(range(1, 7)) and test_pids == set(range(7, 13))
    gallery_cams = defaultdict(set)
    for n in files["bounding_box_test"]:
        pid, cam = _parse(n)
        gallery_cams[pid].add(cam)
    for n in files["query"]:  # every query has a valid cross-camera match
        pid, cam = _parse(n)
        assert gallery_cams[pid] - {cam}, n
    for split, c in summary["counts"].items():
        assert c["images"] == len(files[split])
    assert summary["counts"]["bounding_box_test"]["distractors"] >= 2


def test_labels(data):
    root, _ = data
    for split, names in _by_split(root).items():
        for n in names:
            img, lab = _load(root, split, n)
            assert lab.mode == "L" and lab.size == (img.shape[1], img.shape[0]) == (64, 128)
            lab = np.asarray(lab)
            assert lab.max() <= 7
            if split == "bounding_box_train":
                present = set(np.unique(lab).tolist())
                assert {0, 1, 2} <= present and present & {5, 6}, n


def test_occluded_queries_lose_body(data):
    root, summary = data
    occluded = (root / "occluded_queries.txt").read_text().split()
    assert len(occluded) == summary["occluded_queries"] > 0
    queries = _by_split(root)["query"]
    assert set(occluded) <= set(queries)
    assert len(occluded) == round(0.3 * len(queries))

    def body(split, name):
        return float((np.asarray(_load(root, split, name)[1]) > 0).mean())

    gallery = _by_split(root)["bounding_box_test"]
    occ_frac, ref_frac = [], []
    for q in occluded:  # compare with same id, same camera (same scale) unoccluded images
        pid, cam = _parse(q)
        refs = [body("bounding_box_test", g) for g in gallery if _parse(g) == (pid, cam)]
        occ_frac.append(body("query", q))
        ref_frac.append(np.mean(refs))
    ratio = np.array(occ_frac) / np.array(ref_frac)
    assert ratio.mean() < 0.85 and np.median(ratio) < 0.85
    clean = [body("query", q) for q in queries if q not in occluded]
    assert np.mean(occ_frac) < np.mean(clean)


def test_image_label_alignment(data):
    root, _ = data
    d_true, d_shift = [], []
    for n in _by_split(root)["bounding_box_train"]:
        img, lab = _load(root, "bounding_box_train", n)
        lab = np.asarray(lab) > 0
        shifted = np.roll(lab, 16, axis=1)

        def dist(mask):
            return np.linalg.norm(img[mask].mean(0) - img[~mask].mean(0))

        d_true.append(dist(lab))
        d_shift.append(dist(shifted))
    assert min(d_true) > 5
    assert np.mean(d_true) > 1.5 * np.mean(d_shift)


def test_twins(tmp_path):
    root = tmp_path / "twins"
    summary = generate(root, num_ids=12, twin_ratio=1.0, occluded_query_ratio=0.0, processes=2)
    twins = summary["twins"]
    assert len(twins) == 6 and json.loads((root / ".complete").read_text())["twins"] == twins
    assert {r for *_, r in twins} <= {"shoes", "hair", "bag"}
    part = {"shoes": 7, "hair": 1}
    files = [(s, n) for s, names in _by_split(root).items() for n in names]
    checked = 0
    for a, b, region in twins:
        if region not in part:
            continue
        per = {}
        for pid in (a, b):
            per[pid] = defaultdict(list)
            for s, n in files:
                if _parse(n)[0] == pid:
                    per[pid][_parse(n)[1]].append((s, n))
        for cam in set(per[a]) & set(per[b]):
            stats, colour, torso = {}, {}, {}
            for pid in (a, b):
                hist, reg, tor = [], [], []
                for s, n in per[pid][cam]:
                    img, lab = _load(root, s, n)
                    lab = np.asarray(lab)
                    hist.append(np.bincount(lab.ravel(), minlength=8) / lab.size)
                    reg.append(img[lab == part[region]].mean(0))
                    tor.append(img[lab == 2].mean(0))
                stats[pid], colour[pid], torso[pid] = (np.mean(x, 0) for x in (hist, reg, tor))
            assert np.abs(stats[a] - stats[b]).max() < 0.06  # same body, same camera
            region_diff = np.linalg.norm(colour[a] - colour[b])
            assert region_diff > 15 and region_diff > 2 * np.linalg.norm(torso[a] - torso[b])
            checked += 1
            break
    assert checked >= 1


def test_is_complete_and_regenerate(data, tmp_path):
    root, summary = data
    assert is_complete(root, **SMALL)
    assert is_complete(root, **SMALL, processes=1)
    assert not is_complete(root, num_ids=13)
    assert not is_complete(root, **{**SMALL, "seed": 5})
    assert not is_complete(tmp_path / "missing")
    with pytest.raises(TypeError):
        is_complete(root, bogus=1)
    # A stale/incomplete folder is cleaned: stray files in owned folders disappear.
    stale = tmp_path / "stale"
    generate(stale, num_ids=4, processes=1)
    (stale / "query" / "junk.jpg").write_bytes(b"x")
    (stale / ".complete").unlink()
    (stale / "keep.txt").write_text("not ours")
    generate(stale, num_ids=4, processes=1)
    assert not (stale / "query" / "junk.jpg").exists() and (stale / "keep.txt").exists()
    assert is_complete(stale, num_ids=4)


def test_cli(tmp_path, capsys):
    assert main([f"root={tmp_path / 'a'}", "num_ids=4", "processes=1"]) == 0
    out = capsys.readouterr().out
    assert "bounding_box_train" in out and "query" in out and str(tmp_path / "a") in out
    assert is_complete(tmp_path / "a", num_ids=4)
    assert main(["num_ids=4"]) == 2
    assert main([f"root={tmp_path / 'd'}", "num_cams=1"]) == 2  # validated before writing
    assert not (tmp_path / "d").exists()
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    cmd = [sys.executable, "-m", "magnifier.data.synthetic"]
    ok = subprocess.run(cmd + [f"root={tmp_path / 'b'}", "num_ids=8"], capture_output=True,
                        text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert is_complete(tmp_path / "b", num_ids=8)
    bad = subprocess.run(cmd + [f"root={tmp_path / 'c'}", "colour=red"], capture_output=True,
                         text=True, env=env)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "colour" in bad.stderr
    assert not (tmp_path / "c").exists()


def test_render_shapes():
    cam = synthetic._camera(0, 1)
    ident = synthetic._identity(synthetic._rng(0, 1, 1))
    rgb, lab, share = synthetic.render(ident, cam, synthetic._rng(1), 96, 48, occluded=True)
    assert rgb.shape == (96, 48, 3) and rgb.dtype == np.uint8
    assert lab.shape == (96, 48) and 0.2 <= share <= 0.45
