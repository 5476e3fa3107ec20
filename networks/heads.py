"""Heads of the SegFormer parser: all-MLP decoder, CE2P edge module and fusion head.

Names follow the seed (`head.linear_c1.proj`, `head.linear_fuse.conv/bn`, `head.linear_pred`,
`edge.conv1.0/1`, `edge.conv4`, `edge.conv5`, `fusion.0/1/3`). SCHP's InPlace-ABN (BatchNorm with a
LeakyReLU inside the same module) becomes `BatchNormAct2d`, so the seed's Sequential indices stay.
"""

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEAKY_SLOPE = 0.01  # InPlace-ABN's default activation
HEAD_DROPOUT = 0.1
EDGE_MID_CHANNELS = 256
EDGE_CLASSES = 2
FUSION_CHANNELS = 256


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm2d followed by LeakyReLU(0.01) in one module (InPlace-ABN replacement).

    Args:
        num_features: channels C of the (N, C, H, W) input.
        activation: "leaky_relu" (default) or None for plain BatchNorm.
        slope: negative slope of the LeakyReLU.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        activation: str | None = "leaky_relu",
        slope: float = LEAKY_SLOPE,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        if activation not in ("leaky_relu", None):
            raise ValueError(
                f"networks/heads.py: unknown activation {activation!r}; use 'leaky_relu' or None"
            )
        self.activation = activation
        self.slope = slope

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if self.activation is None:
            return x
        return F.leaky_relu(x, self.slope, inplace=True)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}, slope={self.slope}"


class LinearProjection(nn.Module):
    """Per-pixel Linear (`proj`) on a map: (B, Cin, H, W) -> (B, Cout, H, W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        # NHWC view of a channels-last map, so Linear runs without a copy
        return self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


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
        coarse = [self.linear_c4(c4), self.linear_c3(c3), self.linear_c2(c2)]  # (B, E, H_k, W_k)
        resized = [F.interpolate(p, size, mode="bilinear", align_corners=False) for p in coarse]
        fused = torch.cat([*resized, self.linear_c1(c1)], dim=1)  # (B, 4E, H/4, W/4): c4,c3,c2,c1
        fused = self.linear_fuse(fused)  # (B, E, H/4, W/4)
        return self.linear_pred(self.dropout(fused)), fused


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
        self.conv1 = _conv_bn_act(c1, mid_channels)
        self.conv2 = _conv_bn_act(c2, mid_channels)
        self.conv3 = _conv_bn_act(c3, mid_channels)
        self.conv4 = nn.Conv2d(mid_channels, out_channels, 3, padding=1)  # shared by all levels
        self.conv5 = nn.Conv2d(3 * out_channels, out_channels, 1)

    def forward(self, x1: Tensor, x2: Tensor, x3: Tensor) -> tuple[Tensor, Tensor]:
        size = x1.shape[-2:]
        feas = [self.conv1(x1), self.conv2(x2), self.conv3(x3)]  # (B, mid, H_k, W_k)
        edges = [self.conv4(fea) for fea in feas]  # (B, out, H_k, W_k)
        feas[1:] = [_upsample_corners(fea, size) for fea in feas[1:]]
        edges[1:] = [_upsample_corners(edge, size) for edge in edges[1:]]
        edge = self.conv5(torch.cat(edges, dim=1))  # (B, 3*out, H/4, W/4) -> (B, out, H/4, W/4)
        return edge, torch.cat(feas, dim=1)  # edge features (B, 3*mid, H/4, W/4)


def _upsample_corners(x: Tensor, size: torch.Size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def build_fusion_head(
    in_channels: int, num_classes: int, mid_channels: int = FUSION_CHANNELS
) -> nn.Sequential:
    """CE2P fusion classifier: (B, in, H, W) -> (B, K, H, W).

    Indices as SCHP: 0 conv 1x1 (no bias), 1 BatchNormAct2d, 2 Dropout2d, 3 conv 1x1.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, mid_channels, 1, bias=False),
        BatchNormAct2d(mid_channels),
        nn.Dropout2d(HEAD_DROPOUT),
        nn.Conv2d(mid_channels, num_classes, 1),
    )
