"""What every part parser returns, and the interface a new parser implements.

A parser turns one RGB person crop into an 8-part label map in EANet's labels
(:data:`magnifier.parts.PART_NAMES`: 0 background, 1 head, 2 torso, 3 upper arm,
4 lower arm, 5 upper leg, 6 lower leg, 7 foot). ``python -m magnifier.parse`` runs one per
worker process over a dataset and writes the maps where the data module reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class ParseResult:
    """One image's part map.

    Attributes:
        labels: (H, W) uint8 in 0..7, the size of the input image.
        person_found: False when the parser saw no person; ``labels`` is then all background
            and the image is listed in the run's ``no_person.txt``.
        score: the parser's confidence that a person is there (0..1; 1 for imported maps).
        info: anything else worth keeping for a report (e.g. which fallback was used).
    """

    labels: np.ndarray
    person_found: bool
    score: float = 1.0
    info: dict = field(default_factory=dict)


class PartParser(Protocol):
    """A parser backend: built once per worker process, then called once per image."""

    #: the ``backend=`` name
    name: str

    def parse(self, image: np.ndarray, source: str | None = None) -> ParseResult:
        """Parse an (H, W, 3) uint8 RGB image. ``source`` is its path, for backends that read
        a file beside it (``backend=import``) and for messages."""
        ...
