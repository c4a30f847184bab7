"""``backend=import``: convert another parser's label maps into the 8 parts.

For users who already ran SCHP, JPPNet or a Pascal-Person-Part model: their maps, in a folder
that mirrors the images (``<source>/<image path below the image root>`` with the extension
``.png`` or ``.npy``), are remapped with the label schemes of :mod:`magnifier.data.masks`
(``scheme=lip|atr|pascal_person_part|eanet``) and brought to the image's size (nearest
neighbour, refusing a different aspect ratio), so that training reads plain 8-part maps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from magnifier.data.files import LabelMapError, match_label_map, read_label_map
from magnifier.data.masks import get_scheme
from magnifier.errors import UserError

from .base import ParseResult


class ImportParser:
    """Reads ``<source>/<rel>.png|.npy`` for the image ``<images_root>/<rel>.<ext>``.

    Args:
        source: folder of the other parser's maps, mirroring the image tree.
        scheme: their label set (a name of :data:`magnifier.data.masks.SCHEMES`).
        images_root: the folder the image paths are taken relative to (the dataset folder, or
            ``input=`` for a plain folder); an image outside it is looked up by its file name.
    """

    name = "import"

    def __init__(self, source: str, scheme: str = "lip", images_root: str = "."):
        if not source:
            raise UserError("backend=import needs import.source=<folder of the other parser's label maps>")
        self.source = Path(source).expanduser()
        if not self.source.is_dir():
            raise UserError(f"import.source={self.source} is not a folder")
        try:
            self.scheme = get_scheme(scheme)
        except ValueError as err:
            raise UserError(f"import.scheme={scheme!r}: {err}") from None
        self.images_root = Path(images_root)

    def source_map(self, image_path: str) -> Path:
        """The other parser's map of ``image_path`` (png first, then npy)."""
        image = Path(image_path)
        rel = image.relative_to(self.images_root) if image.is_relative_to(self.images_root) else Path(image.name)
        for suffix in (".png", ".npy"):
            candidate = self.source / rel.with_suffix(suffix)
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"no map {self.source / rel.with_suffix('.png')} (or .npy) to import")

    def parse(self, image: np.ndarray, source: str | None = None) -> ParseResult:
        if source is None:
            raise ValueError("backend=import finds the map to convert by the image's path; pass source=")
        path = str(self.source_map(source))
        try:
            labels = match_label_map(read_label_map(path, self.scheme), image.shape[:2], path)
        except LabelMapError as err:
            raise ValueError(str(err)) from None
        labels = labels.astype(np.uint8)
        found = bool(labels.any())
        return ParseResult(labels, person_found=found, score=1.0 if found else 0.0)
