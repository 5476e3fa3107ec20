"""Try-on masks (255 = region to repaint) from a parsing label map, after CatVTON's AutoMasker.

Which classes a mask paints or protects is data, written per label set by class NAME in
`mappings/tryon_masks.yaml` (or in a label-set YAML's `masks: {space: ...}`, which then wins):

    masks:
      merged:                       # entry key = label-set name (or set `label_set:` explicitly)
        params: {hull: convex}      # optional overrides of MaskParams below
        background: [Bkg]           # never a candidate
        protect_strong: [Face]      # never painted (face, hands, feet)
        protect: [Upper-Face, Shoe] # weakly protected in every kind (hair, accessories, shoes)
        upper:                      # one entry per kind: upper, lower, overall, inner, outer
          paint: [Upper-clothes, One-piece]   # garment classes, always painted
          area: [Arm]                         # body parts the new garment may cover (dilated)
          protect: [Leg, Lower-clothes]       # weakly protected for this kind only

For a label map of size h x w (s = max(h, w); k1 = s // kernel_divisor, k2 = s // blur_divisor,
both made odd) `build_mask` follows AutoMasker's sequence with the parser's own body parts in place
of DensePose:
  1. area = the kind's `area` classes, dilated (k1, `area_dilate_iterations`) at `area_scale`;
  2. candidate = pixels neither weakly protected nor background, plus the dilated area
     (classes a rule does not name are therefore candidates, as in AutoMasker);
  3. hull: each connected candidate region is replaced by its convex hull (or bounding box);
  4. weakly protected pixels (`protect`, `protect_strong`, the kind's `protect`) are removed;
  5. Gaussian blur (k2) and threshold at `blur_threshold` / 255: a smooth outward growth;
  6. the kind's `paint` classes are added;
  7. dilation (k1, `final_dilate_iterations`);
  8. `protect_strong` pixels are removed (AutoMasker removes them before step 7; here after it,
     so face, hands and feet are never painted).
Steps 5 and 7 may bleed at most `MaskParams.margin_px(h, w)` pixels into weakly protected classes.

`MaskControls` (extract.py `--dilate/--hull/--feather/--protect`, `HumanParser.masks(...)`) adjust a
mask per run without editing the YAML: `hull` replaces the rules' hull mode; `dilate` grows the
finished mask by a disc of that radius; `protect` adds classes that are never painted (removed
last, with `protect_strong`); `feather` gives the mask a soft 8-bit edge that falls from 255 to 0
over that many pixels outside it (the hard mask stays 255 inside).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import cv2
import numpy as np

from datasets.label_set import IGNORE_INDEX, LabelSet
from inference.mask_rules import (
    AREA,
    BACKGROUND,
    KINDS,
    MASK_ON,
    PAINT,
    STRONG,
    WEAK,
    MaskControls,
    MaskParams,
    MaskRules,
    rules_for,
)


def build_mask(
    label_map: np.ndarray,
    label_set: LabelSet,
    kind: str,
    rules: MaskRules | Mapping | None = None,
    controls: MaskControls | None = None,
) -> np.ndarray:
    """Try-on mask of `kind` for an (H, W) integer label map: (H, W) uint8, 0 or 255 (soft edge
    values in between only with `controls.feather`).

    Args:
        label_map: class ids of `label_set` (IGNORE_INDEX counts as background).
        kind: one of `available_kinds(label_set)`.
        rules: resolved MaskRules, a raw rules mapping (class names), or None for
            `get_mask_rules(label_set)`.
        controls: per-run dilation, hull, feather and extra protected classes.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; choose one of {', '.join(KINDS)}")
    resolved = rules_for(label_set, rules)
    if kind not in resolved.kinds:
        raise ValueError(
            f"label set '{label_set.name}' cannot make a '{kind}' mask ({resolved.source}, "
            f"masks.{resolved.entry}): its classes do not separate that garment; it supports "
            f"{', '.join(resolved.kinds)}"
        )
    labels = np.asarray(label_map)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"build_mask: need an (H, W) integer label map, got {labels.shape} {labels.dtype}"
        )
    bad = (labels < 0) | ((labels >= label_set.num_classes) & (labels != IGNORE_INDEX))
    if bad.any():
        raise ValueError(
            f"build_mask: label map holds ids outside 0..{label_set.num_classes - 1} "
            f"(max {int(labels.max())}) for label set '{label_set.name}'; "
            "parse with the matching label set"
        )
    controls = controls or MaskControls()
    lut = resolved.kinds[kind].lut
    if controls.protect:
        lut = lut.copy()
        lut[list(controls.protect_ids(label_set))] |= STRONG
    params = (
        resolved.params if controls.hull is None else replace(resolved.params, hull=controls.hull)
    )
    flags = lut[labels.astype(np.intp)]
    mask = _morphology(flags, params, controls.dilate)
    if controls.feather:
        mask = feather_edge(mask, controls.feather)
        mask[(flags & STRONG) > 0] = 0
    return mask


def feather_edge(mask: np.ndarray, width: int) -> np.ndarray:
    """A 0/255 mask with a linear soft edge: 255 inside; at distance 0 < d <= width px outside
    it, 255 * (1 - d / (width + 1)) kept within 1..254; 0 beyond."""
    if width <= 0 or not mask.any():
        return mask
    outside = cv2.distanceTransform(
        (mask == 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
    )
    ramp = np.clip(np.rint(MASK_ON * (1.0 - outside / (width + 1))), 1, MASK_ON - 1)
    soft = np.where(outside <= width, ramp, 0)
    return np.where(mask > 0, MASK_ON, soft).astype(np.uint8)


def _dilate(mask: np.ndarray, size: int, iterations: int) -> np.ndarray:
    if size <= 1 or iterations == 0:
        return mask
    return cv2.dilate(mask, np.ones((size, size), np.uint8), iterations=iterations)


def _dilated_area(area: np.ndarray, params: MaskParams, small: int) -> np.ndarray:
    height, width = area.shape
    if params.area_scale == 1 or not area.any():
        return _dilate(area, small, params.area_dilate_iterations)
    size = (max(1, round(width * params.area_scale)), max(1, round(height * params.area_scale)))
    reduced = cv2.resize(area, size, interpolation=cv2.INTER_NEAREST)
    reduced = _dilate(reduced, small, params.area_dilate_iterations)
    return cv2.resize(reduced, (width, height), interpolation=cv2.INTER_NEAREST)


def _hull(candidate: np.ndarray, mode: str) -> np.ndarray:
    if mode == "none":
        return candidate
    contours, _ = cv2.findContours(candidate, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    result = candidate.copy()
    for contour in contours:
        if mode == "convex":
            cv2.fillPoly(result, [cv2.convexHull(contour)], MASK_ON)
        else:
            x, y, w, h = cv2.boundingRect(contour)
            result[y : y + h, x : x + w] = MASK_ON
    return result


def _dilate_disc(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask, disc)


def _morphology(flags: np.ndarray, params: MaskParams, dilate: int = 0) -> np.ndarray:
    small, blur = params.kernel_sizes(*flags.shape)

    def on(flag: int) -> np.ndarray:
        return (flags & flag) > 0

    area = _dilated_area(on(AREA).astype(np.uint8) * MASK_ON, params, small)
    candidate = ((~on(WEAK) & ~on(BACKGROUND)) | (area > 0)).astype(np.uint8) * MASK_ON
    mask = _hull(candidate, params.hull)
    mask[on(WEAK)] = 0
    if blur > 1:
        mask = np.where(
            cv2.GaussianBlur(mask, (blur, blur), 0) >= params.blur_threshold, MASK_ON, 0
        )
        mask = mask.astype(np.uint8)
    mask[on(PAINT)] = MASK_ON
    mask = _dilate(mask, small, params.final_dilate_iterations)
    mask = _dilate_disc(mask, dilate)
    mask[on(STRONG)] = 0
    return mask
