"""Identity-level attribute annotations of Lin et al. for Market-1501 and DukeMTMC-reID.

Y. Lin, L. Zheng, Z. Zheng, Y. Wu, Z. Hu, C. Yan, Y. Yang: "Improving person re-identification
by attribute and identity learning", Pattern Recognition 95 (2019); the files are
``market_attribute.mat`` (github.com/vana77/Market-1501_Attribute, 27 attributes) and
``duke_attribute.mat`` (github.com/vana77/DukeMTMC-attribute, 23 attributes).

File layout (as ``scipy.io.loadmat`` returns it): a 1x1 struct ``market_attribute`` (or
``duke_attribute``) with 1x1 substructs ``train`` and ``test``; each holds one 1xM field per
attribute (M identities of that split; values 1/2, age 1..4) and ``image_index``, a 1xM cell of
pid strings ('0002') in the same order. Fields are read by name, so their order in the file
(which differs between the splits) does not matter.

Every identity becomes one binary multi-label vector (float32, 1 = yes):

* a two-valued attribute is one bit, 1 when the file says 2: gender -> ``female``, hair ->
  ``long_hair``, up -> ``short_sleeve``, down -> ``short_lower``, clothes -> ``pants``,
  top -> ``long_top``, shoes -> ``light_shoes``, hat/backpack/bag/handbag/boots -> yes;
* age (Market only, 1..4) is four one-hot bits ``age_young``, ``age_teenager``, ``age_adult``,
  ``age_old``;
* each clothing colour stays its own bit (the annotators mark one colour per garment).

That gives 9 + 4 + 8 + 9 = 30 bits for Market-1501 and 8 + 8 + 7 = 23 for DukeMTMC-reID. The
bits are ordered in four groups that the model's attribute branch classifies from its four
attention maps: general (whole body), head, upper body, lower body (:data:`GROUP_SIZES`):

* Market (5, 2, 11, 12): [age x4, female] [long_hair, hat] [short_sleeve, backpack, bag,
  8 upper colours] [short_lower, pants, handbag, 9 lower colours];
* Duke (1, 1, 11, 10): [female] [hat] [long_top, backpack, bag, 8 upper colours]
  [boots, light_shoes, handbag, 7 lower colours].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from magnifier.errors import UserError
from magnifier.parts import ATTRIBUTE_GROUPS, GROUP_SIZES, group_sizes_for  # noqa: F401 (re-exported)

# One entry per output bit: (name, field in the .mat, the field value that sets the bit).
_YES = 2
_MARKET_UP_COLOURS = ("black", "white", "red", "purple", "yellow", "gray", "blue", "green")
_MARKET_DOWN_COLOURS = ("black", "white", "pink", "purple", "yellow", "gray", "blue", "green", "brown")
_DUKE_UP_COLOURS = ("black", "white", "red", "purple", "gray", "blue", "green", "brown")
_DUKE_DOWN_COLOURS = ("black", "white", "red", "gray", "blue", "green", "brown")

_MARKET = (
    # general
    [("age_young", "age", 1), ("age_teenager", "age", 2), ("age_adult", "age", 3), ("age_old", "age", 4),
     ("female", "gender", _YES)],
    # head
    [("long_hair", "hair", _YES), ("hat", "hat", _YES)],
    # upper body
    [("short_sleeve", "up", _YES), ("backpack", "backpack", _YES), ("bag", "bag", _YES)]
    + [(f"up{c}", f"up{c}", _YES) for c in _MARKET_UP_COLOURS],
    # lower body
    [("short_lower", "down", _YES), ("pants", "clothes", _YES), ("handbag", "handbag", _YES)]
    + [(f"down{c}", f"down{c}", _YES) for c in _MARKET_DOWN_COLOURS],
)
_DUKE = (
    [("female", "gender", _YES)],
    [("hat", "hat", _YES)],
    [("long_top", "top", _YES), ("backpack", "backpack", _YES), ("bag", "bag", _YES)]
    + [(f"up{c}", f"up{c}", _YES) for c in _DUKE_UP_COLOURS],
    [("boots", "boots", _YES), ("light_shoes", "shoes", _YES), ("handbag", "handbag", _YES)]
    + [(f"down{c}", f"down{c}", _YES) for c in _DUKE_DOWN_COLOURS],
)
_LAYOUTS = {"market": _MARKET, "duke": _DUKE}
#: The struct name in each file.
STRUCT_NAMES = {"market": "market_attribute", "duke": "duke_attribute"}
# The model layer reads the group sizes from magnifier.parts.GROUP_SIZES; tests check that they
# describe these layouts.
SPLITS = ("train", "test")


def attribute_names(dataset: str) -> list[str]:
    """The names of the bits of ``dataset``'s attribute vector (``market``: 30, ``duke``: 23)."""
    return [name for group in _LAYOUTS[dataset] for name, _, _ in group]


def _expected(path: Path) -> str:
    return (
        f"{path}: expected Lin et al.'s attribute file, a struct 'market_attribute' or 'duke_attribute' "
        "with 'train' and 'test' substructs of 1xM attribute fields plus 'image_index' (pid strings)"
    )


def _struct(value, path: Path, what: str):
    """A 1x1 MATLAB struct as loaded by scipy (a record with named fields)."""
    arr = np.asarray(value)
    if arr.dtype.names is None or arr.size != 1:
        raise UserError(f"{_expected(path)}; {what} is not a 1x1 struct")
    return arr.reshape(-1)[0]


def _pid_strings(value, path: Path, where: str) -> list[int]:
    arr = np.asarray(value)
    if arr.dtype.kind in "US":  # a char matrix: one string per row
        items = [str(s) for s in arr.reshape(-1)]
    else:  # a cell array: one (1,) string array per identity
        items = [str(np.asarray(e).reshape(-1)[0]) if np.size(e) else "" for e in arr.reshape(-1)]
    try:
        return [int(s.strip()) for s in items]
    except ValueError:
        bad = next(s for s in items if not s.strip().lstrip("-").isdigit())
        raise UserError(f"{path}: {where}.image_index holds {bad!r}; expected pid strings like '0002'") from None


def read_attributes(path: str | Path, splits: tuple[str, ...] = SPLITS) -> tuple[dict[int, np.ndarray], list[str]]:
    """Read ``market_attribute.mat`` or ``duke_attribute.mat`` (which one: the struct's name).

    Returns ``({pid: (A,) float32 binary vector}, names)`` over the identities of ``splits``
    (train and test identities are disjoint in both datasets), A = 30 for Market-1501 and 23
    for DukeMTMC-reID; see the module docstring for the mapping. A missing file or another
    layout raises a one-line :class:`UserError` naming the file and the expected layout.
    """
    import scipy.io

    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"attribute file {path} not found; expected Lin et al.'s market_attribute.mat or duke_attribute.mat "
            "(github.com/vana77/Market-1501_Attribute, github.com/vana77/DukeMTMC-attribute)"
        )
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as err:  # not a MATLAB file, truncated, HDF5 (v7.3) ...
        raise UserError(f"{_expected(path)}; scipy could not read it ({type(err).__name__}: {err})") from None
    found = [name for name, key in STRUCT_NAMES.items() if key in mat]
    if not found:
        variables = sorted(k for k in mat if not k.startswith("__"))
        raise UserError(f"{_expected(path)}; found variables {variables}")
    dataset = found[0]
    top = _struct(mat[STRUCT_NAMES[dataset]], path, STRUCT_NAMES[dataset])
    table: dict[int, np.ndarray] = {}
    for split in splits:
        if split not in (top.dtype.names or ()):
            raise UserError(f"{_expected(path)}; {STRUCT_NAMES[dataset]} has no '{split}' substruct")
        sub = _struct(top[split], path, f"{STRUCT_NAMES[dataset]}.{split}")
        fields = set(sub.dtype.names)
        needed = {field for group in _LAYOUTS[dataset] for _, field, _ in group} | {"image_index"}
        missing = sorted(needed - fields)
        if missing:
            raise UserError(f"{_expected(path)}; {split} lacks the field(s) {', '.join(missing)}")
        pids = _pid_strings(sub["image_index"], path, split)
        values = {}
        for field in needed - {"image_index"}:
            v = np.asarray(sub[field]).reshape(-1)
            allowed = (1, 2, 3, 4) if field == "age" else (1, 2)
            if v.shape[0] != len(pids) or not np.isin(v, allowed).all():
                raise UserError(
                    f"{path}: {split}.{field} has {v.shape[0]} values in {sorted(set(v.tolist()))[:6]}; "
                    f"expected {len(pids)} (one per identity) in {list(allowed)}"
                )
            values[field] = v
        bits = np.stack(
            [values[field] == value for group in _LAYOUTS[dataset] for _, field, value in group], axis=1
        ).astype(np.float32)
        for pid, row in zip(pids, bits):
            table[pid] = row
    return table, attribute_names(dataset)
