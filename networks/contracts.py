"""What every parser returns (`ParsingOutput`) and expects (`InputSpec`), shared by all layers.

This module imports nothing of the project, so datasets, training and inference code can use the
contracts without importing the models.
"""

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor


class ParsingOutput(NamedTuple):
    """Logits at stride 4: (N, K, ceil(H/4), ceil(W/4)); `edge` has 2 channels.

    Inference uses `fusion`; training uses all three. A model built with `heads="plain"` has no
    edge or fusion branch: its `fusion` is its `parsing` tensor and its `edge` is None.
    """

    parsing: Tensor
    fusion: Tensor
    edge: Tensor | None

    def float32(self) -> "ParsingOutput":
        """Every logits tensor in float32 (after autocast); a plain model's edge stays None."""
        return ParsingOutput(*(None if t is None else t.float() for t in self))


@dataclass(frozen=True)
class InputSpec:
    """Input normalisation of a model; `mean`/`std` are given in `colour` channel order."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    colour: str  # "RGB" or "BGR"


IMAGENET_RGB = InputSpec((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "RGB")
SCHP_BGR = InputSpec((0.406, 0.456, 0.485), (0.225, 0.224, 0.229), "BGR")

HEADS = ("full", "plain")  # CE2P edge + fusion heads, or the bare SegFormer decoder (ablation)

DEFAULT_INPUT_SIZE = (512, 384)  # crop (H, W) of the seed and SCHP's LIP models
MIN_INPUT_SIDE = 32  # px: the smallest crop side a parser takes (its last stage has stride 32)
