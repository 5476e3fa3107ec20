"""Heads of the SegFormer parser: all-MLP decoder, CE2P edge module and fusion head.

Names follow the seed (`head.linear_c1.proj`, `head.linear_fuse.conv/bn`, `head.linear_pred`,
`edge.conv1.0/1`, `edge.conv4`, `edge.conv5`, `fusion.0/1/3`). SCHP's InPlace-ABN (BatchNorm with a
LeakyReLU inside the same module) becomes `BatchNormAct2d`, so the seed's Sequential indices stay.

Speed (same parameters, same numbers up to float rounding):
- 1x1 convs run as per-pixel matmuls on the channels-last maps (`pointwise`), no layout copies.
- The decoder's `linear_fuse` and the fusion head's first conv are 1x1 convs on a concat of maps
  that were bilinearly upsampled from strides 8..32. A 1x1 conv and a bilinear resize commute, so
  each input block of the conv weight is applied at the map's own resolution and the results are
  upsampled and summed (`fold_sum`): the (N, 4E, H/4, W/4) and (N, E + 768, H/4, W/4) concats are
  never built. The folded weights are computed in every forward from the stored parameters (tiny
  matmuls), so training sees the same parameters and gradients.
- In eval mode, BatchNorm (running statistics) is folded into the preceding 1x1 conv.
- In training, the Dropout2d before a classifier is folded into a per-sample classifier weight
  (`dropout_pointwise`), so the full-size map is never multiplied by its mask, and the edge
  branch's BatchNorm takes its batch statistics from the conv input's covariance and folds into
  the conv too (`conv_bn_act`).
- The edge branch's 3x3 conv with 2 outputs is a matmul to its tap responses plus a one-hot
  grouped conv (`tap_conv`), ~2x faster than oneDNN's direct conv for so few outputs.
"""

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from networks.norm import BatchNormAct2d, update_running_stats

HEAD_DROPOUT = 0.1
EDGE_MID_CHANNELS = 256
EDGE_CLASSES = 2
FUSION_CHANNELS = 256


def pointwise(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """1x1 conv as a per-pixel matmul: (B, Cin, H, W) -> (B, Cout, H, W), channels-last.

    `weight` is (Cout, Cin) or (Cout, Cin, 1, 1). A channels-last `x` is read through its NHWC
    view without a copy (oneDNN's 1x1 conv on such maps takes a slow path on CPU).
    """
    return F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias).permute(0, 3, 1, 2)


def dropout_pointwise(
    x: Tensor, dropout: nn.Dropout2d, weight: Tensor, bias: Tensor | None = None
) -> Tensor:
    """`pointwise(dropout(x), weight, bias)` with the Dropout2d folded into the weight.

    Dropout2d zeroes whole channels of each sample, so in training the 1x1 conv after it uses a
    per-sample weight (Cout, Cin) * mask instead: one batched matmul, and no masked copy of the
    full-size map in the forward nor its gradient in the backward. The mask is drawn as
    Dropout2d draws it (same generator calls, same values). In eval it is `pointwise`.
    """
    p = dropout.p
    if not dropout.training or p == 0:
        return pointwise(x, weight, bias)
    batch, channels, height, width = x.shape
    if p == 1:
        keep = x.new_zeros(batch, channels)
    else:  # as torch's feature dropout: bernoulli_(1 - p) / (1 - p) on a (B, C, 1, 1) tensor
        keep = x.new_empty(batch, channels, 1, 1).bernoulli_(1 - p).div_(1 - p).view(batch, -1)
    weights = weight.flatten(1).unsqueeze(0) * keep.unsqueeze(1)  # (B, Cout, Cin)
    rows = x.permute(0, 2, 3, 1).reshape(batch, height * width, channels)  # view if channels-last
    if bias is None:
        out = torch.bmm(rows, weights.transpose(1, 2))
    else:
        out = torch.baddbmm(bias, rows, weights.transpose(1, 2))
    return out.view(batch, height, width, -1).permute(0, 3, 1, 2)


def bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor] | None:
    """(scale, shift) with bn(x) = x * scale + shift per channel, for an eval-mode BatchNorm.

    None when the module normalises with batch statistics (training, or no running stats).
    """
    if bn.training or bn.running_mean is None or bn.running_var is None:
        return None
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def _bn_activation(bn: nn.Module, x: Tensor) -> Tensor:
    """The activation that a (folded) BatchNormAct2d applies after its normalisation."""
    if getattr(bn, "activation", None) is None:
        return x
    return F.leaky_relu(x, bn.slope, inplace=True)


def fold_sum(
    maps: Sequence[Tensor],
    weights: Sequence[Tensor],
    biases: Sequence[Tensor | None],
    align_corners: bool,
    bn: nn.BatchNorm2d | None = None,
    activation: nn.Module | None = None,
) -> Tensor:
    """act(BN(conv1x1(concat(resize(maps))))) without the concat: sum_k resize(W_k map_k + b_k).

    Args:
        maps: (B, C_k, h_k, w_k); the first one has the output size (H, W).
        weights: (Cout, C_k) blocks of the conv weight, in the order of `maps`.
        biases: (Cout,) or None per block.
        align_corners: of the bilinear resize that the concat used.
        bn: the BatchNorm after the conv (or None), folded into the weights in eval mode; in
            training mode it is called as a module (batch statistics). Its own activation
            (BatchNormAct2d) is applied too.
        activation: a further activation module after the BatchNorm (or None).
    Returns:
        (B, Cout, H, W), channels-last.
    """
    affine = None if bn is None else bn_affine(bn)
    if affine is not None:  # eval: bn(W x + b) = (scale W) x + (scale b + shift)
        scale, shift = affine
        weights = [w * scale[:, None] for w in weights]
        biases = [None if b is None else b * scale for b in biases]
        biases[0] = shift if biases[0] is None else biases[0] + shift
    batch, _, height, width = maps[0].shape
    # accumulate into the (B*H*W, Cout) matmul output itself: in-place ops on a base tensor,
    # not on a view, so autograd needs no whole-map CopySlices in training
    out = F.linear(_pixel_rows(maps[0]), weights[0], biases[0])
    for x, w, b in zip(maps[1:], weights[1:], biases[1:], strict=True):
        y = pointwise(x, w, b)  # (B, Cout, h_k, w_k): project first, then upsample Cout channels
        if y.shape[-2:] != (height, width):
            y = F.interpolate(y, (height, width), mode="bilinear", align_corners=align_corners)
        out.add_(_pixel_rows(y))
    if affine is not None:
        out = _bn_activation(bn, out)
        if activation is not None:
            out = activation(out)
    out = out.view(batch, height, width, -1).permute(0, 3, 1, 2)  # (B, Cout, H, W)
    if affine is None and bn is not None:
        out = bn(out)
    if affine is None and activation is not None:
        out = activation(out)
    return out


def conv_bn_act(x: Tensor, weight: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    """act(BN(conv1x1(x))) for a conv without bias: (B, Cin, H, W) -> (B, Cout, H, W).

    With batch statistics (training) the BatchNorm is folded into the conv too: for y = W x the
    batch mean and (biased) variance of y are W·mean(x) and diag(W Σ W^T), Σ the (Cin, Cin)
    covariance of x, so one matmul gives the normalised output and neither the forward nor the
    backward makes a full-size BatchNorm pass over the Cout-channel map. The covariance costs
    Cin² per pixel, so this path is taken where Cin <= Cout (MiT's edge inputs of 32-256
    channels into 256); wider inputs (the 320-channel stage 3 of b1-b5, ResNet) take the module
    path. Statistics in float32 or wider (also under autocast); running statistics as
    BatchNorm2d updates them (unbiased variance, momentum or cumulative average). Eval mode is
    `fold_sum` with the running statistics, and so is a BatchNorm subclass with its own forward
    (`networks.norm.SyncBatchNormAct2d` reduces its statistics over processes).
    """
    exact_type = type(bn) in (nn.BatchNorm2d, BatchNormAct2d)
    cheap = weight.shape[1] <= weight.shape[0]  # the covariance costs Cin² per pixel
    batch_stats = bn.training or bn.running_mean is None
    if not (exact_type and cheap and batch_stats):
        return fold_sum([x], [weight.flatten(1)], [None], align_corners=False, bn=bn)
    batch, _, height, width = x.shape
    weight = weight.flatten(1)
    rows = _pixel_rows(x)
    with torch.autocast(x.device.type, enabled=False):
        dtype = torch.promote_types(rows.dtype, torch.float32)  # bf16 -> float32, f64 stays
        rows32, weight32 = rows.to(dtype), weight.to(dtype)
        mean_x = rows32.mean(dim=0)
        centred = rows32 - mean_x
        covariance = centred.T @ centred / rows.shape[0]  # (Cin, Cin)
        mean = weight32 @ mean_x
        var = ((weight32 @ covariance) * weight32).sum(dim=1)  # (Cout,) biased, as BN normalises
        scale = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
    if bn.training and bn.track_running_stats:
        update_running_stats(bn, mean, var, rows.shape[0])
    out = torch.addmm(shift.to(rows.dtype), rows, (weight * scale[:, None].to(weight.dtype)).T)
    out = _bn_activation(bn, out)
    return out.view(batch, height, width, -1).permute(0, 3, 1, 2)


def tap_conv(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """`conv(x)` for a k x k conv (stride 1, same padding) with few output channels.

    A per-pixel matmul gives every tap's response (B, Cout·k·k, H, W), then a grouped conv with
    one-hot k x k kernels adds each output's k·k taps at their offsets (zero padding as the conv).
    oneDNN's direct conv with 2 output channels (the edge branch's `conv4`) is ~2x slower than
    the matmul, forward and backward (29 vs 13 ms per 256-channel 128x96 map, batch 2).
    """
    out_channels, in_channels, kh, kw = conv.weight.shape
    same = conv.padding == (kh // 2, kw // 2) and kh % 2 == kw % 2 == 1
    if not same or conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
        return conv(x)
    taps = kh * kw
    tap_weight = conv.weight.permute(0, 2, 3, 1).reshape(out_channels * taps, in_channels)
    responses = pointwise(x, tap_weight)  # channel o·taps + t: output o's tap t
    one_hot = torch.eye(taps, dtype=responses.dtype, device=responses.device)
    kernel = one_hot.view(1, taps, kh, kw).expand(out_channels, -1, -1, -1)
    return F.conv2d(responses, kernel, conv.bias, padding=conv.padding, groups=out_channels)


def _pixel_rows(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B*H*W, C); a view when x is channels-last."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


class LinearProjection(nn.Module):
    """Per-pixel Linear (`proj`) on a map: (B, Cin, H, W) -> (B, Cout, H, W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return pointwise(x, self.proj.weight, self.proj.bias)


class MLPDecoder(nn.Module):
    """SegFormer all-MLP decode head.

    Args:
        in_channels: channels of the four backbone maps (C1..C4, strides 4..32).
        num_classes: K.
        embed_dim: E, the decoder width (official 256 for b0/b1, 768 for b2..b5).

    Input: four maps (B, C_k, H_k, W_k).
    Output: (logits (B, K, H_1, W_1), fused features (B, E, H_1, W_1)).
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, embed_dim: int) -> None:
        super().__init__()
        c1, c2, c3, c4 = in_channels
        self.linear_c1 = LinearProjection(c1, embed_dim)
        self.linear_c2 = LinearProjection(c2, embed_dim)
        self.linear_c3 = LinearProjection(c3, embed_dim)
        self.linear_c4 = LinearProjection(c4, embed_dim)
        self.linear_fuse = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(4 * embed_dim, embed_dim, 1, bias=False),
                bn=nn.BatchNorm2d(embed_dim),
                act=nn.ReLU(inplace=True),
            )
        )
        self.dropout = nn.Dropout2d(HEAD_DROPOUT)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        c1, c2, c3, c4 = features
        projections = (self.linear_c4, self.linear_c3, self.linear_c2, self.linear_c1)
        # linear_fuse.conv on concat(up(c4'), up(c3'), up(c2'), c1') (B, 4E, H/4, W/4), c_k' the
        # projections: fold each (E, E) block of its weight into that projection instead
        blocks = self.linear_fuse.conv.weight.flatten(1).chunk(len(projections), dim=1)
        weights = [block @ p.proj.weight for block, p in zip(blocks, projections, strict=True)]
        biases = [block @ p.proj.bias for block, p in zip(blocks, projections, strict=True)]
        fused = fold_sum(  # (B, E, H/4, W/4); c1 first: it sets the size
            [c1, c4, c3, c2],
            [weights[3], *weights[:3]],
            [biases[3], *biases[:3]],
            align_corners=False,
            bn=self.linear_fuse.bn,
            activation=self.linear_fuse.act,
        )
        logits = dropout_pointwise(
            fused, self.dropout, self.linear_pred.weight, self.linear_pred.bias
        )
        return logits, fused


def _conv_bn_act(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False), BatchNormAct2d(out_channels)
    )


class EdgeModule(nn.Module):
    """CE2P edge branch on the three finest backbone maps.

    Args:
        in_channels: (C1, C2, C3) of the stride-4, 8 and 16 maps.
        mid_channels: width of each edge feature.
        out_channels: edge classes (2: background, edge).

    Input: three maps (B, C_k, H_k, W_k). Output: (edge logits (B, out, H_1, W_1),
    edge features (B, 3 * mid, H_1, W_1)); `forward_levels` gives the features unresized.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        mid_channels: int = EDGE_MID_CHANNELS,
        out_channels: int = EDGE_CLASSES,
    ) -> None:
        super().__init__()
        c1, c2, c3 = in_channels
        self.feature_channels = 3 * mid_channels
        self.conv1 = _conv_bn_act(c1, mid_channels)
        self.conv2 = _conv_bn_act(c2, mid_channels)
        self.conv3 = _conv_bn_act(c3, mid_channels)
        self.conv4 = nn.Conv2d(mid_channels, out_channels, 3, padding=1)  # shared by all levels
        self.conv5 = nn.Conv2d(3 * out_channels, out_channels, 1)

    def forward_levels(self, x1: Tensor, x2: Tensor, x3: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Edge logits (B, out, H_1, W_1) and the three features (B, mid, H_k, W_k) unresized."""
        feas = [
            conv_bn_act(x, conv[0].weight, conv[1])
            for conv, x in ((self.conv1, x1), (self.conv2, x2), (self.conv3, x3))
        ]
        edges = [tap_conv(fea, self.conv4) for fea in feas]  # (B, out, H_k, W_k)
        # conv5 on concat(e1, up(e2), up(e3)) (B, 3*out, H/4, W/4) -> (B, out, H/4, W/4), folded
        blocks = self.conv5.weight.flatten(1).chunk(len(edges), dim=1)
        edge = fold_sum(edges, blocks, [self.conv5.bias, None, None], align_corners=True)
        return edge, feas

    def forward(self, x1: Tensor, x2: Tensor, x3: Tensor) -> tuple[Tensor, Tensor]:
        edge, feas = self.forward_levels(x1, x2, x3)
        size = x1.shape[-2:]
        feas[1:] = [_upsample_corners(fea, size) for fea in feas[1:]]
        return edge, torch.cat(feas, dim=1)  # edge features (B, 3*mid, H/4, W/4)


def _upsample_corners(x: Tensor, size: torch.Size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class FusionHead(nn.Sequential):
    """CE2P fusion classifier: 0 conv 1x1 (no bias), 1 BatchNormAct2d, 2 Dropout2d, 3 conv 1x1.

    Input: the parsing feature (B, E, H, W) and, optionally, the edge features at their own
    resolutions (`EdgeModule.forward_levels`), read as concat(parsing, up(edge features)) with
    align_corners=True resizes; without them `parsing_fea` is the whole (B, in, H, W) input.
    Output: (B, K, H, W).
    """

    def forward(self, parsing_fea: Tensor, edge_feas: Sequence[Tensor] = ()) -> Tensor:
        conv, bn, dropout, classifier = self
        maps = [parsing_fea, *edge_feas]
        blocks = conv.weight.flatten(1).split([x.shape[1] for x in maps], dim=1)
        x = fold_sum(maps, blocks, [None] * len(maps), align_corners=True, bn=bn)  # (B, mid, ...)
        return dropout_pointwise(x, dropout, classifier.weight, classifier.bias)


def build_fusion_head(
    in_channels: int, num_classes: int, mid_channels: int = FUSION_CHANNELS
) -> FusionHead:
    """CE2P fusion classifier: (B, in, H, W) -> (B, K, H, W) (see `FusionHead`).

    Indices as SCHP: 0 conv 1x1 (no bias), 1 BatchNormAct2d, 2 Dropout2d, 3 conv 1x1.
    """
    return FusionHead(
        nn.Conv2d(in_channels, mid_channels, 1, bias=False),
        BatchNormAct2d(mid_channels),
        nn.Dropout2d(HEAD_DROPOUT),
        nn.Conv2d(mid_channels, num_classes, 1),
    )
