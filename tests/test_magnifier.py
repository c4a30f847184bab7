"""MagnifierNet: branch shapes, gradients, region erasing, betas, diversity loss, ablations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from magnifier.parts import LOWER_BODY, NUM_PARTS, UPPER_BODY
from magnifier.losses import ReIDLoss, class_balanced_parsing_loss, semantic_diversity_loss
from magnifier.models import MagnifierNet, SemanticFusionBranch, SemanticRegularizationBranch

PAPER_LOSS = dict(parsing_weight=2.0, srb_weight=1.0, region_weight=0.0125, sfb_weight=1.0,
                  sfb_triplet_weight=1.0, diversity_weight=0.01)


def _batch(n=8, h=128, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, h, w, generator=g)
    # Horizontal bands of labels 0..7, 16 rows each, so every part survives on the (h/16) grid.
    masks = (torch.arange(h)[:, None].expand(h, w) * NUM_PARTS // h).expand(n, h, w).clone()
    pids = torch.arange(n // 2).repeat_interleave(2)
    return images, masks, pids


def test_resnet50_train_outputs_and_4096_d_embedding():
    model = MagnifierNet(num_classes=5, backbone="resnet50")
    images, masks, _ = _batch(2, 128, 64)
    out = model(images, masks)
    n, k = 2, 5
    expected = {
        "global_feat": (n, 2048), "global_logits": (n, k), "parsing_logits": (n, 8, 16, 8),
        "srb_feat": (n, 1024), "srb_logits": (n, k), "srb_beta": (), "srb_keep": (n, 8, 4),
        "sfb_region_feats": (8, n, 1024), "sfb_region_logits": (8, n, k), "sfb_region_betas": (8,),
        "sfb_feat": (n, 1024), "sfb_logits": (n, k),
    }
    for key, shape in expected.items():
        assert tuple(out[key].shape) == shape, key
    model.eval()
    with torch.no_grad():
        emb = model(images)  # no masks at test time
    assert emb.shape == (2, 4096) and model.embedding_dim == 4096
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))


def test_embedding_subset_and_gt_masks_option():
    images, masks, _ = _batch(2)
    model = MagnifierNet(num_classes=3, backbone="resnet18", embedding=["global", "sfb"]).eval()
    with torch.no_grad():
        assert model(images).shape == (2, 512 + 256)
    gt = MagnifierNet(num_classes=3, backbone="resnet18", gt_masks_at_test=True).eval()
    with torch.no_grad():
        a, b = gt(images, masks), gt(images, torch.zeros_like(masks))
    assert not torch.allclose(a, b)  # the given label maps are used
    with pytest.raises(ValueError, match="subset of the enabled branches"):
        MagnifierNet(num_classes=3, backbone="resnet18", srb=False, embedding=["srb"])
    with pytest.raises(ValueError, match="SFB needs part labels at test time"):
        MagnifierNet(num_classes=3, backbone="resnet18", parsing=False)


def test_training_without_masks_is_a_clear_error_unless_the_model_needs_none():
    images, _, _ = _batch(2)
    with pytest.raises(ValueError, match="needs part label maps in training"):
        MagnifierNet(num_classes=3, backbone="resnet18")(images)
    out = MagnifierNet(num_classes=3, backbone="resnet18", parsing=False, srb=False, sfb=False)(images)
    assert set(out) == {"global_feat", "global_logits"}


@pytest.mark.parametrize("fusion", ["lstm", "concat", "attention"])
def test_backward_reaches_every_parameter_that_should_learn(fusion):
    model = MagnifierNet(num_classes=4, backbone="resnet18", fusion=fusion)
    images, masks, pids = _batch()
    ReIDLoss(**PAPER_LOSS)(model(images, masks), pids)["loss"].backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not dead, dead
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.endswith("bnneck.bias") or n.endswith("region_heads.bn.bias") for n in frozen)


def test_erasing_picks_two_upper_and_one_lower_region_and_zeroes_exactly_their_positions():
    torch.manual_seed(0)
    srb = SemanticRegularizationBranch(in_channels=64, num_classes=3)
    labels = torch.randint(0, NUM_PARTS, (4, 6, 5))
    for _ in range(20):
        erased = srb.choose_erased(4, labels.device)
        assert erased.shape == (1, 3)  # one choice for the batch
        up, low = erased[0, :2].tolist(), erased[0, 2:].tolist()
        assert len(set(up)) == 2 and set(up) <= set(UPPER_BODY) and set(low) <= set(LOWER_BODY)
    # Zeroed positions are exactly the chosen regions: check the masked feature map itself.
    captured = {}
    srb.choose_erased = lambda n, device: torch.tensor([[1, 3, 6]])
    srb.reduce.register_forward_hook(lambda m, inp, out: None)
    orig_pool = torch.nn.functional.adaptive_max_pool2d

    def spy(x, size):
        captured["x"] = x.detach().clone()
        return orig_pool(x, size)

    torch.nn.functional.adaptive_max_pool2d = spy
    try:
        out = srb(torch.rand(4, 64, 6, 5) + 0.1, labels)
    finally:
        torch.nn.functional.adaptive_max_pool2d = orig_pool
    erased_pos = (labels == 1) | (labels == 3) | (labels == 6)
    x = captured["x"]
    assert (x.permute(0, 2, 3, 1)[erased_pos] == 0).all()
    assert torch.equal(out["keep"], ~erased_pos)
    torch.testing.assert_close(out["beta"], torch.sigmoid((~erased_pos).float().mean()))
    # Per-sample choice: one row per image.
    per = SemanticRegularizationBranch(64, 3, per_sample=True)
    assert per.choose_erased(4, labels.device).shape == (4, 3)
    # No erasing at evaluation: every position kept, one (h, w) map per image.
    srb.eval()
    keep = srb(torch.rand(4, 64, 6, 5), labels)["keep"]
    assert keep.shape == (4, 6, 5) and keep.dtype == torch.bool and keep.all()
    # A single erased region (one upper, no lower) still erases.
    one = SemanticRegularizationBranch(64, 3, erase_upper=1, erase_lower=0)
    kept = one(torch.rand(4, 64, 6, 5), labels)["keep"]
    assert one.choose_erased(4, labels.device).shape == (1, 1)
    assert not kept.all() and ((~kept) == torch.isin(labels, torch.tensor(UPPER_BODY))).sum() > 0
    assert SemanticRegularizationBranch(64, 3, erase_upper=0, erase_lower=0)(torch.rand(4, 64, 6, 5), labels)["keep"].all()


def test_beta_and_region_betas_on_a_hand_made_label_map():
    # One 4x2 image: 4 background, 2 head, 1 torso, 1 foot position.
    labels = torch.tensor([[[0, 0], [0, 0], [1, 1], [2, 7]]]).repeat(2, 1, 1)  # the same map twice (BN needs 2)
    sfb = SemanticFusionBranch(in_channels=32, num_classes=3)
    out = sfb(torch.rand(2, 32, 4, 2), labels)
    fractions = [4 / 8, 2 / 8, 1 / 8, 0, 0, 0, 0, 1 / 8]
    torch.testing.assert_close(out["region_betas"], torch.sigmoid(torch.tensor(fractions)))
    # Absent regions pool to zero vectors; present ones do not.
    norms = out["region_feats"].norm(dim=-1)[:, 0]
    assert (norms[[3, 4, 5, 6]] == 0).all()
    srb = SemanticRegularizationBranch(32, 3)
    srb.choose_erased = lambda n, device: torch.tensor([[1, 2, 7]])  # head, torso, foot
    beta = srb(torch.rand(2, 32, 4, 2), labels)["beta"]
    torch.testing.assert_close(beta, torch.sigmoid(torch.tensor(4 / 8)))


def test_masked_max_pooling_matches_a_plain_loop():
    sfb = SemanticFusionBranch(in_channels=16, num_classes=3).eval()
    labels = torch.randint(0, NUM_PARTS, (2, 5, 3))
    f3 = torch.randn(2, 16, 5, 3)
    out = sfb(f3, labels)
    x = sfb.bottleneck(f3)
    for r in range(NUM_PARTS):
        for i in range(2):
            sel = labels[i] == r
            expected = x[i][:, sel].amax(1) if sel.any() else torch.zeros(16)
            torch.testing.assert_close(out["region_feats"][r, i], expected)


def test_lstm_reads_regions_in_the_fixed_order():
    sfb = SemanticFusionBranch(in_channels=8, num_classes=3, fusion="lstm").eval()
    feats = torch.rand(NUM_PARTS, 2, 8)
    present = torch.ones(NUM_PARTS, 2)
    fused = sfb.fuse(feats, present)
    _, (h, _) = sfb.lstm(feats.transpose(0, 1))
    torch.testing.assert_close(fused, h[-1])
    assert not torch.allclose(fused, sfb.fuse(feats.flip(0), present))  # order matters


@pytest.mark.parametrize("bias", [True, False])
def test_the_written_out_lstm_equals_nn_lstm(bias):
    """The recurrence torch.compile traces (lstm_last_hidden) gives nn.LSTM's last hidden state,
    in fp32 to 1e-5 and under bf16 autocast to bf16 rounding, and its gradients."""
    from magnifier.models.branches import lstm_last_hidden

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(16, 16, num_layers=1, batch_first=True, bias=bias)
    x = torch.randn(NUM_PARTS, 5, 16, requires_grad=True)
    _, (h, _) = lstm(x.transpose(0, 1))
    ours = lstm_last_hidden(lstm, x)
    torch.testing.assert_close(ours, h[-1], rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(h[-1].square().sum(), [x, lstm.weight_hh_l0])
    ours_grads = torch.autograd.grad(ours.square().sum(), [x, lstm.weight_hh_l0])
    for a, b in zip(ours_grads, grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # (the CPU's nn.LSTM has no bf16 kernel to compare with)
        ours16 = lstm_last_hidden(lstm, x)
    assert ours16.dtype == torch.float32  # the products in bf16, the gates and the cell in float32
    torch.testing.assert_close(ours16, h[-1], rtol=0, atol=3e-2)
    with pytest.raises(ValueError, match="single-layer"):
        lstm_last_hidden(torch.nn.LSTM(16, 16, num_layers=2), x)


def test_the_sfb_fuses_with_the_written_out_lstm_while_compiling(monkeypatch):
    """What the compiled SFB runs is the eager fusion: same vector, same dtype."""
    sfb = SemanticFusionBranch(in_channels=8, num_classes=3, fusion="lstm").eval()
    feats, present = torch.rand(NUM_PARTS, 2, 8), torch.ones(NUM_PARTS, 2)
    eager = sfb.fuse(feats, present)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    traced = sfb.fuse(feats, present)
    torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-6)
    assert traced.dtype == eager.dtype


def test_diversity_loss_on_hand_made_vectors():
    eye = torch.eye(4)
    orthogonal = eye[:, None, :].expand(4, 3, 4)  # region i is e_i for every image
    assert semantic_diversity_loss(orthogonal).item() == pytest.approx(0.0, abs=1e-6)
    same = torch.ones(4, 3, 5)
    assert semantic_diversity_loss(same).item() == pytest.approx(1.0, abs=1e-6)
    assert semantic_diversity_loss([torch.ones(3, 5), -torch.ones(3, 5)]).item() == 0.0  # clamps
    # A hand-computed mix: pairs (a,b) cos 1, (a,c) cos 0, (b,c) cos 0 -> mean 1/3.
    a, b, c = torch.tensor([[1.0, 0]]), torch.tensor([[2.0, 0]]), torch.tensor([[0.0, 3]])
    assert semantic_diversity_loss([a, b, c]).item() == pytest.approx(1 / 3, abs=1e-6)
    with pytest.raises(ValueError):
        semantic_diversity_loss(torch.ones(1, 2, 3))


def test_diversity_loss_matches_a_pairwise_loop():
    feats = torch.randn(8, 6, 16)
    total, count = 0.0, 0
    for i in range(8):
        for j in range(i + 1, 8):
            total += torch.nn.functional.cosine_similarity(feats[i], feats[j], dim=1).mean()
            count += 1
    expected = max(float(total / count), 0.0)
    assert semantic_diversity_loss(feats).item() == pytest.approx(expected, abs=1e-5)


def test_class_balanced_parsing_loss_weighs_each_present_class_equally():
    logits = torch.randn(2, NUM_PARTS, 4, 4)
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[0, 0, 0] = 7  # one foot pixel among 31 background pixels
    pixel = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = (pixel[labels == 0].mean() + pixel[labels == 7].mean()) / 2
    torch.testing.assert_close(class_balanced_parsing_loss(logits, labels), expected)
    # Labels at a higher resolution are brought down by nearest neighbour.
    big = labels.repeat_interleave(2, 1).repeat_interleave(2, 2)
    torch.testing.assert_close(class_balanced_parsing_loss(logits, big), expected)


def test_loss_weights_and_betas_compose_the_total():
    model = MagnifierNet(num_classes=4, backbone="resnet18")
    images, masks, pids = _batch()
    out = model(images, masks)
    t = ReIDLoss(**PAPER_LOSS)(out, pids)
    beta = out["srb_beta"]
    expected = (t["id"] + t["triplet"] + 2 * t["parsing"] + beta * t["srb"] + 0.0125 * t["region"]
                + t["sfb"] + t["sfb_triplet"] + 0.01 * t["diversity"])
    torch.testing.assert_close(t["loss"], expected)
    from magnifier.losses import cross_entropy_label_smooth as ce

    region = sum(b * ce(lg, pids) for b, lg in zip(out["sfb_region_betas"], out["sfb_region_logits"]))
    torch.testing.assert_close(t["region"], region)
    from magnifier.losses import batch_hard_triplet_loss as triplet  # each term on its own feature

    torch.testing.assert_close(t["triplet"], triplet(out["global_feat"], pids)[0])
    torch.testing.assert_close(t["sfb_triplet"], triplet(out["sfb_feat"], pids)[0])


def test_bf16_autocast_keeps_losses_finite_and_float32():
    model = MagnifierNet(num_classes=4, backbone="resnet18")
    images, masks, pids = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images, masks)
        terms = ReIDLoss(**PAPER_LOSS)(out, pids)
    for name, value in terms.items():
        assert value.dtype == torch.float32 and math.isfinite(value.item()), name
    terms["loss"].backward()


def test_channels_last_gives_the_same_embedding():
    torch.manual_seed(0)
    model = MagnifierNet(num_classes=4, backbone="resnet18").eval()
    images, _, _ = _batch(2)
    with torch.no_grad():
        ref = model(images)
        model = model.to(memory_format=torch.channels_last)
        cl = model(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, ref, atol=1e-4, rtol=1e-4)


def test_tiny_overfit_drives_the_loss_down():
    torch.manual_seed(0)
    # PyTorch's init for the parsing head: the authors' N(0, 0.001) one starts with near-zero
    # logits and its parsing loss falls far more slowly over 15 steps (1.56 vs 0.18, benchmarks/parsing_init.py).
    model = MagnifierNet(num_classes=4, backbone="resnet18", parsing_init="pytorch")
    criterion = ReIDLoss(**PAPER_LOSS)
    images, masks, pids = _batch(8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    losses = []
    for _ in range(15):
        loss = criterion(model(images, masks), pids)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert np.isfinite(losses).all()


def _randomise_bnnecks(model, seed=0):
    """Give every BNNeck statistics and affine terms far from the identity a fresh model has."""
    g = torch.Generator().manual_seed(seed)
    necks = [model.global_branch.bnneck] + [b.bnneck for b in (model.srb, model.sfb) if b is not None]
    for bn in necks:
        c = bn.num_features
        bn.running_mean.copy_(torch.randn(c, generator=g) * 2)
        bn.running_var.copy_(torch.rand(c, generator=g) * 4 + 0.25)
        with torch.no_grad():
            bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
            if bn.bias is not None:
                bn.bias.copy_(torch.randn(c, generator=g))


def _bn(x, bn):
    """Batch norm in eval mode written out: (x - mean) / sqrt(var + eps) * weight + bias."""
    y = (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight
    return y + bn.bias if bn.bias is not None else y


def test_test_embedding_is_taken_after_each_bnneck():
    """The evaluation embedding concatenates the branches' features *after* their BNNeck (the
    strong baseline's neck_feat='after'). A fresh BNNeck is nearly the identity, so its running
    statistics are set to non-trivial values here and the embedding is rebuilt by hand."""
    model = MagnifierNet(num_classes=4, backbone="resnet18", gt_masks_at_test=True).eval()
    _randomise_bnnecks(model)
    images, masks, _ = _batch(4, 128, 64)
    with torch.no_grad():
        f3, f4 = model.backbone(images)
        g = _bn(f4.mean((2, 3)), model.global_branch.bnneck)
        s = _bn(model.srb(f3)["feat"], model.srb.bnneck)
        from magnifier.models.branches import labels_to_grid

        labels = labels_to_grid(masks, tuple(f3.shape[-2:]))
        u = _bn(model.sfb(f3, labels)["feat"], model.sfb.bnneck)
        expected = torch.nn.functional.normalize(torch.cat([g, s, u], 1), dim=1)
        got = model(images, masks)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        for name, part in (("global", g), ("srb", s), ("sfb", u)):
            model.embedding = [name]
            torch.testing.assert_close(model(images, masks), torch.nn.functional.normalize(part, dim=1),
                                       atol=1e-5, rtol=1e-4)
        # before the BNNeck the embedding would be clearly different
        model.embedding = ["global"]
        before = torch.nn.functional.normalize(f4.mean((2, 3)), dim=1)
        assert (model(images) - before).abs().max() > 0.05


def test_baseline_test_embedding_is_after_the_bnneck():
    from magnifier.models import Baseline

    model = Baseline(num_classes=4, backbone="resnet18").eval()
    _randomise_bnnecks(model, seed=1)
    images = _batch(4, 128, 64)[0]
    with torch.no_grad():
        f4 = model.backbone(images)[1]
        expected = torch.nn.functional.normalize(_bn(f4.mean((2, 3)), model.global_branch.bnneck), dim=1)
        torch.testing.assert_close(model(images), expected, atol=1e-5, rtol=1e-4)


def test_given_masks_are_ignored_at_test_time_unless_gt_masks_at_test():
    """By default the SFB's test-time regions come from the parsing head even when the batch
    carries label maps (the evaluation must not peek at ground truth); with
    gt_masks_at_test=True the given maps are used."""
    torch.manual_seed(0)
    model = MagnifierNet(num_classes=4, backbone="resnet18").eval()
    images, masks, _ = _batch(4, 128, 64)
    other = torch.flip(masks, dims=[1])  # a different, valid labelling
    with torch.no_grad():
        plain = model(images)
        torch.testing.assert_close(model(images, masks), plain)
        torch.testing.assert_close(model(images, other), plain)
        model.gt_masks_at_test = True
        assert not torch.allclose(model(images, masks), model(images, other))


def test_parsing_loss_when_the_last_classes_are_absent():
    """A batch without feet (or any of the highest labels) still averages over the classes
    present only: the per-class tables keep all 8 entries."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, NUM_PARTS, 4, 4, generator=g)
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[:, :2] = 2  # background and torso only
    pixel = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = (pixel[labels == 0].mean() + pixel[labels == 2].mean()) / 2
    torch.testing.assert_close(class_balanced_parsing_loss(logits, labels), expected)


def test_diversity_loss_does_not_depend_on_the_vectors_length():
    """A cosine similarity: region vectors of norm 1e-2 give the loss of the same directions at
    norm 10 (the normalisation's eps only guards against a zero vector)."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(8, 4, 16, generator=g).abs()  # positive: correlated regions, loss > 0
    unit = torch.nn.functional.normalize(feats, dim=-1)
    big = semantic_diversity_loss(unit * 10)
    assert big > 0.1
    torch.testing.assert_close(semantic_diversity_loss(unit * 1e-2), big)
