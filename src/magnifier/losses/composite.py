"""The weighted sum of MagnifierNet's losses, each term reported by name."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from magnifier.errors import UserError

from .attributes import attribute_bce_loss
from .diversity import semantic_diversity_loss
from .identity import cross_entropy_label_smooth
from .parsing import class_balanced_parsing_loss
from .triplet import batch_hard_triplet_loss, batch_hard_triplet_losses, gathered_batch_hard_triplet_loss


class ReIDLoss(nn.Module):
    """Every loss of MagnifierNet; a term is computed when its weight is non-zero and the model
    produced what it needs, so one loss serves the baseline and every ablation.

    ``forward(outputs, pids, attributes=None)`` takes the model's training dict, pids (N,) and
    the batch's attribute vectors (N, A) when there are any, and returns a dict of scalars:
    ``loss`` (the weighted total that is back-propagated), each term unweighted (``id``,
    ``triplet``, ``parsing``, ``srb``, ``region``, ``sfb``, ``sfb_triplet``, ``diversity``,
    ``attribute``) and ``triplet_acc``. Weights (the paper's defaults in ``conf/loss/magnifier.yaml``):

        total = id_weight * id + triplet_weight * triplet + parsing_weight * parsing
              + srb_weight * beta * srb + region_weight * sum_i beta_i * region_i
              + sfb_weight * sfb + sfb_triplet_weight * sfb_triplet + diversity_weight * diversity
              + attribute_weight * attribute

    ``attribute`` is the binary cross-entropy of ``attr_logits`` against ``attributes`` (only
    when the model has the attribute branch).

    The ``region`` entry reported is sum_i beta_i * region_i (what the weight multiplies).

    ``triplet_gather=True`` mines both triplet terms (``triplet``, ``sfb_triplet``) across ranks
    in a distributed run: each local anchor's hardest positive and negative are sought among the
    embeddings of every rank (:func:`~magnifier.losses.triplet.gathered_batch_hard_triplet_loss`),
    and after DDP's gradient average the update is the one of a single process on the whole global
    batch. The reported ``triplet``, ``sfb_triplet`` and ``triplet_acc`` are then this rank's
    anchors' mean. Without a process group, or with one rank, it changes nothing.
    """

    def __init__(
        self,
        id_weight: float = 1.0,
        triplet_weight: float = 1.0,
        label_smoothing: float = 0.1,
        margin: float | None = 0.3,
        parsing_weight: float = 0.0,
        srb_weight: float = 0.0,
        region_weight: float = 0.0,
        sfb_weight: float = 0.0,
        sfb_triplet_weight: float = 0.0,
        diversity_weight: float = 0.0,
        attribute_weight: float = 0.0,
        triplet_gather: bool = False,
    ):
        super().__init__()
        self.label_smoothing, self.margin = label_smoothing, margin
        self._triplet = gathered_batch_hard_triplet_loss if triplet_gather else batch_hard_triplet_loss
        self.weights = {
            "id": id_weight,
            "triplet": triplet_weight,
            "parsing": parsing_weight,
            "srb": srb_weight,
            "region": region_weight,
            "sfb": sfb_weight,
            "sfb_triplet": sfb_triplet_weight,
            "diversity": diversity_weight,
            "attribute": attribute_weight,
        }

    @staticmethod
    def _attribute(logits: torch.Tensor, attributes: torch.Tensor | None) -> torch.Tensor:
        if attributes is None:
            raise UserError(
                "the model predicts attributes (model.attributes > 0) but the batch has none; set "
                "dataset.attributes to the attribute file (e.g. market_attribute.mat) or model.attributes=0"
            )
        if attributes.shape != logits.shape:
            raise UserError(
                f"model.attributes={logits.shape[1]} but the attribute file gives {attributes.shape[-1]} "
                f"bits per identity; set model.attributes={attributes.shape[-1]}"
            )
        return attribute_bce_loss(logits, attributes.to(logits.device))

    def _id(self, logits: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        return cross_entropy_label_smooth(logits, pids, self.label_smoothing)

    def _region(self, logits: torch.Tensor, pids: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
        """sum_r beta_r x ID loss of region r: (R, N, K) logits, (N,) pids, (R,) betas -> scalar,
        all regions in one cross-entropy (the mean over each region's N images, then weighted)."""
        r, n, k = logits.shape
        per_image = F.cross_entropy(logits.float().reshape(r * n, k), pids.repeat(r), reduction="none",
                                    label_smoothing=self.label_smoothing)
        return (betas.float() * per_image.reshape(r, n).mean(1)).sum()

    def forward(
        self, outputs: dict[str, torch.Tensor], pids: torch.Tensor, attributes: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        w = self.weights
        terms: dict[str, torch.Tensor] = {}
        scale: dict[str, torch.Tensor | float] = {}
        if w["id"]:
            terms["id"] = self._id(outputs["global_logits"], pids)
        paired = None
        if w["triplet"] and w["sfb_triplet"] and "sfb_feat" in outputs and self._triplet is batch_hard_triplet_loss:
            # Both triplet terms mine the same batch: one pass over their stacked distances.
            paired = batch_hard_triplet_losses([outputs["global_feat"], outputs["sfb_feat"]], pids, self.margin)
            terms["triplet"], terms["triplet_acc"] = paired[0][0], paired[1][0]
        elif w["triplet"]:
            terms["triplet"], terms["triplet_acc"] = self._triplet(outputs["global_feat"], pids, self.margin)
        if w["parsing"] and "parsing_logits" in outputs:
            terms["parsing"] = class_balanced_parsing_loss(outputs["parsing_logits"], outputs["parsing_target"])
        if w["srb"] and "srb_logits" in outputs:
            terms["srb"] = self._id(outputs["srb_logits"], pids)
            scale["srb"] = outputs["srb_beta"].detach()
        if w["region"] and "sfb_region_logits" in outputs:
            betas = outputs["sfb_region_betas"].detach()
            terms["region"] = self._region(outputs["sfb_region_logits"], pids, betas)
        if w["sfb"] and "sfb_logits" in outputs:
            terms["sfb"] = self._id(outputs["sfb_logits"], pids)
        if paired is not None:
            terms["sfb_triplet"] = paired[0][1]
        elif w["sfb_triplet"] and "sfb_feat" in outputs:
            terms["sfb_triplet"], _ = self._triplet(outputs["sfb_feat"], pids, self.margin)
        if w["diversity"] and "sfb_region_feats" in outputs:
            terms["diversity"] = semantic_diversity_loss(outputs["sfb_region_feats"])
        if w["attribute"] and "attr_logits" in outputs:
            terms["attribute"] = self._attribute(outputs["attr_logits"], attributes)
        total = outputs["global_logits"].new_zeros((), dtype=torch.float32)
        for name, value in terms.items():
            if name in w:
                total = total + w[name] * scale.get(name, 1.0) * value
        terms["loss"] = total
        return terms
