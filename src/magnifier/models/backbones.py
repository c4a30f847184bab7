"""ResNet backbones with last stride 1, returning the layer3 and layer4 feature maps."""

from __future__ import annotations

import contextlib
import io
import socket
from pathlib import Path

import torch
import torchvision
from torch import nn

from magnifier.errors import UserError

_RESNETS = {
    "resnet18": (torchvision.models.resnet18, "ResNet18_Weights"),
    "resnet34": (torchvision.models.resnet34, "ResNet34_Weights"),
    "resnet50": (torchvision.models.resnet50, "ResNet50_Weights"),
    "resnet101": (torchvision.models.resnet101, "ResNet101_Weights"),
}


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its pooling and classifier.

    ``forward(x)`` with x (N, 3, H, W) returns ``(layer3, layer4)``: (N, C3, H/16, W/16) and
    (N, C4, H/16, W/16) with last stride 1 (H/32 otherwise). C3/C4 are 1024/2048 for
    resnet50/101 and 256/512 for resnet18/34.

    Args:
        name: resnet18, resnet34, resnet50 or resnet101.
        pretrained: load torchvision's ImageNet weights (downloaded into the torch cache).
        weights: a local ``.pth`` state dict to load instead (takes precedence).
        last_stride: 1 keeps layer4 at layer3's resolution (the strong baseline's choice).
        stem_relu: keep the ReLU between the stem's BatchNorm and its max pooling. The authors'
            (and the strong baseline's) ResNet comments it out, but torchvision's ImageNet
            weights were trained with it, so without it layer1 receives negative inputs it never
            saw; False reproduces the authors' network.
    """

    def __init__(
        self,
        name: str = "resnet50",
        pretrained: bool = False,
        weights: str | None = None,
        last_stride: int = 1,
        stem_relu: bool = True,
    ):
        super().__init__()
        if name not in _RESNETS:
            raise UserError(f"unknown backbone '{name}'; choose one of {', '.join(_RESNETS)}")
        builder, weights_enum = _RESNETS[name]
        net = builder(weights=None)
        if weights:
            _load_local(net, weights)
        elif pretrained:
            _load_imagenet(net, name, getattr(torchvision.models, weights_enum).IMAGENET1K_V1)
        if last_stride == 1:
            block = net.layer4[0]
            # The first block of layer4 downsamples in its stride-2 conv and its shortcut.
            (block.conv2 if hasattr(block, "conv3") else block.conv1).stride = (1, 1)
            block.downsample[0].stride = (1, 1)
        stem = [net.conv1, net.bn1, net.relu, net.maxpool] if stem_relu else [net.conv1, net.bn1, net.maxpool]
        self.stem = nn.Sequential(*stem)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        last3 = net.layer3[-1]
        self.layer3_channels = (last3.conv3 if hasattr(last3, "conv3") else last3.conv2).out_channels
        self.out_channels = net.fc.in_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.layer2(self.layer1(self.stem(x)))
        f3 = self.layer3(x)
        return f3, self.layer4(f3)


def _load_local(net: nn.Module, path: str) -> None:
    if not Path(path).is_file():
        raise UserError(f"model.backbone.weights={path}: no such file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, _ = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing:
        raise UserError(f"model.backbone.weights={path}: {len(missing)} backbone weights missing (e.g. {missing[0]})")


#: Seconds a stalled weight download may wait on the network before it fails.
DOWNLOAD_TIMEOUT_S = 30


def _load_imagenet(net: nn.Module, name: str, weights) -> None:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a black-holed network must not hang the run
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # torch.hub's "Downloading ..." line
            state = weights.get_state_dict(progress=False)
    except Exception as err:  # no network, proxy refusal, corrupt cache: say so in one line
        raise UserError(
            f"could not get ImageNet weights for {name} ({type(err).__name__}: {err}); "
            "without internet, download them elsewhere and set model.backbone.weights=/path/file.pth, "
            "or set model.backbone.pretrained=false"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)
    net.load_state_dict(state)
