"""Part parsers: 8-part label maps from raw person images (``python -m magnifier.parse``).

Backends (``backend=`` in ``conf/parse.yaml``):

``mediapipe`` (default)
    MediaPipe's pose landmark model (33 body landmarks and a person mask) run offline with
    LiteRT, parts drawn from the skeleton inside the person mask
    (:mod:`magnifier.parsers.mediapipe_pose`, :mod:`magnifier.parsers.geometry`).
``import``
    Existing maps of another parser (SCHP / JPPNet on LIP or ATR, Pascal-Person-Part), converted
    with the label schemes of :mod:`magnifier.data.masks` (:mod:`magnifier.parsers.imported`).

A new backend is one module with a class following :class:`~magnifier.parsers.base.PartParser`,
registered in :data:`BACKENDS`.
"""

from __future__ import annotations

import importlib

from magnifier.errors import UserError

from .base import ParseResult, PartParser

#: backend name -> "module:class"; imported only when chosen (LiteRT loads only for mediapipe).
BACKENDS = {
    "mediapipe": "magnifier.parsers.mediapipe_pose:MediaPipeParser",
    "import": "magnifier.parsers.imported:ImportParser",
}


def check_backend(name: str) -> None:
    """One line naming the known backends when ``name`` is not one of them."""
    if name not in BACKENDS:
        raise UserError(f"backend={name!r} is not a parser; known: {', '.join(BACKENDS)}")


def build_parser(name: str, **kwargs) -> PartParser:
    """The backend ``name`` built with ``kwargs`` (its constructor arguments)."""
    check_backend(name)
    module, cls = BACKENDS[name].split(":")
    try:
        return getattr(importlib.import_module(module), cls)(**kwargs)
    except (TypeError, ValueError) as err:  # an unknown or out-of-range setting of conf/parse.yaml
        raise UserError(f"backend={name}: {err} (settings: {name}.* in conf/parse.yaml)") from None


__all__ = ["BACKENDS", "ParseResult", "PartParser", "build_parser", "check_backend"]
