"""Fused kernels of the parser heads: the same numbers as plain PyTorch layers, fewer passes.

Each function names the plain computation it replaces (its reference); `networks.heads` holds the
plain modules and the fused forward paths that call these, and tests/test_fused_heads.py checks
plain against fused for every registered model (forward, backward, BatchNorm buffers, float64).

- `pointwise`: a 1x1 conv as a per-pixel matmul on the channels-last view (no layout copies).
- `dropout_pointwise`: Dropout2d then a 1x1 conv, the dropout folded into a per-sample weight.
- `bn_affine`: an eval-mode BatchNorm as a per-channel scale and shift (to fold into a conv).
- `fold_sum`: act(BN(conv1x1(concat(resize(maps))))) as a sum of resized per-map projections:
  a 1x1 conv and a bilinear resize commute, so the wide concat is never built.
- `conv_bn_act`: act(BN(conv1x1(x))) in training with the batch statistics taken from the conv
  input's covariance, so no full-size BatchNorm pass over the output runs.
- `tap_conv`: a k x k conv with few outputs as a matmul to its tap responses plus a one-hot
  grouped conv.
- `resize_corners`: the bilinear align_corners=True resize of SCHP's heads and losses.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from networks.norm import has_standard_forward, update_running_stats


def resize_corners(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Bilinear resize with align_corners=True (SCHP's heads and losses); same size: `x` itself."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def pointwise(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """1x1 conv as a per-pixel matmul: (B, Cin, H, W) -> (B, Cout, H, W), channels-last.

    `weight` is (Cout, Cin) or (Cout, Cin, 1, 1). A channels-last `x` is read through its NHWC
    view without a copy (oneDNN's 1x1 conv on such maps takes a slow path on CPU).

    Reference: `F.conv2d(x, weight[:, :, None, None], bias)`.
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

    Reference: `F.conv2d(dropout(x), weight[:, :, None, None], bias)`.
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

    Reference: `bn(x) == x * scale[:, None, None] + shift[:, None, None]` in eval mode.
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


def bn_activation(bn: nn.Module, x: Tensor) -> Tensor:
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

    Reference: `activation(bn(F.conv2d(torch.cat([resize(m) for m in maps], 1), W)))`.
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
        out = bn_activation(bn, out)
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

    Reference: `bn(F.conv2d(x, weight))`, bn a BatchNorm2d or BatchNormAct2d.
    """
    standard = has_standard_forward(bn)  # a BatchNorm with its own forward (SyncBN) runs itself
    cheap = weight.shape[1] <= weight.shape[0]  # the covariance costs Cin² per pixel
    batch_stats = bn.training or bn.running_mean is None
    if not (standard and cheap and batch_stats):
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
    out = bn_activation(bn, out)
    return out.view(batch, height, width, -1).permute(0, 3, 1, 2)


def tap_conv(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """`conv(x)` for a k x k conv (stride 1, same padding) with few output channels.

    A per-pixel matmul gives every tap's response (B, Cout·k·k, H, W), then a grouped conv with
    one-hot k x k kernels adds each output's k·k taps at their offsets (zero padding as the conv).
    oneDNN's direct conv with 2 output channels (the edge branch's `conv4`) is slower than the
    matmul, forward and backward (figures: benchmarks/README.md, "Measurements behind the code").

    Reference: `conv(x)`.
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
