"""How fast and how right is the built-in MediaPipe part parser on ReID crops?

    NO_ALBUMENTATIONS_UPDATE=1 python benchmarks/parse_pose.py [--num-ids 40] [--repeat 60]

Prints Markdown tables:

1. speed: images/s of one worker (one process, ``num_threads=1``) at 128x64 and 256x128,
   wall clock and process CPU time (CPU time is the better guide when other jobs share the
   cores), and the projected hours for the Market-1501 (12,936) and MSMT17 (32,621) train sets;
2. real photographs (``bus.jpg`` crops at ReID sizes, ``astronaut.png`` head and shoulders):
   presence and part sanity (head above torso above legs, arms not below the feet, no legs on
   the astronaut) for each fit mode / padding / interpolation;
3. the synthetic dataset (:mod:`magnifier.data.synthetic`, exact label maps): person found,
   per-part IoU, mean IoU and pixel accuracy for each variant, and what to do below the
   presence threshold (nothing, stripes, or the geometric parts anyway).

The synthetic people are flat cartoon figures, not photographs: a low presence there says as
much about the figures as about the parser.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from magnifier.data import synthetic  # noqa: E402
from magnifier.parts import NUM_PARTS, PART_NAMES  # noqa: E402
from magnifier.parsers.geometry import parts_from_pose, stripes  # noqa: E402
from magnifier.parsers.mediapipe_pose import MediaPipeParser  # noqa: E402
from magnifier.parsers.weights import locate  # noqa: E402

TRAIN_IMAGES = {"Market-1501": 12936, "MSMT17": 32621}
SIZES = ((128, 64), (256, 128))
#: person boxes in bus.jpg (x0, y0, x1, y1), checked by eye on crops of the photo
BUS_BOXES = {"bus_left": (45, 390, 250, 905), "bus_mid": (215, 395, 350, 862),
             "bus_cut": (660, 370, 810, 885)}  # the last one is cut off by the photo's edge
#: person-free boxes of bus.jpg (pavement, bus side, building, tree), at 128x64: no person
EMPTY_BOXES = ((420, 860, 540, 1080), (470, 520, 590, 760), (520, 0, 670, 300), (0, 0, 150, 300))
VARIANTS = {  # MediaPipeParser arguments; the first is the default
    "auto, pad .15 (default)": dict(),
    "auto, pad 0": dict(pad=0.0),
    "auto, pad .1": dict(pad=0.1),
    "auto, pad .2": dict(pad=0.2),
    "auto, pad .15, cubic": dict(interpolation="cubic"),
    "auto, pad .15, nearest": dict(interpolation="nearest"),
    "detect": dict(fit="detect"),
    "letterbox, pad .15": dict(fit="letterbox"),
    "letterbox, pad 0": dict(fit="letterbox", pad=0.0),
    "stretch, pad 0": dict(fit="stretch", pad=0.0),
}
LEGS = (5, 6, 7)


def photo_crops() -> dict[str, np.ndarray]:
    """The real test crops: each bus person at both ReID sizes, the astronaut at 128 and 512."""
    bus = np.asarray(Image.open(locate("bus.jpg")).convert("RGB"))
    astro = np.asarray(Image.open(locate("astronaut.png")).convert("RGB"))
    crops = {}
    for name, (x0, y0, x1, y1) in BUS_BOXES.items():
        for h, w in SIZES:
            crops[f"{name} {h}x{w}"] = cv2.resize(bus[y0:y1, x0:x1], (w, h), interpolation=cv2.INTER_AREA)
    crops["astro 128x128"] = cv2.resize(astro, (128, 128), interpolation=cv2.INTER_AREA)
    crops["astro 512x512"] = astro
    for k, (x0, y0, x1, y1) in enumerate(EMPTY_BOXES):
        crops[f"empty{k + 1}"] = cv2.resize(bus[y0:y1, x0:x1], (64, 128), interpolation=cv2.INTER_AREA)
    return crops


def mean_row(labels: np.ndarray, parts) -> float:
    rows = np.nonzero(np.isin(labels, parts))[0]
    return float(rows.mean()) if rows.size else float("nan")


def sanity(labels: np.ndarray, mask: np.ndarray, partial: bool) -> list[str]:
    """What is wrong with a map of a standing person (empty list = plausible)."""
    bad = []
    if (labels[~mask] > 0).any():
        bad.append("outside mask")
    head, torso, legs = mean_row(labels, (1,)), mean_row(labels, (2,)), mean_row(labels, LEGS)
    arms, feet = mean_row(labels, (3, 4)), mean_row(labels, (7,))
    if not head < torso:
        bad.append("head !< torso")
    if partial:
        if np.isin(labels, LEGS).sum() > 0.01 * labels.size:
            bad.append("legs on a head-and-shoulders image")
        return bad
    if not torso < legs:
        bad.append("torso !< legs")
    if not np.isnan(arms) and not np.isnan(feet) and arms > feet:
        bad.append("arms below feet")
    return bad


def bench_speed(repeat: int) -> list[str]:
    bus = np.asarray(Image.open(locate("bus.jpg")).convert("RGB"))
    x0, y0, x1, y1 = BUS_BOXES["bus_left"]
    out = ["| fit | crop | ms/image (wall) | ms/image (CPU) | of which detector / geometry (CPU ms) | "
           "images/s (wall) | " + " | ".join(f"{k} ({v:,}) h/worker" for k, v in TRAIN_IMAGES.items())
           + " |", "|---|---|---|---|---|---|" + "---|" * len(TRAIN_IMAGES)]

    def timed(fn) -> tuple[float, float]:
        for _ in range(3):
            fn()  # warm-up: the first invokes allocate and tune kernels
        t, c = time.perf_counter(), time.process_time()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - t) / repeat, (time.process_time() - c) / repeat

    for fit in ("auto", "letterbox"):
        parser = MediaPipeParser(num_threads=1, fit=fit)
        for h, w in SIZES:
            img = cv2.resize(bus[y0:y1, x0:x1], (w, h), interpolation=cv2.INTER_AREA)
            wall, cpu = timed(lambda: parser.parse(img))
            det = timed(lambda: parser.detect(img))[1] if fit == "auto" else 0.0
            pose = parser.landmarks(img)
            geo = timed(lambda: parser.parse_pose(pose, img.shape[:2]))[1]
            proj = " | ".join(f"{n * wall / 3600:.2f} (CPU {n * cpu / 3600:.2f})" for n in TRAIN_IMAGES.values())
            out.append(f"| {fit} | {h}x{w} | {1e3 * wall:.1f} | {1e3 * cpu:.1f} | {1e3 * det:.1f} / "
                       f"{1e3 * geo:.1f} | {1 / wall:.0f} | {proj} |")
    return out


def bench_photos() -> list[str]:
    crops = photo_crops()
    out = ["| variant | " + " | ".join(crops) + " | right |", "|---|" + "---|" * (len(crops) + 1)]
    problems = []
    for vname, kw in VARIANTS.items():
        parser = MediaPipeParser(**kw)
        cells, right = [], 0
        for cname, img in crops.items():
            pose = parser.landmarks(img)
            res = parser.parse_pose(pose, img.shape[:2])
            if cname.startswith("empty"):
                bad = ["person found"] if res.person_found else []
            elif not res.person_found:
                bad = ["no person"]
            else:
                bad = sanity(res.labels, pose.mask, partial=cname.startswith("astro"))
            right += not bad
            if bad:
                problems.append(f"{vname} / {cname}: {', '.join(bad)}")
            cells.append(f"{pose.presence:.2f}{' d' if pose.fit == 'detect' else ''}{' ✗' if bad else ''}")
        out.append(f"| {vname} | " + " | ".join(cells) + f" | {right}/{len(crops)} |")
    out += ["", "Cells: person presence; d = the landmark model looked at the detector's ROI (a partial "
            "body, or fit=detect); ✗ = wrong: a sanity check failed, no person found on a person, "
            "or a person found on an empty crop."]
    out += [f"- {p}" for p in problems]
    return out


def _confusion(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    return np.bincount(gt.ravel().astype(np.int64) * NUM_PARTS + pred.ravel(),
                       minlength=NUM_PARTS * NUM_PARTS).reshape(NUM_PARTS, NUM_PARTS)


def _scores(conf: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(IoU per label (8,), pixel accuracy, accuracy on ground-truth person pixels)."""
    tp = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    fg = conf[1:].sum()
    return iou, tp.sum() / conf.sum(), tp[1:].sum() / max(fg, 1)


def bench_synthetic(num_ids: int, num_cams: int, num_empty: int, folder: Path) -> list[str]:
    items = []  # (image, label map, split)
    for h, w in SIZES:
        root = folder / f"synthetic_{h}x{w}"
        synthetic.generate(root, num_ids=num_ids, num_cams=num_cams, images_per_cam=1, height=h,
                           width=w, seed=7, processes=1)
        for split in synthetic.SPLITS:
            for p in sorted((root / split).glob("*.jpg")):
                rgb = np.asarray(Image.open(p).convert("RGB"))
                gt = np.asarray(Image.open(root / "masks" / split / f"{p.stem}.png"))
                items.append((f"{h}x{w}", rgb, gt))
        for k in range(num_empty):  # person-free frames of the same scenes, for false positives
            rgb, gt, _ = synthetic.render(None, synthetic._camera(7, 1 + k % num_cams),
                                          np.random.default_rng(k), h, w)
            items.append((f"{h}x{w}", rgb, gt))
    with_person = sum(int(gt.any()) for _, _, gt in items)
    head = ["variant", "size", "found", "false pos", "detector ROI", "mean presence", *PART_NAMES[1:], "mIoU (8)",
            "pixel acc", "person-pixel acc", "fg IoU"]
    out = [f"{len(items)} images at two sizes ({with_person} with a person, {len(items) - with_person} "
           "person-free); IoU from the confusion matrix summed over the images of each size; "
           "person-pixel acc = share of the true person pixels given the right part; fg IoU = "
           "the model's person mask against the true silhouette.", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    low = {}  # variant -> policy -> confusion, over images below the presence threshold
    for vname, kw in VARIANTS.items():
        parser = MediaPipeParser(**kw)
        for size in (f"{h}x{w}" for h, w in SIZES):
            conf, found, fp, pres, fg_i, fg_u = np.zeros((NUM_PARTS,) * 2, np.int64), 0, 0, [], 0, 0
            used_detector = 0
            for s, rgb, gt in items:
                if s != size:
                    continue
                pose = parser.landmarks(rgb)
                res = parser.parse_pose(pose, gt.shape)
                conf += _confusion(res.labels, gt)
                pres.append(pose.presence)
                used_detector += pose.fit == "detect"
                found += res.person_found and gt.any()
                fp += res.person_found and not gt.any()
                fg_i += (pose.mask & (gt > 0)).sum()
                fg_u += (pose.mask | (gt > 0)).sum()
                if pose.presence < parser.presence_threshold:
                    policies = low.setdefault(vname, {
                        "n": 0, "n_empty": 0, "nothing": 0, "stripes": 0, "parts anyway": 0,
                        "empty area stripes": [], "empty area parts anyway": []})
                    preds = (("nothing", np.zeros_like(gt)), ("stripes", stripes(pose.mask)),
                             ("parts anyway", parts_from_pose(pose.xy, pose.visibility, pose.mask,
                                                              parser.min_visibility)))
                    if gt.any():
                        policies["n"] += 1
                        for policy, pred in preds:
                            policies[policy] = policies[policy] + _confusion(pred, gt)
                    else:  # a person-free frame: every labelled pixel is wrong
                        policies["n_empty"] += 1
                        for policy, pred in preds[1:]:
                            policies[f"empty area {policy}"].append((pred > 0).mean())
            iou, acc, fg_acc = _scores(conf)
            n_person = sum(1 for s, _, gt in items if s == size and gt.any())
            n_empty = sum(1 for s, _, gt in items if s == size and not gt.any())
            out.append(f"| {vname} | {size} | {found}/{n_person} | {fp}/{n_empty} | {used_detector} | "
                       f"{np.mean(pres):.2f} | "
                       + " | ".join(f"{v:.2f}" for v in iou[1:]) + f" | {np.nanmean(iou):.3f} | "
                       f"{acc:.3f} | {fg_acc:.3f} | {fg_i / max(fg_u, 1):.2f} |")
    out += ["", "Below the presence threshold (both sizes together): what each policy would give on the "
            "images with a person (mIoU / person-pixel accuracy), and the share of the pixels of the "
            "person-free frames it would label (the model's mask is not empty there).", "",
            "| variant | with a person | nothing | stripes | parts anyway | person-free | labelled by "
            "stripes / parts |", "|---|---|---|---|---|---|---|"]
    for key, pol in low.items():
        cells = []
        for policy in ("nothing", "stripes", "parts anyway"):
            if pol["n"]:
                iou, _, fg_acc = _scores(pol[policy])
                cells.append(f"{np.nanmean(iou):.2f} / {fg_acc:.2f}")
            else:
                cells.append("-")
        area = [f"{100 * np.mean(pol[k]):.0f}%" if pol[k] else "-"
                for k in ("empty area stripes", "empty area parts anyway")]
        out.append(f"| {key} | {pol['n']} | " + " | ".join(cells) + f" | {pol['n_empty']} | {' / '.join(area)} |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-ids", type=int, default=40, help="synthetic identities (1 image per camera)")
    ap.add_argument("--num-cams", type=int, default=6, help="synthetic cameras (views, scales, poses)")
    ap.add_argument("--num-empty", type=int, default=12, help="person-free synthetic frames per size")
    ap.add_argument("--repeat", type=int, default=60, help="timed parses per speed row")
    ap.add_argument("--skip", nargs="*", default=[], choices=["speed", "photos", "synthetic"])
    args = ap.parse_args(argv)
    if "speed" not in args.skip:
        print(f"## Speed (one process, num_threads=1, {os.cpu_count()} cores, load "
              f"{os.getloadavg()[0]:.1f})\n")
        print("\n".join(bench_speed(args.repeat)) + "\n")
    if "photos" not in args.skip:
        print("## Real photographs\n")
        print("\n".join(bench_photos()) + "\n")
    if "synthetic" not in args.skip:
        print("## Synthetic dataset (exact label maps)\n")
        with tempfile.TemporaryDirectory() as tmp:
            print("\n".join(bench_synthetic(args.num_ids, args.num_cams, args.num_empty, Path(tmp))) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
