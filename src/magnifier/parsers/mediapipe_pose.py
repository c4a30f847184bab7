"""The built-in part parser: MediaPipe's pose models, run offline with LiteRT.

One RGB person crop -> (``pose_detection.tflite`` for where the body is) ->
``pose_landmark_full.tflite`` (BlazePose GHUM "full": 33 landmarks with visibility, a person
presence and a person segmentation) -> 8-part EANet labels by
:func:`magnifier.parsers.geometry.parts_from_pose`. ``mediapipe`` itself is never imported
(see :mod:`magnifier.parsers.weights`); only its model files are used.

The models, as measured (LiteRT 2.3.0):

* ``pose_landmark_full``: input ``input_1`` float32 (1, 256, 256, 3), RGB in [0, 1] ([0, 1]
  gave the higher presence on the real photos: the cut-off bus person at 128x64 0.82 vs 0.02,
  astronaut 0.98 vs 0.90). ``Identity`` (1, 195) = 39 x (x, y, z, visibility, presence), x and
  y in input pixels, the last two logits (-5..12 seen; a sigmoid is applied); rows 33..38 are
  auxiliary ROI points, dropped. ``Identity_1`` (1, 1) person presence, already a probability
  (always in [0, 1]). ``Identity_2`` (1, 256, 256, 1) segmentation logits (about -1800..270,
  > 0 = person).
* ``pose_detection``: input (1, 224, 224, 3) RGB in [-1, 1] (with [0, 1] the hip centre of the
  bus pedestrians moves by up to 0.2 of the crop height); 2254 SSD anchors x 12
  regressors (box, then 4 keypoints: hip centre, a point on the circle around the whole body,
  shoulder centre, upper-body point) and a score logit.

Placing the crop in the landmark model's square input (``fit``), numbers from
``benchmarks/parse_pose.py``:

``auto`` (default)
    Letterbox (keep the aspect ratio, black borders as MediaPipe pads) with a margin ``pad``
    (a fraction of the longer side, on every side) -- unless the detector says the body is
    much bigger than the crop (its ROI > ``partial_ratio`` x the letterbox square): then the
    landmark model gets the detector's ROI, a square of 2 x 1.25 x the body circle's radius
    around the hip centre, as in MediaPipe, axis-aligned (ReID boxes are upright). That is
    what makes a partial body work. The landmark model always assumes a whole body in its
    input: letterboxed, the head-and-shoulders astronaut gets hips at 0.58 of the image
    height and legs inside the image, whatever the margin (tried 0-0.3); the detector puts
    the hips at 1.1 image heights, below the image, and no leg reaches the image. On full
    bodies the detector's body size is the noisier estimate (synthetic: median ROI 0.75 of
    the crop height where ~1.2 is right, nothing found on 40-50%; ``fit="detect"`` mIoU
    0.53 vs 0.63), so it is only used for partial bodies; on the 300 synthetic full bodies
    it was used 0 times.
``detect``
    Always the detector's ROI when it finds a person (letterbox otherwise).
``letterbox``
    Skip the detector: about 1.8x faster, right when every crop holds a whole body.
``stretch``
    Squeeze to a square: a 2:1 pedestrian becomes 1:1 and the bus crops' presence drops to
    0.07-0.71 (synthetic mIoU 0.14-0.18); kept for the comparison only.

``pad`` 0.15: on the synthetic set (figures already have a margin) mIoU 0.60 (pad 0), 0.65-0.66
(0.1), 0.63 (0.15), 0.61 (0.2); on the tight bus crops the cut-off person's presence goes
0.90 / 0.42 / 0.58 / 0.97 (128x64) with the same pads, so 0.1 loses it and 0.15 is the
compromise. Enlarging a small crop with linear or cubic interpolation gives the same maps
(mIoU 0.633 / 0.629); nearest loses the cut-off person and gives the astronaut a leg.

Below ``presence_threshold`` the default (``low_presence="none"``) is all background and
``person_found=False``, so the image is listed in ``no_person.txt`` and training decides
(``masks.empty=stripes``). The person mask is not empty on person-free crops (7-49% of a
128x64 crop of pavement, bus side, building or tree, presence <= 0.01): labelling it anyway
(stripes, ``low_presence="stripes"``, or the parts) marks about a third (32-34%) of the
pixels of person-free synthetic frames as a person, while on the few synthetic people below
the threshold (6 of 300) it would gain only 0.1-0.2 mIoU. A partial body with a presence
above the threshold gets its geometric parts (the astronaut: head, torso, arms, no leg).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .base import ParseResult
from .geometry import NUM_LANDMARKS, parts_from_pose, stripes
from .weights import locate

INPUT_SIZE = 256  # landmark model
DETECT_SIZE = 224  # detector
FITS = ("auto", "detect", "letterbox", "stretch")
LOW_PRESENCE = ("none", "stripes")
INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC,
                  "nearest": cv2.INTER_NEAREST}
#: MediaPipe's ROI around the detected body: 1.25 x the body circle's diameter
ROI_SCALE = 1.25


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # clipped: segmentation logits reach -1800, which would overflow exp()
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30.0, 30.0)))


def _ssd_anchors() -> np.ndarray:
    """(2254, 2) anchor centres of the pose detector in [0, 1] (x, y).

    MediaPipe's SsdAnchorsCalculator options for pose detection: 224 input, strides 8, 16, 32,
    32, 32, one aspect ratio plus the interpolated scale (2 anchors a layer), fixed anchor
    size; layers of equal stride share a grid: 28x28x2 + 14x14x2 + 7x7x6 = 2254.
    """
    out = []
    for stride, per_cell in ((8, 2), (16, 2), (32, 6)):
        n = DETECT_SIZE // stride
        yy, xx = np.mgrid[0:n, 0:n]
        centres = np.stack([(xx + 0.5) / n, (yy + 0.5) / n], -1).reshape(-1, 1, 2)
        out.append(np.repeat(centres, per_cell, 1).reshape(-1, 2))
    return np.concatenate(out).astype(np.float32)


@dataclass
class Pose:
    """The model's view of one image, in that image's pixel coordinates.

    Attributes:
        xy: (33, 2) float32, landmark (x, y) in image pixels (may lie outside the image).
        z: (33,) float32, relative depth (scaled like x; for reports only).
        visibility: (33,) float32 in 0..1, the model's probability that the landmark is
            visible (in the frame and not occluded).
        landmark_presence: (33,) float32 in 0..1, probability that the landmark is in the frame.
        presence: float in 0..1, probability that a person is in the model's input.
        mask: (H, W) bool, the person segmentation at image size.
        mask_prob: (H, W) float32, the segmentation probability at image size.
        roi: (x0, y0, x1, y1) in image pixels, the region the landmark model saw.
        fit: how the ROI was chosen: "detect", "letterbox" or "stretch".
        detection: the detector's best score (nan when the detector did not run).
    """

    xy: np.ndarray
    z: np.ndarray
    visibility: np.ndarray
    landmark_presence: np.ndarray
    presence: float
    mask: np.ndarray
    mask_prob: np.ndarray
    roi: tuple[float, float, float, float]
    fit: str
    detection: float = float("nan")


class MediaPipeParser:
    """8-part parser from MediaPipe's pose models (``backend=mediapipe``).

    Args:
        num_threads: LiteRT CPU threads of this instance (one instance per worker process).
        presence_threshold: below this person presence the image is "no person".
        fit: ``"auto"``, ``"detect"``, ``"letterbox"`` or ``"stretch"`` (module docstring).
        pad: margin added on every side of a letterbox / stretch fit, as a fraction of the
            crop's longer side.
        detect_threshold: the detector score needed to use its ROI.
        partial_ratio: ``fit="auto"`` uses the detector's ROI when it is this many times the
            letterbox square (the body continues outside the crop).
        min_visibility: landmarks below this visibility are not trusted (their parts are not
            drawn; their pixels go to the nearest trusted part). 0.3: synthetic mIoU 0.57 /
            0.54 / 0.49 with 0.3 / 0.5 / 0.7 (0.15 no better); all photo checks pass with each.
        mask_threshold: person-mask probability threshold.
        low_presence: ``"none"`` (all background) or ``"stripes"`` below the presence threshold.
        interpolation: how a small crop is enlarged into the model input: ``"linear"``,
            ``"cubic"`` or ``"nearest"`` (shrinking always averages areas).
    """

    name = "mediapipe"

    def __init__(self, num_threads: int = 1, presence_threshold: float = 0.5, fit: str = "auto",
                 pad: float = 0.15, detect_threshold: float = 0.5, partial_ratio: float = 1.5,
                 min_visibility: float = 0.3, mask_threshold: float = 0.5,
                 low_presence: str = "none", interpolation: str = "linear"):
        if fit not in FITS:
            raise ValueError(f"fit={fit!r}: expected one of {', '.join(FITS)}")
        if low_presence not in LOW_PRESENCE:
            raise ValueError(f"low_presence={low_presence!r}: expected one of "
                             f"{', '.join(LOW_PRESENCE)}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation={interpolation!r}: expected one of "
                             f"{', '.join(INTERPOLATIONS)}")
        if not 0 <= pad < 1:
            raise ValueError(f"pad={pad!r}: expected a fraction in [0, 1)")
        from ai_edge_litert.interpreter import Interpreter  # heavy import: only when used

        self.presence_threshold = float(presence_threshold)
        self.detect_threshold = float(detect_threshold)
        self.partial_ratio = float(partial_ratio)
        self.fit, self.pad, self.interpolation = fit, float(pad), interpolation
        self.min_visibility, self.mask_threshold = float(min_visibility), float(mask_threshold)
        self.low_presence = low_presence

        def load(name: str):
            it = Interpreter(model_path=str(locate(name)), num_threads=int(num_threads))
            it.allocate_tensors()
            return it, it.get_input_details()[0]["index"], {
                d["name"]: d["index"] for d in it.get_output_details()}

        self._pose, self._pose_in, self._pose_out = load("pose_landmark_full.tflite")
        if fit in ("auto", "detect"):
            self._det, self._det_in, self._det_out = load("pose_detection.tflite")
            self._anchors = _ssd_anchors()

    # ------------------------------------------------------------------ placement
    @staticmethod
    def _warp(image: np.ndarray, s: tuple[float, float], o: tuple[float, float], size: int,
              interp: int) -> np.ndarray:
        """(size, size, 3) uint8: the image placed by X_in = s * X + o (continuous coordinates,
        pixel i covering [i, i + 1)), black outside the image."""
        sx, sy = s
        ox, oy = o
        h, w = image.shape[:2]
        if sx < 1 or sy < 1:  # shrink first by area averaging: warpAffine would alias
            nw, nh = max(1, round(w * sx)), max(1, round(h * sy))
            image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
            sx, sy = sx * w / nw, sy * h / nh
            interp = cv2.INTER_LINEAR
        # pixel centres: image pixel i is at input pixel s * (i + 0.5) + o - 0.5
        m = np.array([[sx, 0, ox + 0.5 * sx - 0.5], [0, sy, oy + 0.5 * sy - 0.5]])
        return cv2.warpAffine(image, m, (size, size), flags=interp, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=(0, 0, 0))

    def _fixed_placement(self, h: int, w: int, size: int, fit: str):
        """((sx, sy), (ox, oy)) of a letterbox or stretch fit into a size x size square."""
        margin = self.pad * max(h, w)
        if fit == "letterbox":
            s = size / (max(h, w) + 2 * margin)
            return (s, s), ((size - s * w) / 2, (size - s * h) / 2)
        sx, sy = size / (w + 2 * margin), size / (h + 2 * margin)
        return (sx, sy), (sx * margin, sy * margin)

    def detect(self, image: np.ndarray) -> tuple[float, np.ndarray | None]:
        """Run the pose detector on an (H, W, 3) uint8 RGB image.

        Returns (best score, keypoints (4, 2) in image pixels: hip centre, body-circle point,
        shoulder centre, upper-body point), the keypoints a score-weighted mean over the
        anchors that overlap the best one (MediaPipe's weighted non-maximum suppression).
        """
        h, w = image.shape[:2]
        k = DETECT_SIZE / max(h, w)  # letterbox, no margin: the detector looks at the whole crop
        s, o = (k, k), ((DETECT_SIZE - k * w) / 2, (DETECT_SIZE - k * h) / 2)
        x = self._warp(image, s, o, DETECT_SIZE, INTERPOLATIONS[self.interpolation])
        self._det.set_tensor(self._det_in, (x.astype(np.float32) / 127.5 - 1.0)[None])
        self._det.invoke()
        reg = self._det.get_tensor(self._det_out["Identity"])[0]
        score = _sigmoid(self._det.get_tensor(self._det_out["Identity_1"])[0, :, 0])
        best = int(np.argmax(score))
        # boxes (x, y, w, h) and keypoints are offsets in input pixels from each anchor centre
        centre = reg[:, :2] / DETECT_SIZE + self._anchors
        half = np.abs(reg[:, 2:4]) / DETECT_SIZE / 2
        lo, hi = centre - half, centre + half
        inter = np.clip(np.minimum(hi, hi[best]) - np.maximum(lo, lo[best]), 0, None).prod(1)
        union = (hi - lo).prod(1) + (hi[best] - lo[best]).prod() - inter
        group = (inter / np.maximum(union, 1e-9) > 0.3) & (score >= 0.5 * score[best])
        group[best] = True
        kps = reg[group, 4:12].reshape(-1, 4, 2) / DETECT_SIZE + self._anchors[group, None]
        kp = (kps * score[group, None, None]).sum(0) / score[group].sum() * DETECT_SIZE
        kp = (kp - np.array(o)) / np.array(s)
        return float(score[best]), kp.astype(np.float32)

    def _placement(self, image: np.ndarray):
        """((sx, sy), (ox, oy), fit used, detector score) for the landmark model's input."""
        h, w = image.shape[:2]
        if self.fit in ("letterbox", "stretch"):
            return (*self._fixed_placement(h, w, INPUT_SIZE, self.fit), self.fit, float("nan"))
        letterbox = (*self._fixed_placement(h, w, INPUT_SIZE, "letterbox"), "letterbox")
        score, kp = self.detect(image)
        side = 2 * ROI_SCALE * float(np.linalg.norm(kp[1] - kp[0]))
        if score < self.detect_threshold or side < 0.25 * max(h, w):  # nothing usable found
            return (*letterbox, score)
        if self.fit == "auto" and side < self.partial_ratio * (1 + 2 * self.pad) * max(h, w):
            # the body fits in the crop: the letterbox square is the better ROI (the
            # detector's body size is the noisier estimate, see the module docstring)
            return (*letterbox, score)
        s = INPUT_SIZE / side
        origin = (INPUT_SIZE / 2 - s * kp[0][0], INPUT_SIZE / 2 - s * kp[0][1])  # hips at the centre
        return (s, s), origin, "detect", score

    # ------------------------------------------------------------------ inference
    def landmarks(self, image: np.ndarray) -> Pose:
        """Run the models on an (H, W, 3) uint8 RGB image; everything in image pixels.

        Returns a :class:`Pose`: landmarks (33, 2), visibility (33,), presence, mask (H, W).
        """
        image = np.ascontiguousarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} "
                             f"{image.shape}")
        h, w = image.shape[:2]
        (sx, sy), (ox, oy), fit, det = self._placement(image)
        x = self._warp(image, (sx, sy), (ox, oy), INPUT_SIZE, INTERPOLATIONS[self.interpolation])
        it = self._pose
        it.set_tensor(self._pose_in, (x.astype(np.float32) / 255.0)[None])
        it.invoke()
        raw = it.get_tensor(self._pose_out["Identity"]).reshape(-1, 5)[:NUM_LANDMARKS]
        presence = float(it.get_tensor(self._pose_out["Identity_1"]).reshape(-1)[0])
        seg = it.get_tensor(self._pose_out["Identity_2"])[0, :, :, 0]
        xy = np.stack([(raw[:, 0] - ox) / sx, (raw[:, 1] - oy) / sy], 1).astype(np.float32)
        # The segmentation covers the input square; sample it at each image pixel's centre.
        to_input = np.array([[sx, 0, ox + 0.5 * sx - 0.5], [0, sy, oy + 0.5 * sy - 0.5]])
        prob = cv2.warpAffine(_sigmoid(seg.astype(np.float32)), to_input, (w, h),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        roi = (-ox / sx, -oy / sy, (INPUT_SIZE - ox) / sx, (INPUT_SIZE - oy) / sy)
        return Pose(xy=xy, z=(raw[:, 2] / sx).astype(np.float32),
                    visibility=_sigmoid(raw[:, 3]).astype(np.float32),
                    landmark_presence=_sigmoid(raw[:, 4]).astype(np.float32),
                    presence=presence, mask=prob >= self.mask_threshold,
                    mask_prob=prob.astype(np.float32), roi=roi, fit=fit, detection=det)

    def parse(self, image: np.ndarray, source: str | None = None) -> ParseResult:
        """Parse an (H, W, 3) uint8 RGB crop into a :class:`ParseResult` with (H, W) labels."""
        pose = self.landmarks(image)
        return self.parse_pose(pose, image.shape[:2])

    def parse_pose(self, pose: Pose, shape: tuple[int, int]) -> ParseResult:
        """The :class:`ParseResult` of a :class:`Pose` already computed for an image of
        ``shape`` (H, W)."""
        info = dict(presence=round(pose.presence, 4), fit=pose.fit)
        if pose.presence < self.presence_threshold:
            if self.low_presence == "stripes" and pose.mask.any():
                info["fallback"] = "stripes"
                return ParseResult(stripes(pose.mask), True, pose.presence, info)
            info["reason"] = "low presence"
            return ParseResult(np.zeros(shape, np.uint8), False, pose.presence, info)
        labels = parts_from_pose(pose.xy, pose.visibility, pose.mask, self.min_visibility)
        if not labels.any():  # empty mask or no trusted landmark: nothing to stand on
            info["reason"] = "empty mask" if not pose.mask.any() else "no trusted landmark"
            return ParseResult(labels, False, pose.presence, info)
        return ParseResult(labels, True, pose.presence, info)
