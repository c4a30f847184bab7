"""MSMT17 (Wei et al., CVPR 2018), read from its official list files.

V1 (``MSMT17_V1/``) keeps images in ``train/`` and ``test/``, V2 (``MSMT17_V2/``) in
``mask_train_v2/`` and ``mask_test_v2/``; both ship ``list_train.txt``, ``list_val.txt``,
``list_query.txt`` and ``list_gallery.txt`` with lines ``<pid folder>/<file>.jpg <pid>``. The
camera is the file name's third underscore field, 1-based (``0000_000_01_0303morning_0015_0.jpg``
is camera 1). The training set is train + val (the standard protocol: 32,621 images / 1,041 ids);
query 11,659 and gallery 82,161 images keep their test-set pids. Label maps, when present, mirror
the image tree under ``masks/``: ``masks/<images folder>/<pid folder>/<stem>.png``.
"""

from __future__ import annotations

from pathlib import Path

from magnifier.errors import UserError

from .base import ImageRecord, ReIDData, find_mask, names_counted_from_one, relabel

VERSIONS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}
LISTS = {"train": ("list_train.txt", "list_val.txt"), "query": ("list_query.txt",), "gallery": ("list_gallery.txt",)}


def _find(root: Path) -> tuple[Path, tuple[str, str]]:
    """The dataset folder (``root`` or its V1/V2 child) and its (train, test) image folders."""
    for candidate in (root, *(root / name for name in VERSIONS)):
        for train_dir, test_dir in VERSIONS.values():
            if (candidate / "list_train.txt").is_file() and (candidate / train_dir).is_dir():
                return candidate, (train_dir, test_dir)
    raise UserError(
        f"dataset 'msmt17': no MSMT17 found in {root}; expected MSMT17_V1/ (train/, test/) or MSMT17_V2/ "
        "(mask_train_v2/, mask_test_v2/) with list_train.txt, list_val.txt, list_query.txt, list_gallery.txt; "
        "point elsewhere with dataset.root=/path/to/data or the MAGNIFIER_DATA environment variable"
    )


def _read_list(dataset_dir: Path, list_name: str, images_dir: str) -> list[ImageRecord]:
    list_path = dataset_dir / list_name
    if not list_path.is_file():
        raise UserError(f"dataset 'msmt17': {list_path} is missing; the official release has it beside the image folders")
    records = []
    for lineno, line in enumerate(list_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise UserError(f"{list_path}:{lineno}: expected '<folder>/<file>.jpg <pid>', got {line.strip()!r}")
        rel, pid = parts[0], int(parts[1])
        image = dataset_dir / images_dir / rel
        if not image.is_file():
            raise UserError(f"{list_path}:{lineno}: image {image} does not exist")
        fields = Path(rel).name.split("_")
        if len(fields) < 3 or not fields[2].isdigit():
            raise UserError(f"{list_path}:{lineno}: file name {Path(rel).name} has no camera field (like 0000_000_01_...)")
        records.append(ImageRecord(str(image), pid, int(fields[2]) - 1, find_mask(dataset_dir, image)))
    return records


def read_msmt17(root: str | Path) -> ReIDData:
    """Read MSMT17 V1 or V2 from ``root`` (the dataset folder or its parent)."""
    dataset_dir, (train_dir, test_dir) = _find(Path(root).expanduser())
    data = ReIDData("msmt17", str(dataset_dir))
    train = [r for name in LISTS["train"] for r in _read_list(dataset_dir, name, train_dir)]
    data.train = relabel(train)
    data.query = _read_list(dataset_dir, LISTS["query"][0], test_dir)
    data.gallery = _read_list(dataset_dir, LISTS["gallery"][0], test_dir)
    data.camera_names = names_counted_from_one(data.query + data.gallery)
    return data
