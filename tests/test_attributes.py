"""The optional attribute branch: attribute files, the branch, soft SFB masks, the loss, the batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F

from magnifier.data import ReIDDataModule
from magnifier.data.attributes import GROUP_SIZES, attribute_names, read_attributes
from magnifier.parts import NUM_PARTS
from magnifier.errors import UserError
from magnifier.losses import ReIDLoss, attribute_bce_loss
from magnifier.models import AttributeBranch, MagnifierNet, SemanticFusionBranch
from magnifier.models.attributes import soft_region_masks
from magnifier.models.branches import labels_to_grid

from .conftest import TINY, compose

MARKET_BINARY = ("gender", "hair", "up", "down", "clothes", "hat", "backpack", "bag", "handbag")
MARKET_COLOURS = (
    [f"up{c}" for c in ("black", "white", "red", "purple", "yellow", "gray", "blue", "green")]
    + [f"down{c}" for c in ("black", "white", "pink", "purple", "yellow", "gray", "blue", "green", "brown")]
)
DUKE_FIELDS = (
    ("gender", "top", "boots", "hat", "backpack", "bag", "handbag", "shoes")
    + tuple(f"up{c}" for c in ("black", "white", "red", "purple", "gray", "blue", "green", "brown"))
    + tuple(f"down{c}" for c in ("black", "white", "red", "gray", "blue", "green", "brown"))
)
PAPER_LOSS = dict(parsing_weight=2.0, srb_weight=1.0, region_weight=0.0125, sfb_weight=1.0,
                  sfb_triplet_weight=1.0, diversity_weight=0.01)


def _split(pids, fields: dict[str, list[int]]) -> dict:
    """One split as Lin et al. store it: 1xM uint8 fields and a 1xM cell of pid strings."""
    split = {name: np.array([values], np.uint8) for name, values in fields.items()}
    split["image_index"] = np.array([[f"{p:04d}" for p in pids]], dtype=object)
    return split


def _market_fields(n: int, **overrides) -> dict[str, list[int]]:
    """All 27 Market fields at 'no' / 1 (age: young) for n identities, then the overrides."""
    fields = {name: [1] * n for name in ("age", *MARKET_BINARY, *MARKET_COLOURS)}
    fields.update(overrides)
    return fields


def write_market_attributes(path, train_pids, test_pids=(), train_fields=None, test_fields=None):
    train = _split(train_pids, train_fields or _market_fields(len(train_pids)))
    test = _split(test_pids, test_fields or _market_fields(len(test_pids)))
    # The real file lists test before train and orders the fields differently in each split.
    test = dict(reversed(list(test.items())))
    scipy.io.savemat(str(path), {"market_attribute": {"test": test, "train": train}})
    return path


# -- the reader -------------------------------------------------------------------------------
def test_market_reader_turns_each_identity_into_a_30_bit_vector(tmp_path):
    train = _market_fields(
        2,
        age=[3, 1], gender=[2, 1], hair=[1, 2], up=[2, 1], down=[1, 2], clothes=[2, 1], hat=[1, 2],
        backpack=[2, 1], bag=[1, 1], handbag=[2, 1], upblue=[2, 1], upblack=[1, 2], downgray=[2, 1],
        downbrown=[1, 2],
    )
    test = _market_fields(1, age=[4], gender=[2], downpink=[2])
    path = write_market_attributes(tmp_path / "market_attribute.mat", [2, 7], [1], train, test)
    table, names = read_attributes(path)
    assert sorted(table) == [1, 2, 7] and len(names) == 30 and names == attribute_names("market")
    assert all(v.dtype == np.float32 and v.shape == (30,) for v in table.values())
    # By hand, in the groups general | head | upper | lower:
    # [young teen adult old female] [long_hair hat] [short_sleeve backpack bag up x8: black white
    # red purple yellow gray blue green] [short_lower pants handbag down x9: black white pink
    # purple yellow gray blue green brown]
    expected = {
        2: [0, 0, 1, 0, 1] + [0, 0] + [1, 1, 0] + [0, 0, 0, 0, 0, 0, 1, 0]
           + [0, 1, 1] + [0, 0, 0, 0, 0, 1, 0, 0, 0],
        7: [1, 0, 0, 0, 0] + [1, 1] + [0, 0, 0] + [1, 0, 0, 0, 0, 0, 0, 0]
           + [1, 0, 0] + [0, 0, 0, 0, 0, 0, 0, 0, 1],
        1: [0, 0, 0, 1, 1] + [0, 0] + [0, 0, 0] + [0, 0, 0, 0, 0, 0, 0, 0]
           + [0, 0, 0] + [0, 0, 1, 0, 0, 0, 0, 0, 0],
    }
    for pid, bits in expected.items():
        np.testing.assert_array_equal(table[pid], np.array(bits, np.float32), err_msg=f"pid {pid}")
    assert names[:5] == ["age_young", "age_teenager", "age_adult", "age_old", "female"]
    assert sum(GROUP_SIZES["market"]) == 30 and GROUP_SIZES["market"] == (5, 2, 11, 12)
    # Only the training split when asked.
    assert sorted(read_attributes(path, splits=("train",))[0]) == [2, 7]


def test_duke_reader_gives_23_bits(tmp_path):
    fields = {name: [1] for name in DUKE_FIELDS}
    fields.update(gender=[2], top=[2], shoes=[2], upgray=[2], downbrown=[2])
    split = _split([5], fields)
    scipy.io.savemat(str(tmp_path / "duke_attribute.mat"), {"duke_attribute": {"train": split, "test": _split([9], fields)}})
    table, names = read_attributes(tmp_path / "duke_attribute.mat")
    assert len(names) == 23 and GROUP_SIZES["duke"] == (1, 1, 11, 10)
    # [female] [hat] [long_top backpack bag up x8: black white red purple gray blue green brown]
    # [boots light_shoes handbag down x7: black white red gray blue green brown]
    bits = [1] + [0] + [1, 0, 0] + [0, 0, 0, 0, 1, 0, 0, 0] + [0, 1, 0] + [0, 0, 0, 0, 0, 0, 1]
    np.testing.assert_array_equal(table[5], np.array(bits, np.float32))
    np.testing.assert_array_equal(table[9], table[5])


def test_reader_errors_name_the_file_and_the_expected_layout(tmp_path):
    with pytest.raises(UserError, match=r"attribute file .*nowhere\.mat not found; expected .*market_attribute\.mat"):
        read_attributes(tmp_path / "nowhere.mat")
    other = tmp_path / "other.mat"
    scipy.io.savemat(str(other), {"labels": np.ones((2, 3))})
    with pytest.raises(UserError, match=r"other\.mat: expected .*'market_attribute' or 'duke_attribute'.*found variables \['labels'\]"):
        read_attributes(other)
    fields = _market_fields(1)
    del fields["hat"]
    broken = write_market_attributes(tmp_path / "broken.mat", [2], [1], fields)
    with pytest.raises(UserError, match=r"broken\.mat: .*train lacks the field\(s\) hat"):
        read_attributes(broken)
    bad = write_market_attributes(tmp_path / "bad.mat", [2], [1], _market_fields(1, gender=[3]))
    with pytest.raises(UserError, match=r"bad\.mat: train\.gender has 1 values in \[3\]; expected 1 .* in \[1, 2\]"):
        read_attributes(bad)
    not_mat = tmp_path / "text.mat"
    not_mat.write_text("hello")
    with pytest.raises(UserError, match=r"text\.mat: expected .*scipy could not read it"):
        read_attributes(not_mat)


# -- the branch and the soft SFB masks --------------------------------------------------------
def test_attribute_branch_shapes_and_groups():
    branch = AttributeBranch(in_channels=32, num_attributes=30)
    assert branch.group_sizes == (5, 2, 11, 12)
    f4 = torch.rand(3, 32, 8, 4)
    out = branch(f4)
    assert out["logits"].shape == (3, 30) and out["maps"].shape == (3, 4, 8, 4)
    assert ((out["maps"] > 0) & (out["maps"] < 1)).all()
    # Each group reads its own map: zeroing the head classifier's input map changes only bits 5-6.
    with torch.no_grad():  # a constant head map (0.5): the head group now reads the plain mean
        branch.attention.bias[1] = 0.0
        branch.attention.weight[1] = 0.0
    changed = (branch(f4)["logits"] != out["logits"]).any(0)
    assert changed[5:7].all() and not changed[:5].any() and not changed[7:].any()
    assert AttributeBranch(32, 23).group_sizes == (1, 1, 11, 10)
    assert AttributeBranch(32, 7, group_sizes=[0, 2, 3, 2])(f4)["logits"].shape == (3, 7)
    with pytest.raises(ValueError, match="no known attribute layout has 7 bits"):
        AttributeBranch(32, 7)
    with pytest.raises(ValueError, match="summing to 7"):
        AttributeBranch(32, 7, group_sizes=[1, 1, 1, 1])


def test_soft_masks_on_a_hand_made_example():
    labels = torch.tensor([[[0, 1], [5, 2]]])  # background, head / upper leg, torso
    maps = torch.tensor([0.9, 0.5, 0.25, 1.0]).view(1, 4, 1, 1).expand(1, 4, 2, 2)  # general, head, upper, lower
    m = soft_region_masks(labels, maps, 0.2)
    assert m.shape == (1, NUM_PARTS, 2, 2)
    torch.testing.assert_close(m[0, 0], torch.tensor([[1.0, 0], [0, 0]]))  # background stays hard
    torch.testing.assert_close(m[0, 1], torch.tensor([[0.1, 1], [0.1, 0.1]]))  # head: 0.2 x head map
    for r in (2, 3, 4):  # torso and arms: 0.2 x upper map, 1 on the own region
        own = (labels[0] == r).float()
        torch.testing.assert_close(m[0, r], own + (1 - own) * 0.05)
    for r in (5, 6, 7):  # legs and foot: 0.2 x lower map
        own = (labels[0] == r).float()
        torch.testing.assert_close(m[0, r], own + (1 - own) * 0.2)
    # Maps on another grid (last stride 2) are resized to the labels.
    assert soft_region_masks(labels.expand(1, 2, 2).repeat(1, 2, 2), maps, 0.2).shape == (1, NUM_PARTS, 4, 4)


def test_soft_masks_change_the_region_vectors_and_equal_a_hand_computed_masked_max():
    torch.manual_seed(0)
    sfb = SemanticFusionBranch(in_channels=8, num_classes=3).eval()
    labels = torch.tensor([[[0, 1, 1], [2, 3, 4], [5, 6, 7]]]).repeat(2, 1, 1)
    labels[1, 0, 0] = 2  # the second image has no background
    f3 = torch.randn(2, 8, 3, 3)
    maps = torch.rand(2, 4, 3, 3)
    masks = soft_region_masks(labels, maps, 0.2)
    hard = sfb(f3, labels)["region_feats"]
    soft = sfb(f3, labels, masks)["region_feats"]
    x = sfb.bottleneck(f3)
    part_map = {1: 1, 2: 2, 3: 2, 4: 2, 5: 3, 6: 3, 7: 3}
    for i in range(2):
        for r in range(NUM_PARTS):
            best = torch.zeros(8)
            for y in range(3):
                for xx in range(3):
                    w = 1.0 if labels[i, y, xx] == r else (0.2 * maps[i, part_map[r], y, xx] if r else 0.0)
                    best = torch.maximum(best, x[i, :, y, xx] * w)
            torch.testing.assert_close(soft[r, i], best)
    assert not torch.allclose(soft[1:], hard[1:])  # the part regions see beyond their labels
    torch.testing.assert_close(soft[0], hard[0])  # background is hard in both
    assert soft[0, 1].abs().sum() == 0  # ... so an absent background still pools to zero
    # With hard masks the per-region loop gives the one-pass scatter result.
    one_hot = F.one_hot(labels, NUM_PARTS).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(sfb(f3, labels, one_hot)["region_feats"], hard)


def _batch(n=4, h=128, w=32):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, h, w, generator=g)
    masks = (torch.arange(h)[:, None].expand(h, w) * NUM_PARTS // h).expand(n, h, w).clone()
    pids = torch.arange(n // 2).repeat_interleave(2)
    attributes = (torch.rand(n, 30, generator=g) > 0.5).float()
    return images, masks, pids, attributes


def test_magnifiernet_with_attributes_outputs_and_soft_masks_at_eval():
    torch.manual_seed(0)
    model = MagnifierNet(num_classes=2, backbone="resnet18", attributes=30)
    images, masks, _, _ = _batch()
    out = model(images, masks)
    assert out["attr_logits"].shape == (4, 30) and out["attr_maps"].shape == (4, 4, 8, 2)
    off = MagnifierNet(num_classes=2, backbone="resnet18")
    assert off.attribute_branch is None and "attr_logits" not in off(images, masks)
    model.eval()
    with torch.no_grad():
        emb = model(images)  # images suffice: the maps come from the model
        model.attribute_mask_weight = 0.0
        hard = model(images)
    assert emb.shape == (4, 512 + 256 + 256) and not torch.allclose(emb, hard)
    # In training too the SFB pools with the soft masks of the attribute maps (mutation testing
    # found nothing checking it): its region vectors are those of the SFB given those masks.
    model.attribute_mask_weight = 0.2
    model.train()
    torch.manual_seed(1)
    out = model(images, masks)
    with torch.no_grad():  # still in training mode: batch statistics, so the same features
        f3, _ = model.backbone(images)
        grid = labels_to_grid(masks, f3.shape[-2:])
        soft = soft_region_masks(grid, out["attr_maps"], 0.2)
        expected = model.sfb(f3, grid, soft)["region_feats"]
        hard = model.sfb(f3, grid)["region_feats"]
    torch.testing.assert_close(out["sfb_region_feats"], expected)
    assert not torch.allclose(out["sfb_region_feats"], hard)
    with pytest.raises(ValueError, match="attributes must be >= 0"):
        MagnifierNet(num_classes=2, backbone="resnet18", attributes=-1)


# -- the loss ---------------------------------------------------------------------------------
def test_attribute_term_is_bce_and_only_there_when_enabled():
    logits, targets = torch.randn(4, 30), (torch.rand(4, 30) > 0.5).float()
    pids = torch.tensor([0, 0, 1, 1])
    outputs = {"global_feat": torch.randn(4, 16), "global_logits": torch.randn(4, 2), "attr_logits": logits}
    t = ReIDLoss(attribute_weight=0.5)(outputs, pids, targets)
    expected = F.binary_cross_entropy_with_logits(logits, targets)
    # BCE by hand: -mean(y log s + (1 - y) log(1 - s)).
    s = torch.sigmoid(logits)
    torch.testing.assert_close(t["attribute"], -(targets * s.log() + (1 - targets) * (1 - s).log()).mean())
    torch.testing.assert_close(t["attribute"], expected)
    torch.testing.assert_close(t["loss"], t["id"] + t["triplet"] + 0.5 * expected)
    assert "attribute" not in ReIDLoss()(outputs, pids, targets)  # weight 0
    no_branch = {k: v for k, v in outputs.items() if k != "attr_logits"}
    assert "attribute" not in ReIDLoss(attribute_weight=1.0)(no_branch, pids)  # no attribute branch
    with pytest.raises(UserError, match="batch has none; set dataset.attributes"):
        ReIDLoss(attribute_weight=1.0)(outputs, pids)
    with pytest.raises(UserError, match="model.attributes=30 but the attribute file gives 23"):
        ReIDLoss(attribute_weight=1.0)(outputs, pids, targets[:, :23])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = attribute_bce_loss(logits.bfloat16(), targets)
    assert value.dtype == torch.float32 and math.isfinite(value.item())


def test_backward_reaches_the_attribute_branch_but_not_through_the_sfb_masks():
    torch.manual_seed(0)
    model = MagnifierNet(num_classes=2, backbone="resnet18", attributes=30)
    images, masks, pids, attributes = _batch()
    ReIDLoss(**PAPER_LOSS, attribute_weight=1.0)(model(images, masks), pids, attributes)["loss"].backward()
    dead = [n for n, p in model.attribute_branch.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead
    # The SFB's soft masks are detached: the SFB losses alone leave the attribute branch untouched.
    model.zero_grad(set_to_none=True)
    sfb_only = ReIDLoss(id_weight=0, triplet_weight=0, region_weight=1.0, sfb_weight=1.0)
    sfb_only(model(images, masks), pids, attributes)["loss"].backward()
    assert all(p.grad is None for p in model.attribute_branch.parameters())
    assert model.sfb.bottleneck.conv1.weight.grad is not None


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_step_hands_the_batch_attributes_to_the_loss():
    from magnifier.module import ReIDModule

    net = {"_target_": "magnifier.models.MagnifierNet", "backbone": "resnet18", "attributes": 30}
    loss = {"_target_": "magnifier.losses.ReIDLoss", **PAPER_LOSS, "attribute_weight": 1.0}
    module = ReIDModule(net=net, loss=loss, optim={}, num_classes=2)
    images, masks, pids, attributes = _batch()
    seen = {}
    criterion = module.criterion.forward

    def spy(outputs, pids, attributes=None):
        seen["attributes"] = attributes
        terms = criterion(outputs, pids, attributes)
        seen["terms"] = terms
        return terms

    module.criterion.forward = spy
    loss_value = module.training_step({"image": images, "mask": masks, "pid": pids, "attributes": attributes}, 0)
    assert seen["attributes"] is attributes and "attribute" in seen["terms"]
    assert torch.equal(loss_value, seen["terms"]["loss"])


# -- the data module --------------------------------------------------------------------------
def _datamodule(data_dir, **kwargs) -> ReIDDataModule:
    args = dict(name="synthetic", root=str(data_dir), height=64, width=32, batch_size=8, num_instances=4,
                test_batch_size=16, num_workers=0, synthetic=TINY, val_split="none")  # all 8 identities train
    args.update(kwargs)
    return ReIDDataModule(**args)


def test_datamodule_batches_carry_the_attributes_of_the_original_pids(tiny_data_dir, tmp_path):
    n_train = TINY["num_ids"] // 2
    train_pids = list(range(1, n_train + 1))  # the synthetic training pids (relabelled 0..7)
    # Identity p: age class (p % 4) + 1, female when p is even, hat when p > 4.
    fields = _market_fields(
        n_train, age=[p % 4 + 1 for p in train_pids], gender=[2 - p % 2 for p in train_pids],
        hat=[2 if p > 4 else 1 for p in train_pids],
    )
    path = write_market_attributes(tmp_path / "market_attribute.mat", train_pids, [99], fields)
    table, _ = read_attributes(path)
    dm = _datamodule(tiny_data_dir, attributes=str(path))
    dm.setup("fit")
    assert dm.num_attributes == 30
    assert {r.orig_pid for r in dm.data.train} == set(train_pids)
    assert all(r.pid == r.orig_pid - 1 for r in dm.data.train)
    batch = next(iter(dm.train_dataloader()))
    attrs = batch["attributes"]
    assert attrs.shape == (8, 30) and attrs.dtype == torch.float32
    for pid, row in zip(batch["pid"].tolist(), attrs):
        np.testing.assert_array_equal(row.numpy(), table[pid + 1])  # looked up by the original pid
    assert "attributes" not in next(iter(dm.test_dataloader()))
    # Without the option nothing changes; relative paths are read from the dataset folder.
    plain = _datamodule(tiny_data_dir)
    plain.setup("fit")
    assert "attributes" not in next(iter(plain.train_dataloader())) and plain.num_attributes == 0
    rel = _datamodule(tiny_data_dir, attributes="market_attribute.mat")
    assert rel.attribute_path() == str(tiny_data_dir / "synthetic" / "market_attribute.mat")


def test_datamodule_refuses_attribute_files_missing_training_identities(tiny_data_dir, tmp_path):
    path = write_market_attributes(tmp_path / "market_attribute.mat", list(range(1, 8)), [99])  # no pid 8
    dm = _datamodule(tiny_data_dir, attributes=str(path))
    with pytest.raises(UserError, match=r"dataset.attributes=.*market_attribute\.mat: 1 identities have no attributes, e\.g\. pid 8"):
        dm.setup("fit")


def test_train_checks_the_attribute_file_before_training(tiny_data_dir, tmp_path):
    from magnifier.train import _check_attributes

    cfg = compose(["model.attributes=30"], output_dir=str(tmp_path))
    assert cfg.model.attribute_mask_weight == 0.2 and cfg.loss.attribute_weight == 1.0
    assert compose([], output_dir=str(tmp_path)).model.attributes == 0  # off by default
    with pytest.raises(UserError, match="model.attributes=30 needs identity attributes: set dataset.attributes"):
        _check_attributes(cfg, None)
    fields = {name: [1] for name in DUKE_FIELDS}
    scipy.io.savemat(str(tmp_path / "duke_attribute.mat"),
                     {"duke_attribute": {"train": _split([1], fields), "test": _split([9], fields)}})
    cfg = compose(["model.attributes=30", f"dataset.attributes={tmp_path / 'duke_attribute.mat'}"], output_dir=str(tmp_path))
    dm = _datamodule(tiny_data_dir, attributes=str(tmp_path / "duke_attribute.mat"))
    with pytest.raises(UserError, match=r"model.attributes=30 but dataset.attributes=.*gives 23 bits .*model.attributes=23"):
        _check_attributes(cfg, dm)


def test_shared_group_sizes_describe_the_attribute_layouts():
    """The model reads the group sizes from magnifier.parts; they must match the bit layouts."""
    from magnifier.data import attributes as data_attributes
    from magnifier.parts import GROUP_SIZES

    for name, layout in data_attributes._LAYOUTS.items():
        assert GROUP_SIZES[name] == tuple(len(group) for group in layout)
        assert sum(GROUP_SIZES[name]) == len(data_attributes.attribute_names(name))


def test_model_layer_imports_nothing_from_the_data_layer():
    import subprocess
    import sys

    code = ("import sys, magnifier.models, magnifier.losses; "
            "print(sorted(m for m in sys.modules if m.startswith('magnifier.data')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
