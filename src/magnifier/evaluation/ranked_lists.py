"""The headline figures of an evaluation and the ranked-list pictures of its worst and best queries,
shared by ``python -m magnifier.evaluate`` and the final test of ``python -m magnifier.train``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from magnifier.errors import UserError


def summarize(result: dict) -> dict:
    """The headline figures of an ``evaluate_rank`` result, as fractions."""
    cmc = result["cmc"]
    return {
        "rank1": float(cmc[0]),
        "rank5": float(cmc[min(4, len(cmc) - 1)]),
        "rank10": float(cmc[min(9, len(cmc) - 1)]),
        "mAP": result["mAP"],
        "mINP": result["mINP"],
        "num_valid_queries": result["num_valid_queries"],
        "num_skipped_queries": result["num_skipped_queries"],
    }


def choose_queries(per_query: dict, q_paths: Sequence[str], worst: int = 5, best: int = 5,
                   queries: Sequence[str] = ()) -> list[tuple[str, int]]:
    """(label, query row) pairs to draw: the ``worst`` and ``best`` queries by AP (queries with a
    true match only; ties broken by query order, so the choice is reproducible), then the
    ``queries`` named by path or file name."""
    valid = np.flatnonzero(per_query["valid"])
    order = valid[np.lexsort((valid, per_query["ap"][valid]))]
    chosen = [(f"worst{i + 1:02d}", int(q)) for i, q in enumerate(order[: int(worst)])]
    chosen += [(f"best{i + 1:02d}", int(q)) for i, q in enumerate(order[::-1][: int(best)])]
    names = {Path(p).name: i for i, p in enumerate(q_paths)}
    full = {str(Path(p).resolve()): i for i, p in enumerate(q_paths)}
    for wanted in queries or []:
        row = full.get(str(Path(str(wanted)).resolve()), names.get(Path(str(wanted)).name))
        if row is None:
            raise UserError(
                f"eval.ranked_lists.queries: {wanted} is not a query image of this dataset; give a "
                f"path or file name from its query folder"
            )
        chosen.append(("query", row))
    return chosen


def draw_ranked_lists(net, datamodule, feats: dict, per_query: dict, out_dir: Path, *, worst: int = 5,
                      best: int = 5, queries: Sequence[str] = (), top_k: int = 10,
                      distance_rows: Callable[[list[int]], np.ndarray] | None = None) -> list[tuple[str, object, dict]]:
    """Write one PNG per chosen query into ``out_dir``; returns (label, PIL image, facts) each,
    the facts being what ``metrics.json`` and ``report.html`` list.

    Args:
        net: the evaluated network; its parsing head (if any) colours the query's parts.
        datamodule: the set-up data module (``query_set`` images, camera names, input size).
        feats: samples in dataset-index order, query then gallery: ``is_query`` (N,) bool,
            ``pids``, ``camids`` (N,), ``features`` (N, D) unless ``distance_rows`` is given, and
            ``paths`` (N,) (default: the test split's query then gallery files).
        per_query: ``valid``, ``ap``, ``first_rank`` (Q,) of the final ranking.
        distance_rows: ``rows -> (len(rows), G)`` distances of those query rows to the gallery
            (default: Euclidean distances of ``features``).
    """
    import torch

    from .distance import GalleryNorms
    from .visualize import camera_label, ranked_list_image, top_k as top_items

    q = np.asarray(feats["is_query"], bool)
    g = ~q
    paths = feats.get("paths")
    if paths is None:
        data = datamodule.load()
        paths = np.array([r.path for r in data.query + data.gallery])
    paths = np.asarray(paths)
    q_paths, g_paths = paths[q], paths[g]
    q_pids, g_pids = np.asarray(feats["pids"])[q], np.asarray(feats["pids"])[g]
    q_cams, g_cams = np.asarray(feats["camids"])[q], np.asarray(feats["camids"])[g]
    chosen = choose_queries(per_query, q_paths, worst, best, queries)
    if not chosen:
        return []
    if distance_rows is None:
        features = torch.as_tensor(feats["features"])
        qf, norms = features[torch.as_tensor(q)], GalleryNorms(features[torch.as_tensor(g)])

        def distance_rows(rows):
            return norms.distance(qf[rows]).numpy()

    names = getattr(datamodule.load(), "camera_names", None)  # cameras as the dataset names them
    rows = [r for _, r in chosen]
    dist = distance_rows(rows)
    part_maps = [None] * len(rows)
    if getattr(net, "parsing_head", None) is not None:
        images = torch.stack([datamodule.query_set[r]["image"] for r in rows])
        device = next(net.parameters()).device
        was_training = net.training
        with torch.no_grad():
            part_maps = list(net.eval().parse(images.to(device)).cpu().numpy())
        net.train(was_training)
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = []
    for (label, r), d, parts in zip(chosen, dist, part_maps):
        items = top_items(d, g_pids, g_cams, q_pids[r], q_cams[r], g_paths, k=int(top_k), camera_names=names)
        ap = per_query["ap"][r]
        facts = {"query": str(q_paths[r]), "pid": int(q_pids[r]), "camid": int(q_cams[r]),
                 "camera": camera_label(q_cams[r], names).removeprefix("cam "),
                 "AP": None if np.isnan(ap) else float(ap),
                 "first_rank": int(per_query["first_rank"][r])}
        ap_text = "no true match" if np.isnan(ap) else f"AP {100 * ap:.1f}"
        title = f"{label}  {Path(q_paths[r]).name}  id {q_pids[r]} {camera_label(q_cams[r], names)}  {ap_text}"
        picture = ranked_list_image(str(q_paths[r]), items, parts, title,
                                    cell=(64, 128) if datamodule.height >= datamodule.width else (128, 64),
                                    legend=True)
        name = f"{label}_{Path(q_paths[r]).stem}.png"
        picture.save(out_dir / name)
        facts["label"], facts["picture"] = label, f"{out_dir.name}/{name}"
        pictures.append((label, picture, facts))
    return pictures
