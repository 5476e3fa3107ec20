"""Heads of the parsers: SegFormer's all-MLP decoder, CE2P's edge module and fusion head.

Names follow the seed (`head.linear_c1.proj`, `head.linear_fuse.conv/bn`, `head.linear_pred`,
`edge.conv1.0/1`, `edge.conv4`, `edge.conv5`, `fusion.0/1/3`). SCHP's InPlace-ABN (BatchNorm with a
LeakyReLU inside the same module) becomes `BatchNormAct2d`, so the seed's Sequential indices stay.

Each module's `forward` is the plain computation, submodule by submodule (the reference). The
`fused_*` functions compute the same numbers from the same parameters with the kernels of
`networks.ops`, without the wide concats at stride 4; a parser takes them when `fuse_heads` has
switched it to its fused path (`networks.build_model` does, `fused=False` keeps it plain):

- `fused_decoder`: the decoder's `linear_fuse` conv is folded into the four projections and run
  at each map's own resolution (`fold_sum`), BatchNorm folded in eval, Dropout2d folded into the
  classifier (`dropout_pointwise`).
- `fused_edge_levels`: the edge branch's conv + BatchNorm from the input covariance in training
  (`conv_bn_act`), its 3x3 conv with 2 outputs as tap responses (`tap_conv`), `conv5` folded.
- `fused_fusion`: the fusion head's first conv folded over (parsing, edge features) at their own
  resolutions.
"""

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from networks.norm import BatchNormAct2d, conv_bn_act_layers
from networks.ops import (
    conv_bn_act,
    dropout_pointwise,
    fold_sum,
    resize_corners,
    tap_conv,
)

HEAD_DROPOUT = 0.1
EDGE_MID_CHANNELS = 256
EDGE_CLASSES = 2
FUSION_CHANNELS = 256


class LinearProjection(nn.Module):
    """Per-pixel Linear (`proj`) on a map: (B, Cin, H, W) -> (B, Cout, H, W) (HF `SegformerMLP`)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        rows = self.proj(x.flatten(2).transpose(1, 2))  # (B, H*W, Cout)
        return rows.transpose(1, 2).reshape(batch, -1, height, width)


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
        size = c1.shape[-2:]
        maps = [
            F.interpolate(project(c), size=size, mode="bilinear", align_corners=False)
            for project, c in (
                (self.linear_c4, c4),
                (self.linear_c3, c3),
                (self.linear_c2, c2),
                (self.linear_c1, c1),
            )
        ]
        fused = self.linear_fuse(torch.cat(maps, dim=1))  # (B, 4E, H/4, W/4) -> (B, E, H/4, W/4)
        return self.linear_pred(self.dropout(fused)), fused


class EdgeModule(nn.Module):
    """CE2P edge branch on the three finest backbone maps.

    Args:
        in_channels: (C1, C2, C3) of the stride-4, 8 and 16 maps.
        mid_channels: width of each edge feature.
        out_channels: edge classes (2: background, edge).

    Input: three maps (B, C_k, H_k, W_k). Output: (edge logits (B, out, H_1, W_1),
    edge features (B, 3 * mid, H_1, W_1)).
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
        self.conv1 = nn.Sequential(*conv_bn_act_layers(c1, mid_channels))
        self.conv2 = nn.Sequential(*conv_bn_act_layers(c2, mid_channels))
        self.conv3 = nn.Sequential(*conv_bn_act_layers(c3, mid_channels))
        self.conv4 = nn.Conv2d(mid_channels, out_channels, 3, padding=1)  # shared by all levels
        self.conv5 = nn.Conv2d(3 * out_channels, out_channels, 1)

    def forward(self, x1: Tensor, x2: Tensor, x3: Tensor) -> tuple[Tensor, Tensor]:
        size = x1.shape[-2:]
        feas = [self.conv1(x1), self.conv2(x2), self.conv3(x3)]  # (B, mid, H_k, W_k)
        edges = [resize_corners(self.conv4(fea), size) for fea in feas]  # (B, out, H/4, W/4)
        edge = self.conv5(torch.cat(edges, dim=1))  # (B, 3*out, H/4, W/4) -> (B, out, H/4, W/4)
        edge_fea = torch.cat([resize_corners(fea, size) for fea in feas], dim=1)  # (B, 3*mid, ..)
        return edge, edge_fea


def build_fusion_head(
    in_channels: int, num_classes: int, mid_channels: int = FUSION_CHANNELS
) -> nn.Sequential:
    """CE2P fusion classifier: (B, in, H, W) -> (B, K, H, W), in = parsing + edge features.

    Indices as SCHP: 0 conv 1x1 (no bias), 1 BatchNormAct2d, 2 Dropout2d, 3 conv 1x1.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, mid_channels, 1, bias=False),
        BatchNormAct2d(mid_channels),
        nn.Dropout2d(HEAD_DROPOUT),
        nn.Conv2d(mid_channels, num_classes, 1),
    )


def fused_decoder(head: MLPDecoder, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """`head(features)`, the concat of the four upsampled projections never built."""
    c1, c2, c3, c4 = features
    projections = (head.linear_c4, head.linear_c3, head.linear_c2, head.linear_c1)
    # linear_fuse.conv on concat(up(c4'), up(c3'), up(c2'), c1') (B, 4E, H/4, W/4), c_k' the
    # projections: fold each (E, E) block of its weight into that projection instead
    blocks = head.linear_fuse.conv.weight.flatten(1).chunk(len(projections), dim=1)
    weights = [block @ p.proj.weight for block, p in zip(blocks, projections, strict=True)]
    biases = [block @ p.proj.bias for block, p in zip(blocks, projections, strict=True)]
    fused = fold_sum(  # (B, E, H/4, W/4); c1 first: it sets the size
        [c1, c4, c3, c2],
        [weights[3], *weights[:3]],
        [biases[3], *biases[:3]],
        align_corners=False,
        bn=head.linear_fuse.bn,
        activation=head.linear_fuse.act,
    )
    logits = dropout_pointwise(fused, head.dropout, head.linear_pred.weight, head.linear_pred.bias)
    return logits, fused


def fused_edge_levels(
    edge_module: EdgeModule, x1: Tensor, x2: Tensor, x3: Tensor
) -> tuple[Tensor, list[Tensor]]:
    """`edge_module(x1, x2, x3)` with the edge features left at their own resolutions.

    Returns: edge logits (B, out, H_1, W_1) and the three features (B, mid, H_k, W_k), unresized
    (`fused_fusion` reads them as their align_corners=True resize to H_1 x W_1).
    """
    feas = [
        conv_bn_act(x, conv[0].weight, conv[1])
        for conv, x in ((edge_module.conv1, x1), (edge_module.conv2, x2), (edge_module.conv3, x3))
    ]
    edges = [tap_conv(fea, edge_module.conv4) for fea in feas]  # (B, out, H_k, W_k)
    # conv5 on concat(e1, up(e2), up(e3)) (B, 3*out, H/4, W/4) -> (B, out, H/4, W/4), folded
    conv5 = edge_module.conv5
    blocks = conv5.weight.flatten(1).chunk(len(edges), dim=1)
    return fold_sum(edges, blocks, [conv5.bias, None, None], align_corners=True), feas


def fused_fusion(fusion: nn.Sequential, parsing_fea: Tensor, edge_feas: Sequence[Tensor]) -> Tensor:
    """`fusion(concat(parsing_fea, up(edge_feas)))`, the (B, E + 3*mid, H/4, W/4) concat never
    built; `parsing_fea` (B, E, H, W) sets the size, the edge features are resized as
    `resize_corners`. Output: (B, K, H, W)."""
    conv, bn, dropout, classifier = fusion
    maps = [parsing_fea, *edge_feas]
    blocks = conv.weight.flatten(1).split([x.shape[1] for x in maps], dim=1)
    x = fold_sum(maps, blocks, [None] * len(maps), align_corners=True, bn=bn)  # (B, mid, H, W)
    return dropout_pointwise(x, dropout, classifier.weight, classifier.bias)


def fuse_heads(model: nn.Module, fused: bool = True) -> nn.Module:
    """Switch a parser (SegFormerParser, AugmentCE2P) to its fused head path, or back to plain.

    Same parameters, same state dict, the same numbers up to float rounding; returns `model`.
    """
    if not isinstance(getattr(model, "fused", None), bool):
        raise TypeError(f"networks: {type(model).__name__} has no fused head path")
    model.fused = fused
    return model
