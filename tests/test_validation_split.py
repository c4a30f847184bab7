"""The validation split held out from the training identities (magnifier.data.datasets.holdout),
its loaders, and the rule that nothing that chooses reads the test split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from magnifier.data.datasets.base import ImageRecord, ReIDData, relabel
from magnifier.data.datasets.holdout import hold_out_validation, validation_count
from magnifier.errors import UserError

from .conftest import tiny_overrides


def _listing(cameras_per_id: dict[int, list[int]]) -> ReIDData:
    """A training split: identity pid (original) has cameras_per_id[pid][c] images in camera c."""
    train = []
    for pid, counts in cameras_per_id.items():
        for cam, n in enumerate(counts):
            train += [ImageRecord(f"/d/{pid:04d}_c{cam + 1}_{i}.jpg", pid, cam) for i in range(n)]
    return ReIDData("toy", "/d", train=relabel(train))


def test_a_count_or_a_fraction_of_the_training_identities():
    assert validation_count(5, 100) == 5
    assert validation_count(0.1, 751) == 75
    assert validation_count(0.001, 100) == 1  # at least one
    for bad in (0, -1, 1.5, "ten", True, 1.0 + 1e-9):
        with pytest.raises(UserError, match="dataset.val_identities"):
            validation_count(bad, 100)


def test_held_out_identities_leave_training_whole_and_split_like_market():
    # 20 identities over 3 cameras with 1 to 3 images each; pids 100 and 101 are seen by one
    # camera only, 102 by two cameras with one image each: none of them can validate.
    rng = np.random.default_rng(0)
    layout = {pid: [int(n) for n in rng.integers(1, 4, size=3)] for pid in range(1, 21)}
    layout.update({100: [4, 0, 0], 101: [0, 0, 2], 102: [1, 1, 0]})
    data = _listing(layout)
    before = {r.path: r for r in data.train}
    report = hold_out_validation(data, 6, seed=3, num_instances=4)

    val = data.val_query + data.val_gallery
    val_ids = {before[r.path].original_pid for r in val}
    assert len(val_ids) == report.identities == 6
    # By hand: an identity validates when it has two cameras and a camera with two images.
    cannot = sorted(pid for pid, counts in layout.items() if sum(n > 0 for n in counts) < 2 or max(counts) < 2)
    assert {100, 101, 102} <= set(cannot) and not val_ids & set(cannot) and sorted(report.skipped) == cannot
    # Whole identities: none of a validation identity's images is left in training.
    train_ids = {r.original_pid for r in data.train}
    assert not train_ids & val_ids and len(train_ids) == len(layout) - 6
    assert len(data.train) + len(val) == len(before)
    # Training pids are classes again: 0..N-1, the file's pid kept.
    assert sorted({r.pid for r in data.train}) == list(range(len(train_ids)))
    assert all(r.original_pid == before[r.path].original_pid for r in data.train)
    # The Market rule, worked by hand per identity and camera: one query in each camera with two
    # or more images, the rest gallery.
    for pid in val_ids:
        for cam, n in enumerate(layout[pid]):
            queries = [r for r in data.val_query if before[r.path].original_pid == pid and r.camid == cam]
            gallery = [r for r in data.val_gallery if before[r.path].original_pid == pid and r.camid == cam]
            assert (len(queries), len(gallery)) == ((1, n - 1) if n >= 2 else (0, n))
    # So every query has a true match in another camera, which the metric's same-camera rule keeps.
    for q in data.val_query:
        assert any(g.pid == q.pid and g.camid != q.camid for g in data.val_gallery)
    # Training identities with fewer than K images are named.
    counts = Counter(r.original_pid for r in data.train)
    assert report.short == sorted(pid for pid, n in counts.items() if n < 4)
    assert any("skipped" in line and "100, 101, 102" in line for line in data.val_notes)


def test_the_split_depends_on_the_seed_only():
    layout = {pid: [3, 2, 2] for pid in range(1, 41)}

    def split(seed):
        data = _listing(layout)
        hold_out_validation(data, 0.25, seed=seed)
        return [r.path for r in data.val_query], [r.path for r in data.val_gallery]

    assert split(0) == split(0)
    assert split(0) != split(1)
    query, gallery = split(0)
    assert len(query) == 10 * 3 and len(gallery) == 10 * 4


def test_asking_for_every_identity_is_one_line():
    with pytest.raises(UserError, match="leave some to train on"):
        hold_out_validation(_listing({pid: [2, 2] for pid in range(5)}), 5)


def test_summary_names_the_validation_split():
    data = _listing({pid: [2, 2] for pid in range(10)})
    hold_out_validation(data, 2)
    text = data.summary()
    assert "val query" in text and "val gallery" in text
    assert "validation: held out from training (2 identities, 8 images)" in text


def test_validation_loader_is_the_held_out_split_and_test_loader_the_test_split(tiny_data_dir):
    from magnifier.data import ReIDDataModule

    dm = ReIDDataModule(name="synthetic", root=str(tiny_data_dir), height=64, width=32, batch_size=8,
                        num_workers=0, val_identities=2)
    dm.setup("fit")
    data = dm.load()
    assert dm.has_validation and dm.num_classes == 6  # 8 training identities, 2 held out
    val_paths = [p for batch in dm.val_dataloader() for p in batch["path"]]
    test_paths = [p for batch in dm.test_dataloader() for p in batch["path"]]
    assert val_paths == [r.path for r in data.val_query + data.val_gallery]
    assert test_paths == [r.path for r in data.query + data.gallery]
    train_paths = {r.path for r in data.train}
    assert not set(val_paths) & set(test_paths) and not set(val_paths) & train_paths

    none = ReIDDataModule(name="synthetic", root=str(tiny_data_dir), height=64, width=32, batch_size=8,
                          num_workers=0, val_split="none")
    none.setup("fit")
    assert not none.has_validation and none.val_dataloader() == [] and none.num_classes == 8
    with pytest.raises(UserError, match="dataset.val_split"):
        ReIDDataModule(name="synthetic", root=str(tiny_data_dir), val_split="test")


# -- the end-to-end rule -------------------------------------------------------------------------
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def _train(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "magnifier.train", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def _val_rows(run_dir: Path) -> list[dict]:
    import csv

    (metrics,) = run_dir.glob("csv/**/metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("val/mAP")]
    return [{k: v for k, v in r.items() if k.startswith("val/") or k in ("epoch", "step")} for r in rows]


def _paint_test_split(data_dir: Path) -> None:
    """Every query and gallery image of the test split the same grey, in place."""
    from PIL import Image

    root = data_dir / "synthetic"
    for folder in ("query", "bounding_box_test"):
        for path in (root / folder).iterdir():
            with Image.open(path) as image:
                size = image.size
            Image.new("RGB", size, (128, 128, 128)).save(path)


def test_a_test_split_of_one_colour_changes_no_choice(tiny_data_dir, tmp_path):
    """Nothing that chooses reads the test split: with every test image painted one grey, the
    chosen checkpoint and every val/ figure of every epoch are the same; only test/ changes."""
    import shutil

    painted = tmp_path / "painted"
    shutil.copytree(tiny_data_dir, painted)
    _paint_test_split(painted)
    results = []
    for name, data in (("plain", tiny_data_dir), ("painted", painted)):
        logs = tmp_path / name
        args = tiny_overrides(data) + [f"paths.log_dir={logs}", "logger=csv", "trainer.max_epochs=4",
                                       "trainer.check_val_every_n_epoch=1", "+trainer.limit_train_batches=2",
                                       "dataset.val_identities=3", "~callbacks.progress_bar"]
        run = _train(args, tmp_path)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
        (run_dir,) = (logs / "train" / "runs").iterdir()
        result = json.loads((run_dir / "metrics.json").read_text())
        results.append((result, _val_rows(run_dir), run.stdout))
    (plain, plain_val, out), (grey, grey_val, _) = results
    assert len(plain_val) == 4 and plain_val == grey_val
    assert plain["val"] == grey["val"]
    assert plain["selected_by"] == grey["selected_by"] == "val/mAP"
    assert Path(plain["tested_checkpoint"]).name == Path(grey["tested_checkpoint"]).name
    assert Path(plain["tested_checkpoint"]).name.startswith("best-epoch")
    # The test split did change what was measured on it (the check can fail).
    assert plain["test"] != grey["test"]
    assert f"checkpoint: {plain['tested_checkpoint']} (selected by val/mAP" in out


def test_without_a_validation_split_the_final_weights_are_tested(tiny_data_dir, tmp_path):
    logs = tmp_path / "logs"
    args = tiny_overrides(tiny_data_dir) + [f"paths.log_dir={logs}", "logger=csv", "trainer.max_epochs=1",
                                            "+trainer.limit_train_batches=2", "dataset.val_split=none",
                                            "~callbacks.progress_bar"]
    run = _train(args, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    (run_dir,) = (logs / "train" / "runs").iterdir()
    result = json.loads((run_dir / "metrics.json").read_text())
    assert result["selected_by"] == "last" and result["val"] == {} and result["best_checkpoint"] is None
    assert result["tested_checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert not list((run_dir / "checkpoints").glob("best-*"))
    assert "validation: none (dataset.val_split=none)" in run.stdout
    assert "(selected by last: the final weights)" in run.stdout
    page = (run_dir / "report.html").read_text()
    assert "checkpoint selected by" in page and "last: the last (no validation split chooses)" in page


def test_a_run_ended_by_max_steps_validates_at_its_last_step(tiny_data_dir, tmp_path):
    logs = tmp_path / "logs"
    # Validation every 10 epochs, and the run stops at step 3 inside its first epoch.
    args = tiny_overrides(tiny_data_dir) + [f"paths.log_dir={logs}", "logger=csv", "++trainer.max_steps=3",
                                            "trainer.check_val_every_n_epoch=10", "dataset.batch_size=8",
                                            "~callbacks.progress_bar", "test=false"]
    run = _train(args, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    (run_dir,) = (logs / "train" / "runs").iterdir()
    (row,) = _val_rows(run_dir)
    assert int(row["step"]) == 2  # Lightning logs the step before the third update completes its count
    result = json.loads((run_dir / "metrics.json").read_text())
    assert "mAP" in result["val"] and result["selected_by"] == "val/mAP"


def test_choosing_on_the_test_split_is_refused(tiny_data_dir, tmp_path):
    base = tiny_overrides(tiny_data_dir) + [f"paths.log_dir={tmp_path}/logs", "logger=csv"]
    run = _train(base + ["optimized_metric=test/mAP"], tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "error: optimized_metric=test/mAP: a sweep must not choose on the test split; use optimized_metric=val/mAP "
        "(the held-out validation identities)")
    run = _train(base + ["callbacks.model_checkpoint.monitor=test/rank1"], tmp_path)
    assert run.returncode == 2 and "must not choose on the test split" in run.stderr.strip().splitlines()[-1]


def test_report_of_the_final_test_says_how_its_checkpoint_was_chosen_and_draws_ranked_lists(tiny_data_dir, tmp_path):
    logs = tmp_path / "logs"
    args = tiny_overrides(tiny_data_dir) + [f"paths.log_dir={logs}", "logger=csv", "trainer.max_epochs=1",
                                            "+trainer.limit_train_batches=2", "report.worst=2", "report.best=1",
                                            "~callbacks.progress_bar"]
    run = _train(args, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    (run_dir,) = (logs / "train" / "runs").iterdir()
    pictures = sorted(p.name.split("_")[0] for p in (run_dir / "ranked_lists").glob("*.png"))
    assert pictures == ["best01", "worst01", "worst02"]
    page = (run_dir / "report.html").read_text()
    assert "val/mAP: the best val/mAP on the validation split" in page
    assert "no ranked lists were drawn" not in page and page.count("data:image/png;base64,") >= 3
    groups = defaultdict(int)
    for name in pictures:
        groups[name[:4]] += 1
    assert groups == {"best": 1, "wors": 2}
