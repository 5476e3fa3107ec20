"""Label sets: class names, palette and flip pairs of one label space, and the uint8 id tables.

`datasets.labels` reads them from the YAML files in ``mappings/``; this module holds what every
layer uses: `IGNORE_INDEX`, `LabelSet`, `apply_lut`, `check_label_ids` and class-name matching.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

IGNORE_INDEX = 255
LUT_SIZE = 256  # one entry per uint8 label value
MAX_LISTED_IDS = 5  # ids quoted in one error line
PALETTE_BITS = 8


def voc_palette(num_colours: int) -> np.ndarray:
    """(num_colours, 3) uint8 PASCAL-VOC bit colormap (SCHP's): id bits go to R, G, B, MSB first."""
    ids = np.arange(num_colours)
    palette = np.zeros((num_colours, 3), np.uint8)
    for bit in range(PALETTE_BITS):
        for channel in range(3):
            bits = (ids >> (3 * bit + channel)) & 1
            palette[:, channel] |= (bits << (PALETTE_BITS - 1 - bit)).astype(np.uint8)
    return palette


def format_ids(ids: list[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:MAX_LISTED_IDS])
    return shown + (f" (+{len(ids) - MAX_LISTED_IDS} more)" if len(ids) > MAX_LISTED_IDS else "")


def as_id(value: Any) -> int | None:
    """An integer id from an int or a digit string (YAML keys may be either); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _plain(value: Any) -> Any:
    """Plain dicts and lists all the way down (checkpoints load with weights_only=True)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def as_palette(colours: Any, num_classes: int) -> np.ndarray:
    """(K, 3) uint8 colours from [[r, g, b], ...]; None gives the VOC colours."""
    if colours is None:
        return voc_palette(num_classes)
    fix = "give one [r, g, b] triple of 0..255 per class, or leave it out for the VOC colours"
    array = np.asarray(colours)
    if array.ndim != 2 or array.shape[1] != 3 or array.dtype.kind not in "iu" or array.size == 0:
        raise ValueError(f"palette is not a list of [r, g, b] triples; {fix}")
    if array.min() < 0 or array.max() > IGNORE_INDEX:
        raise ValueError(f"palette values must lie in 0..255; {fix}")
    if len(array) != num_classes:
        raise ValueError(f"palette has {len(array)} colours for {num_classes} classes; {fix}")
    return array.astype(np.uint8)


def as_flip_pairs(pairs: Any, num_classes: int) -> tuple[tuple[int, int], ...]:
    seen: set[int] = set()
    result = []
    for left, right in pairs:
        left, right = int(left), int(right)
        if left == right or min(left, right) < 0 or max(left, right) >= num_classes:
            raise ValueError(f"bad flip pair ({left}, {right}); use two different class ids")
        if {left, right} & seen:
            raise ValueError(f"flip pair ({left}, {right}) reuses a class; list each in one pair")
        seen |= {left, right}
        result.append((left, right))
    return tuple(result)


@dataclass(frozen=True, eq=False)
class LabelSet:
    """An ordered set of classes with display colours, left/right pairs and try-on mask rules.

    Args:
        name: the space's name in its YAML file (``lip``, ``merged``, ``coarse``...).
        names: class names; class id = position.
        palette: (K, 3) uint8 colours; None gives the PASCAL-VOC bit colormap.
        flip_pairs: pairs of class ids that a horizontal flip swaps.
        mask_rules: try-on mask rules for ``inference/masks.py`` (plain python types).
    """

    name: str
    names: tuple[str, ...]
    palette: np.ndarray | None = None
    flip_pairs: tuple[tuple[int, int], ...] = ()
    mask_rules: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = tuple(self.names)
        if not 1 <= len(names) <= IGNORE_INDEX:
            raise ValueError(f"label set '{self.name}' has {len(names)} classes; use 1..255")
        if not all(isinstance(name, str) and name for name in names):
            raise ValueError(f"label set '{self.name}': every class name must be non-empty text")
        try:
            palette = as_palette(self.palette, len(names))
            pairs = as_flip_pairs(self.flip_pairs, len(names))
        except ValueError as err:
            raise ValueError(f"label set '{self.name}': {err}") from None
        palette.setflags(write=False)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "palette", palette)
        object.__setattr__(self, "flip_pairs", pairs)
        object.__setattr__(self, "mask_rules", _plain(self.mask_rules))

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def flip_permutation(self) -> np.ndarray:
        """(K,) int64 class permutation of a horizontal flip: identity with the pairs swapped."""
        permutation = np.arange(self.num_classes, dtype=np.int64)
        for left, right in self.flip_pairs:
            permutation[left], permutation[right] = right, left
        return permutation

    def flat_palette(self) -> list[int]:
        """768 ints for ``PIL.Image.putpalette``; ids past the set (255 too) keep VOC colours."""
        colours = voc_palette(LUT_SIZE)
        colours[: self.num_classes] = self.palette
        return colours.ravel().tolist()

    def to_dict(self) -> dict[str, Any]:
        """Plain python types, as stored in checkpoints."""
        return {
            "name": self.name,
            "names": list(self.names),
            "palette": self.palette.tolist(),
            "flip_pairs": [list(pair) for pair in self.flip_pairs],
            "mask_rules": copy.deepcopy(self.mask_rules),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelSet:
        """Inverse of ``to_dict``; palette, flip pairs and mask rules are optional."""
        if not isinstance(data, dict) or not {"name", "names"} <= data.keys():
            raise ValueError("label set entry lacks 'name'/'names'; pass the label config YAML")
        return cls(
            name=data["name"],
            names=tuple(data["names"]),
            palette=data.get("palette"),
            flip_pairs=tuple(tuple(pair) for pair in data.get("flip_pairs", ())),
            mask_rules=data.get("mask_rules") or {},
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LabelSet):
            return NotImplemented
        return self.to_dict() == other.to_dict()


def apply_lut(label: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map a label array of ids 0..255 through a (256,) table; returns uint8 of the same shape."""
    table = np.asarray(lut)
    if table.shape != (LUT_SIZE,):
        raise ValueError(f"lookup table shape {table.shape} != (256,); use LabelConfig.lut()")
    label = np.asarray(label)
    if label.dtype != np.uint8 and label.size and (label.min() < 0 or label.max() > IGNORE_INDEX):
        raise ValueError(f"label ids {label.min()}..{label.max()} exceed 0..255; read class ids")
    return table.astype(np.uint8)[label]


def check_label_ids(label: np.ndarray, label_set: LabelSet | int, path: str | Path) -> None:
    """Raise ValueError naming ``path`` when ``label`` holds ids outside the set (255 allowed)."""
    num_classes = label_set if isinstance(label_set, int) else label_set.num_classes
    label = np.asarray(label)
    outside = ((label < 0) | (label >= num_classes)) & (label != IGNORE_INDEX)
    if not outside.any():
        return
    bad = np.unique(label[outside]).tolist()
    ids = f"label id {bad[0]} is" if len(bad) == 1 else f"label ids {format_ids(bad)} are"
    name = "" if isinstance(label_set, int) else f" '{label_set.name}'"
    raise ValueError(
        f"{path}: {ids} outside the {num_classes}-class set{name}; "
        "map it with --do_mapping/--lip_map_cfg or fix the file"
    )


def class_key(name: str) -> str:
    """Names match ignoring case, spaces, '-' and '_' ('Upper-clothes' == 'upper clothes')."""
    return re.sub(r"[\s_\-]+", "", str(name)).casefold()


def class_index(label_set: LabelSet) -> dict[str, int]:
    """`class_key(name)` -> class id; ValueError when two names share a key."""
    index: dict[str, int] = {}
    for class_id, name in enumerate(label_set.names):
        key = class_key(name)
        if key in index:
            raise ValueError(
                f"label set '{label_set.name}': class names '{label_set.names[index[key]]}' and "
                f"'{name}' are the same ignoring case and separators; rename one of them"
            )
        index[key] = class_id
    return index
