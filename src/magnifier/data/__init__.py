"""Data: dataset readers, joint image + label-map transforms, the identity sampler, the data module.

The names below load on first use (PEP 562), so that
``magnifier.data.files`` can be imported without Lightning and torch (the parser's worker
processes start in a fraction of a second that way).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ReIDDataModule": ".datamodule",
    "ImageRecord": ".datasets",
    "ReIDData": ".datasets",
    "load_dataset": ".datasets",
}

__all__ = ["ImageRecord", "ReIDData", "ReIDDataModule", "load_dataset"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
