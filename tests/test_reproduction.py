"""The authors' settings and the options that switch them (README: "Differences from the authors' code").

Each default is checked on hand-made tensors against the authors' behaviour, and each option
against ours; the two-stage schedule is checked end to end through the training command.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from magnifier.models import Baseline, MagnifierNet, ResNetBackbone
from magnifier.models.branches import ParsingHead, labels_to_grid
from magnifier.module import schedule_epoch, warmup_multistep

from .conftest import compose, tiny_overrides


def _classifiers(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and "classifier" in n}


# -- classifiers and the parsing head -----------------------------------------------------------
def test_magnifier_classifiers_have_a_zero_initialised_bias_and_the_baseline_none():
    torch.manual_seed(0)
    model = MagnifierNet(num_classes=7, backbone="resnet18")
    classifiers = _classifiers(model)
    # global, SRB and the fused SFB one; the 8 SFB region classifiers are stacked in region_heads
    assert len(classifiers) == 3
    for name, fc in classifiers.items():
        assert fc.bias is not None, name
        assert torch.equal(fc.bias, torch.zeros(7)), name
        assert 0.0007 < fc.weight.std().item() < 0.0013, name
    heads = model.sfb.region_heads.classifier
    assert heads.weight.shape[:2] == (8, 7) and torch.equal(heads.bias, torch.zeros(8, 7))
    assert all(0.0007 < heads.weight[r].std().item() < 0.0013 for r in range(8))
    plain = MagnifierNet(num_classes=7, backbone="resnet18", classifier_bias=False)
    assert all(fc.bias is None for fc in _classifiers(plain).values())
    assert plain.sfb.region_heads.classifier.bias is None
    assert all(fc.bias is None for fc in _classifiers(Baseline(num_classes=7, backbone="resnet18")).values())


def test_parsing_head_authors_init_is_normal_0_001_with_zero_bias():
    torch.manual_seed(0)
    head = ParsingHead(512, 256)
    assert 0.0009 < head.up.weight.std().item() < 0.0011
    assert abs(head.up.weight.mean().item()) < 1e-4
    assert 0.0008 < head.classifier.weight.std().item() < 0.0012
    assert torch.equal(head.classifier.bias, torch.zeros(8))
    default = ParsingHead(512, 256, init="pytorch")
    # PyTorch's Kaiming-uniform init is an order of magnitude wider and has a non-zero bias.
    assert default.classifier.weight.std().item() > 0.01
    assert default.classifier.bias.abs().sum() > 0
    with pytest.raises(ValueError, match="authors, pytorch"):
        ParsingHead(512, 256, init="xavier")


# -- label maps on the feature grid -------------------------------------------------------------
def test_grid_sampling_reads_each_cells_centre_pixel():
    # A 16 x 8 map whose every pixel has its own value (row * 8 + col): the value read for a
    # cell says exactly which pixel was sampled. Cells of the 4 x 2 grid are 4 x 4 pixels.
    labels = (torch.arange(16)[:, None] * 8 + torch.arange(8)[None, :])[None]
    centre = labels_to_grid(labels, (4, 2))
    corner = labels_to_grid(labels, (4, 2), "corner")
    for i in range(4):
        for j in range(2):
            assert centre[0, i, j].item() == (4 * i + 2) * 8 + (4 * j + 2)  # pixel (4i+2, 4j+2): the centre
            assert corner[0, i, j].item() == (4 * i) * 8 + 4 * j           # pixel (4i, 4j): top-left
    with pytest.raises(ValueError, match="centre, corner"):
        labels_to_grid(labels, (4, 2), "middle")


def test_a_thin_part_on_a_cell_border_goes_to_the_cell_it_mostly_covers():
    # Head (1) in rows 0-5 of a 16-row map, torso (2) below; on a 4-row grid (4 pixels per
    # cell) the second cell is rows 4-7: half head, half torso at its centre row 6 -> torso;
    # the corner read (row 4) says head although most of the cell is torso.
    labels = torch.full((1, 16, 4), 2)
    labels[:, :6] = 1
    assert labels_to_grid(labels, (4, 1))[0, :, 0].tolist() == [1, 2, 2, 2]
    assert labels_to_grid(labels, (4, 1), "corner")[0, :, 0].tolist() == [1, 1, 2, 2]


def test_model_uses_its_grid_sampling_for_the_branches_and_the_parsing_target():
    torch.manual_seed(0)
    model = MagnifierNet(num_classes=4, backbone="resnet18", srb=False, sfb=False).train()
    images = torch.randn(2, 3, 64, 32)
    masks = (torch.arange(64)[:, None].expand(64, 32) // 8).clamp(max=7)[None].repeat(2, 1, 1)
    out = model(images, masks)
    target = out["parsing_target"]
    assert target.shape[-2:] == out["parsing_logits"].shape[-2:] == (8, 4)
    torch.testing.assert_close(target, labels_to_grid(masks, (8, 4), "centre"))
    with pytest.raises(ValueError, match="grid_sampling"):
        MagnifierNet(num_classes=4, backbone="resnet18", grid_sampling="middle")


# -- the stem ReLU ------------------------------------------------------------------------------
def test_stem_relu_keeps_torchvisions_network_and_false_reproduces_the_authors():
    torch.manual_seed(0)
    ours = ResNetBackbone("resnet18", last_stride=2).eval()
    reference = torchvision.models.resnet18(weights=None).eval()
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    stem = {"stem.0.weight": "conv1.weight", **{f"stem.1.{s}": f"bn1.{s}" for s in
            ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}}
    mapped = {k: state[v] for k, v in stem.items()}
    mapped.update({k: v for k, v in state.items() if k.startswith("layer")})
    ours.load_state_dict(mapped)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        body = nn.Sequential(*list(reference.children())[:-2])  # up to layer4
        torch.testing.assert_close(ours(x)[1], body(x))
        authors = ResNetBackbone("resnet18", last_stride=2, stem_relu=False).eval()
        authors.load_state_dict(mapped)  # the same weights: the ReLU has none
        stem_out = authors.stem(x)
        assert (stem_out < 0).any()  # layer1 now sees negative inputs the ImageNet weights never saw
        assert not torch.allclose(authors(x)[1], body(x))
    assert not any(isinstance(m, nn.ReLU) for m in authors.stem)


# -- the learning-rate schedule -----------------------------------------------------------------
def _multipliers(step_at: str, start_epoch: int = 0, epochs: int = 80) -> list[float]:
    return [warmup_multistep(schedule_epoch(e, step_at, start_epoch), 10, 0.01, [40, 70], 0.1) for e in range(epochs)]


def test_schedule_stepped_at_epoch_start_matches_the_authors_first_epochs_and_decays():
    authors = _multipliers("start")
    assert authors[0] == pytest.approx(0.01 * 0.9 + 0.1)   # 0.109: the authors' first epoch
    assert authors[8] == pytest.approx(0.01 * 0.1 + 0.9)
    assert authors[9] == pytest.approx(1.0)
    assert authors[38] == pytest.approx(1.0) and authors[39] == pytest.approx(0.1)  # epoch 40 (1-based)
    assert authors[68] == pytest.approx(0.1) and authors[69] == pytest.approx(0.01)
    ours = _multipliers("end")
    assert ours[0] == pytest.approx(0.01) and ours[10] == pytest.approx(1.0)
    assert ours[39] == pytest.approx(1.0) and ours[40] == pytest.approx(0.1)
    assert authors[:-1] == pytest.approx(ours[1:])  # the same curve, one epoch earlier
    with pytest.raises(ValueError, match="start, end"):
        schedule_epoch(0, "middle")


def test_second_stage_continues_the_schedule_at_the_final_learning_rate():
    assert _multipliers("start", 460, 40) == pytest.approx([0.01] * 40)  # Market: 3.5e-4 -> 3.5e-6
    cuhk = [warmup_multistep(schedule_epoch(e, "start", 560), 10, 0.01, [40], 0.1) for e in range(40)]
    assert cuhk == pytest.approx([0.1] * 40)  # CUHK03: 3.5e-5


def test_configure_optimizers_applies_the_schedule_from_the_first_epoch():
    from magnifier.module import ReIDModule

    optim = {"optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1.0},
             "scheduler": {"warmup_epochs": 10, "warmup_factor": 0.01, "milestones": [40, 70], "gamma": 0.1,
                           "step_at": "start", "start_epoch": 0}}
    module = ReIDModule(net={"_target_": "magnifier.models.Baseline", "backbone": "resnet18"},
                        loss={"_target_": "magnifier.losses.ReIDLoss"}, optim=optim, num_classes=3)
    conf = module.configure_optimizers()
    assert conf["optimizer"].param_groups[0]["lr"] == pytest.approx(0.109)
    optim["scheduler"]["start_epoch"] = 460
    module = ReIDModule(net={"_target_": "magnifier.models.Baseline", "backbone": "resnet18"},
                        loss={"_target_": "magnifier.losses.ReIDLoss"}, optim=optim, num_classes=3)
    assert module.configure_optimizers()["optimizer"].param_groups[0]["lr"] == pytest.approx(0.01)


# -- weights-only initialisation and the two-stage chain ----------------------------------------
def test_init_network_reinitialises_classifiers_of_another_size_and_says_which(tmp_path):
    from magnifier.checkpoint import init_network

    torch.manual_seed(0)
    source = MagnifierNet(num_classes=5, backbone="resnet18")
    with torch.no_grad():
        for fc in _classifiers(source).values():
            fc.bias.fill_(0.5)
    torch.save({"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "a.ckpt")
    same = MagnifierNet(num_classes=5, backbone="resnet18")
    report = init_network(same, tmp_path / "a.ckpt")
    assert "re-initialised" not in report
    for k, v in source.state_dict().items():
        torch.testing.assert_close(same.state_dict()[k], v)
    other = MagnifierNet(num_classes=9, backbone="resnet18")
    report = init_network(other, tmp_path / "a.ckpt")
    assert "global_branch.classifier" in report and "sfb.region_heads" in report
    assert "\n" not in report
    torch.testing.assert_close(other.backbone.layer1[0].conv1.weight, source.backbone.layer1[0].conv1.weight)
    assert torch.equal(other.global_branch.classifier.bias, torch.zeros(9))  # fresh, not 0.5
    from magnifier.errors import UserError

    with pytest.raises(UserError, match="another shape"):
        init_network(MagnifierNet(num_classes=5, backbone="resnet18", srb_channels=128), tmp_path / "a.ckpt")


def test_two_stage_chain_starts_stage_two_from_stage_one(tiny_data_dir, tmp_path, capsys):
    """Stage 2 of the paper recipe: stage 1's weights and Adam state, the diversity loss on, the
    schedule continued, epochs counted from zero."""
    from magnifier.module import ReIDModule
    from magnifier.train import train

    small = tiny_overrides(tiny_data_dir) + [
        "model/backbone=resnet18", "model.backbone.pretrained=false", "model.attributes=0", "dataset.attributes=null",
        "dataset.height=64", "dataset.width=32", "dataset.batch_size=16", "logger=csv", "test=false",
        "+trainer.limit_train_batches=2", "~callbacks.progress_bar", "trainer.enable_model_summary=false",
        "trainer.check_val_every_n_epoch=1",
    ]
    cfg1 = compose(["experiment=market_paper", "dataset=synthetic", *small, "trainer.max_epochs=1"],
                   output_dir=str(tmp_path / "s1"))
    assert cfg1.loss.diversity_weight == 0 and cfg1.trainer.max_epochs == 1
    train(cfg1)
    stage1 = tmp_path / "s1" / "checkpoints" / "last.ckpt"
    missing = compose(["experiment=market_paper_stage2", "dataset=synthetic", *small], output_dir=str(tmp_path / "x"))
    with pytest.raises(SystemExit) as exit_info:  # one line: init_from is required
        train(missing)
    assert exit_info.value.code == 2
    assert "add init_from=<its checkpoint>" in capsys.readouterr().err
    cfg2 = compose(["experiment=market_paper_stage2", "dataset=synthetic", *small, f"init_from={stage1}",
                    "trainer.max_epochs=1"], output_dir=str(tmp_path / "s2"))
    assert cfg2.loss.diversity_weight == pytest.approx(0.01)
    assert cfg2.optim.scheduler.start_epoch == 460 and cfg2.init_optimizer

    seen = {}
    original = ReIDModule.on_train_start

    def spy(self):
        seen["before"] = {k: v.clone() for k, v in self.net.state_dict().items()}
        original(self)
        opt = self.trainer.optimizers[0]
        seen["lr"] = opt.param_groups[0]["lr"]
        seen["steps"] = [float(s["step"]) for s in opt.state.values()]
        seen["epoch"] = self.current_epoch

    ReIDModule.on_train_start = spy
    try:
        metrics = train(cfg2)
    finally:
        ReIDModule.on_train_start = original
    first = torch.load(stage1, map_location="cpu", weights_only=True)
    for k, v in first["state_dict"].items():
        if k.startswith("net."):
            torch.testing.assert_close(seen["before"][k[4:]], v, msg=k)
    assert seen["epoch"] == 0
    assert seen["lr"] == pytest.approx(3.5e-4 * 0.01)
    assert seen["steps"] and set(seen["steps"]) == {2.0}  # stage 1's two Adam steps carried over
    assert metrics["train/diversity"] > 0


def test_checkpoints_from_before_the_options_load_as_the_network_they_trained(tiny_checkpoint, tmp_path):
    """A checkpoint written before classifier_bias / grid_sampling / parsing_init existed was a
    bias-free, corner-sampling network: it must load as that, not fail on missing biases."""
    from magnifier.checkpoint import load_network

    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    for key in ("classifier_bias", "grid_sampling", "parsing_init"):
        ckpt["hyper_parameters"]["net"].pop(key, None)
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items()
                          if not ("classifier" in k and k.endswith(".bias") and "parsing_head" not in k)}
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    net, info = load_network(old)
    assert info["model"]["classifier_bias"] is False and info["model"]["grid_sampling"] == "corner"
    assert all(fc.bias is None for fc in _classifiers(net).values())
    assert net.grid_sampling == "corner"


@pytest.mark.parametrize("size", [(24, 12), (8, 4), (48, 24), (7, 5), (30, 17)])
def test_grid_sampling_matches_pytorchs_nearest_modes(size):
    torch.manual_seed(0)
    labels = torch.randint(0, 8, (2, 384, 192))
    for sampling, mode in (("centre", "nearest-exact"), ("corner", "nearest")):
        reference = torch.nn.functional.interpolate(labels[:, None].float(), size=size, mode=mode)[:, 0].long()
        assert torch.equal(labels_to_grid(labels, size, sampling), reference), (sampling, size)


def test_attribute_head_authors_has_a_bottleneck_and_averages_plainly():
    from magnifier.models.attributes import AttributeBranch

    torch.manual_seed(0)
    f4 = torch.rand(2, 64, 6, 3)
    authors = AttributeBranch(64, 30).eval()
    ours = AttributeBranch(64, 30, head="ours").eval()
    assert authors.bottleneck is not None and ours.bottleneck is None
    with torch.no_grad():
        maps = torch.sigmoid(authors.attention(authors.bottleneck(f4)))  # the conv reads the bottleneck
        torch.testing.assert_close(authors.maps(f4), maps)
        # general group (5 bits): its classifier on the plain average of map_0 * f4 over the 18 cells
        plain = (maps[:, :1] * f4).sum((2, 3)) / 18
        torch.testing.assert_close(authors(f4)["logits"][:, :5], authors.classifiers[0](plain))
        maps = ours.maps(f4)
        weighted = (maps[:, :1] * f4).sum((2, 3)) / maps[:, 0].sum((1, 2))[:, None]
        torch.testing.assert_close(ours(f4)["logits"][:, :5], ours.classifiers[0](weighted))
    with pytest.raises(ValueError, match="authors, ours"):
        AttributeBranch(64, 30, head="theirs")
