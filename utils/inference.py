"""Test-time prediction shared by evaluate.py, extract.py and the HumanParser API.

`predict_logits` runs the model on a batch of warped crops with optional multi-scale and flip
augmentation and returns fusion logits, by default at the model's own stride-4 resolution;
`logits_to_original` (datasets.transforms, with `crop_hw=`) then maps them straight back to each
photo with the inverse affine (one bilinear interpolation, no detour through the crop size), and
the argmax is taken there.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
LOGIT_STRIDE = 4  # ParsingOutput logits are N x C x ceil(H/4) x ceil(W/4)
MIN_SCALED_SIDE = 32  # a multi-scale crop side never shrinks below this


def autocast(device: torch.device, amp: str):
    """Autocast context for `--amp {off,bf16,fp16}` (fp16 only where the device supports it)."""
    if amp == "off":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def logit_size(crop_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the model's logits for a crop of (H, W): ceil(H/4), ceil(W/4)."""
    return math.ceil(crop_hw[0] / LOGIT_STRIDE), math.ceil(crop_hw[1] / LOGIT_STRIDE)


def argmax_labels(logits: torch.Tensor) -> np.ndarray:
    """(C, H, W) logits -> (H, W) uint8 class ids (the first maximum on ties).

    Uses `max(0).indices`: on CPU `argmax(0)` over the channel axis is several times slower.
    """
    return logits.max(0).indices.to(torch.uint8).cpu().numpy()


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    scales: tuple[float, ...] = (1.0,),
    flip_permutation: torch.Tensor | None = None,
    amp: str = "off",
    out_hw: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Fusion logits averaged over scales (and the flipped copy).

    Logits of every scale are resized (bilinear, align_corners=True, as SCHP) to `out_hw` and
    averaged there; the flipped copy's logits are flipped back with the left/right channels
    swapped before the resize.

    Args:
        model: a parser returning ParsingOutput; it must be in eval mode.
        images: (N, 3, H, W) normalised crops.
        scales: resize factors of the crop.
        flip_permutation: (C,) class permutation that swaps left/right classes; when given the
            horizontally flipped crop is predicted too.
        amp: "off", "bf16" or "fp16" autocast.
        out_hw: size of the returned logits; default `logit_size((H, W))`, the model's own
            resolution at scale 1 (map them to a photo with `logits_to_original(...,
            crop_hw=(H, W))`). Pass (H, W) for crop-size logits.
    Returns:
        (N, C, *out_hw) float32 logits.
    """
    n, _, h, w = images.shape
    size = tuple(out_hw) if out_hw is not None else logit_size((h, w))
    total = None
    for scale in scales:
        batch = images
        if scale != 1.0:
            scaled = tuple(max(MIN_SCALED_SIDE, round(side * scale)) for side in (h, w))
            batch = F.interpolate(images, size=scaled, mode="bilinear", align_corners=True)
        if flip_permutation is not None:
            batch = torch.cat([batch, batch.flip(-1)])  # (2N, 3, h', w')
        with autocast(images.device, amp):
            fusion = model(batch).fusion.float()  # (N or 2N, C, h'/4, w'/4)
        if flip_permutation is not None:
            flipped = fusion[n:].flip(-1)[:, flip_permutation.to(fusion.device)]
            fusion = 0.5 * (fusion[:n] + flipped)
        if tuple(fusion.shape[-2:]) != size:
            fusion = F.interpolate(fusion, size=size, mode="bilinear", align_corners=True)
        total = fusion if total is None else total + fusion
    return total / len(scales)
