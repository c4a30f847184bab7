"""Readers for datasets in the Market-1501 folder layout.

``bounding_box_train/`` (training), ``query/`` and ``bounding_box_test/`` (gallery), one JPEG
per detected person whose name carries the identity and the camera. Part label maps, when
present, live in a parallel tree ``masks/<split>/<image stem>.png`` (or ``.npy``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from magnifier.errors import UserError

from .base import ImageRecord, ReIDData, find_dataset_dir, find_mask, names_counted_from_one, relabel

SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class MarketStyleSpec:
    """How one dataset names its files.

    ``pattern`` captures the pid (group 1, may be -1 for junk) and the 1-based camera (group 2).
    """

    name: str
    official_names: tuple[str, ...]
    pattern: str
    example: str


MARKET = MarketStyleSpec(
    "market", ("Market-1501-v15.09.15", "Market-1501"), r"^(-?\d+)_c(\d)s\d_\d+_\d+", "0002_c1s1_000451_03.jpg"
)
DUKE = MarketStyleSpec("duke", ("DukeMTMC-reID",), r"^(\d+)_c(\d)_f\d+", "0001_c2_f0046182.jpg")
# Occluded-Duke (Miao et al., ICCV 2019): DukeMTMC-reID's naming, occluded queries.
OCCLUDED_DUKE = MarketStyleSpec("occluded_duke", ("Occluded_Duke",), DUKE.pattern, DUKE.example)
# CUHK03-NP (Zhong et al.'s 767/700 split) in the Market layout, PNG images like 0001_c1_1.png.
CUHK03_LABELED = MarketStyleSpec("cuhk03_labeled", ("cuhk03-np/labeled", "labeled"), r"^(\d+)_c(\d)_\d+", "0001_c1_1.png")
CUHK03_DETECTED = MarketStyleSpec("cuhk03_detected", ("cuhk03-np/detected", "detected"), r"^(\d+)_c(\d)_\d+", "0001_c1_1.png")
SYNTHETIC = MarketStyleSpec("synthetic", ("synthetic",), MARKET.pattern, MARKET.example)


def _layout_hint(spec: MarketStyleSpec) -> str:
    return (
        f"expected {'/, '.join(SPLIT_DIRS.values())}/ with images named like {spec.example}; "
        "point elsewhere with dataset.root=/path/to/data or the MAGNIFIER_DATA environment variable"
    )


def _read_split(spec: MarketStyleSpec, dataset_dir: Path, split: str) -> list[ImageRecord]:
    folder = dataset_dir / SPLIT_DIRS[split]
    regex = re.compile(spec.pattern)
    records, unmatched = [], []
    for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        m = regex.match(image.name)
        if m is None:
            unmatched.append(image.name)
            continue
        pid, cam = int(m.group(1)), int(m.group(2))
        if pid == -1:  # Market-1501 junk boxes are not part of the protocol
            continue
        if split == "train" and pid == 0:  # distractors belong to the gallery only
            continue
        records.append(ImageRecord(str(image), pid, cam - 1, find_mask(dataset_dir, image)))
    if unmatched:
        # The official releases have no such images: a stray file means a wrong folder or a
        # renamed copy, and silently dropping it would change the counts papers compare.
        raise UserError(
            f"dataset '{spec.name}': {len(unmatched)} image(s) in {folder} do not match the pattern "
            f"{spec.pattern!r} (first: {unmatched[0]}; expected names like {spec.example}); move them out of the folder"
        )
    return records


def read_market_style(spec: MarketStyleSpec, root: str | Path) -> ReIDData:
    """Read a Market-layout dataset from ``root`` (the dataset folder or its parent)."""
    dataset_dir = find_dataset_dir(root, spec.official_names)
    for split, sub in SPLIT_DIRS.items():
        folder = dataset_dir / sub
        if not folder.is_dir() or not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
            state = "is empty" if folder.is_dir() else "is missing"
            raise UserError(f"dataset '{spec.name}': {folder} {state}; {_layout_hint(spec)}")
    data = ReIDData(spec.name, str(dataset_dir))
    data.train = relabel(_read_split(spec, dataset_dir, "train"))
    data.query = _read_split(spec, dataset_dir, "query")
    data.gallery = _read_split(spec, dataset_dir, "gallery")
    data.camera_names = names_counted_from_one(data.query + data.gallery)
    if not data.train:
        raise UserError(f"dataset '{spec.name}': no usable training images in {dataset_dir / SPLIT_DIRS['train']}; {_layout_hint(spec)}")
    return data
