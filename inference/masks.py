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

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

import cv2
import numpy as np
import yaml

from datasets.labels import IGNORE_INDEX, LabelSet

KINDS = ("upper", "lower", "overall", "inner", "outer")
HULL_MODES = ("convex", "box", "none")
DEFAULT_RULES_PATH = Path(__file__).resolve().parents[1] / "mappings" / "tryon_masks.yaml"
SET_GROUPS = ("background", "protect_strong", "protect")
KIND_GROUPS = ("paint", "area", "protect")
SET_KEYS = {"params", "label_set", "description", *SET_GROUPS, *KINDS}
LUT_SIZE = 256
MASK_ON = 255
# Bit flags of a per-kind lookup table indexed by class id.
PAINT, AREA, WEAK, STRONG, BACKGROUND = 1, 2, 4, 8, 16


@dataclass(frozen=True)
class MaskParams:
    """Morphology parameters; defaults are AutoMasker's (k1 = 5, k2 = 41 px for a 1024 px side)."""

    kernel_divisor: int = 250  # small kernel k1 = long side // kernel_divisor, made odd
    blur_divisor: int = 25  # blur kernel k2 = long side // blur_divisor, made odd
    area_scale: float = 0.25  # the body-part area is dilated at this fraction of the size
    area_dilate_iterations: int = 2
    hull: str = "convex"  # one of HULL_MODES
    blur_threshold: int = 25  # of 255: blurred pixels at or above it join the mask
    final_dilate_iterations: int = 1

    def kernel_sizes(self, height: int, width: int) -> tuple[int, int]:
        """(k1, k2): the odd dilation and blur kernel sizes for an image of this size."""
        side = max(height, width)
        return _odd(side // self.kernel_divisor), _odd(side // self.blur_divisor)

    def margin_px(self, height: int, width: int) -> int:
        """Furthest the blur and the final dilation can grow the mask into protected classes."""
        small, blur = self.kernel_sizes(height, width)
        return blur // 2 + (small // 2) * self.final_dilate_iterations


def _odd(size: int) -> int:
    size = max(1, size)
    return size if size % 2 else size + 1


@dataclass(frozen=True)
class MaskControls:
    """Per-run adjustments on top of the rules (all off by default).

    Args:
        dilate: grow the finished mask by this many pixels (a disc), before protection.
        hull: replaces the rules' hull mode (one of HULL_MODES); None keeps it.
        feather: soft edge width in pixels (values 1..254 only within it, outside the hard mask).
        protect: class names never painted, on top of the rules' `protect_strong`.
    """

    dilate: int = 0
    hull: str | None = None
    feather: int = 0
    protect: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("dilate", "feather"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"mask {name}: must be a whole number of pixels >= 0, got {value!r}"
                )
        if self.hull is not None and self.hull not in HULL_MODES:
            raise ValueError(
                f"mask hull: must be one of {', '.join(HULL_MODES)}, got {self.hull!r}"
            )
        object.__setattr__(self, "protect", tuple(self.protect))

    def protect_ids(self, label_set: LabelSet) -> tuple[int, ...]:
        """Class ids of `protect` (names matched as in the rules); ValueError names a bad one."""
        index = _name_index(label_set)
        return tuple(sorted(_resolve_names(list(self.protect), "--protect", label_set, index)))


@dataclass(frozen=True)
class KindRule:
    """One kind resolved to class ids; `lut[class_id]` holds the PAINT/AREA/... bit flags."""

    paint: tuple[int, ...]
    area: tuple[int, ...]
    protect: tuple[int, ...]  # every weakly protected class: shared, strong and the kind's own
    protect_strong: tuple[int, ...]
    background: tuple[int, ...]
    lut: np.ndarray


@dataclass(frozen=True)
class MaskRules:
    """Rules of one label set with names resolved to ids; `source` names where they came from."""

    label_set: str
    class_names: tuple[str, ...]
    source: str  # the YAML file, or the label set whose own mask_rules were used
    entry: str  # key under `masks:`
    params: MaskParams
    kinds: dict[str, KindRule]


def _normalise(name: str) -> str:
    """Names match ignoring case, spaces, '-' and '_' ('Upper-clothes' == 'upper clothes')."""
    return re.sub(r"[\s_\-]+", "", str(name)).casefold()


def _name_index(label_set: LabelSet) -> dict[str, int]:
    index: dict[str, int] = {}
    for class_id, name in enumerate(label_set.names):
        key = _normalise(name)
        if key in index:
            raise ValueError(
                f"label set '{label_set.name}': class names '{label_set.names[index[key]]}' and "
                f"'{name}' are the same ignoring case and separators; rename one of them"
            )
        index[key] = class_id
    return index


def _resolve_names(names, where: str, label_set: LabelSet, index: dict[str, int]) -> set[int]:
    if names is None:
        return set()
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ValueError(f"{where}: expected a list of class names, got {names!r}")
    ids = set()
    for name in names:
        if _normalise(name) not in index:
            raise ValueError(
                f"{where}: unknown class '{name}' for label set '{label_set.name}' "
                f"(its classes: {', '.join(label_set.names)}); use one of those names"
            )
        ids.add(index[_normalise(name)])
    return ids


def _resolve_params(raw, where: str) -> MaskParams:
    raw = raw or {}
    known = [f.name for f in fields(MaskParams)]
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a mapping of parameters, got {raw!r}")
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown parameter(s) {unknown}; known: {', '.join(known)}")
    params = replace(MaskParams(), **raw)
    minimum = {"kernel_divisor": 1, "blur_divisor": 1}
    for name in (*minimum, "area_dilate_iterations", "final_dilate_iterations"):
        value = getattr(params, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum.get(name, 0):
            raise ValueError(f"{where}.{name}: must be an integer >= {minimum.get(name, 0)}")
    if not 0 < params.area_scale <= 1:
        raise ValueError(f"{where}.area_scale: must be in (0, 1], got {params.area_scale}")
    if params.hull not in HULL_MODES:
        raise ValueError(
            f"{where}.hull: must be one of {', '.join(HULL_MODES)}, got {params.hull!r}"
        )
    if not 0 < params.blur_threshold <= MASK_ON:
        raise ValueError(f"{where}.blur_threshold: must be in 1..{MASK_ON}")
    return params


def resolve_mask_rules(
    raw: Mapping, label_set: LabelSet, source: str = "mask_rules", key: str | None = None
) -> MaskRules:
    """Validate one label set's rules (class names) and resolve them to ids.

    Raises ValueError naming `source`, the rule and the offending class or key.
    """
    key = key or label_set.name
    where = f"{source}: masks.{key}"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a mapping of mask rules, got {type(raw).__name__}")
    unknown = set(raw) - SET_KEYS
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {sorted(unknown)}; use params, {', '.join(SET_GROUPS)} "
            f"and kinds from {', '.join(KINDS)}"
        )
    index = _name_index(label_set)
    params = _resolve_params(raw.get("params"), f"{where}.params")
    shared = {g: _resolve_names(raw.get(g), f"{where}.{g}", label_set, index) for g in SET_GROUPS}
    kinds = {}
    for kind in KINDS:
        if kind not in raw:
            continue
        rule = raw[kind] or {}
        extra = set(rule) - set(KIND_GROUPS) if isinstance(rule, Mapping) else {"<not a mapping>"}
        if extra:
            raise ValueError(f"{where}.{kind}: unknown key(s) {sorted(extra)}; use {KIND_GROUPS}")
        groups = {
            g: _resolve_names(rule.get(g), f"{where}.{kind}.{g}", label_set, index)
            for g in KIND_GROUPS
        }
        if not groups["paint"]:
            raise ValueError(f"{where}.{kind}.paint: list at least one garment class to paint")
        kinds[kind] = _kind_rule(groups, shared, label_set, f"{where}.{kind}")
    if not kinds:
        raise ValueError(f"{where}: no mask kinds; add at least one of {', '.join(KINDS)}")
    return MaskRules(label_set.name, label_set.names, source, key, params, kinds)


def _kind_rule(groups, shared, label_set: LabelSet, where: str) -> KindRule:
    weak = shared["protect"] | shared["protect_strong"] | groups["protect"]
    exclusive = {
        "paint": groups["paint"],
        "area": groups["area"],
        "protected": weak,
        "background": shared["background"],
    }
    seen: dict[int, str] = {}
    for group, ids in exclusive.items():
        for class_id in sorted(ids):
            if class_id in seen:
                raise ValueError(
                    f"{where}: class '{label_set.names[class_id]}' is both {seen[class_id]} and "
                    f"{group}; keep it in one group"
                )
            seen[class_id] = group
    rule = KindRule(
        paint=tuple(sorted(groups["paint"])),
        area=tuple(sorted(groups["area"])),
        protect=tuple(sorted(weak)),
        protect_strong=tuple(sorted(shared["protect_strong"])),
        background=tuple(sorted(shared["background"])),
        lut=np.zeros(LUT_SIZE, dtype=np.uint8),
    )
    for ids, flag in (
        (rule.paint, PAINT),
        (rule.area, AREA),
        (rule.protect, WEAK),
        (rule.protect_strong, STRONG),
        ((*rule.background, IGNORE_INDEX), BACKGROUND),
    ):
        rule.lut[list(ids)] |= flag
    rule.lut.setflags(write=False)
    return rule


@functools.lru_cache(maxsize=8)
def _read_masks_section(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: mask rules file not found; pass an existing YAML file")
    with file.open() as handle:
        data = yaml.safe_load(handle) or {}
    masks = data.get("masks") if isinstance(data, Mapping) else None
    if not isinstance(masks, Mapping):
        raise ValueError(f"{file}: no top-level 'masks:' mapping; add masks: {{<label set>: ...}}")
    return masks


def load_mask_rules(path: str | Path, label_set: LabelSet) -> MaskRules:
    """Rules for `label_set` from a YAML file's `masks:` section.

    Candidate entries are keyed by the label set's name or say `label_set: <name>`; the one whose
    class names all resolve in this label set is used (two label sets may share a space name,
    e.g. the `merged` spaces of lip_map.yaml and df_map_sep.yaml).
    """
    masks = _read_masks_section(str(path))
    candidates = [
        key
        for key, entry in masks.items()
        if key == label_set.name
        or (isinstance(entry, Mapping) and entry.get("label_set") == label_set.name)
    ]
    if not candidates:
        raise ValueError(
            f"{path}: no mask rules for label set '{label_set.name}' (entries: "
            f"{', '.join(map(str, masks))}); add masks.{label_set.name} with paint/protect groups"
        )
    resolved, errors = [], []
    for key in candidates:
        try:
            resolved.append(resolve_mask_rules(masks[key], label_set, str(path), key))
        except ValueError as error:
            errors.append(str(error))
    if len(resolved) == 1:
        return resolved[0]
    if not resolved:
        raise ValueError(" | ".join(errors))
    raise ValueError(
        f"{path}: entries {candidates} all fit label set '{label_set.name}'; "
        "give each label set exactly one entry"
    )


def get_mask_rules(label_set: LabelSet, path: str | Path = DEFAULT_RULES_PATH) -> MaskRules:
    """The label set's own `mask_rules` when non-empty, else its entry in `path`."""
    if label_set.mask_rules:
        return resolve_mask_rules(label_set.mask_rules, label_set, f"label set '{label_set.name}'")
    return load_mask_rules(path, label_set)


def available_kinds(
    label_set: LabelSet, rules: MaskRules | Mapping | None = None
) -> tuple[str, ...]:
    """Mask kinds the label set supports, in KINDS order."""
    return tuple(_rules_for(label_set, rules).kinds)


def _rules_for(label_set: LabelSet, rules: MaskRules | Mapping | None) -> MaskRules:
    if rules is None:
        return get_mask_rules(label_set)
    if isinstance(rules, MaskRules):
        if rules.class_names != label_set.names:
            raise ValueError(
                f"mask rules for label set '{rules.label_set}' ({rules.source}, "
                f"masks.{rules.entry}) used with label set '{label_set.name}' whose classes "
                "differ; resolve the rules for the label set you parse with"
            )
        return rules
    return resolve_mask_rules(rules, label_set)


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
    resolved = _rules_for(label_set, rules)
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
