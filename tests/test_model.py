"""Baseline model shapes, losses on hand-made inputs, the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from magnifier.losses import ReIDLoss, batch_hard_triplet_loss, batch_hard_triplet_losses, cross_entropy_label_smooth
from magnifier.models import Baseline, ResNetBackbone
from magnifier.module import warmup_multistep


@pytest.mark.parametrize("name,c3,c4", [("resnet18", 256, 512), ("resnet50", 1024, 2048)])
def test_backbone_last_stride_one_keeps_layer4_at_layer3_resolution(name, c3, c4):
    net = ResNetBackbone(name).eval()
    with torch.no_grad():
        f3, f4 = net(torch.randn(1, 3, 128, 64))
    assert f3.shape == (1, c3, 8, 4) and f4.shape == (1, c4, 8, 4)
    assert net.layer3_channels == c3 and net.out_channels == c4
    with torch.no_grad():
        _, f4 = ResNetBackbone(name, last_stride=2).eval()(torch.randn(1, 3, 128, 64))
    assert f4.shape[-2:] == (4, 2)


def test_baseline_train_dict_and_eval_unit_embedding():
    model = Baseline(num_classes=7, backbone="resnet18")
    x = torch.randn(4, 3, 64, 32)
    out = model(x)
    assert out["global_feat"].shape == (4, 512) and out["global_logits"].shape == (4, 7)
    model.eval()
    with torch.no_grad():
        emb = model(x)
    assert emb.shape == (4, 512)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    # BNNeck bias is frozen at zero.
    assert not model.global_branch.bnneck.bias.requires_grad


def test_local_weights_file_loads_and_missing_file_is_a_user_error(tmp_path):
    from magnifier.errors import UserError

    src = ResNetBackbone("resnet18")
    import torchvision

    ref = torchvision.models.resnet18()
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    loaded = ResNetBackbone("resnet18", weights=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(loaded.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)
    assert not torch.equal(src.layer1[0].conv1.weight, loaded.layer1[0].conv1.weight)
    with pytest.raises(UserError, match="no such file"):
        ResNetBackbone("resnet18", weights=str(tmp_path / "missing.pth"))


def test_label_smoothing_matches_the_formula():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    target = torch.tensor([0])
    eps, c = 0.1, 3
    logp = torch.log_softmax(logits, 1)[0]
    expected = -((1 - eps + eps / c) * logp[0] + eps / c * (logp[1] + logp[2]))
    torch.testing.assert_close(cross_entropy_label_smooth(logits, target, eps), expected)


def test_batch_hard_triplet_on_hand_made_points():
    # Two identities on a line: A at 0 and 1, B at 3 and 5.
    feats = torch.tensor([[0.0], [1.0], [3.0], [5.0]])
    pids = torch.tensor([0, 0, 1, 1])
    # hardest positive / nearest negative per anchor: (1,3), (1,2), (2,2), (2,4)
    expected = (max(0, 1 - 3 + 0.3) + max(0, 1 - 2 + 0.3) + max(0, 2 - 2 + 0.3) + max(0, 2 - 4 + 0.3)) / 4
    loss, acc = batch_hard_triplet_loss(feats, pids, margin=0.3)
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
    assert math.isclose(acc.item(), 0.75)  # anchors 0, 1 and 3 have d_an > d_ap; anchor 2 ties
    soft, _ = batch_hard_triplet_loss(feats, pids, margin=None)
    ref = sum(math.log1p(math.exp(a - b)) for a, b in [(1, 3), (1, 2), (2, 2), (2, 4)]) / 4
    assert math.isclose(soft.item(), ref, rel_tol=1e-5)


@pytest.mark.parametrize("margin", [0.3, None])
def test_both_triplet_terms_in_one_pass_equal_one_call_each(margin):
    """MagnifierNet's two triplet terms (global 2048-d, fused 1024-d: different widths) mined in
    one pass give each term, its accuracy and its gradients as separate calls do."""
    torch.manual_seed(0)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    a, b = torch.randn(8, 16, requires_grad=True), torch.randn(8, 6, requires_grad=True)
    losses, accs = batch_hard_triplet_losses([a, b], pids, margin)
    (la, acc_a), (lb, acc_b) = batch_hard_triplet_loss(a, pids, margin), batch_hard_triplet_loss(b, pids, margin)
    torch.testing.assert_close(losses, torch.stack([la, lb]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(accs, torch.stack([acc_a, acc_b]))
    grads = torch.autograd.grad(losses.sum(), [a, b])
    for got, want in zip(grads, torch.autograd.grad(la + lb, [a, b])):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_composite_loss_reports_every_term_and_weights_the_total():
    out = {"global_logits": torch.randn(8, 4), "global_feat": torch.randn(8, 16)}
    pids = torch.arange(4).repeat_interleave(2)
    terms = ReIDLoss(id_weight=2.0, triplet_weight=0.5)(out, pids)
    torch.testing.assert_close(terms["loss"], 2.0 * terms["id"] + 0.5 * terms["triplet"])
    assert set(terms) == {"loss", "id", "triplet", "triplet_acc"}


def test_backward_reaches_every_trainable_parameter():
    model = Baseline(num_classes=4, backbone="resnet18")
    x = torch.randn(8, 3, 64, 32)
    pids = torch.arange(4).repeat_interleave(2)
    ReIDLoss()(model(x), pids)["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing


def test_warmup_then_step_decay():
    f = lambda e: warmup_multistep(e, warmup_epochs=10, warmup_factor=0.01, milestones=[40, 70], gamma=0.1)  # noqa: E731
    assert math.isclose(f(0), 0.01)
    assert math.isclose(f(5), 0.01 * 0.5 + 0.5)
    assert f(10) == 1.0 and f(39) == 1.0
    assert math.isclose(f(40), 0.1) and math.isclose(f(69), 0.1)
    assert math.isclose(f(70), 0.01)


def test_pretrained_without_network_is_one_clear_line(monkeypatch):
    import urllib.error

    from magnifier.errors import UserError

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError) as err:
        ResNetBackbone("resnet50", pretrained=True)
    msg = str(err.value)
    assert "\n" not in msg and "could not get ImageNet weights for resnet50" in msg
    assert "model.backbone.weights=" in msg


@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_reid_loss_uses_its_label_smoothing_for_every_id_term(eps):
    """ReIDLoss(label_smoothing=eps) passes eps to every ID term (global, SRB, regions, SFB):
    eps = 0 is plain cross-entropy, and eps = 0.3 the smoothed formula, written out here."""
    g = torch.Generator().manual_seed(0)
    n, c = 8, 5
    pids = torch.arange(4).repeat_interleave(2)

    def smoothed(logits):
        logp = torch.log_softmax(logits, 1)
        target = torch.full_like(logp, eps / c)
        target[torch.arange(n), pids] += 1 - eps
        return -(target * logp).sum(1).mean()

    logits = {k: torch.randn(n, c, generator=g) * 3 for k in ("global", "srb", "sfb")}
    regions = torch.randn(8, n, c, generator=g) * 3
    betas = torch.linspace(0.2, 0.9, 8)
    out = {"global_logits": logits["global"], "global_feat": torch.randn(n, 6, generator=g),
           "srb_logits": logits["srb"], "srb_beta": torch.tensor(0.7),
           "sfb_region_logits": regions, "sfb_region_betas": betas, "sfb_logits": logits["sfb"]}
    terms = ReIDLoss(label_smoothing=eps, triplet_weight=0.0, srb_weight=1.0, region_weight=1.0,
                     sfb_weight=1.0)(out, pids)
    torch.testing.assert_close(terms["id"], smoothed(logits["global"]))
    torch.testing.assert_close(terms["srb"], smoothed(logits["srb"]))
    torch.testing.assert_close(terms["sfb"], smoothed(logits["sfb"]))
    torch.testing.assert_close(terms["region"], sum(b * smoothed(r) for b, r in zip(betas, regions)))
    if eps == 0.0:
        torch.testing.assert_close(terms["id"], torch.nn.functional.cross_entropy(logits["global"], pids))


def test_each_triplet_term_reads_its_own_feature():
    """``triplet`` is computed on global_feat and ``sfb_triplet`` on the fused sfb_feat; hand-made
    points give each a different, known value, and the margin setting reaches both."""
    pids = torch.tensor([0, 0, 1, 1])
    global_feat = torch.tensor([[0.0], [1.0], [3.0], [5.0]])  # loss 0.3 / 4 at margin 0.3 (only anchor 2 violates)
    sfb_feat = torch.tensor([[0.0], [0.5], [4.0], [4.5]])  # well separated: loss 0 at margin 0.3
    out = {"global_logits": torch.zeros(4, 2), "global_feat": global_feat, "sfb_feat": sfb_feat}
    terms = ReIDLoss(id_weight=0.0, sfb_triplet_weight=1.0)(out, pids)
    ref_global = (max(0, 1 - 3 + 0.3) + max(0, 1 - 2 + 0.3) + max(0, 2 - 2 + 0.3) + max(0, 2 - 4 + 0.3)) / 4
    assert math.isclose(terms["triplet"].item(), ref_global, rel_tol=1e-5)
    assert math.isclose(terms["sfb_triplet"].item(), 0.0, abs_tol=1e-6)
    # a margin of 4 makes the SFB term positive: d_ap 0.5 for every anchor, d_an 4, 3.5, 3.5, 4
    terms = ReIDLoss(id_weight=0.0, sfb_triplet_weight=1.0, margin=4.0)(out, pids)
    assert math.isclose(terms["sfb_triplet"].item(), (0.5 + 1.0 + 1.0 + 0.5) / 4, rel_tol=1e-5)
    assert math.isclose(terms["triplet"].item(), (2 + 3 + 4 + 2) / 4, rel_tol=1e-5)
    torch.testing.assert_close(terms["loss"], terms["triplet"] + terms["sfb_triplet"])


def test_reid_loss_defaults_are_the_baseline_loss():
    """ReIDLoss() is the strong baseline's loss whatever the model outputs: ID (eps 0.1) +
    batch-hard triplet (margin 0.3), every MagnifierNet term off; and the triplet's own default
    margin is 0.3."""
    from magnifier.models import MagnifierNet

    torch.manual_seed(0)
    model = MagnifierNet(num_classes=4, backbone="resnet18")
    masks = (torch.arange(128)[:, None].expand(128, 32) * 8 // 128).expand(8, 128, 32).clone()
    pids = torch.arange(4).repeat_interleave(2)
    out = model(torch.randn(8, 3, 128, 32), masks)
    terms = ReIDLoss()(out, pids)
    assert set(terms) == {"loss", "id", "triplet", "triplet_acc"}
    torch.testing.assert_close(terms["id"], cross_entropy_label_smooth(out["global_logits"], pids, 0.1))
    torch.testing.assert_close(terms["triplet"], batch_hard_triplet_loss(out["global_feat"], pids, 0.3)[0])
    torch.testing.assert_close(terms["loss"], terms["id"] + terms["triplet"])
    feats = torch.tensor([[0.0], [1.0], [3.0], [5.0]])
    assert math.isclose(batch_hard_triplet_loss(feats, torch.tensor([0, 0, 1, 1]))[0].item(), 0.3 / 4, rel_tol=1e-5)
