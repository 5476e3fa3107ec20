"""Mix Vision Transformer (MiT b0..b5), the SegFormer encoder.

Parameter names are exactly those of NVlabs' `mix_transformer.py` (`patch_embed{i}.proj`,
`block{i}.{j}.attn.kv`, `block{i}.{j}.mlp.dwconv.dwconv`, `norm{i}`, ...), so the official ImageNet
files `mit_b*.pth` load directly once their classifier `head.*` is dropped.

Layout: tokens are (B, N, C) with N = H*W in row-major order, i.e. the memory of an NHWC map.
Every token <-> map switch is therefore a `view` + `permute` that gives a channels-last NCHW
tensor without copying; convolutions accept it as is, and their channels-last outputs turn back
into tokens as views again. The stage outputs are channels-last NCHW tensors.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import Tensor, nn

DEFAULT_DROP_PATH_RATE = 0.1
BLOCK_LN_EPS = 1e-6  # block norm1/norm2 and stage norm{i} (official)
TORCH_LN_EPS = 1e-5  # patch-embed and spatial-reduction norms (official: plain nn.LayerNorm)
LINEAR_INIT_STD = 0.02
PATCH_KERNELS = (7, 3, 3, 3)
PATCH_STRIDES = (4, 2, 2, 2)
STRIDES = (4, 8, 16, 32)


@dataclass(frozen=True)
class MiTConfig:
    """One MiT variant: per-stage widths, depths, heads, spatial-reduction and MLP ratios."""

    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratios: tuple[int, int, int, int] = (4, 4, 4, 4)


_WIDE = (64, 128, 320, 512)
MIT_CONFIGS: dict[str, MiTConfig] = {
    "mit_b0": MiTConfig(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "mit_b1": MiTConfig(embed_dims=_WIDE, depths=(2, 2, 2, 2)),
    "mit_b2": MiTConfig(embed_dims=_WIDE, depths=(3, 4, 6, 3)),
    "mit_b3": MiTConfig(embed_dims=_WIDE, depths=(3, 4, 18, 3)),
    "mit_b4": MiTConfig(embed_dims=_WIDE, depths=(3, 8, 27, 3)),
    "mit_b5": MiTConfig(embed_dims=_WIDE, depths=(3, 6, 40, 3)),
}


def tokens_to_map(x: Tensor, height: int, width: int) -> Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W) map; a view (channels-last) when x is contiguous."""
    return x.view(x.shape[0], height, width, x.shape[-1]).permute(0, 3, 1, 2)


def map_to_tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) map -> (B, H*W, C) tokens; a view when x is channels-last."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping windows, then LayerNorm: (B, Cin, H, W) -> (B, N, C)."""

    def __init__(
        self, kernel: int, stride: int, in_channels: int, embed_dim: int, ln_eps: float
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel, stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(embed_dim, eps=ln_eps)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)  # (B, C, ceil(H/s), ceil(W/s))
        height, width = x.shape[-2:]
        return self.norm(map_to_tokens(x)), height, width


class Attention(nn.Module):
    """Efficient self-attention: keys/values from a map reduced by a strided conv (sr > 1)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, sr_ln_eps: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"networks/mit.py: dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=sr_ln_eps)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        batch, num_tokens, dim = x.shape
        head_dim = dim // self.num_heads
        q = self.q(x).view(batch, num_tokens, self.num_heads, head_dim).transpose(1, 2)
        if self.sr_ratio > 1:
            reduced = self.sr(tokens_to_map(x, height, width))  # (B, C, H/sr, W/sr), floor
            x = self.norm(map_to_tokens(reduced))  # (B, M, C)
        # (B, M, 2C) -> (2, B, heads, M, d): key rows first, then value rows (official kv layout)
        kv = self.kv(x).view(batch, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])  # (B, heads, N, d)
        return self.proj(out.transpose(1, 2).reshape(batch, num_tokens, dim))


class DWConv(nn.Module):
    """Depthwise 3x3 conv over the token map (the Mix-FFN's implicit position encoding)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        return map_to_tokens(self.dwconv(tokens_to_map(x, height, width)))


class MixFFN(nn.Module):
    """fc1 -> depthwise 3x3 conv -> GELU -> fc2 on (B, N, C) tokens."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DWConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), height, width)))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(FFN(LN(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: int,
        sr_ratio: int,
        drop_path: float,
        block_ln_eps: float,
        sr_ln_eps: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=block_ln_eps)
        self.attn = Attention(dim, num_heads, sr_ratio, sr_ln_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=block_ln_eps)
        self.mlp = MixFFN(dim, dim * mlp_ratio)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


class MixVisionTransformer(nn.Module):
    """MiT encoder returning four feature maps at strides 4, 8, 16 and 32.

    Args:
        variant: a key of `MIT_CONFIGS` ("mit_b0".."mit_b5") or a `MiTConfig`.
        in_channels: input image channels.
        drop_path_rate: stochastic depth of the last block; it grows linearly from 0 over all
            blocks of all stages.
        ln_eps: one LayerNorm eps for every norm (HF uses 1e-5 everywhere); None keeps the
            official eps (1e-6 in blocks and stage norms, 1e-5 in patch-embed and sr norms).

    Input: (B, in_channels, H, W), any H and W >= `min_input_size` (29 for b0..b5).
    Output: list of 4 maps (B, C_k, ceil(H/s_k), ceil(W/s_k)), C = `out_channels`,
    s = `strides`; the maps are channels-last in memory.
    """

    def __init__(
        self,
        variant: str | MiTConfig = "mit_b4",
        in_channels: int = 3,
        drop_path_rate: float = DEFAULT_DROP_PATH_RATE,
        ln_eps: float | None = None,
    ) -> None:
        super().__init__()
        if isinstance(variant, str) and variant not in MIT_CONFIGS:
            raise ValueError(
                f"networks/mit.py: unknown MiT variant {variant!r}; "
                f"choose one of {sorted(MIT_CONFIGS)}"
            )
        cfg = MIT_CONFIGS[variant] if isinstance(variant, str) else variant
        block_eps = BLOCK_LN_EPS if ln_eps is None else ln_eps
        torch_eps = TORCH_LN_EPS if ln_eps is None else ln_eps
        self.out_channels = tuple(cfg.embed_dims)
        self.strides = STRIDES
        # each sr conv needs a stage map at least sr_ratio wide: ceil(side / stride) >= sr
        pairs = zip(STRIDES, cfg.sr_ratios, strict=True)
        self.min_input_size = max(stride * (sr - 1) + 1 for stride, sr in pairs)
        rates = torch.linspace(0, drop_path_rate, sum(cfg.depths)).tolist()
        previous = in_channels
        for k, (dim, depth) in enumerate(zip(cfg.embed_dims, cfg.depths, strict=True), start=1):
            embed = OverlapPatchEmbed(
                PATCH_KERNELS[k - 1], PATCH_STRIDES[k - 1], previous, dim, torch_eps
            )
            stage_rates, rates = rates[:depth], rates[depth:]
            blocks = nn.ModuleList(
                Block(
                    dim,
                    cfg.num_heads[k - 1],
                    cfg.mlp_ratios[k - 1],
                    cfg.sr_ratios[k - 1],
                    rate,
                    block_eps,
                    torch_eps,
                )
                for rate in stage_rates
            )
            self.add_module(f"patch_embed{k}", embed)
            self.add_module(f"block{k}", blocks)
            self.add_module(f"norm{k}", nn.LayerNorm(dim, eps=block_eps))
            previous = dim
        self.apply(_init_weights)

    def stage_modules(self) -> list[list[nn.Module]]:
        """[[patch_embed{k}, block{k}, norm{k}] for k = 1..4] (per-stage optimizer groups)."""
        return [
            [getattr(self, f"{name}{k}") for name in ("patch_embed", "block", "norm")]
            for k in range(1, len(self.out_channels) + 1)
        ]

    def forward(self, x: Tensor) -> list[Tensor]:
        if min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(
                f"networks/mit.py: input {tuple(x.shape[-2:])} is too small; MiT needs both "
                f"sides >= {self.min_input_size} pixels (resize or pad the image)"
            )
        features = []
        for embed, blocks, norm in self.stage_modules():
            x, height, width = embed(x)  # (B, N, C)
            for block in blocks:
                x = block(x, height, width)
            x = tokens_to_map(norm(x), height, width)  # (B, C, H/s, W/s), channels-last
            features.append(x)
        return features


def _init_weights(module: nn.Module) -> None:
    """Official MiT init: trunc-normal Linear, unit LayerNorm, He-style (fan-out) conv."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=LINEAR_INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        fan_out = kh * kw * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
