"""The SFB's region heads and region loss as batched operations: the same numbers as one
BatchNorm1d + Linear per region and one loss per region (written out below as the reference),
older checkpoints load, and the work no longer grows with the number of regions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from magnifier.losses import ReIDLoss
from magnifier.models.branches import RegionHeads, SemanticFusionBranch, init_bnneck

R, N, C, K = 8, 12, 32, 5


def _reference_heads(seed: int = 0) -> tuple[nn.ModuleList, nn.ModuleList]:
    """One BNNeck and one biased classifier per region, with non-trivial weights and statistics."""
    g = torch.Generator().manual_seed(seed)
    bns = nn.ModuleList(init_bnneck(nn.BatchNorm1d(C)) for _ in range(R))
    fcs = nn.ModuleList(nn.Linear(C, K) for _ in range(R))
    with torch.no_grad():
        for bn, fc in zip(bns, fcs):
            bn.weight.copy_(1 + 0.1 * torch.randn(C, generator=g))
            bn.running_mean.copy_(torch.randn(C, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(C, generator=g))
            fc.weight.copy_(torch.randn(K, C, generator=g))
            fc.bias.copy_(torch.randn(K, generator=g))
    return bns, fcs


def _old_layout(bns, fcs, prefix: str = "") -> dict[str, torch.Tensor]:
    state = {}
    for r, (bn, fc) in enumerate(zip(bns, fcs)):
        state.update({f"{prefix}region_bns.{r}.{k}": v.clone() for k, v in bn.state_dict().items()})
        state.update({f"{prefix}region_classifiers.{r}.{k}": v.clone() for k, v in fc.state_dict().items()})
    return state


def _loaded_sfb(bns, fcs) -> SemanticFusionBranch:
    sfb = SemanticFusionBranch(C, K, classifier_bias=True)
    state = {k: v for k, v in sfb.state_dict().items() if not k.startswith("region_heads.")}
    state.update(_old_layout(bns, fcs))
    sfb.load_state_dict(state)  # the old layout converts on load
    return sfb


def test_batched_heads_equal_one_head_per_region_in_training_and_evaluation():
    bns, fcs = _reference_heads()
    sfb = _loaded_sfb(bns, fcs)
    feats = torch.randn(R, N, C, requires_grad=True)
    mine = feats.detach().clone().requires_grad_(True)
    for train in (True, False):
        bns.train(train), fcs.train(train), sfb.train(train)
        want = torch.stack([fc(bn(f)) for f, bn, fc in zip(feats, bns, fcs)])
        got = sfb.region_heads(mine)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        weights = torch.randn_like(want)
        (want * weights).sum().backward()
        (got * weights).sum().backward()
        torch.testing.assert_close(mine.grad, feats.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sfb.region_heads.classifier.weight.grad, torch.stack([fc.weight.grad for fc in fcs]),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sfb.region_heads.bn.weight.grad, torch.cat([bn.weight.grad for bn in bns]),
                                   atol=1e-5, rtol=1e-5)
        for p in [feats, mine, *bns.parameters(), *fcs.parameters(), *sfb.parameters()]:
            p.grad = None
    # Training updated the running statistics alike.
    torch.testing.assert_close(sfb.region_heads.bn.running_mean, torch.cat([bn.running_mean for bn in bns]))
    torch.testing.assert_close(sfb.region_heads.bn.running_var, torch.cat([bn.running_var for bn in bns]))


def test_region_loss_in_one_call_equals_the_sum_over_regions():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(R, N, K, generator=g)
    pids = torch.randint(0, K, (N,), generator=g)
    betas = torch.rand(R, generator=g)
    loss = ReIDLoss(label_smoothing=0.1)
    want = sum(b * F.cross_entropy(lg, pids, label_smoothing=0.1) for b, lg in zip(betas, logits))
    torch.testing.assert_close(loss._region(logits, pids, betas), want, atol=1e-6, rtol=1e-6)


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _ops(fn) -> int:
    with _CountOps() as counter:
        fn()
    return counter.count


def test_the_heads_and_the_region_loss_do_not_loop_over_regions():
    """Operations dispatched for 4 and for 8 regions: the same count (a loop would double it)."""
    counts = {}
    for r in (4, 8):
        heads = RegionHeads(r, C, K, bias=True)
        feats = torch.randn(r, N, C, requires_grad=True)
        logits = torch.randn(r, N, K, requires_grad=True)
        pids, betas = torch.randint(0, K, (N,)), torch.rand(r)
        loss = ReIDLoss()
        counts[r] = (_ops(lambda: heads(feats).sum().backward()), _ops(lambda: loss._region(logits, pids, betas).backward()))
    assert counts[4] == counts[8], counts
