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

from datasets.transforms import inverse_theta, logits_to_original
from networks.contracts import MIN_INPUT_SIDE
from networks.ops import resize_corners

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
LOGIT_STRIDE = 4  # ParsingOutput logits are N x C x ceil(H/4) x ceil(W/4)


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
            scaled = tuple(max(MIN_INPUT_SIDE, round(side * scale)) for side in (h, w))
            batch = resize_corners(images, scaled)
        if flip_permutation is not None:
            batch = torch.cat([batch, batch.flip(-1)])  # (2N, 3, h', w')
        with autocast(images.device, amp):
            fusion = model(batch).fusion.float()  # (N or 2N, C, h'/4, w'/4)
        if flip_permutation is not None:
            flipped = fusion[n:].flip(-1)[:, flip_permutation.to(fusion.device)]
            fusion = 0.5 * (fusion[:n] + flipped)
        fusion = resize_corners(fusion, size)
        total = fusion if total is None else total + fusion
    return total / len(scales)


SEPARABLE_TOL = 1e-9  # |off-diagonal| of an inverse affine below this: rows and columns separate
TODO = 255  # cell-table value of "interpolate here" (class ids are < 255)
MIN_UNIFORM_CELLS = 0.5  # below this share of one-class cells, interpolating everything is cheaper


def labels_to_original(
    logits: torch.Tensor,
    center,
    scale,
    out_hw: tuple[int, int],
    crop_hw: tuple[int, int] | None = None,
) -> torch.Tensor:
    """(N, C, h, w) crop logits -> (N, H, W) uint8 class ids on the photo: the argmax of
    `logits_to_original(...)` without interpolating every class at every photo pixel.

    Bilinear interpolation mixes the logit vectors of a pixel's four source cells convexly, and
    where the four share their first maximum k, so does the mix. The crop affine has no rotation,
    so a photo row always falls in the same row of cells and a column in the same column: such
    pixels read k from the (h-1) x (w-1) table of cells with two `index_select`s. Only the others
    (near class boundaries and at the crop border) are interpolated, by `grid_sample` at those
    points. The result equals argmax(`logits_to_original`) except where two classes tie within
    float rounding. An affine with rotation, or logits with under half of their cells of one class
    (noise, not a parsing), fall back to the full interpolation.
    """
    n, num_classes, h, w = logits.shape
    if num_classes >= TODO:
        raise ValueError(f"labels_to_original: {num_classes} classes do not fit uint8 ids")
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    theta = inverse_theta(n, center, scale, out_hw, crop_hw if crop_hw is not None else (h, w))
    logits = logits.float()
    device = logits.device
    coarse = logits.max(1).indices.to(torch.uint8)  # (N, h, w), first maximum
    corner = coarse[:, :-1, :-1]
    uniform = (
        (corner == coarse[:, :-1, 1:])
        & (corner == coarse[:, 1:, :-1])
        & (corner == coarse[:, 1:, 1:])
    )
    rotated = np.abs(theta[:, [0, 1], [1, 0]]).max() > SEPARABLE_TOL
    if rotated or uniform.float().mean() < MIN_UNIFORM_CELLS:
        full = logits_to_original(logits, center, scale, out_hw, crop_hw)
        return full.max(1).indices.to(torch.uint8)
    # cells, plus a last row and column of TODO for photo pixels outside the inner cells
    table = torch.full((n, h, w), TODO, dtype=torch.uint8, device=device)
    table[:, :-1, :-1] = torch.where(uniform, corner, TODO)
    theta_t = torch.as_tensor(theta, dtype=torch.float32, device=device)
    base_x = torch.linspace(-1.0, 1.0, out_w, device=device)  # affine_grid's, align_corners=True
    base_y = torch.linspace(-1.0, 1.0, out_h, device=device)
    labels = torch.empty((n, out_h, out_w), dtype=torch.uint8, device=device)
    for i in range(n):
        grid_x = base_x * theta_t[i, 0, 0] + theta_t[i, 0, 2]  # (W,) crop x in [-1, 1]
        grid_y = base_y * theta_t[i, 1, 1] + theta_t[i, 1, 2]  # (H,)
        x0 = torch.floor((grid_x + 1.0) * (0.5 * (w - 1))).long()
        y0 = torch.floor((grid_y + 1.0) * (0.5 * (h - 1))).long()
        column = torch.where((x0 >= 0) & (x0 <= w - 2), x0, w - 1)
        row = torch.where((y0 >= 0) & (y0 <= h - 2), y0, h - 1)
        torch.index_select(table[i].index_select(0, row), 1, column, out=labels[i])
        todo = torch.nonzero(labels[i] == TODO)  # (M, 2) rows and columns to interpolate
        if len(todo):
            points = torch.stack([grid_x[todo[:, 1]], grid_y[todo[:, 0]]], dim=1)
            sampled = F.grid_sample(
                logits[i : i + 1],
                points.view(1, 1, -1, 2),
                mode="bilinear",
                padding_mode="zeros",
                align_corners=True,
            )  # (1, C, 1, M)
            labels[i][todo[:, 0], todo[:, 1]] = sampled[0, :, 0].max(0).indices.to(torch.uint8)
    return labels
