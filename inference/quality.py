"""Per-photo quality of a parse: the records of `manifest.jsonl` and the flags a person checks.

Confidence (mean of the top class probability) and entropy (mean, divided by log C so that 1 is
uniform) are taken on the model's stride-4 crop grid, over the cells that fall inside the photo:
cheap, and the same numbers the full-size map would give up to interpolation.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from datasets.label_set import IGNORE_INDEX, LabelSet
from datasets.transforms import get_affine_transform
from inference.predict import LOGIT_STRIDE

NO_PERSON_SHARE = 0.005  # person pixels below this share of the photo: flag `no_person`
LOW_CONFIDENCE = 0.6  # mean top-class probability below this: flag `low_confidence`
PROTECTED_INSIDE_SHARE = 0.01  # protected pixels enclosed by a mask, as a share of the mask


def photo_cells(meta: dict, input_size: tuple[int, int], grid_hw: tuple[int, int]) -> torch.Tensor:
    """(h, w) bool: the crop-grid cells that the photo of `meta` covers."""
    matrix = get_affine_transform(meta["center"], meta["scale"], 0.0, input_size)
    corners = np.array([[0, 0, 1], [meta["width"] - 1, meta["height"] - 1, 1]], np.float64)
    (x0, y0), (x1, y1) = (corners @ matrix.T) / LOGIT_STRIDE
    inside = torch.zeros(grid_hw, dtype=torch.bool)
    rows = slice(max(0, math.floor(y0)), max(1, math.ceil(y1) + 1))
    cols = slice(max(0, math.floor(x0)), max(1, math.ceil(x1) + 1))
    inside[rows, cols] = True
    return inside


def confidence(logits: torch.Tensor, inside: torch.Tensor) -> tuple[float, float]:
    """(mean top-class probability, mean normalised entropy) of (C, h, w) logits over `inside`."""
    log_probs = logits.float().log_softmax(0)[:, inside]  # (C, M)
    probs = log_probs.exp()
    entropy = -(probs * log_probs).sum(0) / math.log(max(2, logits.shape[0]))
    return float(probs.max(0).values.mean()), float(entropy.mean())


def enclosed(mask: np.ndarray) -> np.ndarray:
    """Bool holes of a mask: pixels outside it that no path outside it joins to the border."""
    outside = (mask == 0).astype(np.uint8)
    padded = np.pad(outside, 1, constant_values=1)
    cv2.floodFill(padded, None, (0, 0), 2)
    return padded[1:-1, 1:-1] == 1


def quality_record(
    name: str,
    labels: np.ndarray,
    label_set: LabelSet,
    conf: tuple[float, float],
    masks: dict[str, np.ndarray],
    protect_ids: tuple[int, ...] = (),
) -> dict:
    """The manifest line of one photo: id, size, person share, confidence, entropy, mask areas
    (share of the photo) and flags (no_person, low_confidence, protected_inside_<kind>).

    The background is the label set's class 0 (every shipped label set puts it there)."""
    height, width = labels.shape
    person = float(((labels != 0) & (labels != IGNORE_INDEX)).mean())
    top, entropy = conf
    flags = []
    if person < NO_PERSON_SHARE:
        flags.append("no_person")
    if top < LOW_CONFIDENCE:
        flags.append("low_confidence")
    areas = {}
    protected = np.isin(labels, protect_ids) if protect_ids else None
    for kind, mask in masks.items():
        on = mask > 0
        areas[kind] = round(float(on.mean()), 4)
        if protected is not None and on.any():
            inside = int((enclosed(mask) & protected).sum())
            if inside > PROTECTED_INSIDE_SHARE * on.sum():
                flags.append(f"protected_inside_{kind}")
    return {
        "id": name,
        "height": height,
        "width": width,
        "person_share": round(person, 4),
        "confidence": round(top, 4),
        "entropy": round(entropy, 4),
        "mask_area": areas,
        "flags": flags,
        "classes": label_set.name,
    }


def worst_first(records: list[dict]) -> list[dict]:
    """Records ordered for a person to check: most flags first, then lowest confidence."""
    return sorted(records, key=lambda r: (-len(r["flags"]), r["confidence"], r["id"]))
