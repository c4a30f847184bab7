"""Euclidean distances between embeddings, block by block (float32, any device)."""

from __future__ import annotations

import torch

__all__ = ["GalleryNorms", "euclidean_distance"]

# Query rows per distance block: bounds the temporary (rows, G) block and its transfer.
_DIST_CHUNK_ELEMENTS = 1 << 24


class GalleryNorms:
    """A gallery's features with their squared norms, for repeated blocks of distances.

    Args:
        gallery: (G, D) features (any float dtype; computed in float32).
    """

    def __init__(self, gallery: torch.Tensor):
        self.gallery_t = gallery.float().t()
        self.sq = self.gallery_t.pow(2).sum(dim=0)

    def distance(self, query: torch.Tensor, squared: bool = False) -> torch.Tensor:
        """(B, G) float32 ``||q - g||_2`` on the features' device for query rows (B, D).

        Uses ``||q||^2 + ||g||^2 - 2 q.g`` clamped at 0, so it does not assume normalised
        features; one matrix product per block. ``squared`` skips the square root.
        """
        query = query.float()
        block = torch.addmm(self.sq[None, :], query, self.gallery_t, beta=1.0, alpha=-2.0)
        block.add_(query.pow(2).sum(dim=1, keepdim=True)).clamp_(min=0)
        return block if squared else block.sqrt_()


def euclidean_distance(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix in float32, computed in chunks of query rows.

    Args:
        query: (Q, D) features.
        gallery: (G, D) features.

    Returns:
        (Q, G) float32 tensor on the CPU, ``||q - g||_2`` (see :meth:`GalleryNorms.distance`).
    """
    norms = GalleryNorms(gallery)
    num_q, num_g = query.shape[0], gallery.shape[0]
    out = torch.empty((num_q, num_g), dtype=torch.float32)
    rows = max(1, _DIST_CHUNK_ELEMENTS // max(num_g, 1))
    for start in range(0, num_q, rows):
        out[start:start + rows] = norms.distance(query[start:start + rows]).cpu()
    return out
