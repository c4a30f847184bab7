"""A user's own data: Market-1501-style folders and names, or a CSV of ``path,pid,camid,split``.

Folders: ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` with names starting
``<pid>_c<camera>`` (1-based camera, e.g. ``0012_c3_anything.jpg``); pid -1 is junk, dropped.
CSV (``dataset.options.csv=file.csv``, relative to the dataset folder): a header line with at
least ``path,pid,split`` and optionally ``camid`` (0-based); ``split`` is train, query or
gallery; paths are relative to the dataset folder or absolute.

Without camera ids (no ``camid`` column, or an empty cell) every query image gets camera 0 and
every gallery image camera 1. The Market-1501 protocol then excludes nothing from a query's
gallery, so keep the same image (or a near copy from the same shot) out of both query and
gallery: otherwise it is found at rank 1 and the metrics are inflated. The dataset's
``camera_warning`` says so in one line (the set-up summary prints it).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from magnifier.errors import UserError

from .base import ImageRecord, ReIDData, find_mask, names_counted_from_one, relabel
from .market import IMAGE_SUFFIXES, SPLIT_DIRS

FOLDER_PATTERN = re.compile(r"^(-?\d+)_c(\d+)")
NO_CAMERA = {"query": 0, "gallery": 1, "train": 0}


def _from_folders(root: Path) -> ReIDData:
    data = ReIDData("folder", str(root))
    for split, sub in SPLIT_DIRS.items():
        folder = root / sub
        if not folder.is_dir():
            raise UserError(
                f"dataset 'folder': {folder} is missing; expected {', '.join(SPLIT_DIRS.values())} with names like "
                "0012_c3_0001.jpg, or a CSV given as dataset.options.csv=file.csv (columns path,pid,camid,split)"
            )
        records = []
        for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            m = FOLDER_PATTERN.match(image.name)
            if m is None:
                raise UserError(f"dataset 'folder': {image} does not match '<pid>_c<camera>...' (e.g. 0012_c3_0001.jpg)")
            pid, cam = int(m.group(1)), int(m.group(2))
            if pid == -1:
                continue
            records.append(ImageRecord(str(image), pid, cam - 1, find_mask(root, image)))
        setattr(data, split, records)
    data.camera_names = names_counted_from_one(data.query + data.gallery)
    return data


def _camera_warning(csv_path: Path, has_column: bool, unknown: int, total: int) -> str | None:
    """The one-line warning for ``unknown`` of ``total`` query/gallery rows without a camera, or
    None when all have one (training rows do not matter: the protocol is query vs gallery)."""
    if not unknown:
        return None
    if has_column:
        what = f"{unknown} of {total} query/gallery rows of {csv_path} have an empty camid cell"
        images, fix = "such query image gets camera 0 and each such gallery image", "fill in every query and gallery camid"
    else:
        what, fix = f"{csv_path} has no camid column", "add a camid column (each image's 0-based camera)"
        images = "query image gets camera 0 and every gallery image"
    return (f"warning: {what}: every {images} camera 1, so no same-camera "
            "gallery image is left out of a query's ranking: the ranking does not follow the cross-camera protocol "
            f"and rank-1/mAP are not comparable with published numbers; {fix}")


def _from_csv(root: Path, csv_path: Path) -> ReIDData:
    if not csv_path.is_file():
        raise UserError(f"dataset.options.csv={csv_path}: no such file")
    data = ReIDData("folder", str(root))
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "pid", "split"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{csv_path}:1: the header needs columns path,pid,split (and optionally camid); missing {sorted(missing)}")
        has_column = "camid" in (reader.fieldnames or [])
        unknown = 0  # query/gallery rows without a camera
        for row in reader:
            lineno = reader.line_num
            split = (row["split"] or "").strip()
            if split not in ("train", "query", "gallery"):
                raise UserError(f"{csv_path}:{lineno}: split must be train, query or gallery, got {split!r}")
            path = Path(row["path"].strip())
            path = path if path.is_absolute() else root / path
            if not path.is_file():
                raise UserError(f"{csv_path}:{lineno}: image {path} does not exist")
            try:
                pid = int(row["pid"])
                cam = (row.get("camid") or "").strip()
                camid = int(cam) if cam else NO_CAMERA[split]
            except ValueError:
                raise UserError(f"{csv_path}:{lineno}: pid and camid must be integers") from None
            if split != "train" and cam:
                data.camera_names[camid] = str(camid)  # the CSV's own (0-based) numbering
            unknown += split != "train" and not cam
            getattr(data, split).append(ImageRecord(str(path), pid, camid, find_mask(root, path)))
    data.camera_warning = _camera_warning(csv_path, has_column, unknown, len(data.query) + len(data.gallery))
    return data


def read_folder(root: str | Path, csv: str | None = None) -> ReIDData:
    """Read a user's dataset from ``root`` (folders) or from ``csv`` (relative to ``root``)."""
    root = Path(root).expanduser()
    if csv:
        csv_path = Path(csv).expanduser()
        data = _from_csv(root, csv_path if csv_path.is_absolute() else root / csv_path)
    else:
        data = _from_folders(root)
    if not data.train:
        raise UserError(f"dataset 'folder' in {root}: no training images")
    data.train = relabel(data.train)
    return data
