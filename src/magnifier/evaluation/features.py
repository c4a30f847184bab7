"""Feature extraction for evaluation: embeddings of the query and gallery images."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["extract_features", "resolve_device"]


def resolve_device(device: str) -> torch.device:
    """``auto`` (the first CUDA device when there is one, else the CPU), ``cpu`` or ``cuda[:i]``.

    Raises:
        ValueError: a CUDA device is asked for but none is visible.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device} but 0 CUDA devices are visible; use device=cpu")
    return dev


@torch.no_grad()
def extract_features(
    net: torch.nn.Module,
    loader: Iterable[dict],
    device: torch.device | str = "cpu",
    flip: bool = False,
    progress: bool = True,
) -> dict:
    """Embed every sample of an evaluation loader (query and gallery batches mixed).

    Args:
        net: a model whose eval-mode ``net(images)`` returns (N, D) embeddings.
        loader: batches with ``image`` (N, 3, H, W), ``pid``, ``camid``, ``is_query`` and
            ``index`` (N,), and ``path`` (N strings), as the data module's test loader gives.
        device: where the network runs.
        flip: test-time augmentation: the embedding of the image and of its horizontal mirror
            are added and L2-normalised again (both are already normalised, so this is the
            direction of their mean).
        progress: show a progress bar (tqdm, on stderr).

    Returns:
        dict of numpy arrays ordered by sample ``index``: ``features`` (N, D) float32,
        ``pids``, ``camids``, ``index`` (N,) int64, ``is_query`` (N,) bool and ``paths``
        (N,) str.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    net = net.eval().to(device)
    cols: dict[str, list] = {k: [] for k in ("features", "pids", "camids", "is_query", "index",
                                             "paths")}
    total = len(loader) if hasattr(loader, "__len__") else None
    for batch in tqdm(loader, total=total, desc="features", unit="batch", disable=not progress,
                      dynamic_ncols=True):
        images = batch["image"].to(device, non_blocking=True)
        emb = net(images).float()
        if flip:
            emb = F.normalize(emb + net(images.flip(3)).float(), dim=1)
        cols["features"].append(emb.cpu().numpy())
        for key, name in (("pid", "pids"), ("camid", "camids"), ("is_query", "is_query"),
                          ("index", "index")):
            cols[name].append(torch.as_tensor(batch[key]).cpu().numpy().reshape(-1))
        cols["paths"].append(np.asarray(batch["path"], dtype=str))
    if not cols["features"]:
        raise ValueError("the evaluation loader gave no batches")
    out = {k: np.concatenate(v) for k, v in cols.items()}
    order = np.argsort(out["index"], kind="stable")
    out = {k: v[order] for k, v in out.items()}
    for key in ("pids", "camids", "index"):
        out[key] = out[key].astype(np.int64)
    out["is_query"] = out["is_query"].astype(bool)
    return out
