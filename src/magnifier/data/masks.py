"""Remap other human parsers' label maps into the 8-part scheme, and stripe pseudo-parts.

MagnifierNet is trained with EANet's 8 parts (:data:`magnifier.parts.PART_NAMES`):
0 background, 1 head, 2 torso, 3 upper arm, 4 lower arm, 5 upper leg, 6 lower leg, 7 foot.
Users usually have label maps from another parser (SCHP / JPPNet on LIP or ATR, or a
Pascal-Person-Part model), so each supported parser gets a :class:`LabelScheme` whose
``to_parts`` table says which of the 8 parts each source class becomes.

The tables are also written out, for reading, in ``conf/masks/<scheme>.yaml``; a test keeps
the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magnifier.parts import NUM_PARTS, PART_NAMES

# Short names for the 8 parts, so that the tables below read as "class -> part".
BG, HEAD, TORSO, UPPER_ARM, LOWER_ARM, UPPER_LEG, LOWER_LEG, FOOT = range(NUM_PARTS)


@dataclass(frozen=True)
class LabelScheme:
    """A source parser's label set and how it maps onto the 8 parts.

    Attributes:
        name: the key in :data:`SCHEMES` (and the ``scheme`` value in ``conf/masks``).
        class_names: the source classes, indexed by their label value.
        to_parts: ``to_parts[i]`` is the 8-part label of source class ``i``; same length as
            ``class_names``.
    """

    name: str
    class_names: tuple[str, ...]
    to_parts: tuple[int, ...]

    def __post_init__(self) -> None:
        # Fail at import time rather than on the first image if a table is mistyped.
        if len(self.class_names) != len(self.to_parts):
            raise ValueError(
                f"scheme {self.name!r}: {len(self.class_names)} class names but "
                f"{len(self.to_parts)} part labels"
            )
        bad = [p for p in self.to_parts if not 0 <= p < NUM_PARTS]
        if bad:
            raise ValueError(f"scheme {self.name!r}: part labels {bad} outside 0..{NUM_PARTS - 1}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def lut(self) -> np.ndarray:
        """(num_classes,) uint8 lookup table: ``lut[label]`` is the 8-part label."""
        return np.asarray(self.to_parts, dtype=np.uint8)

    def table(self) -> dict[str, str]:
        """``{source class name: part name}``, for documentation and checks."""
        return {c: PART_NAMES[p] for c, p in zip(self.class_names, self.to_parts)}


def _scheme(name: str, pairs: list[tuple[str, int]]) -> LabelScheme:
    # Writing each table as (class, part) pairs keeps a class and its part on one line,
    # which is harder to get out of step than two parallel tuples.
    return LabelScheme(name, tuple(c for c, _ in pairs), tuple(p for _, p in pairs))


EANET = _scheme("eanet", [(n, i) for i, n in enumerate(PART_NAMES)])

# LIP (Look Into Person; also what SCHP and JPPNet trained on LIP output): 20 classes.
# LIP labels clothing and skin, not body segments, so some choices are needed:
# * Arms: LIP's Left-arm / Right-arm are the *visible skin* of the arm (hand included).
#   Sleeved arms are labelled as the garment (UpperClothes / Coat / Dress), which goes to
#   torso, so what remains as arm skin is mostly forearm and hand (short sleeves, or
#   sleeves pushed up). Lower arm (4) is therefore the faithful choice; upper arm (3)
#   is never produced from LIP. Gloves cover hands -> lower arm.
# * Legs: Pants and Skirt cover the thigh (and, for trousers, the shin too) and LIP has
#   no upper/lower split for them; the thigh is what every pant and skirt covers, so they
#   go to upper leg (5). Leg skin shows mostly below shorts / skirts, i.e. the shin ->
#   lower leg (6); socks -> lower leg; shoes -> foot (7).
# * Head: hat, hair, sunglasses, face. Torso: upper clothes, dress, coat, jumpsuits, scarf.
LIP = _scheme(
    "lip",
    [
        ("Background", BG),
        ("Hat", HEAD),
        ("Hair", HEAD),
        ("Glove", LOWER_ARM),
        ("Sunglasses", HEAD),
        ("UpperClothes", TORSO),
        ("Dress", TORSO),
        ("Coat", TORSO),
        ("Socks", LOWER_LEG),
        ("Pants", UPPER_LEG),
        ("Jumpsuits", TORSO),
        ("Scarf", TORSO),
        ("Skirt", UPPER_LEG),
        ("Face", HEAD),
        ("Left-arm", LOWER_ARM),
        ("Right-arm", LOWER_ARM),
        ("Left-leg", LOWER_LEG),
        ("Right-leg", LOWER_LEG),
        ("Left-shoe", FOOT),
        ("Right-shoe", FOOT),
    ],
)

# Pascal-Person-Part (SCHP's "pascal" model): 7 classes, the same body segments as EANet
# minus the foot, so 0..6 map to themselves. Feet are annotated inside the lower leg
# there, so part 7 (foot) is never produced from this scheme.
PASCAL_PERSON_PART = _scheme(
    "pascal_person_part",
    [
        ("Background", BG),
        ("Head", HEAD),
        ("Torso", TORSO),
        ("Upper Arms", UPPER_ARM),
        ("Lower Arms", LOWER_ARM),
        ("Upper Legs", UPPER_LEG),
        ("Lower Legs", LOWER_LEG),
    ],
)

# ATR (Liang et al., "Deep Human Parsing with Active Template Regression"; SCHP's "atr"
# model): 18 classes, clothing + skin like LIP, mapped in the same spirit (see LIP notes:
# arm skin -> lower arm, pants/skirt -> upper leg, leg skin -> lower leg). Belt and bag
# sit on / hang from the trunk -> torso.
ATR = _scheme(
    "atr",
    [
        ("Background", BG),
        ("Hat", HEAD),
        ("Hair", HEAD),
        ("Sunglasses", HEAD),
        ("Upper-clothes", TORSO),
        ("Skirt", UPPER_LEG),
        ("Pants", UPPER_LEG),
        ("Dress", TORSO),
        ("Belt", TORSO),
        ("Left-shoe", FOOT),
        ("Right-shoe", FOOT),
        ("Face", HEAD),
        ("Left-leg", LOWER_LEG),
        ("Right-leg", LOWER_LEG),
        ("Left-arm", LOWER_ARM),
        ("Right-arm", LOWER_ARM),
        ("Bag", TORSO),
        ("Scarf", TORSO),
    ],
)

SCHEMES: dict[str, LabelScheme] = {s.name: s for s in (EANET, LIP, PASCAL_PERSON_PART, ATR)}


def get_scheme(scheme: str | LabelScheme) -> LabelScheme:
    """The :class:`LabelScheme` named ``scheme`` (or ``scheme`` itself)."""
    if isinstance(scheme, LabelScheme):
        return scheme
    try:
        return SCHEMES[scheme]
    except KeyError:
        raise ValueError(
            f"unknown label scheme {scheme!r}; expected one of {sorted(SCHEMES)}"
        ) from None


def remap(
    label: np.ndarray, scheme: str | LabelScheme, path: str | None = None
) -> np.ndarray:
    """Map a source parser's label map onto the 8 parts.

    Args:
        label: (H, W) (or any shape) integer label map in the source scheme.
        scheme: a :data:`SCHEMES` key or a :class:`LabelScheme`.
        path: the file ``label`` was read from; only used in error messages.

    Returns:
        Array of ``label``'s shape, dtype uint8, values in 0..7.

    Raises:
        ValueError: ``label`` holds values outside ``0..num_classes-1`` (e.g. a map from
            another parser, or a palette PNG read as RGB); the one-line message names the
            file, the offending values and the scheme.
    """
    s = get_scheme(scheme)
    label = np.asarray(label)
    if not np.issubdtype(label.dtype, np.integer):
        # A float map would index the table after silent truncation; refuse it outright.
        raise ValueError(
            f"{path or 'label map'}: dtype {label.dtype} is not integer (scheme {s.name!r})"
        )
    bad = (label < 0) | (label >= s.num_classes)
    if bad.any():
        values = np.unique(label[bad])
        shown = ", ".join(str(v) for v in values[:10]) + (", ..." if values.size > 10 else "")
        where = f"{path}: " if path else ""
        raise ValueError(
            f"{where}label values [{shown}] outside 0..{s.num_classes - 1} "
            f"of scheme {s.name!r} ({s.num_classes} classes)"
        )
    # One fancy-indexing pass over the whole map; cast to intp so uint8/int16 maps index
    # the table directly without per-pixel Python work.
    return s.lut[label.astype(np.intp, copy=False)]


# Vertical layout of stripe pseudo-parts, as (part, fraction of image height), top to
# bottom. Proportions follow a standing pedestrian in a re-id crop (Market/Duke crops are
# tight around the person, so no background margin): head ~1/8, torso ~3/8, thigh ~3/16,
# shin ~1/4, foot ~1/16. Arms are not drawn: their position depends on pose, and a wrong
# guess is worse than folding them into torso. Fractions sum to 1.
STRIPE_LAYOUT: tuple[tuple[int, float], ...] = (
    (HEAD, 2 / 16),
    (TORSO, 6 / 16),
    (UPPER_LEG, 3 / 16),
    (LOWER_LEG, 4 / 16),
    (FOOT, 1 / 16),
)


def stripe_parts(height: int, width: int) -> np.ndarray:
    """Horizontal-stripe pseudo-parts for images without a label map (``missing=stripes``).

    Each row gets the part of :data:`STRIPE_LAYOUT` that its centre falls in, so the
    result depends only on ``(height, width)``.

    Args:
        height: image height H (> 0).
        width: image width W (> 0).

    Returns:
        (H, W) uint8 array of parts 1, 2, 5, 6, 7 (no background, no arms).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"stripe_parts needs a positive size, got {height}x{width}")
    parts = np.array([p for p, _ in STRIPE_LAYOUT], dtype=np.uint8)
    # Upper edges of all stripes but the last, as fractions of the height.
    edges = np.cumsum([f for _, f in STRIPE_LAYOUT])[:-1]
    centres = (np.arange(height) + 0.5) / height
    rows = parts[np.searchsorted(edges, centres, side="right")]
    return np.repeat(rows[:, None], width, axis=1)
