"""MagnifierNet's branches on top of the backbone's layer3 / layer4 maps.

Shapes use N images, C3/C4 channels of layer3/layer4 (1024/2048 for ResNet-50), h x w the
feature grid (24 x 12 for a 384 x 192 input with last stride 1) and R = 8 part labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

from magnifier.parts import LOWER_BODY, NUM_PARTS, UPPER_BODY
from magnifier.tensors import device_constant


def init_bnneck(bn: nn.BatchNorm1d) -> nn.BatchNorm1d:
    """BNNeck: BatchNorm1d whose bias is frozen at zero (Luo et al., the strong baseline)."""
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    bn.bias.requires_grad_(False)
    return bn


def init_classifier(fc: nn.Linear) -> nn.Linear:
    """N(0, 0.001) weights and a zero bias (if any): both the strong baseline's and the authors'."""
    nn.init.normal_(fc.weight, std=0.001)
    if fc.bias is not None:
        nn.init.zeros_(fc.bias)
    return fc


class GlobalBranch(nn.Module):
    """GAP on layer4 -> feature (triplet) -> BNNeck -> classifier (ID loss).

    The classifier has a bias with ``classifier_bias`` (MagnifierNet's authors) and none without
    (the strong baseline).

    ``forward(f4)`` with f4 (N, C, h, w) returns ``(feat, bn_feat, logits)``: (N, C), (N, C),
    (N, num_classes).
    """

    def __init__(self, in_channels: int, num_classes: int, classifier_bias: bool = False):
        super().__init__()
        self.bnneck = init_bnneck(nn.BatchNorm1d(in_channels))
        self.classifier = init_classifier(nn.Linear(in_channels, num_classes, bias=classifier_bias))

    def forward(self, f4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat = F.adaptive_avg_pool2d(f4, 1).flatten(1)
        bn_feat = self.bnneck(feat)
        return feat, bn_feat, self.classifier(bn_feat)


#: How :func:`labels_to_grid` picks each grid cell's label: offset of the sampled pixel in the cell.
GRID_SAMPLING = {"centre": 0.5, "corner": 0.0}


def labels_to_grid(labels: torch.Tensor, size: tuple[int, int], sampling: str = "centre") -> torch.Tensor:
    """Part labels (N, H, W) long -> (N, h, w) long by nearest neighbour (labels never blend).

    ``centre`` reads each cell's label at the pixel at its centre (row ``floor((i + 0.5) H / h)``,
    what PyTorch calls ``nearest-exact``), so a cell carries the part it mostly covers;
    ``corner`` reads its top-left pixel (row ``floor(i H / h)``, PyTorch's ``nearest``), half a
    cell off towards the top left. Plain indexing with constant indices, so it exports to ONNX.
    """
    if sampling not in GRID_SAMPLING:
        raise ValueError(f"grid sampling must be one of {', '.join(GRID_SAMPLING)}, got {sampling!r}")
    (big_h, big_w), (h, w) = labels.shape[-2:], size
    if (big_h, big_w) == (h, w):
        return labels
    offset = GRID_SAMPLING[sampling]
    rows = device_constant(tuple(min(int((i + offset) * big_h / h), big_h - 1) for i in range(h)), labels.device)
    cols = device_constant(tuple(min(int((j + offset) * big_w / w), big_w - 1) for j in range(w)), labels.device)
    return labels.index_select(-2, rows).index_select(-1, cols)


def fresh_bottleneck(channels: int) -> Bottleneck:
    """A fresh ResNet bottleneck keeping ``channels`` (channels // 4 inside, x4 expansion out)."""
    return Bottleneck(channels, channels // 4)


class ParsingHead(nn.Module):
    """Predicts part labels from layer4 so a deployed model needs no external parser.

    (N, C4, h, w) -> logits (N, R, 2h, 2w): 3x3 ConvTranspose stride 2 -> BN -> ReLU -> 1x1 conv.

    ``init="authors"`` draws both convolutions' weights from N(0, 0.001) with a zero bias (the
    authors' ``PartSegModule``), so the head starts predicting near-uniform parts;
    ``"pytorch"`` keeps PyTorch's default (Kaiming-uniform) initialisation.
    """

    INITS = ("authors", "pytorch")

    def __init__(self, in_channels: int, mid_channels: int = 256, num_parts: int = NUM_PARTS, init: str = "authors"):
        super().__init__()
        if init not in self.INITS:
            raise ValueError(f"parsing head init must be one of {', '.join(self.INITS)}, got {init!r}")
        self.up = nn.ConvTranspose2d(in_channels, mid_channels, 3, stride=2, padding=1, output_padding=1, bias=False)
        self.bn = nn.BatchNorm2d(mid_channels)
        self.classifier = nn.Conv2d(mid_channels, num_parts, 1)
        if init == "authors":
            nn.init.normal_(self.up.weight, std=0.001)
            nn.init.normal_(self.classifier.weight, std=0.001)
            nn.init.zeros_(self.classifier.bias)

    def forward(self, f4: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.relu(self.bn(self.up(f4))))


class SemanticRegularizationBranch(nn.Module):
    """SRB: learns from layer3 features whose semantic regions are erased (a synthetic occlusion).

    Training: ``erase_upper`` regions of {head, torso, upper arm, lower arm} and ``erase_lower``
    of {upper leg, lower leg, foot} are zeroed on the feature grid, one choice for the whole
    batch (``per_sample=False``, the authors' code) or one per image. Evaluation: no erasing.
    Then global max pooling -> 1x1 conv to ``out_channels`` -> BNNeck -> classifier.

    ``forward(f3, labels)`` with f3 (N, C3, h, w) and labels (N, h, w) returns ``feat`` (N, D)
    pre-BN, ``bn_feat`` (N, D), ``logits`` (N, num_classes), ``beta`` (0-dim: sigmoid of the kept
    fraction of positions) and ``keep`` (N, h, w) bool.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        out_channels: int | None = None,
        erase_upper: int = 2,
        erase_lower: int = 1,
        per_sample: bool = False,
        classifier_bias: bool = False,
    ):
        super().__init__()
        if not 0 <= erase_upper <= len(UPPER_BODY) or not 0 <= erase_lower <= len(LOWER_BODY):
            raise ValueError(
                f"erase_upper must be in 0..{len(UPPER_BODY)} and erase_lower in 0..{len(LOWER_BODY)}, "
                f"got {erase_upper} and {erase_lower}"
            )
        out_channels = out_channels or in_channels
        self.erase_upper, self.erase_lower, self.per_sample = erase_upper, erase_lower, per_sample
        self.bottleneck = fresh_bottleneck(in_channels)
        self.reduce = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bnneck = init_bnneck(nn.BatchNorm1d(out_channels))
        self.classifier = init_classifier(nn.Linear(out_channels, num_classes, bias=classifier_bias))
        self.out_channels = out_channels

    def choose_erased(self, n: int, device: torch.device) -> torch.Tensor:
        """(n or 1, erase_upper + erase_lower) long: the part labels to erase."""
        upper = device_constant(tuple(UPPER_BODY), device)
        lower = device_constant(tuple(LOWER_BODY), device)
        rows = []
        for _ in range(n if self.per_sample else 1):
            u = upper[torch.randperm(len(upper), device=device)[: self.erase_upper]]
            lo = lower[torch.randperm(len(lower), device=device)[: self.erase_lower]]
            rows.append(torch.cat([u, lo]))
        return torch.stack(rows)

    def forward(self, f3: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        x = self.bottleneck(f3)
        if self.training and labels is not None and self.erase_upper + self.erase_lower > 0:
            erased = self.choose_erased(x.shape[0], x.device)  # (1 or N, E)
            keep = ~(labels[:, :, :, None] == erased[:, None, None, :]).any(-1)  # (N, h, w)
            x = x * keep[:, None].to(x.dtype)
        else:
            keep = torch.ones(x.shape[0], *x.shape[-2:], dtype=torch.bool, device=x.device)
        beta = torch.sigmoid(keep.float().mean())
        feat = self.reduce(F.adaptive_max_pool2d(x, 1)).flatten(1)
        bn_feat = self.bnneck(feat)
        return {"feat": feat, "bn_feat": bn_feat, "logits": self.classifier(bn_feat), "beta": beta, "keep": keep}


class StackedLinear(nn.Module):
    """R linear layers of the same shape applied as one batched product: (R, N, C) -> (R, N, K),
    weight (R, K, C) initialised as :func:`init_classifier` (N(0, 0.001)), bias (R, K) zero."""

    def __init__(self, num: int, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num, out_features, in_features))
        nn.init.normal_(self.weight, std=0.001)
        self.bias = nn.Parameter(torch.zeros(num, out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.transpose(1, 2)  # (R, C, K)
        if self.bias is None:
            return torch.bmm(x, weight)
        return torch.baddbmm(self.bias[:, None, :], x, weight)


class RegionHeads(nn.Module):
    """The R region heads of the SFB (BNNeck + ID classifier each) as one batched operation.

    Region r's BNNeck normalises its C channels on their own, so the R BNNecks are one
    BatchNorm1d over R x C channels; the R classifiers are one batched matrix product over
    stacked weights (:class:`StackedLinear`). Numerically the same as R separate BatchNorm1d +
    Linear pairs (tested against that), in a few kernels instead of a few per region.
    Checkpoints written with separate heads (``region_bns.<r>.*``, ``region_classifiers.<r>.*``)
    load into it (:func:`stack_region_heads`).

    ``forward(feats)``: (R, N, C) pre-BN region vectors -> (R, N, num_classes) logits.
    """

    def __init__(self, num_parts: int, channels: int, num_classes: int, bias: bool = False):
        super().__init__()
        self.num_parts, self.channels = num_parts, channels
        self.bn = init_bnneck(nn.BatchNorm1d(num_parts * channels))
        self.classifier = StackedLinear(num_parts, channels, num_classes, bias=bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        r, n, c = feats.shape
        x = self.bn(feats.transpose(0, 1).reshape(n, r * c)).reshape(n, r, c).transpose(0, 1)  # (R, N, C)
        return self.classifier(x)


def stack_region_heads(state_dict: dict, prefix: str, num_parts: int = NUM_PARTS) -> None:
    """Rewrite separate region heads' entries (older checkpoints) as RegionHeads' stacked ones."""
    old = f"{prefix}region_bns.0.weight"
    if old not in state_dict:
        return
    for name in ("weight", "bias", "running_mean", "running_var"):
        keys = [f"{prefix}region_bns.{r}.{name}" for r in range(num_parts)]
        state_dict[f"{prefix}region_heads.bn.{name}"] = torch.cat([state_dict.pop(k) for k in keys])
    tracked = [state_dict.pop(f"{prefix}region_bns.{r}.num_batches_tracked", None) for r in range(num_parts)]
    if tracked[0] is not None:
        state_dict[f"{prefix}region_heads.bn.num_batches_tracked"] = tracked[0]
    state_dict[f"{prefix}region_heads.classifier.weight"] = torch.stack(
        [state_dict.pop(f"{prefix}region_classifiers.{r}.weight") for r in range(num_parts)])
    if f"{prefix}region_classifiers.0.bias" in state_dict:
        state_dict[f"{prefix}region_heads.classifier.bias"] = torch.stack(
            [state_dict.pop(f"{prefix}region_classifiers.{r}.bias") for r in range(num_parts)])


def lstm_last_hidden(lstm: nn.LSTM, x: torch.Tensor) -> torch.Tensor:
    """The last hidden state (N, H) of a single-layer, one-directional ``lstm`` over ``x``
    (T, N, C) from zero initial states, as plain tensor operations on its own weights
    (PyTorch's gate order i, f, g, o): the recurrence torch.compile traces for the SFB's fusion.
    Dynamo's own tracing of ``nn.LSTM`` (``allow_rnn``) goes through cuDNN's RNN on CUDA, whose
    traced hidden state carries an extra dimension (pytorch/pytorch#130791; the SFB's BNNeck
    then fails on it), and a compiled LSTM is decomposed into such steps anyway. The input's
    share of every step is one matrix product; the gates and the cell state are kept in float32
    (as cuDNN does under autocast), so the result is float32."""
    if lstm.num_layers != 1 or lstm.bidirectional or lstm.proj_size:
        raise ValueError("lstm_last_hidden: a single-layer, one-directional LSTM without projection only")
    bias = lstm.bias_ih_l0 + lstm.bias_hh_l0 if lstm.bias else None
    xw = F.linear(x, lstm.weight_ih_l0, bias)  # (T, N, 4H)
    h = c = None
    for t in range(x.shape[0]):
        gates = (xw[t] if h is None else xw[t] + F.linear(h, lstm.weight_hh_l0)).float()
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(i) * torch.tanh(g) if c is None else torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
    return h


class SemanticFusionBranch(nn.Module):
    """SFB: one vector per part region, fused in the fixed part order.

    layer3 -> its own bottleneck -> for each of the R labels, masked global max pooling over the
    region's positions -> R region vectors (N, C3). Each has its own BNNeck + classifier. The
    fusion reads them in the order background, head, torso, upper arm, lower arm, upper leg,
    lower leg, foot:
      * ``lstm`` (default): a single-layer LSTM (C3 -> C3); its last hidden state is the fused vector;
      * ``concat``: each region reduced to C3 / R by a 1x1 projection, concatenated (the
        authors' ablation);
      * ``attention``: a gate scores each region vector (a small MLP), softmax over the regions
        present in the image, and the fused vector is the gated sum of linearly projected regions.
    The fused vector (N, C3) -> BNNeck -> classifier.

    ``forward(f3, labels, region_masks=None)`` returns ``region_feats`` (R, N, C3) pre-BN,
    ``region_logits`` (R, N, num_classes), ``region_betas`` (R,) = sigmoid(area fraction of
    each region's labels in the batch), ``feat`` (N, C3) fused pre-BN, ``bn_feat`` and
    ``logits``. ``region_masks`` (N, R, h, w) float, when given, replaces the hard masks of the
    labels in the pooling: region r's vector is max over positions of x * m_r (the soft masks
    of the attribute branch, :func:`magnifier.models.attributes.soft_region_masks`); the
    betas still come from the labels.
    """

    FUSIONS = ("lstm", "concat", "attention")

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        fusion: str = "lstm",
        num_parts: int = NUM_PARTS,
        classifier_bias: bool = False,
    ):
        super().__init__()
        if fusion not in self.FUSIONS:
            raise ValueError(f"fusion must be one of {self.FUSIONS}, got {fusion!r}")
        self.fusion, self.num_parts = fusion, num_parts
        c = in_channels
        self.bottleneck = fresh_bottleneck(c)
        self.region_heads = RegionHeads(num_parts, c, num_classes, bias=classifier_bias)
        if fusion == "lstm":
            self.lstm = nn.LSTM(c, c, num_layers=1, batch_first=True)
        elif fusion == "concat":
            if c % num_parts:
                raise ValueError(f"concat fusion needs channels divisible by {num_parts}, got {c}")
            self.project = nn.ModuleList(nn.Linear(c, c // num_parts, bias=False) for _ in range(num_parts))
        else:
            self.gate = nn.Sequential(nn.Linear(c, c // 16), nn.ReLU(inplace=True), nn.Linear(c // 16, 1))
            self.value = nn.Linear(c, c, bias=False)
        self.bnneck = init_bnneck(nn.BatchNorm1d(c))
        self.classifier = init_classifier(nn.Linear(c, num_classes, bias=classifier_bias))
        self.out_channels = c

    def forward(
        self, f3: torch.Tensor, labels: torch.Tensor, region_masks: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        x = self.bottleneck(f3)  # ends in ReLU (>= 0), so a zero start makes this a masked max
        n, c = x.shape[:2]
        if region_masks is None and torch.onnx.is_in_onnx_export():
            # ONNX export: the exported scatter loses the tensor shapes (a rank-1 annotation that
            # breaks later ops); one 0/1 mask per region in the loop below gives the same maxima.
            region_masks = F.one_hot(labels, self.num_parts).permute(0, 3, 1, 2)
        if region_masks is None:
            # Masked global max pooling of all regions in one pass: scatter each position's feature
            # into its region's slot with an amax reduction. An absent region stays a zero vector.
            index = labels.reshape(n, 1, -1).expand(n, c, -1)
            pooled = x.new_zeros(n, c, self.num_parts).scatter_reduce(
                2, index, x.reshape(n, c, -1), reduce="amax", include_self=True
            )
            region_feats = pooled.permute(2, 0, 1)  # (R, N, C)
        else:
            # Soft masks: one weighted max per region (x >= 0, so a zero weight excludes a position).
            masks = region_masks.to(x.dtype)
            region_feats = torch.stack([(x * masks[:, r, None]).amax((2, 3)) for r in range(self.num_parts)])
        # Area fraction of each region per image (N, R); their batch mean gives beta_i.
        areas = F.one_hot(labels.reshape(n, -1), self.num_parts).float().mean(1)
        region_betas = torch.sigmoid(areas.mean(0))
        region_logits = self.region_heads(region_feats)
        fused = self.fuse(region_feats, areas.t())
        bn_feat = self.bnneck(fused)
        return {
            "region_feats": region_feats,
            "region_logits": region_logits,
            "region_betas": region_betas,
            "feat": fused,
            "bn_feat": bn_feat,
            "logits": self.classifier(bn_feat),
        }

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        stack_region_heads(state_dict, prefix, self.num_parts)  # checkpoints with separate region heads
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def fuse(self, region_feats: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """(R, N, C) region vectors, (R, N) region presence -> (N, C) fused vector."""
        if self.fusion == "lstm":
            if torch.compiler.is_compiling():
                return lstm_last_hidden(self.lstm, region_feats).to(region_feats.dtype)
            _, (h, _) = self.lstm(region_feats.transpose(0, 1))  # batch_first: (N, R, C)
            return h[-1]
        if self.fusion == "concat":
            return torch.cat([p(f) for p, f in zip(self.project, region_feats)], dim=1)
        scores = self.gate(region_feats).squeeze(-1)  # (R, N)
        scores = scores.masked_fill(present <= 0, float("-inf"))
        # An image with no region at all (cannot happen with a background label) falls back to uniform.
        weights = torch.nan_to_num(torch.softmax(scores.float(), dim=0), nan=1.0 / self.num_parts).to(region_feats.dtype)
        return (weights[..., None] * self.value(region_feats)).sum(0)

