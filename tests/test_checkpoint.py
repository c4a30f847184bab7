"""magnifier.checkpoint.load_network: the trained network back, weights-only, clear errors."""

from __future__ import annotations

import copy
from fractions import Fraction

import pytest
import torch

from magnifier.checkpoint import load_network
from magnifier.errors import UserError


def _module_net(path):
    from magnifier.module import ReIDModule

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    module = ReIDModule(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    return module.net.eval()


def test_loads_the_trained_network_and_its_facts(tiny_checkpoint):
    net, info = load_network(tiny_checkpoint)
    assert not net.training
    x = torch.rand(3, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), _module_net(tiny_checkpoint)(x))
    assert info["num_classes"] == 8 and info["embedding_dim"] == 1024  # ResNet-18: 512+256+256
    assert info["data"] == {"height": 64, "width": 32, "mean": [0.485, 0.456, 0.406],
                            "std": [0.229, 0.224, 0.225]}
    assert info["epoch"] == 0 and info["model"]["_target_"] == "magnifier.models.MagnifierNet"


def _raises(path, match, **kwargs):
    with pytest.raises(UserError, match=match) as err:
        load_network(path, **kwargs)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    return message


def test_unreadable_files(tmp_path, tiny_checkpoint):
    _raises(tmp_path / "nowhere.ckpt", "no such checkpoint file")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00\x01 definitely not a checkpoint")
    _raises(junk, "not a readable PyTorch checkpoint")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:50_000])
    _raises(truncated, "not a readable PyTorch checkpoint")


def test_foreign_and_mismatched_checkpoints(tmp_path, tiny_checkpoint):
    plain = tmp_path / "plain.pth"
    torch.save({"weights": torch.zeros(3)}, plain)
    _raises(plain, "not a magnifier checkpoint")

    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    other = copy.deepcopy(ckpt)
    other["hyper_parameters"]["net"]["backbone"]["name"] = "resnet34"
    path = tmp_path / "other_backbone.ckpt"
    torch.save(other, path)
    assert "do not fit" in _raises(path, "missing")

    other = copy.deepcopy(ckpt)
    other["hyper_parameters"]["net"]["fusion"] = "concat"
    path = tmp_path / "other_fusion.ckpt"
    torch.save(other, path)
    _raises(path, "do not fit")


def test_pickled_objects_need_trust(tmp_path, tiny_checkpoint):
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    ckpt["note"] = Fraction(1, 3)  # not a tensor or plain container: refused weights-only
    path = tmp_path / "pickled.ckpt"
    torch.save(ckpt, path)
    assert "trust_checkpoint=true" in _raises(path, "refused")
    net, _ = load_network(path, trust_checkpoint=True)
    assert net.embedding_dim == 1024

    from omegaconf import OmegaConf

    del ckpt["note"]
    ckpt["hyper_parameters"]["net"] = OmegaConf.create(ckpt["hyper_parameters"]["net"])
    path = tmp_path / "omegaconf.ckpt"
    torch.save(ckpt, path)
    _raises(path, "refused")
    net, info = load_network(path, trust_checkpoint=True)
    assert isinstance(info["model"], dict) and net.embedding_dim == 1024


def test_bare_state_dict_with_model_config(tmp_path, tiny_checkpoint):
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    state = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    path = tmp_path / "state.pth"
    torch.save(state, path)
    _raises(path, "not a magnifier checkpoint")
    cfg = {**ckpt["hyper_parameters"]["net"], "num_classes": 8}
    net, info = load_network(path, model_cfg=cfg)
    x = torch.rand(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), _module_net(tiny_checkpoint)(x))
    assert info["data"] is None and info["epoch"] is None
