"""Deterministic synthetic pedestrian ReID dataset in the Market-1501 layout.

Why: unit/integration tests and smoke runs need a dataset with *exact* part label maps
(the 8-part scheme of :mod:`magnifier.parts`) that the real Market-1501 reader can
read unchanged. Every person is drawn as a stack of polygons (head, torso, arms, legs,
feet) that is painted twice from the same geometry: once into a *label* map (part ids)
and once into a *material* map (skin, hair, shirt, trousers, shoes, bag, occluder).
The RGB image is then composed with numpy: background scene, per-material colour and
texture, soft shading, camera lighting, slight blur and noise. Because labels and pixels
come from the same polygons, the label map is exact by construction.

Layout written under ``root`` (names follow Market-1501: ``PPPP_cCsS_FFFFFF_NN.jpg``)::

    bounding_box_train/  query/  bounding_box_test/        JPEG, quality 95
    masks/<split>/<stem>.png                               mode "L", values 0..7
    occluded_queries.txt                                   one query file name a line
    .complete                                              JSON marker, written last

Sources of variation:
  * identity: palette colours + texture per garment (shirt: torso/upper arms, and lower
    arms with long sleeves; trousers/shorts/skirt; shoes; hair; skin), build, bag.
    Colours come from a small palette, so only the *combination* identifies a person.
  * near twins: about ``twin_ratio`` of the identities come in pairs that differ only
    in shoes colour, hair colour or a bag. Bag pixels are labelled torso (2): a carried
    bag belongs to the upper body in the EANet scheme and there is no "accessory" label.
  * camera: lighting gain/colour cast, background scene + clutter, figure scale/offset,
    view (front/side), stride, arm swing and lean; plus per-image jitter of all of them.
  * occlusion: ``occluded_query_ratio`` of the queries get an occluder (car, bush, pole,
    wall or another person's silhouette) covering 20-45% of the figure from the bottom
    or a side; occluded pixels are labelled background (0).

Determinism: each image draws from ``default_rng(SeedSequence((seed, 3, pid, cam, index)))``
(distractors from ``(seed, 4, k)``), identities from ``(seed, 1, pid)`` and the plan from
other fixed keys, so results do not depend on process count or order of work.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from magnifier.parts import PART_NAMES

SPLITS = ("bounding_box_train", "query", "bounding_box_test")
DEFAULTS = dict(num_ids=200, num_cams=4, images_per_cam=3, height=128, width=64, seed=0,
                occluded_query_ratio=0.3, twin_ratio=0.3)
MARKER, OCCLUDED_LIST, VERSION = ".complete", "occluded_queries.txt", 1
HEAD, TORSO, UARM, LARM, ULEG, LLEG, FOOT = (PART_NAMES.index(n) for n in (
    "head", "torso", "upper_arm", "lower_arm", "upper_leg", "lower_leg", "foot"))
SKIN, HAIR, SHIRT, LOWER, SHOES, BAG, OCCL = range(1, 8)  # material ids (0 = background)
CLOTH = np.array([(20, 20, 24), (235, 235, 230), (128, 128, 128), (30, 40, 110), (190, 30, 35),
                  (40, 110, 200), (40, 120, 60), (230, 200, 40), (110, 70, 40), (210, 190, 150),
                  (230, 130, 170), (110, 50, 140), (235, 120, 30), (20, 70, 60)], np.float32)
HAIR_COLS = np.array([(15, 12, 10), (60, 35, 20), (120, 80, 45), (215, 185, 120),
                      (160, 160, 160), (150, 60, 30)], np.float32)
SKIN_COLS = np.array([(240, 200, 170), (220, 170, 130), (170, 115, 80), (100, 65, 45)], np.float32)
TEXTURES = ("solid", "solid", "hstripes", "vstripes", "checks", "dots")


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _garment(rng) -> dict:
    c1, c2 = rng.choice(len(CLOTH), 2, replace=False)
    return dict(kind=str(rng.choice(TEXTURES)), c1=CLOTH[c1].tolist(), c2=CLOTH[c2].tolist(),
                period=float(rng.uniform(0.03, 0.055)))


def _identity(rng) -> dict:
    """Appearance of one person (plain JSON-able dict, so it can travel to worker processes)."""
    return dict(skin=SKIN_COLS[rng.integers(len(SKIN_COLS))].tolist(),
                hair=HAIR_COLS[rng.integers(len(HAIR_COLS))].tolist(),
                hair_long=bool(rng.random() < 0.3), shirt=_garment(rng),
                long_sleeves=bool(rng.random() < 0.5), lower=_garment(rng),
                lower_style=str(rng.choice(["long", "long", "long", "shorts", "skirt"])),
                shoes=CLOTH[rng.choice([0, 1, 2, 3, 4, 8, 9])].tolist(),
                bag=CLOTH[rng.integers(len(CLOTH))].tolist() if rng.random() < 0.15 else None,
                bag_side=int(rng.choice([-1, 1])), build=float(rng.uniform(0.85, 1.15)))


def _far_colour(rng, palette: np.ndarray, colour) -> list:
    """A palette colour clearly different from `colour` (twins must differ visibly)."""
    far = np.flatnonzero(np.linalg.norm(palette - np.asarray(colour), axis=1) > 90)
    return palette[rng.choice(far)].tolist()


def _make_twin(a: dict, rng) -> tuple[dict, dict, str]:
    """Copy identity `a` and change exactly one small region; returns (a, b, region)."""
    b, region = json.loads(json.dumps(a)), str(rng.choice(["shoes", "hair", "bag"]))
    if region == "shoes":
        b["shoes"] = _far_colour(rng, CLOTH, a["shoes"])
    elif region == "hair":
        b["hair"] = _far_colour(rng, HAIR_COLS, a["hair"])
    else:  # exactly one of the pair carries a bag
        a["bag"], b["bag"] = None, _far_colour(rng, CLOTH, a["shirt"]["c1"])
    return a, b, region


def _camera(seed: int, cam: int) -> dict:
    """Fixed per-camera conditions; all coordinates are fractions of the frame."""
    r = _rng(seed, 8, cam)
    wall, floor = r.uniform(40, 215, 3), r.uniform(40, 200, 3)
    clutter = [dict(kind=str(r.choice(["rect", "line"])), box=r.uniform(0, 1, 4).tolist(),
                    colour=r.uniform(0, 255, 3).tolist(), w=int(r.integers(1, 4)))
               for _ in range(int(r.integers(3, 9)))]
    return dict(gain=float(r.uniform(0.65, 1.2)), cast=r.uniform(0.85, 1.15, 3).tolist(),
                wall=wall.tolist(), floor=floor.tolist(), horizon=float(r.uniform(0.5, 0.85)),
                clutter=clutter, scale=float(r.uniform(0.74, 0.95)), dx=float(r.uniform(-.08, .08)),
                side_view=bool(r.random() < 0.35), facing=int(r.choice([-1, 1])),
                stride=float(r.uniform(0.03, 0.35)), swing=float(r.uniform(0.05, 0.4)),
                lean=float(r.uniform(-0.06, 0.06)), noise=float(r.uniform(2, 6)))


# ----------------------------------------------------------------------------- drawing
def _ellipse(cu, cv, ru, rv, a0=0.0, a1=2 * math.pi, n=16) -> np.ndarray:
    t = np.linspace(a0, a1, n)
    return np.stack([cu + ru * np.cos(t), cv + rv * np.sin(t)], 1)


def _limb(a, b, wa, wb) -> np.ndarray:
    """Tapered quad from joint a to joint b (figure units), half-widths wa -> wb."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = (b - a) / (np.linalg.norm(b - a) + 1e-9)
    n = np.array([-d[1], d[0]])
    return np.stack([a + n * wa, b + n * wb, b - n * wb, a - n * wa])


def _figure(ident: dict, pose: dict) -> list:
    """Person as polygons in paint order: [(points (k, 2) in (u, v), label, material)].

    Units: figure height = 1; u across (0 = body axis), v down from the top of the head.
    """
    bw, side, f = ident["build"], pose["side_view"], pose["facing"]
    sx = 0.45 if side else 1.0  # side view: shoulders/hips overlap -> narrower silhouette
    prims, arm_prims = [], []
    lower_mat = {"long": (LOWER, LOWER), "shorts": (LOWER, SKIN), "skirt": (SKIN, SKIN)}
    up_mat, low_mat = lower_mat[ident["lower_style"]]
    for i, sgn in enumerate((-1, 1)):  # legs: one forward, one back (stride)
        hip = np.array([sgn * 0.05 * bw * sx, 0.49])
        phi = sgn * pose["stride"] * pose["leg_phase"]
        knee = hip + 0.23 * np.array([math.sin(phi), math.cos(phi)])
        psi = phi + pose["knee_bend"][i]
        ankle = knee + 0.22 * np.array([math.sin(psi), math.cos(psi)])
        prims += [(_limb(hip, knee, 0.052 * bw, 0.038 * bw), ULEG, up_mat),
                  (_ellipse(*knee, 0.038 * bw, 0.038 * bw), ULEG, up_mat),
                  (_limb(knee, ankle, 0.036 * bw, 0.026 * bw), LLEG, low_mat)]
        toe = 0.075 if side else 0.035
        foot = np.array([[-0.028 * f, -0.012], [toe * f, 0.02], [toe * f, 0.05], [-0.03 * f, 0.05]])
        prims.append((ankle + foot, FOOT, SHOES))
    if ident["lower_style"] == "skirt":
        prims.append((np.array([[-.1 * bw * sx, .46], [.1 * bw * sx, .46], [.16 * bw, .67],
                                [-.16 * bw, .67]]), ULEG, LOWER))
    ws, wh = 0.125 * bw * (0.7 if side else 1), 0.095 * bw * (0.75 if side else 1)
    torso = [(np.array([[-ws, 0.16], [ws, 0.16], [wh, 0.51], [-wh, 0.51]]), TORSO, SHIRT)]
    torso += [(_ellipse(s * (ws - 0.04), 0.2, 0.045, 0.045), TORSO, SHIRT) for s in (-1, 1)]
    head = []
    if ident["hair_long"]:  # behind the face, visible at the sides and on the shoulders
        head.append((np.array([[-.058, .06], [.058, .06], [.062, .17], [-.062, .17]]), HEAD, HAIR))
    head += [(np.array([[-.022, .12], [.022, .12], [.024, .18], [-.024, .18]]), HEAD, SKIN),
             (_ellipse(0.006 * f * side, 0.075, 0.048, 0.066), HEAD, SKIN),
             (_ellipse(0, 0.07, 0.053, 0.062, math.pi, 2 * math.pi), HEAD, HAIR)]
    for i, sgn in enumerate((-1, 1)):  # arms swing opposite to the legs
        sh = np.array([sgn * (ws - 0.015) * (0.35 if side else 1), 0.19])
        alpha = sgn * 0.08 * (0 if side else 1) - sgn * pose["swing"] * pose["leg_phase"]
        elbow = sh + 0.17 * np.array([math.sin(alpha), math.cos(alpha)])
        beta = alpha + f * pose["elbow_bend"][i]
        wrist = elbow + 0.15 * np.array([math.sin(beta), math.cos(beta)])
        arm_prims.append([(_limb(sh, elbow, 0.036 * bw, 0.03 * bw), UARM, SHIRT),
                          (_ellipse(*elbow, 0.03 * bw, 0.03 * bw), UARM, SHIRT),
                          (_limb(elbow, wrist, 0.028, 0.022),
                           LARM, SHIRT if ident["long_sleeves"] else SKIN),
                          (_ellipse(*(wrist + 0.02 * (wrist - elbow) / 0.15), 0.024, 0.026),
                           LARM, SKIN)])
    # side view: the far arm is behind the torso; front view: both arms in front of it
    back = arm_prims[0] if side else []
    front = arm_prims[1] + ([] if side else arm_prims[0])
    prims = back + prims + torso + head + front
    if ident["bag"] is not None:  # strap from the opposite shoulder + bag at the hip
        s = ident["bag_side"]
        prims += [(_limb((-s * ws * 0.8, 0.17), (s * 0.1, 0.42), 0.01, 0.01), TORSO, BAG),
                  (np.array([[s * .05, .4], [s * .17, .4], [s * .17, .55], [s * .05, .55]]),
                   TORSO, BAG)]
    return prims


def _texture(g: dict, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Garment colours, (H, W, 3) float32, from figure coordinates u, v of shape (H, W)."""
    p, kind = g["period"], g["kind"]
    if kind == "hstripes":
        on = np.floor(v / p) % 2 == 1
    elif kind == "vstripes":
        on = np.floor(u / p) % 2 == 1
    elif kind == "checks":
        on = (np.floor(u / p) + np.floor(v / p)) % 2 == 1
    elif kind == "dots":
        on = ((u / p) % 1 - 0.5) ** 2 + ((v / p) % 1 - 0.5) ** 2 < 0.08
    else:
        on = np.zeros(u.shape, bool)
    return np.where(on[..., None], np.float32(g["c2"]), np.float32(g["c1"]))


def _background(cam: dict, rng, h: int, w: int) -> np.ndarray:
    """Camera scene (wall/floor gradient + clutter) with small per-image shifts, (H, W, 3)."""
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    hz = cam["horizon"] + rng.uniform(-0.03, 0.03)
    img = np.where(yy < hz, np.float32(cam["wall"]) * (0.8 + 0.3 * yy),
                   np.float32(cam["floor"]) * (1.1 - 0.3 * yy))
    pil = Image.fromarray(np.broadcast_to(img, (h, w, 3)).clip(0, 255).astype(np.uint8))
    draw, (ox, oy) = ImageDraw.Draw(pil), rng.uniform(-0.05, 0.05, 2)
    extra = [dict(kind="rect", box=rng.uniform(0, 1, 4).tolist(), w=1,
                  colour=rng.uniform(0, 255, 3).tolist()) for _ in range(rng.integers(0, 3))]
    for c in cam["clutter"] + extra:
        x0, x1 = sorted((np.array(c["box"][::2]) + ox) * w)
        y0, y1 = sorted((np.array(c["box"][1::2]) + oy) * h)
        col = tuple(int(x) for x in c["colour"])
        if c["kind"] == "rect":  # half-size boxes: clutter, not a second scene
            draw.rectangle([x0, y0, x0 + (x1 - x0) * 0.5, y0 + (y1 - y0) * 0.5], fill=col)
        else:
            draw.line([x0, y0, x1, y1], fill=col, width=c["w"])
    return np.asarray(pil, np.float32)


def _cut(counts: np.ndarray, frac: float, total: int) -> int:
    """First index whose cumulative body count reaches frac * total, stepping back one
    row/column if that overshoots 45% (a single column can hold ~6% of the body)."""
    cum = np.cumsum(counts)
    k = int(np.searchsorted(cum, frac * total))
    return k - 1 if k > 0 and cum[min(k, len(cum) - 1)] > 0.45 * total else k


def _occlude(label, mat, rng, h, w) -> float:
    """Paint an occluder over 20-45% of the visible figure (in place); returns the share."""
    body = label > 0
    total, frac = body.sum(), rng.uniform(0.22, 0.43)
    canvas_l = Image.new("L", (w, h), 0)
    draw, kind = ImageDraw.Draw(canvas_l), str(rng.choice(["bottom", "left", "right"]))
    if kind == "bottom":  # car / bench / bush: cut row from the bottom-up body count
        y = h - 1 - _cut(body.sum(1)[::-1], frac, total)
        band = [-1, y, w, h]
        shape = str(rng.choice(["rect", "car", "bush"]))
        if shape == "car":
            draw.rounded_rectangle([-w * 0.3, y, w * 1.3, h + 10], radius=h * 0.08, fill=1)
        elif shape == "bush":
            draw.ellipse([-w * 0.4, y, w * 1.4, y + 2.2 * (h - y)], fill=1)
    else:  # pole / wall / another person's silhouette entering from one side
        k = _cut(body.sum(0) if kind == "left" else body.sum(0)[::-1], frac, total)
        x0, x1 = (-1, k) if kind == "left" else (w - 1 - k, w)
        band, shape = [x0, -1, x1, h], str(rng.choice(["rect", "person"]))
        if shape == "person":
            hw = (x1 - x0) / 2
            draw.ellipse([x0 + hw * 0.4, h * 0.08, x1 - hw * 0.4, h * 0.25], fill=1)
            draw.rounded_rectangle([x0, h * 0.22, x1, h + 5], radius=hw * 0.6, fill=1)
    occ = np.asarray(canvas_l) > 0
    share = (body & occ).sum() / max(total, 1)
    if shape == "rect" or not 0.2 <= share <= 0.45:  # fall back to the exact band
        draw.rectangle(band, fill=1)
        occ = np.asarray(canvas_l) > 0
        share = (body & occ).sum() / max(total, 1)
    label[occ], mat[occ] = 0, OCCL
    return float(share)


def render(ident, cam: dict, rng, h: int = 128, w: int = 64, occluded: bool = False):
    """Draw one image. Returns (rgb (H, W, 3) uint8, label (H, W) uint8, occluded share).

    `ident` None draws a background-only frame (a Market-style distractor).
    """
    bg = _background(cam, rng, h, w)
    scale = cam["scale"] * rng.uniform(0.96, 1.04)
    hf = scale * h  # figure height in pixels
    cx = w * (0.5 + cam["dx"]) + rng.uniform(-0.05, 0.05) * w
    bottom = h - 1 - rng.uniform(0, (1 - scale) * h * 0.8)
    pose = dict(side_view=cam["side_view"], facing=cam["facing"],
                stride=max(0.0, cam["stride"] + rng.normal(0, 0.05)),
                swing=max(0.0, cam["swing"] + rng.normal(0, 0.05)),
                leg_phase=float(rng.choice([-1, 1])) * rng.uniform(0.6, 1.0),
                knee_bend=rng.uniform(-0.05, 0.15, 2), elbow_bend=rng.uniform(0.0, 0.35, 2))
    lean = cam["lean"] + rng.normal(0, 0.015)
    lab_img, mat_img = Image.new("L", (w, h), 0), Image.new("L", (w, h), 0)
    dl, dm = ImageDraw.Draw(lab_img), ImageDraw.Draw(mat_img)
    if ident is not None:
        c, s = math.cos(lean), math.sin(lean)
        for pts, lab, mat in _figure(ident, pose):
            uu, vv = pts[:, 0], pts[:, 1] - 1.0  # rotate about the feet, then to pixels
            xy = np.stack([cx + hf * (uu * c - vv * s), bottom + hf * (uu * s + vv * c)], 1)
            xy = [tuple(p) for p in xy.tolist()]
            dl.polygon(xy, fill=lab)
            dm.polygon(xy, fill=mat)
    label, mat = np.array(lab_img), np.array(mat_img)
    share = _occlude(label, mat, rng, h, w) if occluded and label.any() else 0.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = (xx - cx) / hf, (yy - (bottom - hf)) / hf
    img = bg
    if ident is not None:
        shade = (1.0 - 0.9 * np.minimum(np.abs(u), 0.25) ** 2)[..., None]  # rounded-body look
        colours = {SKIN: np.float32(ident["skin"]), HAIR: np.float32(ident["hair"]),
                   SHOES: np.float32(ident["shoes"]), BAG: np.float32(ident["bag"] or 0)}
        colours[SHIRT] = _texture(ident["shirt"], u, v)
        colours[LOWER] = _texture(ident["lower"], u, v)
        for m, col in colours.items():
            img = np.where((mat == m)[..., None], np.broadcast_to(col, img.shape) * shade, img)
    if share > 0:
        g = _garment(rng)
        occ_col = _texture(g, u * 0.6, v * 0.6) * rng.uniform(0.5, 1.0)
        img = np.where((mat == OCCL)[..., None], occ_col, img)
    img = img * np.float32(cam["cast"]) * cam["gain"] * rng.uniform(0.94, 1.06)
    pil = Image.fromarray(img.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.5))
    img = np.asarray(pil, np.float32) + rng.normal(0, cam["noise"], (h, w, 3))
    return img.clip(0, 255).astype(np.uint8), label, share


def _render_job(job: dict) -> tuple:
    """Worker: render one planned image and write JPEG + label PNG."""
    root, h, w = Path(job["root"]), job["height"], job["width"]
    rgb, label, share = render(job["ident"], job["cam"], _rng(*job["key"]), h, w, job["occluded"])
    stem = job["name"][:-4]
    Image.fromarray(rgb).save(root / job["split"] / job["name"], quality=95)
    Image.fromarray(label, mode="L").save(root / "masks" / job["split"] / f"{stem}.png")
    return job["split"], job["name"], job["pid"], job["cam_id"], share


# ----------------------------------------------------------------------------- planning
def _plan(root: Path, p: dict) -> tuple[list, list]:
    """All jobs (one per image) in a fixed order, and the twin pairs [[pid_a, pid_b, region]]."""
    n, nc, ipc, seed = p["num_ids"], p["num_cams"], p["images_per_cam"], p["seed"]
    if n < 2 or nc < 2 or ipc < 1:
        raise ValueError("need num_ids >= 2, num_cams >= 2 (for cross-camera matches), "
                         "images_per_cam >= 1")
    n_train = n // 2
    pids = {"train": list(range(1, n_train + 1)), "test": list(range(n_train + 1, n + 1))}
    idents = {pid: _identity(_rng(seed, 1, pid)) for pid in range(1, n + 1)}
    twins, trng = [], _rng(seed, 5)
    for group in pids.values():  # twins stay inside one split: hard cases for the test set
        order = trng.permutation(group).tolist()
        for k in range(int(round(p["twin_ratio"] * len(group) / 2))):
            a, b = order[2 * k], order[2 * k + 1]
            idents[a], idents[b], region = _make_twin(idents[a], trng)
            twins.append([a, b, region])
    cams = [_camera(seed, c) for c in range(1, nc + 1)]
    entries = []  # (split, pid, cam, image index, rng key)
    for pid in range(1, n + 1):
        r = _rng(seed, 2, pid)
        cset = sorted(r.choice(nc, int(r.integers(2, nc + 1)), replace=False) + 1)
        for c in cset:
            for i in range(ipc):
                if pid <= n_train:
                    split = "bounding_box_train"
                else:  # index 0 -> query; with 1 image/cam the last camera stays in the gallery
                    split = "query" if i == 0 and not (ipc == 1 and c == cset[-1]) else \
                        "bounding_box_test"
                entries.append((split, pid, int(c), i, (seed, 3, pid, int(c), i)))
    n_distractors = max(2, (n - n_train) // 5)
    drng = _rng(seed, 6)
    for k in range(n_distractors):
        entries.append(("bounding_box_test", 0, int(drng.integers(1, nc + 1)), k, (seed, 4, k)))
    queries = [j for j, e in enumerate(entries) if e[0] == "query"]
    n_occ = int(round(p["occluded_query_ratio"] * len(queries)))
    occluded = set(np.array(queries)[drng.permutation(len(queries))[:n_occ]].tolist())
    frame = dict.fromkeys(range(1, nc + 1), 0)
    jobs = []
    for j, (split, pid, c, i, key) in enumerate(entries):
        frame[c] += int(drng.integers(1, 60))  # running frame counter per camera: unique names
        if pid == 0:  # half background-only, half an unseen random person
            ident = _identity(_rng(seed, 7, i)) if drng.random() < 0.5 else None
        else:
            ident = idents[pid]
        jobs.append(dict(root=str(root), split=split, pid=pid, cam_id=c, key=key,
                         name=f"{pid:04d}_c{c}s1_{frame[c]:06d}_01.jpg", ident=ident,
                         cam=cams[c - 1], occluded=j in occluded,
                         height=p["height"], width=p["width"]))
    return jobs, twins


def _params(params: dict) -> dict:
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    out = {}
    for k, default in DEFAULTS.items():  # normalise types so the marker compares exactly
        v = params.get(k, default)
        try:
            out[k] = type(default)(v)
        except (TypeError, ValueError):
            raise ValueError(f"{k} must be {type(default).__name__}, got {v!r}") from None
    return out


def is_complete(root, **params) -> bool:
    """True iff `root` holds a finished generation made with exactly these parameters."""
    params.pop("processes", None)  # does not change the output
    try:
        marker = json.loads((Path(root) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("version") == VERSION and marker.get("params") == _params(params)


def generate(root, num_ids=200, num_cams=4, images_per_cam=3, height=128, width=64, seed=0,
             occluded_query_ratio=0.3, twin_ratio=0.3, processes=None) -> dict:
    """Write the dataset under `root` (skipped if already complete with the same parameters).

    Returns the marker content plus ``path``: ``params``, ``counts`` ({split: {ids, images,
    cameras, distractors}}), ``twins`` ([[pid_a, pid_b, region]]) and ``occluded_queries``.
    """
    root = Path(root)
    p = _params(dict(num_ids=num_ids, num_cams=num_cams, images_per_cam=images_per_cam,
                     height=height, width=width, seed=seed,
                     occluded_query_ratio=occluded_query_ratio, twin_ratio=twin_ratio))
    if is_complete(root, **p):
        return {**json.loads((root / MARKER).read_text()), "path": str(root)}
    jobs, twins = _plan(root, p)  # validates parameters before anything is deleted
    (root / MARKER).unlink(missing_ok=True)  # first: an interrupted run stays incomplete
    for d in (*SPLITS, "masks"):
        shutil.rmtree(root / d, ignore_errors=True)
    (root / OCCLUDED_LIST).unlink(missing_ok=True)
    for s in SPLITS:
        (root / "masks" / s).mkdir(parents=True, exist_ok=True)
        (root / s).mkdir(parents=True, exist_ok=True)
    processes = processes or os.cpu_count() or 1
    if processes > 1 and len(jobs) > 50:
        with mp.get_context().Pool(processes) as pool:
            results = pool.map(_render_job, jobs, chunksize=max(1, len(jobs) // (processes * 8)))
    else:
        results = [_render_job(j) for j in jobs]
    occluded = sorted(name for split, name, *_, share in results if split == "query" and share > 0)
    (root / OCCLUDED_LIST).write_text("".join(f"{n}\n" for n in occluded))
    counts = {}
    for s in SPLITS:
        rows = [r for r in results if r[0] == s]
        counts[s] = dict(ids=len({r[2] for r in rows if r[2] > 0}), images=len(rows),
                         cameras=len({r[3] for r in rows}),
                         distractors=sum(r[2] == 0 for r in rows))
    marker = dict(version=VERSION, params=p, counts=counts, twins=twins,
                  occluded_queries=len(occluded))
    tmp = root / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1))
    os.replace(tmp, root / MARKER)  # atomic: the marker is either absent or whole
    return {**marker, "path": str(root)}


def main(argv=None) -> int:
    """CLI: ``python -m magnifier.data.synthetic root=PATH [num_ids=200 seed=0 ...]``."""
    from omegaconf import OmegaConf

    argv = sys.argv[1:] if argv is None else list(argv)
    allowed = ["root", *DEFAULTS, "processes"]
    if any(a in ("-h", "--help") for a in argv):
        print("usage: python -m magnifier.data.synthetic root=PATH " +
              " ".join(f"[{k}={v}]" for k, v in DEFAULTS.items()) + " [processes=N]")
        return 0
    try:
        cfg = OmegaConf.to_container(OmegaConf.from_dotlist(argv))
    except Exception as e:  # noqa: BLE001 - any parse error is a usage error
        print(f"error: cannot parse arguments ({str(e).splitlines()[0]}); use key=value",
              file=sys.stderr)
        return 2
    unknown = sorted(set(cfg) - set(allowed))
    if unknown or not cfg.get("root"):
        msg = f"unknown key(s): {', '.join(unknown)}" if unknown else "root=PATH is required"
        print(f"error: {msg} (allowed: {', '.join(allowed)})", file=sys.stderr)
        return 2
    try:
        summary = generate(**cfg)
    except (TypeError, ValueError) as e:  # bad values, e.g. num_cams=1
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'split':<20}{'ids':>6}{'images':>8}{'cameras':>9}")
    for split, c in summary["counts"].items():
        print(f"{split:<20}{c['ids']:>6}{c['images']:>8}{c['cameras']:>9}")
    print(f"twins: {len(summary['twins'])}  occluded queries: {summary['occluded_queries']}")
    print(f"path: {Path(summary['path']).resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
