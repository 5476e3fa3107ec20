"""SegFormer human parser: MiT backbone + all-MLP decoder + CE2P edge and fusion heads."""

import torch
from torch import Tensor, nn

from networks.contracts import HEADS, IMAGENET_RGB, ParsingOutput
from networks.heads import (
    EdgeModule,
    MLPDecoder,
    build_fusion_head,
    fused_decoder,
    fused_edge_levels,
    fused_fusion,
)
from networks.mit import MixVisionTransformer


class SegFormerParser(nn.Module):
    """MiT backbone, SegFormer MLP decoder, CE2P edge module and fusion head.

    With `heads="plain"` the edge module and fusion head are not built (plain SegFormer).

    Args:
        arch: registry name, e.g. "segformer_mit_b4" (recorded for checkpoints).
        variant: MiT variant, a key of `networks.mit.MIT_CONFIGS`.
        num_classes: K, parsing classes.
        decoder_dim: E, width of the MLP decoder (the parsing feature).
        drop_path_rate: backbone stochastic depth (last block).
        ln_eps: one LayerNorm eps for the whole backbone; None keeps the official eps.
        heads: "full" (CE2P edge and fusion heads) or "plain" (decoder only), see `HEADS`.

    Input: (N, 3, H, W) normalised RGB (`input_spec`), any H and W.
    Output: `ParsingOutput` of (N, K, h, w), (N, K, h, w), (N, 2, h, w) with h, w = ceil(H/4),
    ceil(W/4). Plain: (parsing, parsing, None).
    """

    def __init__(
        self,
        arch: str,
        variant: str,
        num_classes: int,
        decoder_dim: int,
        drop_path_rate: float,
        ln_eps: float | None = None,
        heads: str = "full",
    ) -> None:
        super().__init__()
        if heads not in HEADS:
            raise ValueError(f"networks: unknown heads {heads!r}; choose one of {HEADS}")
        self.arch = arch
        self.heads = heads
        self.fused = False  # plain modules; `networks.heads.fuse_heads` switches
        self.num_classes = num_classes
        self.input_spec = IMAGENET_RGB
        self.backbone = MixVisionTransformer(variant, drop_path_rate=drop_path_rate, ln_eps=ln_eps)
        channels = self.backbone.out_channels
        self.head = MLPDecoder(channels, num_classes, decoder_dim)
        if heads == "plain":
            return
        self.edge = EdgeModule(channels[:3])
        self.fusion = build_fusion_head(decoder_dim + self.edge.feature_channels, num_classes)

    def forward(self, x: Tensor) -> ParsingOutput:
        c1, c2, c3, c4 = self.backbone(x)  # strides 4, 8, 16, 32
        if self.fused:
            return self._fused_heads(c1, c2, c3, c4)
        parsing, parsing_fea = self.head([c1, c2, c3, c4])  # (N, K|E, H/4, W/4)
        if self.heads == "plain":
            return ParsingOutput(parsing, parsing, None)
        edge, edge_fea = self.edge(c1, c2, c3)  # (N, 2, H/4, W/4), (N, 3*mid, H/4, W/4)
        fusion = self.fusion(torch.cat([parsing_fea, edge_fea], dim=1))  # (N, E + 3*mid, H/4, W/4)
        return ParsingOutput(parsing, fusion, edge)

    def _fused_heads(self, c1: Tensor, c2: Tensor, c3: Tensor, c4: Tensor) -> ParsingOutput:
        """The heads of `forward` with the kernels of `networks.ops` (see `networks.heads`)."""
        parsing, parsing_fea = fused_decoder(self.head, [c1, c2, c3, c4])
        if self.heads == "plain":
            return ParsingOutput(parsing, parsing, None)
        edge, edge_feas = fused_edge_levels(self.edge, c1, c2, c3)  # features unresized
        return ParsingOutput(parsing, fused_fusion(self.fusion, parsing_fea, edge_feas), edge)
