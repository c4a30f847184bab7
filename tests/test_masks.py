"""Label-scheme remapping into the 8 parts, stripe pseudo-parts and conf/masks files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from magnifier.data.masks import SCHEMES, LabelScheme, remap, stripe_parts
from magnifier.parts import NUM_PARTS, PART_NAMES

CONF_MASKS = Path(__file__).resolve().parents[1] / "conf" / "masks"

# The expected tables, written out independently of the code: (source class, part name),
# in source label order.
EXPECTED = {
    "eanet": [(n, n) for n in PART_NAMES],
    "lip": [
        ("Background", "background"),
        ("Hat", "head"),
        ("Hair", "head"),
        ("Glove", "lower_arm"),
        ("Sunglasses", "head"),
        ("UpperClothes", "torso"),
        ("Dress", "torso"),
        ("Coat", "torso"),
        ("Socks", "lower_leg"),
        ("Pants", "upper_leg"),
        ("Jumpsuits", "torso"),
        ("Scarf", "torso"),
        ("Skirt", "upper_leg"),
        ("Face", "head"),
        ("Left-arm", "lower_arm"),
        ("Right-arm", "lower_arm"),
        ("Left-leg", "lower_leg"),
        ("Right-leg", "lower_leg"),
        ("Left-shoe", "foot"),
        ("Right-shoe", "foot"),
    ],
    "pascal_person_part": [
        ("Background", "background"),
        ("Head", "head"),
        ("Torso", "torso"),
        ("Upper Arms", "upper_arm"),
        ("Lower Arms", "lower_arm"),
        ("Upper Legs", "upper_leg"),
        ("Lower Legs", "lower_leg"),
    ],
    "atr": [
        ("Background", "background"),
        ("Hat", "head"),
        ("Hair", "head"),
        ("Sunglasses", "head"),
        ("Upper-clothes", "torso"),
        ("Skirt", "upper_leg"),
        ("Pants", "upper_leg"),
        ("Dress", "torso"),
        ("Belt", "torso"),
        ("Left-shoe", "foot"),
        ("Right-shoe", "foot"),
        ("Face", "head"),
        ("Left-leg", "lower_leg"),
        ("Right-leg", "lower_leg"),
        ("Left-arm", "lower_arm"),
        ("Right-arm", "lower_arm"),
        ("Bag", "torso"),
        ("Scarf", "torso"),
    ],
}


def test_schemes_are_the_expected_ones():
    assert set(SCHEMES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_scheme_table(name):
    s = SCHEMES[name]
    assert s.name == name
    got = [(c, PART_NAMES[p]) for c, p in zip(s.class_names, s.to_parts)]
    assert got == EXPECTED[name]
    assert s.num_classes == {"eanet": 8, "lip": 20, "pascal_person_part": 7, "atr": 18}[name]


def test_label_scheme_rejects_bad_tables():
    with pytest.raises(ValueError):
        LabelScheme("x", ("a", "b"), (0,))
    with pytest.raises(ValueError):
        LabelScheme("x", ("a",), (NUM_PARTS,))


# Small hand-made maps per scheme (source labels) and their expected 8-part result.
REMAP_CASES = {
    "eanet": ([[0, 1, 2, 3], [4, 5, 6, 7]], [[0, 1, 2, 3], [4, 5, 6, 7]]),
    #        bg hat  coat larm  pants lleg shoe glove
    "lip": ([[0, 1, 7, 14], [9, 17, 19, 3]], [[0, 1, 2, 4], [5, 6, 7, 4]]),
    "pascal_person_part": ([[0, 1, 2, 3], [4, 5, 6, 6]], [[0, 1, 2, 3], [4, 5, 6, 6]]),
    #        bg face belt rarm  skirt rleg lshoe bag
    "atr": ([[0, 11, 8, 15], [5, 13, 9, 16]], [[0, 1, 2, 4], [5, 6, 7, 2]]),
}


@pytest.mark.parametrize("name", sorted(REMAP_CASES))
@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_remap(name, dtype):
    src, want = REMAP_CASES[name]
    out = remap(np.array(src, dtype=dtype), name)
    assert out.dtype == np.uint8 and out.shape == (2, 4)
    np.testing.assert_array_equal(out, want)
    # A LabelScheme object works the same as its name.
    np.testing.assert_array_equal(remap(np.array(src, dtype=dtype), SCHEMES[name]), want)


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_remap_every_class(name):
    s = SCHEMES[name]
    np.testing.assert_array_equal(remap(np.arange(s.num_classes), name), s.to_parts)


def test_remap_out_of_range_names_path_values_and_scheme():
    label = np.array([[0, 1, 20], [255, 3, 20]], dtype=np.uint8)
    with pytest.raises(ValueError) as e:
        remap(label, "lip", path="masks/0001_c1_000.png")
    msg = str(e.value)
    assert "\n" not in msg
    assert "masks/0001_c1_000.png" in msg
    assert "20" in msg and "255" in msg
    assert "'lip'" in msg


def test_remap_negative_and_non_integer():
    with pytest.raises(ValueError, match="-1"):
        remap(np.array([0, -1]), "pascal_person_part", path="a.png")
    with pytest.raises(ValueError, match="a.png"):
        remap(np.array([0.0, 1.0]), "eanet", path="a.png")
    with pytest.raises(ValueError, match="unknown label scheme"):
        remap(np.zeros(2, dtype=np.uint8), "nope")


@pytest.mark.parametrize("hw", [(256, 128), (64, 32), (17, 5)])
def test_stripe_parts(hw):
    h, w = hw
    m = stripe_parts(h, w)
    assert m.shape == (h, w) and m.dtype == np.uint8
    assert m.min() >= 0 and m.max() < NUM_PARTS
    present = set(np.unique(m).tolist())
    assert {1, 2, 5, 6} <= present  # head, torso, upper and lower leg
    # Horizontal stripes: every row is constant, and parts go top to bottom.
    assert (m == m[:, :1]).all()
    assert (np.diff(m[:, 0].astype(int)) >= 0).all()
    assert m[0, 0] == 1
    np.testing.assert_array_equal(m, stripe_parts(h, w))  # deterministic


def test_stripe_parts_layout_256():
    col = stripe_parts(256, 1)[:, 0]
    counts = {p: int((col == p).sum()) for p in np.unique(col)}
    assert counts == {1: 32, 2: 96, 5: 48, 6: 64, 7: 16}


def test_stripe_parts_rejects_empty():
    with pytest.raises(ValueError):
        stripe_parts(0, 4)


_ROW = re.compile(r"^#\s+(\d+) (.+?) -> (\d+) (\w+)$")


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_conf_masks_yaml(name):
    path = CONF_MASKS / f"{name}.yaml"
    cfg = OmegaConf.load(path)
    assert cfg.scheme == name and cfg.scheme in SCHEMES
    assert cfg.missing in ("error", "stripes")
    # The table written in the file's comments mirrors the code.
    rows = [m.groups() for m in map(_ROW.match, path.read_text().splitlines()) if m]
    s = SCHEMES[name]
    assert [int(i) for i, *_ in rows] == list(range(s.num_classes))
    assert [c for _, c, _, _ in rows] == list(s.class_names)
    assert [int(p) for *_, p, _ in rows] == list(s.to_parts)
    assert [n for *_, n in rows] == [PART_NAMES[p] for p in s.to_parts]


def test_conf_masks_has_exactly_the_schemes():
    assert {p.stem for p in CONF_MASKS.glob("*.yaml")} == set(SCHEMES)
