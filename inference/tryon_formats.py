"""Try-on data formats: the files VITON-HD, DressCode and CatVTON read, from a parsing map.

The facts of each format (layout, file names, label ids, palette, which source classes become
which format classes) are data in `mappings/tryon_formats.yaml`, with their sources cited there;
this module resolves them for one label set and applies them:

    fmt = load_format("viton-hd", parser.label_set)
    fmt.convert(labels)                   # (H, W) format ids
    fmt.paths("0001", split="test")       # {"photo": "test/image/0001.jpg", "parse": ...}
    fmt.agnostic_parse(ids), fmt.agnostic_image(rgb, ids, mask)
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from datasets.label_set import IGNORE_INDEX, LUT_SIZE, LabelSet, class_index, class_key, voc_palette

FORMATS_PATH = Path(__file__).resolve().parents[1] / "mappings" / "tryon_formats.yaml"
DEFAULT_FORMAT = "default"  # extract.py's own layout: parsing/, masks/<kind>/, overlay/
CATEGORIES = {"upper_body": "upper", "lower_body": "lower", "dresses": "overall"}  # -> mask kind
SPLITS = ("test", "train")
SPLIT = 254  # LUT value of a source class that splits into two format classes (ids < 254)


@functools.lru_cache(maxsize=4)
def _read_formats(path: str) -> dict:
    with open(path) as handle:
        data = yaml.safe_load(handle) or {}
    formats = data.get("formats") if isinstance(data, Mapping) else None
    if not isinstance(formats, Mapping) or not formats:
        raise ValueError(f"{path}: no top-level 'formats:' mapping")
    return dict(formats)


def format_names(path: str | Path = FORMATS_PATH) -> tuple[str, ...]:
    """`default` and every format of the YAML file, for `--format` choices."""
    return (DEFAULT_FORMAT, *sorted(_read_formats(str(path))))


@dataclass(frozen=True)
class TryOnFormat:
    """One format resolved for one label set.

    Args:
        name: the format's key in the YAML.
        files: kind (photo, parse, parse_agnostic, agnostic, mask) -> path pattern.
        classes: format class names (id = position); empty for mask-only formats.
        flat_palette: 768 ints for `Image.putpalette`.
        mask_kind: the try-on mask kind the format fixes (None: from --category).
        lut: (256,) source id -> format id (SPLIT for split classes, 255 for ignore).
        splits: (source id, (first format id, second format id)) per split class.
        parse_drop, image_keep: format ids of the agnostic rules; grey: the agnostic paint.
    """

    name: str
    files: dict[str, str]
    classes: tuple[str, ...]
    flat_palette: list[int]
    mask_kind: str | None
    lut: np.ndarray
    splits: tuple[tuple[int, tuple[int, int]], ...]
    parse_drop: tuple[int, ...] = ()
    image_keep: tuple[int, ...] = ()
    grey: tuple[int, int, int] = (128, 128, 128)

    def kind_for(self, category: str) -> str:
        """The try-on mask kind written for a garment `category` (see CATEGORIES)."""
        return self.mask_kind or CATEGORIES[category]

    def paths(self, name: str, split: str = "test", category: str = "upper_body") -> dict[str, str]:
        """File kind -> path below the output folder for the photo called `name`."""
        return {
            kind: pattern.format(split=split, category=category, name=name)
            for kind, pattern in self.files.items()
        }

    def convert(self, labels: np.ndarray) -> np.ndarray:
        """(H, W) source class ids -> (H, W) uint8 format ids.

        A split class takes, per pixel, whichever of its two format classes is nearer among the
        pixels the other classes already placed; with both missing from the photo, the
        person's vertical midline decides (image right = the person's left, for photos facing
        the camera)."""
        out = self.lut[labels.astype(np.intp)]
        if not self.splits:
            return out
        pending = out == SPLIT
        if not pending.any():
            return out
        person = (out != 0) & (out != IGNORE_INDEX)
        centre = np.nonzero(person)[1].mean() if person.any() else labels.shape[1] / 2
        columns = np.arange(labels.shape[1])[None, :]
        for source, (first, second) in self.splits:
            where = labels == source
            if not where.any():
                continue
            if (out == first).any() or (out == second).any():
                near_first = _distance_to(out == first) <= _distance_to(out == second)
            else:
                near_first = np.broadcast_to(columns >= centre, labels.shape)
            out[where] = np.where(near_first[where], first, second)
        return out

    def agnostic_parse(self, ids: np.ndarray) -> np.ndarray:
        """The format parse with the `parse_drop` classes (the garment and arms) set to 0."""
        out = ids.copy()
        out[np.isin(ids, self.parse_drop)] = 0
        return out

    def agnostic_image(self, rgb: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The photo painted `grey` over the try-on mask (>= 128) and the drop classes, with the
        `image_keep` classes (head, lower body) pasted back from the photo."""
        cover = (mask >= 128) | np.isin(ids, self.parse_drop)
        cover &= ~np.isin(ids, self.image_keep)
        out = rgb.copy()
        out[cover] = self.grey
        return out


def _distance_to(pixels: np.ndarray) -> np.ndarray:
    """Distance of every pixel to the nearest of `pixels` (infinite where there is none)."""
    if not pixels.any():
        return np.full(pixels.shape, np.inf, np.float32)
    return cv2.distanceTransform((~pixels).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)


def load_format(
    name: str,
    label_set: LabelSet,
    approximate_left_right: bool = False,
    path: str | Path = FORMATS_PATH,
) -> TryOnFormat:
    """Resolve format `name` for `label_set`; ValueError in one line when it cannot be filled."""
    formats = _read_formats(str(path))
    if name not in formats:
        raise ValueError(
            f"--format {name}: unknown format; choose one of {', '.join(format_names(path))}"
        )
    spec = formats[name]
    classes = tuple(spec.get("classes") or ())
    lut = np.full(LUT_SIZE, IGNORE_INDEX, np.uint8)
    splits: list[tuple[int, tuple[int, int]]] = []
    if classes:
        entry = _entry_for(spec, name, label_set, path)
        if entry.get("cannot"):
            raise ValueError(
                f"--format {name}: label set '{label_set.name}' cannot fill it: "
                f"{' '.join(str(entry['cannot']).split())}"
            )
        if entry.get("approximate") and not approximate_left_right:
            raise ValueError(
                f"--format {name}: label set '{label_set.name}' has no left/right classes, which "
                f"{name} needs; pass --approximate-left-right to split them at the person's "
                "midline (right in the image = the person's left), or use a LIP-20 model"
            )
        target = {class_key(c): i for i, c in enumerate(classes)}
        source = class_index(label_set)

        def target_id(class_name: str) -> int:
            if class_key(class_name) not in target:
                raise ValueError(
                    f"{path}: formats.{name}: unknown format class '{class_name}'; use one of "
                    f"{', '.join(classes)}"
                )
            return target[class_key(class_name)]

        for source_name, goal in entry["classes"].items():
            source_id = source[class_key(source_name)]
            if isinstance(goal, list):
                if len(goal) != 2:
                    raise ValueError(f"{path}: formats.{name}: split {goal} needs two classes")
                splits.append((source_id, (target_id(goal[0]), target_id(goal[1]))))
                lut[source_id] = SPLIT
            else:
                lut[source_id] = target_id(goal)
    lut.setflags(write=False)
    palette = voc_palette(LUT_SIZE)
    agnostic = spec.get("agnostic") or {}
    ids = {class_key(c): i for i, c in enumerate(classes)}
    return TryOnFormat(
        name=name,
        files=dict(spec["files"]),
        classes=classes,
        flat_palette=palette.reshape(-1).tolist(),
        mask_kind=spec.get("mask_kind"),
        lut=lut,
        splits=tuple(splits),
        parse_drop=tuple(ids[class_key(c)] for c in agnostic.get("parse_drop", ())),
        image_keep=tuple(ids[class_key(c)] for c in agnostic.get("image_keep", ())),
        grey=tuple(agnostic.get("grey", (128, 128, 128))),
    )


def _entry_for(spec: Mapping, name: str, label_set: LabelSet, path) -> Mapping:
    """The `from:` entry whose source classes are exactly the label set's classes."""
    wanted = {class_key(n) for n in label_set.names}
    for key, entry in (spec.get("from") or {}).items():
        if entry.get("label_set", key) != label_set.name:
            continue
        given = entry.get("classes") or ()
        if {class_key(n) for n in given} == wanted:
            return entry
    raise ValueError(
        f"--format {name}: no conversion from label set '{label_set.name}' "
        f"({', '.join(label_set.names)}); add one under formats.{name}.from in {path}"
    )
