"""Model registry: `build_model(arch, num_classes, **kw)` over a plain dict of builders.

Each builder passes only the numbers that differ to one private assembler (SAM `build_sam.py`
style). `MODELS` keys are the `--arch` choices.
"""

from collections.abc import Callable

from torch import nn

from networks.contracts import HEADS, IMAGENET_RGB, SCHP_BGR, InputSpec, ParsingOutput
from networks.heads import fuse_heads
from networks.mit import DEFAULT_DROP_PATH_RATE
from networks.parser import SegFormerParser
from networks.resnet import resnet101 as build_resnet101

__all__ = [
    "HEADS",
    "IMAGENET_RGB",
    "MODELS",
    "SCHP_BGR",
    "InputSpec",
    "ParsingOutput",
    "build_model",
    "fuse_heads",
    "model_heads",
]

NARROW_DECODER_DIM = 256  # official b0/b1 width, and the seed's b4
WIDE_DECODER_DIM = 768  # official b2..b5


def _build_segformer(
    variant: str,
    default_decoder_dim: int,
    num_classes: int,
    *,
    drop_path_rate: float = DEFAULT_DROP_PATH_RATE,
    ln_eps: float | None = None,
    decoder_dim: int | None = None,
    heads: str = "full",
) -> SegFormerParser:
    """Assemble a SegFormer parser; the keyword options are those of every segformer builder.

    Args:
        drop_path_rate: backbone stochastic depth of the last block (linear from 0).
        ln_eps: one LayerNorm eps for the backbone (HF: 1e-5); None keeps the official eps.
        decoder_dim: MLP decoder width; None keeps the variant's default.
        heads: "full" (CE2P edge + fusion) or "plain" (SegFormer decoder only).
    """
    return SegFormerParser(
        arch=f"segformer_{variant}",
        variant=variant,
        num_classes=num_classes,
        decoder_dim=default_decoder_dim if decoder_dim is None else decoder_dim,
        drop_path_rate=drop_path_rate,
        ln_eps=ln_eps,
        heads=heads,
    )


def segformer_mit_b0(num_classes: int, **kw) -> SegFormerParser:
    """SegFormer-B0 parser, decoder 256 (options: `_build_segformer`)."""
    return _build_segformer("mit_b0", NARROW_DECODER_DIM, num_classes, **kw)


def segformer_mit_b1(num_classes: int, **kw) -> SegFormerParser:
    """SegFormer-B1 parser, decoder 256 (options: `_build_segformer`)."""
    return _build_segformer("mit_b1", NARROW_DECODER_DIM, num_classes, **kw)


def segformer_mit_b2(num_classes: int, **kw) -> SegFormerParser:
    """SegFormer-B2 parser, decoder 768 (options: `_build_segformer`)."""
    return _build_segformer("mit_b2", WIDE_DECODER_DIM, num_classes, **kw)


def segformer_mit_b3(num_classes: int, **kw) -> SegFormerParser:
    """SegFormer-B3 parser, decoder 768 (options: `_build_segformer`)."""
    return _build_segformer("mit_b3", WIDE_DECODER_DIM, num_classes, **kw)


def segformer_mit_b4(num_classes: int, **kw) -> SegFormerParser:
    """SegFormer-B4 parser with the seed's decoder width 256, not the official 768.

    Kept at 256 so the seed's checkpoints load; pass `decoder_dim=768` for the official width
    (options: `_build_segformer`).
    """
    return _build_segformer("mit_b4", NARROW_DECODER_DIM, num_classes, **kw)


def segformer_mit_b5(num_classes: int, **kw) -> SegFormerParser:
    """SegFormer-B5 parser, decoder 768 (options: `_build_segformer`)."""
    return _build_segformer("mit_b5", WIDE_DECODER_DIM, num_classes, **kw)


def resnet101(num_classes: int, **kw) -> nn.Module:
    """Original SCHP AugmentCE2P with a ResNet-101 backbone (BGR input, `SCHP_BGR`)."""
    return build_resnet101(num_classes, **kw)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "segformer_mit_b0": segformer_mit_b0,
    "segformer_mit_b1": segformer_mit_b1,
    "segformer_mit_b2": segformer_mit_b2,
    "segformer_mit_b3": segformer_mit_b3,
    "segformer_mit_b4": segformer_mit_b4,
    "segformer_mit_b5": segformer_mit_b5,
    "resnet101": resnet101,
}


def build_model(
    arch: str, num_classes: int, heads: str = "full", fused: bool = True, **kw
) -> nn.Module:
    """Build a registered parser; every model returns `ParsingOutput` and has `input_spec`.

    Args:
        arch: a key of `MODELS`.
        num_classes: K, parsing classes.
        heads: "full" (CE2P edge + fusion heads) or "plain" (SegFormer models only: no edge or
            fusion head; `fusion` is the parsing output and `edge` is None).
        fused: run the heads with the fused kernels (`fuse_heads`; same numbers, faster) or,
            False, as the plain modules they hold (the reference).
        **kw: builder options (SegFormer: drop_path_rate, ln_eps, decoder_dim).
    """
    if arch not in MODELS:
        raise ValueError(f"networks: unknown arch {arch!r}; choose one of {sorted(MODELS)}")
    if heads not in HEADS:
        raise ValueError(f"networks: unknown heads {heads!r}; choose one of {HEADS}")
    if heads != "full" and not arch.startswith("segformer_"):
        raise ValueError(f"networks: heads={heads!r} is for segformer_* models only, not {arch}")
    options = kw if heads == "full" else {**kw, "heads": heads}
    return fuse_heads(MODELS[arch](num_classes, **options), fused)


def model_heads(model: nn.Module) -> str:
    """The `heads` option a model was built with ("full" for models without the option)."""
    return getattr(model, "heads", "full")
