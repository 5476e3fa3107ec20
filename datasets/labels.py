"""Label sets and the maps between them, read from the YAML files in ``mappings/``.

A file defines label *spaces* and maps between them:

- ``<space>_classes``: ordered class names (a list, or ``{id: name}`` as in the seed's files);
  ``lip_merged_classes`` defines the space called ``merged``.
- ``<src>_to_<dst>``: ``{raw_id: target_id}`` or a list (position = raw id). When the source space
  is defined, every one of its ids must be listed (255 as a target means "ignore"). Ids outside the
  source space, and 255 itself, map to ``IGNORE_INDEX``, never to a silent 0.
- optional: ``palettes`` (default: the PASCAL-VOC bit colormap), ``flip_pairs`` (by class name),
  ``display_names`` (they replace the space's names everywhere), ``masks`` (try-on mask rules),
  ``target`` (the training space; else ``merged``, else the only space or map destination),
  ``description`` and ``skin_placeholder``.

Skin placeholder: DeepFashion's segm class "Skin" is not mapped by a table; preprocessing splits it
with the DensePose parts (the seed's `preprocess_deepfashion.py`). The seed writes it as target id
15, outside the 9-class merged space. ``skin_placeholder: P`` declares that id: maps may use it,
``LabelConfig.lut`` passes it through unchanged, and preprocessing replaces it before a label is
used (``check_label_ids`` rejects it). A file with a ``densepose_to_<dst>`` map and no such key gets
the seed's 15, so the seed's files load unchanged.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import yaml

from datasets.label_set import (
    IGNORE_INDEX,
    LUT_SIZE,
    LabelSet,
    as_flip_pairs,
    as_id,
    as_palette,
    format_ids,
)

logger = logging.getLogger(__name__)

MAX_RAW_ID = IGNORE_INDEX - 1  # 255 always maps to itself
SEED_SKIN_PLACEHOLDER = 15  # the seed's "Skin" placeholder in segm_to_merged
SKIN_SOURCE = "densepose"  # the space whose map resolves the skin placeholder
SPACE_ALIASES = {"lip_merged": "merged"}
CLASSES_SUFFIX = "_classes"
MAP_SEPARATOR = "_to_"
OPTIONAL_KEYS = (  # keys besides <space>_classes and <src>_to_<dst>
    "palettes",
    "flip_pairs",
    "display_names",
    "masks",
    "target",
    "description",
    "skin_placeholder",
)


@dataclass(frozen=True)
class LabelConfig:
    """Every label space and map of one YAML file (``load_label_config``)."""

    path: Path
    spaces: dict[str, LabelSet]
    target: LabelSet
    maps: dict[tuple[str, str], dict[int, int]]
    skin_placeholder: int | None = None
    description: str = ""

    def lut(self, src: str, dst: str) -> np.ndarray:
        """(256,) uint8 table raw id -> ``dst`` id; unmapped ids and 255 give 255.

        ``src == dst`` gives the identity on the space's ids. The skin placeholder passes through.
        """
        src, dst = SPACE_ALIASES.get(src, src), SPACE_ALIASES.get(dst, dst)
        table = np.full(LUT_SIZE, IGNORE_INDEX, np.uint8)
        if (src, dst) in self.maps:
            for raw_id, target_id in self.maps[(src, dst)].items():
                table[raw_id] = target_id
        elif src == dst and src in self.spaces:
            table[: self.spaces[src].num_classes] = np.arange(self.spaces[src].num_classes)
        else:
            available = ", ".join(f"{s}{MAP_SEPARATOR}{d}" for s, d in self.maps) or "none"
            raise ValueError(f"{self.path}: no map {src} -> {dst} (maps: {available}); add it")
        return table


class _Mapping(dict):
    """A YAML mapping that remembers keys written twice (PyYAML would keep the last silently)."""

    def __init__(self) -> None:
        super().__init__()
        self.duplicates: set = set()


class _Loader(yaml.SafeLoader):
    """SafeLoader whose mappings are ``_Mapping``s."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Mapping:
    loader.flatten_mapping(node)
    mapping = _Mapping()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool, type(None))):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            )
        if key in mapping:
            mapping.duplicates.add(key)
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_label_config(path: str | Path) -> LabelConfig:
    """Read a label-set YAML; errors name the file, the key and the fix (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: label config not found; pass e.g. mappings/lip_map.yaml")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text; pass a label config YAML file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{path}: invalid YAML ({where}{problem}); fix the syntax") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level is not a mapping; write `<space>_classes: [...]` ...")
    return _Parser(path, data).build()


def _space(name: str) -> str:
    return SPACE_ALIASES.get(name, name)


class _Parser:
    """Validates one YAML document and builds its ``LabelConfig``."""

    def __init__(self, path: Path, data: dict) -> None:
        self.path, self.data = path, data

    def fail(self, key: str, message: str) -> NoReturn:
        """``message`` = "<what is wrong>; <what to do>"."""
        raise ValueError(f"{self.path}: {key}: {message}")

    def build(self) -> LabelConfig:
        for key in self.data.duplicates:
            self.fail(str(key), "the key appears twice; keep one of them")
        names: dict[str, tuple[str, ...]] = {}
        class_keys: dict[str, str] = {}  # space -> the key its names came from
        map_keys = []
        for key, value in self.data.items():
            if isinstance(key, str) and key.endswith(CLASSES_SUFFIX):
                space = _space(key[: -len(CLASSES_SUFFIX)])
                if space in names:
                    self.fail(key, f"'{space}' is also defined by {class_keys[space]}; keep one")
                names[space], class_keys[space] = self.class_names(key, value), key
            elif isinstance(key, str) and MAP_SEPARATOR in key:
                map_keys.append(key)
            elif key not in OPTIONAL_KEYS:
                known = ", ".join(OPTIONAL_KEYS)
                self.fail(str(key), f"unknown key; use <space>_classes, <src>_to_<dst>, {known}")
        if not names:
            self.fail("top level", "no label space; add `<space>_classes: [names...]`")
        for space, value in self.per_space("display_names", names).items():
            key = f"display_names.{space}"
            display = self.class_names(key, value)
            if len(display) != len(names[space]):
                self.fail(
                    key, f"{len(display)} names for {len(names[space])} classes; give one per class"
                )
            names[space], class_keys[space] = display, key
        pairs = {key: self.split_map_key(key, names) for key in map_keys}
        placeholder = self.skin_placeholder(set(pairs.values()), names)
        maps = {pair: self.parse_map(key, *pair, names, placeholder) for key, pair in pairs.items()}
        destinations = {dst for _, dst in maps}
        target = self.target(names, destinations)
        flip_pairs = self.per_space("flip_pairs", names)
        flips = {space: self.flip_pairs(space, v, names[space]) for space, v in flip_pairs.items()}
        masks = self.per_space("masks", names)
        for space in destinations | {target} | set(flips) | set(masks):
            self.check_unique(class_keys[space], names[space])
        self.warn_unreached(maps, names)
        palettes = self.per_space("palettes", names)
        spaces = {}
        for space, space_names in names.items():
            if not isinstance(masks.get(space, {}), dict):
                self.fail(
                    f"masks.{space}", "expected a mapping of mask rules; see inference/masks.py"
                )
            try:
                palette = as_palette(palettes.get(space), len(space_names))
            except ValueError as err:
                self.fail(f"palettes.{space}", str(err))
            spaces[space] = LabelSet(
                space, space_names, palette, flips.get(space, ()), masks.get(space, {})
            )
        description = str(self.data.get("description", ""))
        return LabelConfig(self.path, spaces, spaces[target], maps, placeholder, description)

    def id_table(self, key: str, value: Any, what: str) -> dict[int, Any]:
        """``{id: item}`` from a list (position = id) or a mapping with int or digit-string keys."""
        if isinstance(value, list):
            return dict(enumerate(value))
        if not isinstance(value, dict):
            self.fail(key, f"got {type(value).__name__}; write a list or an {{id: ...}} mapping")
        table: dict[int, Any] = {}
        for raw_key, item in value.items():
            index = as_id(raw_key)
            if index is None:
                self.fail(key, f"{what} {raw_key!r} is not an integer >= 0; use ids 0, 1, 2...")
            if index in table or raw_key in value.duplicates:
                self.fail(key, f"{what} {index} is listed twice; keep one entry per id")
            table[index] = item
        return table

    def check_gaps(self, key: str, ids: Any, count: int, what: str, fix: str) -> None:
        missing = sorted(set(range(count)) - set(ids))
        if missing:
            self.fail(key, f"{what} {format_ids(missing)} missing (gap in 0..{count - 1}); {fix}")

    def class_names(self, key: str, value: Any) -> tuple[str, ...]:
        table = self.id_table(key, value, "class id")
        if not 1 <= len(table) <= IGNORE_INDEX:
            self.fail(key, f"{len(table)} classes; a space needs 1..255 class names")
        self.check_gaps(key, table, max(table) + 1, "class id", "number the classes 0..N-1")
        for index, name in table.items():
            if not isinstance(name, str) or not name.strip():
                self.fail(key, f"class {index} has no text name ({name!r}); quote the name")
        return tuple(table[index] for index in range(len(table)))

    def check_unique(self, key: str, names: tuple[str, ...]) -> None:
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            self.fail(key, f"class name {', '.join(map(repr, repeated))} repeated; make it unique")

    def per_space(self, key: str, names: dict[str, tuple[str, ...]]) -> dict[str, Any]:
        value = self.data.get(key) or _Mapping()
        if not isinstance(value, dict):
            self.fail(key, f"expected a mapping <space>: ..., got {type(value).__name__}")
        for space in value:
            if space in value.duplicates or _space(str(space)) not in names:
                what = "listed twice" if space in value.duplicates else "unknown space"
                self.fail(f"{key}.{space}", f"{what}; use each of {', '.join(names)} at most once")
        return {_space(str(space)): item for space, item in value.items()}

    def split_map_key(self, key: str, names: dict[str, tuple[str, ...]]) -> tuple[str, str]:
        splits = [(key[: m.start()], key[m.end() :]) for m in re.finditer(MAP_SEPARATOR, key)]
        for src, dst in splits:
            if src and _space(dst) in names:
                return _space(src), _space(dst)
        dst = splits[0][1]
        self.fail(key, f"no source or undefined space '{dst}'; add `{dst}_classes` or fix it")

    def skin_placeholder(self, pairs: set[tuple[str, str]], names: dict) -> int | None:
        key, placeholder = "skin_placeholder", self.data.get("skin_placeholder")
        has_resolver = any(src == SKIN_SOURCE for src, _ in pairs)
        if placeholder is None and has_resolver:
            key, placeholder = f"{key} (default for a {SKIN_SOURCE} map)", SEED_SKIN_PLACEHOLDER
        elif placeholder is not None:
            if as_id(placeholder) != placeholder or placeholder > MAX_RAW_ID:
                self.fail(key, f"{placeholder!r} is not an id in 0..{MAX_RAW_ID}; fix the value")
            if not has_resolver:
                self.fail(key, f"no {SKIN_SOURCE}_to_<dst> map resolves it; add one or drop it")
        for dst in {dst for _, dst in pairs} if placeholder is not None else ():
            if placeholder < len(names[dst]):
                self.fail(
                    key, f"{placeholder} is a class of '{dst}'; use an id >= {len(names[dst])}"
                )
        return placeholder

    def parse_map(
        self, key: str, src: str, dst: str, names: dict, placeholder: int | None
    ) -> dict[int, int]:
        table = self.id_table(key, self.data[key], "raw id")
        num_src, num_dst = len(names.get(src, ())) or None, len(names[dst])
        last_raw = MAX_RAW_ID if num_src is None else num_src - 1
        for raw_id, target_id in table.items():
            if raw_id > last_raw:
                self.fail(
                    key, f"raw id {raw_id} is outside '{src}' (0..{last_raw}); fix or drop it"
                )
            if as_id(target_id) != target_id or not (
                target_id < num_dst or target_id in (IGNORE_INDEX, placeholder)
            ):
                valid = f"0..{num_dst - 1} of '{dst}' (255 = ignore)"
                self.fail(key, f"raw id {raw_id} maps to {target_id!r}; use an id in {valid}")
        count = num_src or max(table, default=-1) + 1
        self.check_gaps(key, table, count, "raw id", "map every raw id (255 = ignore)")
        return table

    def target(self, names: dict, destinations: set[str]) -> str:
        if "target" in self.data:
            target = self.data["target"]
            if not isinstance(target, str) or _space(target) not in names:
                self.fail("target", f"undefined space {target!r}; use one of {', '.join(names)}")
            return _space(target)
        for candidates in ({"merged"} & set(names), set(names), destinations):
            if len(candidates) == 1:
                return next(iter(candidates))
        self.fail("target", f"no default among {', '.join(names)}; add `target: <space>`")

    def flip_pairs(self, space: str, value: Any, names: tuple[str, ...]) -> tuple:
        key = f"flip_pairs.{space}"
        if not isinstance(value, (list, type(None))):
            self.fail(key, "expected a list of [left, right] class-name pairs")
        pairs = []
        for pair in value or ():
            if not isinstance(pair, list) or len(pair) != 2:
                self.fail(key, f"{pair!r} is not a pair; write [left name, right name]")
            for class_name in pair:
                if names.count(class_name) != 1:
                    what = "ambiguous" if class_name in names else "unknown"
                    self.fail(key, f"{what} class {class_name!r}; use one of {', '.join(names)}")
            pairs.append((names.index(pair[0]), names.index(pair[1])))
        try:
            return as_flip_pairs(pairs, len(names))
        except ValueError as err:
            self.fail(key, str(err))

    def warn_unreached(self, maps: dict, names: dict) -> None:
        for dst in {dst for _, dst in maps}:
            produced = {t for (_, d), table in maps.items() if d == dst for t in table.values()}
            unreached = [i for i in range(len(names[dst])) if i not in produced]
            if unreached:
                ids = format_ids(unreached)
                logger.warning("%s: no raw id maps to %s class %s", self.path, dst, ids)
