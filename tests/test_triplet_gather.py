"""loss.triplet_gather: batch-hard triplets mined across ranks. Two gloo processes on CPU, each
with half of a P x K batch, against one process on the concatenated batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from magnifier.errors import UserError
from magnifier.losses import ReIDLoss, batch_hard_triplet_loss, gathered_batch_hard_triplet_loss

P, K, IN, DIM = 8, 4, 6, 16
MARGINS = (0.3, None)
#: How the concatenated batch (identity-major: K rows of identity 0, then identity 1, ...) is
#: split over 2 ranks: ``whole`` gives each rank whole identities (the P x K sampler under DDP),
#: ``split`` gives each rank 2 of every identity's 4 images (positives on both ranks).
LAYOUTS = {"whole": [torch.arange(16), torch.arange(16, 32)], "split": [torch.arange(0, 32, 2), torch.arange(1, 32, 2)]}


def _batch():
    """Inputs (P K, IN), pids (P K,) and the weight (DIM, IN) of a linear layer standing for the
    network that DDP replicates: embeddings = inputs @ weight.t()."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(P * K, IN, generator=gen), torch.arange(P).repeat_interleave(K), torch.randn(DIM, IN, generator=gen)


def _outputs(emb: torch.Tensor) -> dict[str, torch.Tensor]:
    """A training dict for ReIDLoss with both triplet terms (SFB's from a second embedding)."""
    return {"global_logits": emb.new_zeros(len(emb), P), "global_feat": emb, "sfb_feat": emb.tanh()}


def _criterion(gather: bool, margin) -> ReIDLoss:
    return ReIDLoss(id_weight=0.0, triplet_weight=1.0, sfb_triplet_weight=0.5, margin=margin, sfb_weight=0.0,
                    triplet_gather=gather)


def _run(inputs, pids, weight, margin, gather: bool) -> dict[str, torch.Tensor]:
    """One training step's loss through ReIDLoss: the loss terms, the embeddings' gradient and the
    weight's gradient."""
    weight = weight.clone().requires_grad_(True)
    emb = inputs @ weight.t()
    emb.retain_grad()
    terms = _criterion(gather, margin)(_outputs(emb), pids)
    terms["loss"].backward()
    out = {k: v.detach() for k, v in terms.items()}
    return {**out, "emb_grad": emb.grad, "weight_grad": weight.grad}


# ---------------------------------------------------------------------------------- one process
@pytest.mark.parametrize("margin", MARGINS)
def test_without_a_process_group_the_option_is_a_no_op(margin):
    assert not dist.is_initialized()
    inputs, pids, weight = _batch()
    plain, gathered = _run(inputs, pids, weight, margin, False), _run(inputs, pids, weight, margin, True)
    assert plain.keys() == gathered.keys()
    for key in plain:
        assert torch.equal(plain[key], gathered[key]), key
    x = inputs @ weight.t()
    for a, b in zip(batch_hard_triplet_loss(x, pids, margin), gathered_batch_hard_triplet_loss(x, pids, margin)):
        assert torch.equal(a, b)


def test_the_configs_default_is_off():
    from .conftest import compose

    for loss in ("magnifier", "baseline"):
        cfg = compose([f"loss={loss}"])
        assert cfg.loss.triplet_gather is False


# ---------------------------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        inputs, pids, weight = _batch()
        results = {}
        layouts = LAYOUTS if world_size == 2 else {"all": [torch.arange(P * K)]}
        for layout, rows in layouts.items():
            mine = rows[rank]
            for margin in MARGINS:
                out = _run(inputs[mine], pids[mine], weight, margin, True)
                dist.all_reduce(out["weight_grad"])  # what DDP does to a parameter's gradient:
                out["weight_grad"] /= world_size  # the average over ranks
                results[layout, margin] = out
        # Batches of different sizes: every rank says so instead of hanging in the gather.
        n = 16 if rank == 0 else 12
        try:
            gathered_batch_hard_triplet_loss(inputs[:n] @ weight.t(), pids[:n])
        except UserError as err:
            results["unequal"] = str(err)
        torch.save(results, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _spawn(world_size: int, out_dir) -> list[dict]:
    mp.spawn(_worker, args=(world_size, _free_port(), str(out_dir)), nprocs=world_size, join=True)
    return [torch.load(out_dir / f"{rank}.pt") for rank in range(world_size)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    return _spawn(2, tmp_path_factory.mktemp("gather2"))


def _reference(rows: list[torch.Tensor], margin) -> dict[str, torch.Tensor]:
    """One process, no gathering, on the ranks' rows concatenated in rank order."""
    inputs, pids, weight = _batch()
    order = torch.cat(rows)
    return _run(inputs[order], pids[order], weight, margin, False)


@pytest.mark.multiprocess
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("margin", MARGINS)
def test_two_ranks_match_one_process_on_the_concatenated_batch(two_ranks, layout, margin):
    """(a) each loss term averaged over the ranks, (b) each rank's embedding gradient after DDP's
    1/W average (the gather's backward sums over ranks, so a rank holds W times the 1-process
    gradient of its rows) and (c) the replicated layer's gradient averaged over ranks, as DDP
    leaves it, all equal one process on the concatenated batch, to 1e-6."""
    rows = LAYOUTS[layout]
    ref = _reference(rows, margin)
    ranks = [r[layout, margin] for r in two_ranks]
    assert ref["triplet"] > 0 and ref["sfb_triplet"] > 0  # some triplets are violated: gradients flow
    for key in ("loss", "triplet", "sfb_triplet", "triplet_acc"):
        torch.testing.assert_close(sum(r[key] for r in ranks) / 2, ref[key], rtol=0, atol=1e-6, msg=key)
    for rank, r in enumerate(ranks):
        n = len(rows[rank])
        torch.testing.assert_close(r["emb_grad"] / 2, ref["emb_grad"][rank * n:(rank + 1) * n], rtol=0, atol=1e-6)
        torch.testing.assert_close(r["weight_grad"], ref["weight_grad"], rtol=0, atol=1e-6)


@pytest.mark.multiprocess
def test_local_mining_alone_would_differ(two_ranks):
    """The control: with whole identities per rank, each rank's own batch gives another loss
    (negatives on the other rank are missed), so the comparison above can fail."""
    inputs, pids, weight = _batch()
    local = [_run(inputs[rows], pids[rows], weight, 0.3, False)["triplet"] for rows in LAYOUTS["whole"]]
    assert abs(sum(local) / 2 - _reference(LAYOUTS["whole"], 0.3)["triplet"]) > 1e-3


@pytest.mark.multiprocess
def test_unequal_batch_sizes_across_ranks_are_a_user_error(two_ranks):
    for r in two_ranks:
        assert r["unequal"].startswith("loss.triplet_gather needs the same batch size on every rank, got [16, 12]")


@pytest.mark.multiprocess
def test_a_one_rank_group_is_the_plain_loss(tmp_path):
    (result,) = _spawn(1, tmp_path)
    for margin in MARGINS:
        ref = _reference([torch.arange(P * K)], margin)
        for key, value in ref.items():
            assert torch.equal(result["all", margin][key], value), (margin, key)
