"""8-part label maps from a pose skeleton and a person mask (pure numpy + OpenCV).

:func:`parts_from_pose` is the second half of the built-in parser
(:mod:`magnifier.parsers.mediapipe_pose`): the model gives 33 BlazePose landmarks, a
visibility per landmark and a person mask; this module turns them into EANet labels
(0 background, 1 head, 2 torso, 3 upper arm, 4 lower arm, 5 upper leg, 6 lower leg, 7 foot).

The rule:

1. Only *trusted* landmarks are used: visibility >= ``min_visibility``. A limb segment is
   drawn when both its ends are trusted; the torso needs 3 of its 4 corners (or a trusted
   shoulder and hip for its centre line), the head any trusted face point.
2. A body scale ``U`` (the torso length, shoulder centre to hip centre, in pixels) is
   estimated from whatever is trusted (:func:`body_scale`), so that the drawn widths fit the
   person whatever the crop size or how much of the body is in the crop.
3. Each part is drawn as a thick segment / polygon / ellipse with widths proportional to
   ``U`` (:data:`RADII`), in painter's order: torso, legs, feet, head, then the arms (arms are
   usually in front of the torso; a forearm across the chest must stay an arm). Hands belong
   to the lower arm, as in EANet and LIP. The thigh starts a little below the hip joint
   (:data:`THIGH_START`, flat end): the hip landmarks sit inside the pelvis, which is torso.
4. Every person-mask pixel takes the part of the nearest drawn pixel (an exact Euclidean
   distance transform). Drawn pixels outside the mask are dropped: NOTHING outside the mask
   is labelled, and no mask pixel is left background while some part is drawn.
   Landmarks outside the image still shape the parts (a torso whose hips are below a
   head-and-shoulders crop is drawn down to the crop's edge).

The drawn widths are a little thinner than real limbs: the drawing decides only the pixels
near the skeleton, the rest of the silhouette is split by nearest part, which follows the
mask's real outline. On the synthetic set (exact maps) the widths hardly matter: 0.6x to 1.3x
:data:`RADII` changes mIoU by <= 0.01, 1.6x costs 0.02.

Partial bodies and low presence (measured with ``benchmarks/parse_pose.py``):

* A partial body gets geometric parts, not stripes: once the landmarks are right, a
  head-and-shoulders skeleton simply yields head, torso and arms (the astronaut at 128x128
  and 512x512: no leg or foot pixel). Getting the landmarks right is the parser's job: a
  landmark model that sees only head and shoulders squeezes a whole body into the image,
  so the parser places a partial body with the pose detector (``fit="auto"``).
* Low presence gives nothing (all background, ``person_found=False``), not stripes inside
  the mask: below the threshold the model's mask is noise (7-49% of person-free photo crops,
  a third of person-free synthetic frames would be labelled), and training can still use
  stripes for such images (``masks.empty=stripes``). :func:`stripes` is the opt-in
  alternative (``low_presence="stripes"``).
"""

from __future__ import annotations

import cv2
import numpy as np

from magnifier.data.masks import stripe_parts
from magnifier.parts import PART_NAMES

HEAD, TORSO, UPPER_ARM, LOWER_ARM, UPPER_LEG, LOWER_LEG, FOOT = range(1, len(PART_NAMES))

# BlazePose landmark indices (the first 33 outputs of the pose landmark model).
NOSE = 0
FACE = tuple(range(0, 11))  # nose, 6 eye points, 2 ears, 2 mouth corners
L_EAR, R_EAR, MOUTH_L, MOUTH_R = 7, 8, 9, 10
EYES = (1, 2, 3, 4, 5, 6)
L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST = 11, 12, 13, 14, 15, 16
L_HAND, R_HAND = (17, 19, 21), (18, 20, 22)  # pinky, index, thumb
L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE = 23, 24, 25, 26, 27, 28
L_HEEL, R_HEEL, L_FOOT_INDEX, R_FOOT_INDEX = 29, 30, 31, 32
NUM_LANDMARKS = 33

#: Drawn half-widths as fractions of the torso length U. Adult proportions: torso (shoulder to
#: hip) ~50 cm, head ~23 x 17 cm, upper arm ~9 cm thick, thigh ~14 cm; halved and slightly
#: reduced so that the drawing stays inside the silhouette (the rest goes by nearest part).
RADII = dict(head_y=0.24, head_x=0.18, torso=0.16, upper_arm=0.08, lower_arm=0.065,
             upper_leg=0.11, lower_leg=0.085, foot=0.06)

#: Where along hip -> knee the drawn thigh starts (the crotch is below the hip joints).
THIGH_START = 0.2

#: Typical length of a segment as a fraction of U, for estimating U when the torso is not
#: trusted (foreshortening only shortens a segment, so these give lower bounds of U).
_LENGTHS = (((L_SHOULDER, R_SHOULDER), 0.75), ((L_EAR, R_EAR), 0.30),
            ((L_SHOULDER, L_ELBOW), 0.60), ((R_SHOULDER, R_ELBOW), 0.60),
            ((L_HIP, L_KNEE), 0.85), ((R_HIP, R_KNEE), 0.85),
            ((L_KNEE, L_ANKLE), 0.85), ((R_KNEE, R_ANKLE), 0.85))


def _centre(xy: np.ndarray, ok: np.ndarray, idx) -> np.ndarray | None:
    """Mean of the trusted landmarks among ``idx`` (shape (2,)), or None if none is trusted."""
    idx = [i for i in idx if ok[i]]
    return xy[idx].mean(0) if idx else None


def body_scale(landmarks_xy: np.ndarray, trusted: np.ndarray, fallback: float) -> float:
    """Torso length U in pixels.

    Args:
        landmarks_xy: (33, 2) float, x (column) and y (row) in pixels.
        trusted: (33,) bool.
        fallback: U to use when no trusted segment gives one (e.g. the mask height / 3).

    The torso itself (shoulder centre to hip centre) is used when both ends are trusted; other
    segments give estimates through :data:`_LENGTHS`. Segments seen end-on look short, so
    the largest estimate is the least foreshortened; the median of the two largest guards
    against a single misplaced landmark.
    """
    xy, ok = landmarks_xy, trusted
    sh, hip = _centre(xy, ok, (L_SHOULDER, R_SHOULDER)), _centre(xy, ok, (L_HIP, R_HIP))
    estimates = []
    if sh is not None and hip is not None:
        estimates.append(float(np.linalg.norm(sh - hip)))
    for (a, b), frac in _LENGTHS:
        if ok[a] and ok[b]:
            estimates.append(float(np.linalg.norm(xy[a] - xy[b])) / frac)
    face = [i for i in FACE if ok[i]]
    if sh is not None and face:  # nose/eyes sit ~0.45 U above the shoulder line
        estimates.append(float(np.linalg.norm(xy[face].mean(0) - sh)) / 0.45)
    estimates = sorted(e for e in estimates if e > 0)
    if not estimates:
        return float(fallback)
    return float(np.median(estimates[-2:]))


def _capsule(canvas: np.ndarray, a, b, radius: float, label: int, cap_a: bool = True) -> None:
    """Draw a segment a-b, ``radius`` pixels wide on each side, with a round end at b (and at
    a unless ``cap_a`` is False: a flat start, e.g. a thigh that must not reach back above the
    crotch)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = b - a
    n = np.array([-d[1], d[0]]) / max(float(np.linalg.norm(d)), 1e-9) * radius
    quad = np.stack([a + n, b + n, b - n, a - n])
    cv2.fillConvexPoly(canvas, np.round(quad).astype(np.int32), label)
    rad = max(0, int(round(radius)))
    for p, cap in ((a, cap_a), (b, True)):
        if cap:
            cv2.circle(canvas, (int(round(p[0])), int(round(p[1]))), rad, label, -1)


def draw_parts(landmarks_xy: np.ndarray, trusted: np.ndarray, shape: tuple[int, int],
               scale: float, radii: dict | None = None) -> np.ndarray:
    """Paint the parts of the trusted skeleton, ignoring any mask.

    Args:
        landmarks_xy: (33, 2) float pixels (x, y); points may lie outside the image.
        trusted: (33,) bool.
        shape: (H, W) of the output.
        scale: U, the torso length in pixels (:func:`body_scale`).
        radii: half-widths as fractions of U (default :data:`RADII`).

    Returns:
        (H, W) uint8 labels, 0 where nothing is drawn.
    """
    r = {k: v * scale for k, v in (radii or RADII).items()}
    xy, ok = np.asarray(landmarks_xy, np.float64), np.asarray(trusted, bool)
    # cv2 draws with int32 coordinates: keep far-off points far but representable.
    lim = 4 * max(shape) + 4 * scale
    xy = np.clip(xy, -lim, lim)
    canvas = np.zeros(shape, np.uint8)

    # torso: shoulder-hip polygon, plus a thick centre line so a side view (shoulders and
    # hips nearly on top of each other) still has body depth
    sh, hip = _centre(xy, ok, (L_SHOULDER, R_SHOULDER)), _centre(xy, ok, (L_HIP, R_HIP))
    corners = [i for i in (L_SHOULDER, R_SHOULDER, R_HIP, L_HIP) if ok[i]]
    if len(corners) >= 3:
        cv2.fillPoly(canvas, [np.round(xy[corners]).astype(np.int32)], TORSO)
    if sh is not None and hip is not None:
        _capsule(canvas, sh, hip, r["torso"], TORSO)
        for a, b in ((L_SHOULDER, L_HIP), (R_SHOULDER, R_HIP)):
            if ok[a] and ok[b]:
                _capsule(canvas, xy[a], xy[b], r["torso"] * 0.5, TORSO)
    if ok[L_SHOULDER] and ok[R_SHOULDER]:
        _capsule(canvas, xy[L_SHOULDER], xy[R_SHOULDER], r["torso"] * 0.5, TORSO)
    if ok[L_HIP] and ok[R_HIP]:
        _capsule(canvas, xy[L_HIP], xy[R_HIP], r["torso"] * 0.5, TORSO)

    for hip_i, knee, ankle, heel, toe in ((L_HIP, L_KNEE, L_ANKLE, L_HEEL, L_FOOT_INDEX),
                                          (R_HIP, R_KNEE, R_ANKLE, R_HEEL, R_FOOT_INDEX)):
        if ok[hip_i] and ok[knee]:
            # the hip joint sits inside the pelvis (torso): the thigh starts a little below it
            start = xy[hip_i] + THIGH_START * (xy[knee] - xy[hip_i])
            _capsule(canvas, start, xy[knee], r["upper_leg"], UPPER_LEG, cap_a=False)
        if ok[knee] and ok[ankle]:
            _capsule(canvas, xy[knee], xy[ankle], r["lower_leg"], LOWER_LEG)
        foot = [i for i in (ankle, heel, toe) if ok[i]]
        if ok[ankle] and len(foot) >= 2:
            for i in foot[1:]:
                _capsule(canvas, xy[ankle], xy[i], r["foot"], FOOT)
            if ok[heel] and ok[toe]:
                _capsule(canvas, xy[heel], xy[toe], r["foot"], FOOT)

    face = [i for i in FACE if ok[i]]
    if face:
        # The face points sit in the lower-front half of the head (eyes at mid-height, mouth
        # below): the skull's centre is a little above their mean.
        c = xy[face].mean(0) - np.array([0.0, 0.06 * scale])
        axes = (max(1, int(round(r["head_x"]))), max(1, int(round(r["head_y"]))))
        tilt = 0.0
        if ok[L_EAR] and ok[R_EAR]:  # roll the ellipse with the ear line
            d = xy[L_EAR] - xy[R_EAR]
            tilt = float(np.degrees(np.arctan2(d[1], d[0])))
            tilt = (tilt + 90) % 180 - 90  # ear line left<->right either way round
        cv2.ellipse(canvas, (int(round(c[0])), int(round(c[1]))), axes, tilt, 0, 360, HEAD, -1)

    for shoulder, elbow, wrist, hand in ((L_SHOULDER, L_ELBOW, L_WRIST, L_HAND),
                                         (R_SHOULDER, R_ELBOW, R_WRIST, R_HAND)):
        if ok[shoulder] and ok[elbow]:
            _capsule(canvas, xy[shoulder], xy[elbow], r["upper_arm"], UPPER_ARM)
        if ok[elbow] and ok[wrist]:
            _capsule(canvas, xy[elbow], xy[wrist], r["lower_arm"], LOWER_ARM)
            tips = [i for i in hand if ok[i]]
            if tips:  # the hand belongs to the lower arm (EANet, LIP "arm" includes hands)
                _capsule(canvas, xy[wrist], xy[tips].mean(0), r["lower_arm"], LOWER_ARM)
    return canvas


def fill_mask(drawn: np.ndarray, person_mask: np.ndarray) -> np.ndarray:
    """Give every person-mask pixel the label of the nearest drawn pixel; clear the rest.

    Args:
        drawn: (H, W) uint8 part labels, 0 = not drawn.
        person_mask: (H, W) bool.

    Returns:
        (H, W) uint8: 0 outside the mask; inside, the drawn label or the nearest one (all 0
        when nothing is drawn).
    """
    mask = np.asarray(person_mask, bool)
    if not drawn.any() or not mask.any():
        return np.zeros(mask.shape, np.uint8)
    seeds = drawn > 0
    # distanceTransformWithLabels measures to the zero pixels of src: the drawn ones
    _, nearest = cv2.distanceTransformWithLabels((~seeds).astype(np.uint8), cv2.DIST_L2,
                                                 cv2.DIST_MASK_PRECISE,
                                                 labelType=cv2.DIST_LABEL_PIXEL)
    # each drawn pixel carries its own label id: read the part through them
    lut = np.zeros(int(nearest.max()) + 1, np.uint8)
    lut[nearest[seeds]] = drawn[seeds]
    return np.where(mask, lut[nearest], 0).astype(np.uint8)


def parts_from_pose(landmarks_xy: np.ndarray, visibility: np.ndarray, person_mask: np.ndarray,
                    min_visibility: float = 0.5, radii: dict | None = None,
                    scale: float | None = None) -> np.ndarray:
    """The 8-part label map of one person.

    Args:
        landmarks_xy: (33, 2) float, (x, y) in pixels of the mask's image (more rows, e.g. the
            39 of the model output, are ignored).
        visibility: (33,) float in 0..1; below ``min_visibility`` a landmark is not trusted.
        person_mask: (H, W) bool, the person's silhouette.
        min_visibility: the trust threshold.
        radii: drawn half-widths as fractions of the torso length (default :data:`RADII`).
        scale: the torso length U in pixels; default estimated by :func:`body_scale` with
            the mask height / 3 as fallback.

    Returns:
        (H, W) uint8 labels 0..7: 0 outside the mask, every mask pixel labelled when at least
        one part is drawn, all 0 when no part can be drawn.
    """
    xy = np.asarray(landmarks_xy, np.float64)[:NUM_LANDMARKS]
    ok = np.asarray(visibility, np.float64)[:NUM_LANDMARKS] >= min_visibility
    mask = np.asarray(person_mask, bool)
    if scale is None:
        rows = np.flatnonzero(mask.any(1))
        fallback = (rows[-1] - rows[0] + 1) / 3 if rows.size else mask.shape[0] / 3
        scale = body_scale(xy, ok, fallback)
    drawn = draw_parts(xy, ok, mask.shape, max(float(scale), 1.0), radii)
    return fill_mask(drawn, mask)


def stripes(person_mask: np.ndarray) -> np.ndarray:
    """Geometry-free fallback: the training side's horizontal stripe pseudo-parts
    (:func:`magnifier.data.masks.stripe_parts`: head, torso, upper leg, lower leg, foot; no
    arms) laid over the rows the mask spans, inside the mask only.

    Args:
        person_mask: (H, W) bool.

    Returns:
        (H, W) uint8, 0 outside the mask (all 0 for an empty mask).
    """
    mask = np.asarray(person_mask, bool)
    out = np.zeros(mask.shape, np.uint8)
    rows = np.flatnonzero(mask.any(1))
    if not rows.size:
        return out
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    out[top:bottom] = stripe_parts(bottom - top, mask.shape[1])
    out[~mask] = 0
    return out
