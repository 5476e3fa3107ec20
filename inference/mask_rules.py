"""Try-on mask rules: which classes each mask kind paints, covers or protects, per label set.

Read from `mappings/tryon_masks.yaml` (or a label-set YAML's `masks:` section) by class name and
resolved to per-kind lookup tables of bit flags; `inference.masks` builds the masks from them.
The format and the mask algorithm are described in `inference.masks`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import yaml

from datasets.label_set import IGNORE_INDEX, LUT_SIZE, LabelSet, class_index, class_key

KINDS = ("upper", "lower", "overall", "inner", "outer")
HULL_MODES = ("convex", "box", "none")
DEFAULT_RULES_PATH = Path(__file__).resolve().parents[1] / "mappings" / "tryon_masks.yaml"
SET_GROUPS = ("background", "protect_strong", "protect")
KIND_GROUPS = ("paint", "area", "protect")
SET_KEYS = {"params", "label_set", "description", *SET_GROUPS, *KINDS}
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
        index = class_index(label_set)
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


def _resolve_names(names, where: str, label_set: LabelSet, index: dict[str, int]) -> set[int]:
    if names is None:
        return set()
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ValueError(f"{where}: expected a list of class names, got {names!r}")
    ids = set()
    for name in names:
        if class_key(name) not in index:
            raise ValueError(
                f"{where}: unknown class '{name}' for label set '{label_set.name}' "
                f"(its classes: {', '.join(label_set.names)}); use one of those names"
            )
        ids.add(index[class_key(name)])
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
    index = class_index(label_set)
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
    return tuple(rules_for(label_set, rules).kinds)


def rules_for(label_set: LabelSet, rules: MaskRules | Mapping | None) -> MaskRules:
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
