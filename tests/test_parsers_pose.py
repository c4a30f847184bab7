"""The built-in part parser: MediaPipe's real pose models on real photographs at ReID sizes,
and the skeleton-to-parts geometry on hand-made stick figures. No mocks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from magnifier.parsers import build_parser
from magnifier.parsers.base import ParseResult
from magnifier.parsers.geometry import (FOOT, HEAD, LOWER_ARM, LOWER_LEG, TORSO, UPPER_ARM,
                                        UPPER_LEG, body_scale, draw_parts, fill_mask,
                                        parts_from_pose, stripes)
from magnifier.parsers.mediapipe_pose import MediaPipeParser
from magnifier.parsers.weights import locate

LEGS = (UPPER_LEG, LOWER_LEG, FOOT)
ARMS = (UPPER_ARM, LOWER_ARM)
# Person boxes (x0, y0, x1, y1) in bus.jpg, checked by eye on crops of the photo: two
# full-body pedestrians; and a person-free stretch of pavement.
BUS_PEOPLE = {"left": (45, 390, 250, 905), "mid": (215, 395, 350, 862)}
BUS_PAVEMENT = (420, 860, 540, 1080)


# ----------------------------------------------------------------------------- stick figure
def stick_figure(scale: float = 1.0):
    """A front-facing person 200 x 100 px (times ``scale``) with known joints.

    Returns (landmarks (33, 2), visibility (33,), person mask (H, W) bool). The mask is the
    skeleton drawn thick (a plausible silhouette), so every joint lies inside it.
    """
    p = {0: (50, 22), 1: (53, 18), 2: (54, 18), 3: (55, 18), 4: (47, 18), 5: (46, 18),
         6: (45, 18), 7: (58, 20), 8: (42, 20), 9: (53, 27), 10: (47, 27),
         11: (64, 45), 12: (36, 45), 13: (74, 75), 14: (26, 75), 15: (78, 102), 16: (22, 102),
         17: (79, 108), 18: (21, 108), 19: (78, 109), 20: (22, 109), 21: (76, 106), 22: (24, 106),
         23: (59, 100), 24: (41, 100), 25: (61, 143), 26: (39, 143), 27: (62, 184), 28: (38, 184),
         29: (60, 190), 30: (40, 190), 31: (68, 193), 32: (32, 193)}
    xy = np.array([p[i] for i in range(33)], np.float64) * scale
    vis = np.ones(33)
    h, w = int(200 * scale), int(100 * scale)
    mask = np.zeros((h, w), np.uint8)
    bones = [(11, 12), (11, 23), (12, 24), (23, 24), (11, 13), (13, 15), (12, 14), (14, 16),
             (15, 19), (16, 20), (23, 25), (25, 27), (24, 26), (26, 28), (27, 31), (28, 32),
             (29, 31), (30, 32)]
    for a, b in bones:
        cv2.line(mask, tuple(np.round(xy[a]).astype(int)), tuple(np.round(xy[b]).astype(int)), 1,
                 thickness=int(9 * scale))
    cv2.fillPoly(mask, [np.round(xy[[11, 12, 24, 23]]).astype(np.int32)], 1)
    cv2.circle(mask, tuple(np.round(xy[0] - [0, 3 * scale]).astype(int)), int(13 * scale), 1, -1)
    return xy, vis, mask.astype(bool)


def at(labels: np.ndarray, xy) -> int:
    """The label at the point (x, y)."""
    return int(labels[int(round(xy[1])), int(round(xy[0]))])


def midpoint(xy: np.ndarray, a: int, b: int) -> np.ndarray:
    return (xy[a] + xy[b]) / 2


def test_stick_figure_parts_land_where_they_should():
    xy, vis, mask = stick_figure()
    labels = parts_from_pose(xy, vis, mask)
    assert labels.shape == mask.shape and labels.dtype == np.uint8
    assert at(labels, midpoint(xy, 25, 27)) == LOWER_LEG  # left shin
    assert at(labels, midpoint(xy, 26, 28)) == LOWER_LEG
    assert at(labels, midpoint(xy, 23, 25) + [0, 8]) == UPPER_LEG  # thigh, below the crotch
    assert at(labels, midpoint(xy, 11, 13)) == UPPER_ARM
    assert at(labels, midpoint(xy, 13, 15)) == LOWER_ARM
    assert at(labels, midpoint(xy, 12, 24) + [8, 0]) == TORSO
    assert at(labels, xy[[1, 4]].mean(0)) == HEAD  # between the eyes
    assert at(labels, midpoint(xy, 27, 31)) == FOOT
    assert at(labels, xy[19]) == LOWER_ARM  # the hand belongs to the lower arm


def test_every_mask_pixel_labelled_and_nothing_outside():
    xy, vis, mask = stick_figure()
    labels = parts_from_pose(xy, vis, mask)
    assert np.array_equal(labels > 0, mask)
    assert set(np.unique(labels)) == set(range(8))


def test_drawn_part_outside_the_mask_stays_background():
    xy, vis, mask = stick_figure()
    mask[150:, :50] = False  # the person's right shin and foot are not in the silhouette
    labels = parts_from_pose(xy, vis, mask)
    assert at(labels, midpoint(xy, 26, 28)) == 0
    assert at(labels, midpoint(xy, 25, 27)) == LOWER_LEG  # the other shin is untouched
    assert not labels[~mask].any()


def test_untrusted_landmarks_are_not_drawn_and_their_pixels_go_to_a_trusted_part():
    xy, vis, mask = stick_figure()
    vis[[13, 15, 17, 19, 21]] = 0.1  # left elbow, wrist and hand not visible
    labels = parts_from_pose(xy, vis, mask, min_visibility=0.5)
    # no left arm is drawn: the pixels of the left arm go to the nearest trusted part, the torso
    assert at(labels, midpoint(xy, 11, 13)) == TORSO
    assert at(labels, midpoint(xy, 13, 15)) in (TORSO, UPPER_LEG)
    assert at(labels, midpoint(xy, 14, 16)) == LOWER_ARM  # the right arm is still there
    assert np.array_equal(labels > 0, mask)


def test_nothing_trusted_or_empty_mask_gives_all_background():
    xy, vis, mask = stick_figure()
    assert not parts_from_pose(xy, np.zeros(33), mask).any()
    assert not parts_from_pose(xy, vis, np.zeros_like(mask)).any()


def test_head_and_shoulders_skeleton_gives_no_legs():
    xy, vis, mask = stick_figure()
    top = np.zeros_like(mask)
    top[:80] = mask[:80]  # a crop of the top 40% of the body
    vis[23:] = 0.0  # hips, legs and feet out of sight
    labels = parts_from_pose(xy, vis, top)
    assert {HEAD, TORSO, UPPER_ARM} <= set(np.unique(labels))
    assert not np.isin(labels, LEGS).any()


def test_scale_invariance_and_body_scale():
    xy, vis, mask = stick_figure()
    xy2, vis2, mask2 = stick_figure(scale=2.0)
    u1, u2 = body_scale(xy, vis > 0.5, 1.0), body_scale(xy2, vis2 > 0.5, 1.0)
    assert u2 == pytest.approx(2 * u1, rel=1e-6)
    assert u1 == pytest.approx(55, abs=15)  # shoulder centre (45) to hip centre (100)
    small, big = parts_from_pose(xy, vis, mask), parts_from_pose(xy2, vis2, mask2)
    down = cv2.resize(big, small.shape[::-1], interpolation=cv2.INTER_NEAREST)
    both = mask & (down > 0)
    assert (down[both] == small[both]).mean() > 0.9


def test_fill_mask_uses_nearest_drawn_pixel():
    drawn = np.zeros((10, 20), np.uint8)
    drawn[5, 2], drawn[5, 17] = HEAD, FOOT
    mask = np.ones((10, 20), bool)
    mask[0] = False
    out = fill_mask(drawn, mask)
    assert (out[1:, :9] == HEAD).all() and (out[1:, 11:] == FOOT).all()
    assert not out[0].any()
    assert not draw_parts(np.zeros((33, 2)), np.zeros(33, bool), (10, 20), 5.0).any()


def test_stripes_fallback():
    mask = np.zeros((100, 40), bool)
    mask[10:90, 10:30] = True
    out = stripes(mask)
    assert not out[~mask].any() and (out[mask] > 0).all()
    assert out[11, 20] == HEAD and out[40, 20] == TORSO and out[89, 20] == FOOT
    assert not stripes(np.zeros((5, 5), bool)).any()


# ----------------------------------------------------------------------------- real model
@pytest.fixture(scope="module")
def parser() -> MediaPipeParser:
    return MediaPipeParser(num_threads=1)


@pytest.fixture(scope="module")
def bus() -> np.ndarray:
    return np.asarray(Image.open(locate("bus.jpg")).convert("RGB"))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.asarray(Image.open(locate("astronaut.png")).convert("RGB"))


def crop(image: np.ndarray, box, hw) -> np.ndarray:
    x0, y0, x1, y1 = box
    return cv2.resize(image[y0:y1, x0:x1], (hw[1], hw[0]), interpolation=cv2.INTER_AREA)


def mean_row(labels: np.ndarray, parts) -> float:
    rows = np.nonzero(np.isin(labels, parts))[0]
    assert rows.size, f"no pixel of parts {parts}"
    return float(rows.mean())


@pytest.mark.parametrize("hw", [(128, 64), (256, 128)])
@pytest.mark.parametrize("who", sorted(BUS_PEOPLE))
def test_bus_pedestrian_parts_are_stacked_like_a_person(parser, bus, who, hw):
    img = crop(bus, BUS_PEOPLE[who], hw)
    pose = parser.landmarks(img)
    res = parser.parse_pose(pose, img.shape[:2])
    assert isinstance(res, ParseResult)
    assert res.person_found and res.score > 0.9
    labels = res.labels
    assert labels.shape == hw and labels.dtype == np.uint8 and labels.max() <= 7
    assert not labels[~pose.mask].any(), "a label outside the person mask"
    assert pose.mask.mean() > 0.2  # the person fills a good part of a tight crop
    for part in (HEAD, TORSO, UPPER_LEG, LOWER_LEG, FOOT):
        assert (labels == part).any(), f"part {part} missing"
    head, torso = mean_row(labels, (HEAD,)), mean_row(labels, (TORSO,))
    upper, lower, feet = (mean_row(labels, (p,)) for p in (UPPER_LEG, LOWER_LEG, FOOT))
    assert head < torso < upper < lower < feet
    torso_rows = np.nonzero(labels == TORSO)[0]
    arms = mean_row(labels, ARMS)
    assert torso_rows.min() <= arms <= torso_rows.max() and arms < feet
    # the head is at the top of the crop, the feet at the bottom
    assert head < 0.25 * hw[0] and feet > 0.8 * hw[0]


def test_parse_matches_landmarks_and_pose_is_in_image_pixels(parser, bus):
    img = crop(bus, BUS_PEOPLE["left"], (256, 128))
    pose = parser.landmarks(img)
    assert pose.xy.shape == (33, 2) and pose.visibility.shape == (33,)
    assert pose.mask.shape == (256, 128) and pose.mask.dtype == bool
    assert ((pose.visibility >= 0) & (pose.visibility <= 1)).all()
    labels = parser.parse(img).labels
    assert np.array_equal(labels, parser.parse_pose(pose, img.shape[:2]).labels)  # deterministic
    assert at(labels, pose.xy[0]) == HEAD  # the nose is in the head
    assert pose.xy[0, 1] < pose.xy[23, 1] < pose.xy[27, 1]  # nose above hip above ankle
    assert labels[int(pose.xy[27, 1]) - 3:, :].any()  # the ankles are near the bottom


@pytest.mark.parametrize("size", [128, 512])
def test_head_and_shoulders_gives_head_torso_arms_and_no_legs(parser, astronaut, size):
    img = astronaut if size == 512 else cv2.resize(astronaut, (size, size), interpolation=cv2.INTER_AREA)
    pose = parser.landmarks(img)
    res = parser.parse_pose(pose, img.shape[:2])
    assert res.person_found and res.labels.shape == (size, size)
    present = set(np.unique(res.labels))
    assert {HEAD, TORSO} <= present and present & set(ARMS)
    assert not present & set(LEGS), "legs or feet on a head-and-shoulders photo"
    assert pose.fit == "detect"  # the detector saw the body continue below the image
    assert mean_row(res.labels, (HEAD,)) < mean_row(res.labels, (TORSO,))
    assert not res.labels[~pose.mask].any()


def test_person_free_crop_gives_nothing(parser, bus):
    img = crop(bus, BUS_PAVEMENT, (128, 64))
    res = parser.parse(img)
    assert not res.person_found and res.score < 0.1
    assert res.labels.shape == (128, 64) and not res.labels.any()
    # the stripes fallback would label the model's (meaningless) mask instead
    alt = MediaPipeParser(low_presence="stripes").parse(img)
    assert alt.info.get("fallback") == "stripes" and alt.labels.max() <= FOOT


def test_backend_registry_and_arguments(bus):
    parser = build_parser("mediapipe", num_threads=1, fit="letterbox")
    assert isinstance(parser, MediaPipeParser) and parser.name == "mediapipe"
    img = crop(bus, BUS_PEOPLE["mid"], (128, 64))
    res = parser.parse(img, source="bus.jpg")
    assert res.person_found and res.info["fit"] == "letterbox"
    for bad in (dict(fit="squash"), dict(low_presence="maybe"), dict(pad=1.5),
                dict(interpolation="lanczos")):
        with pytest.raises(ValueError):
            MediaPipeParser(**bad)
    with pytest.raises(ValueError):
        parser.parse(img[..., 0])
