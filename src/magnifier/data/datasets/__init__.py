"""Dataset readers by Hydra config name; each returns a :class:`ReIDData`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from magnifier.errors import UserError

from .base import ImageRecord, ReIDData, relabel
from .folder import read_folder
from .msmt17 import read_msmt17
from .market import (
    CUHK03_DETECTED,
    CUHK03_LABELED,
    DUKE,
    MARKET,
    OCCLUDED_DUKE,
    SYNTHETIC,
    MarketStyleSpec,
    read_market_style,
)

_SPECS: dict[str, MarketStyleSpec] = {s.name: s for s in (MARKET, DUKE, OCCLUDED_DUKE, CUHK03_LABELED, CUHK03_DETECTED, SYNTHETIC)}


def load_dataset(name: str, root: str | Path, **options) -> ReIDData:
    """Read dataset ``name`` (its ``conf/dataset/`` name) from ``root``; ``options`` go to readers
    that take some (``folder``: ``csv``)."""
    if name == "folder":
        return read_folder(root, **options)
    if options:
        raise UserError(f"dataset '{name}' takes no options, got {sorted(options)}")
    if name == "msmt17":
        return read_msmt17(root)
    if name not in _SPECS:
        raise UserError(f"unknown dataset '{name}'; known: {', '.join(sorted([*_SPECS, 'msmt17', 'folder']))}")
    return read_market_style(_SPECS[name], root)


def combine_train(data: ReIDData, names: list[str], root: str | Path) -> ReIDData:
    """Replace ``data.train`` with the training splits of ``names`` (each read from ``root``),
    training pids offset per dataset so that identities of different datasets never collide.

    Query and gallery stay those of ``data`` (the dataset evaluated on).
    """
    train: list[ImageRecord] = []
    pid_offset = cam_offset = 0
    for name in names:
        part = data if name == data.name else load_dataset(name, root)
        for r in part.train:  # already relabelled 0..N-1 within its dataset
            train.append(replace(r, pid=r.pid + pid_offset, camid=r.camid + cam_offset))
        pid_offset += part.num_train_pids
        cam_offset += max(r.camid for r in part.train) + 1
    data.train = train
    data.name = f"{data.name} (train: {'+'.join(names)})"
    return data


__all__ = ["ImageRecord", "ReIDData", "combine_train", "load_dataset", "relabel"]
