"""inference/masks.py on a rectangle doll drawn in each label set with known geometry.

The doll (512 x 320, facing the camera): hair, face, a top (shoulder bar + torso, with a 40 px
armpit gap to each arm), bare arms, hands, a bottom, bare legs, bare feet and shoes. Each label
set below says which of its classes draws each body part and what each mask kind must cover,
never touch, or may only touch within the blur/dilation margin.
"""

from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from datasets.label_set import LabelSet
from datasets.labels import load_label_config
from inference.mask_rules import (
    DEFAULT_RULES_PATH,
    KINDS,
    MaskRules,
    available_kinds,
    get_mask_rules,
    load_mask_rules,
    resolve_mask_rules,
)
from inference.masks import build_mask

MAPPINGS = Path(__file__).resolve().parents[1] / "mappings"
HEIGHT, WIDTH = 512, 320
# part -> list of (y0, y1, x0, x1) rectangles, drawn in this order
DOLL = {
    "hair": [(20, 60, 135, 185)],
    "face": [(60, 105, 140, 180)],
    "top": [(115, 140, 70, 250), (140, 260, 135, 185)],
    "arm_r": [(140, 250, 70, 95)],
    "arm_l": [(140, 250, 225, 250)],
    "hand_r": [(250, 280, 70, 95)],
    "hand_l": [(250, 280, 225, 250)],
    "bottom": [(260, 380, 125, 195)],
    "leg_r": [(380, 455, 130, 155)],
    "leg_l": [(380, 455, 165, 190)],
    "foot_r": [(455, 465, 130, 155)],
    "foot_l": [(455, 465, 165, 190)],
    "shoe_r": [(465, 490, 130, 155)],
    "shoe_l": [(465, 490, 165, 190)],
}
ARMPIT = (200, 119)  # (y, x) background between the right arm and the torso
ARMS, LEGS = ("arm_r", "arm_l"), ("leg_r", "leg_l")
HANDS, FEET, SHOES = ("hand_r", "hand_l"), ("foot_r", "foot_l"), ("shoe_r", "shoe_l")

# label set -> (config file, space, class name per doll part, expectations per kind:
#   cover = parts fully painted, never = parts never painted, weak = parts painted at most within
#   the margin of their border)
# fmt: off
CASES = {
    "lip": (
        "lip_map.yaml",
        "lip",
        {
            "hair": "Hair", "face": "Face", "top": "Upper-clothes", "arm_r": "Right-arm",
            "arm_l": "Left-arm", "hand_r": "Right-arm", "hand_l": "Left-arm", "bottom": "Pants",
            "leg_r": "Right-leg", "leg_l": "Left-leg", "foot_r": "Right-leg", "foot_l": "Left-leg",
            "shoe_r": "Right-shoe", "shoe_l": "Left-shoe",
        },
        {
            "upper": {"cover": ("top", *ARMS, *HANDS), "never": ("face", "hair", *SHOES),
                      "weak": ("bottom", *LEGS)},
            "lower": {"cover": ("bottom", *LEGS, *FEET), "never": ("face", "hair"),
                      "weak": ("top", *ARMS, *SHOES)},
            "overall": {"cover": ("top", "bottom", *ARMS, *LEGS), "never": ("face", "hair"),
                        "weak": SHOES},
        },
    ),
    "merged": (
        "lip_map.yaml",
        "merged",
        {
            "hair": "Upper-Face", "face": "Face", "top": "Upper-clothes", "arm_r": "Arm",
            "arm_l": "Arm", "hand_r": "Arm", "hand_l": "Arm", "bottom": "Lower-clothes",
            "leg_r": "Leg", "leg_l": "Leg", "foot_r": "Leg", "foot_l": "Leg", "shoe_r": "Shoe",
            "shoe_l": "Shoe",
        },
        {
            "upper": {"cover": ("top", *ARMS), "never": ("face", "hair", *SHOES),
                      "weak": ("bottom", *LEGS)},
            "lower": {"cover": ("bottom", *LEGS), "never": ("face", "hair"),
                      "weak": ("top", *ARMS, *SHOES)},
            "overall": {"cover": ("top", "bottom", *ARMS, *LEGS), "never": ("face", "hair"),
                        "weak": SHOES},
        },
    ),
    "sep": (
        "df_map_sep.yaml",
        "merged",
        {
            "hair": "Upper-Face", "face": "Face", "top": "Upper-Body", "arm_r": "Upper-Body",
            "arm_l": "Upper-Body", "hand_r": "Hands", "hand_l": "Hands", "bottom": "Lower-Body",
            "leg_r": "Lower-Body", "leg_l": "Lower-Body", "foot_r": "Feet", "foot_l": "Feet",
            "shoe_r": "Shoe", "shoe_l": "Shoe",
        },
        {
            "upper": {"cover": ("top", *ARMS), "never": ("face", "hair", *HANDS, *FEET, *SHOES),
                      "weak": ("bottom", *LEGS)},
            "lower": {"cover": ("bottom", *LEGS), "never": ("face", "hair", *HANDS, *FEET),
                      "weak": ("top", *ARMS, *SHOES)},
            "overall": {"cover": ("top", "bottom", *ARMS, *LEGS),
                        "never": ("face", "hair", *HANDS, *FEET), "weak": SHOES},
        },
    ),
    "coarse": (
        "ccp_map.yaml",
        "coarse",
        {
            "hair": "Hair", "face": "Skin", "top": "Upper-clothes", "arm_r": "Skin",
            "arm_l": "Skin", "hand_r": "Skin", "hand_l": "Skin", "bottom": "Lower-clothes",
            "leg_r": "Skin", "leg_l": "Skin", "foot_r": "Skin", "foot_l": "Skin",
            "shoe_r": "Shoes", "shoe_l": "Shoes",
        },
        {
            "upper": {"cover": ("top",), "never": ("face", "hair", *ARMS, *HANDS, *SHOES),
                      "weak": ("bottom",)},
            "lower": {"cover": ("bottom",), "never": ("face", "hair", *LEGS, *FEET),
                      "weak": ("top", *SHOES)},
            "overall": {"cover": ("top", "bottom"), "never": ("face", "hair", *ARMS, *LEGS),
                        "weak": SHOES},
        },
    ),
}
# fmt: on


def _label_set(case: str) -> LabelSet:
    file, space, _, _ = CASES[case]
    config = load_label_config(MAPPINGS / file)
    return config.spaces[space]


def _part_mask(part: str) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), bool)
    for y0, y1, x0, x1 in DOLL[part]:
        mask[y0:y1, x0:x1] = True
    return mask


def _draw_doll(label_set: LabelSet, classes: dict[str, str]) -> np.ndarray:
    label_map = np.zeros((HEIGHT, WIDTH), np.uint8)
    for part in DOLL:
        label_map[_part_mask(part)] = label_set.names.index(classes[part])
    return label_map


def _distance_to_outside(region: np.ndarray) -> np.ndarray:
    """Chebyshev distance (px) of each region pixel to the nearest pixel outside the region."""
    return cv2.distanceTransform(region.astype(np.uint8), cv2.DIST_C, 3)


class Doll(NamedTuple):
    case: str
    label_set: LabelSet
    rules: MaskRules
    masks: dict[str, np.ndarray]  # kind -> mask
    expected: dict[str, dict[str, tuple[str, ...]]]


@pytest.fixture(scope="module", params=sorted(CASES))
def doll(request) -> Doll:
    label_set = _label_set(request.param)
    classes, expected = CASES[request.param][2:]
    rules = get_mask_rules(label_set)
    label_map = _draw_doll(label_set, classes)
    masks = {kind: build_mask(label_map, label_set, kind, rules) for kind in expected}
    return Doll(request.param, label_set, rules, masks, expected)


def test_mask_is_uint8_0_255_of_the_label_size(doll):
    for mask in doll.masks.values():
        assert mask.dtype == np.uint8 and mask.shape == (HEIGHT, WIDTH)
        assert set(np.unique(mask).tolist()) <= {0, 255}


def test_painted_parts_are_fully_covered(doll):
    for kind, parts in doll.expected.items():
        for part in parts["cover"]:
            assert doll.masks[kind][_part_mask(part)].min() == 255, f"{doll.case} {kind}: {part}"


def test_protected_parts_are_never_painted(doll):
    for kind, parts in doll.expected.items():
        for part in parts["never"]:
            assert doll.masks[kind][_part_mask(part)].max() == 0, f"{doll.case} {kind}: {part}"


def test_weakly_protected_parts_only_bleed_within_the_margin(doll):
    margin = doll.rules.params.margin_px(HEIGHT, WIDTH)
    for kind, parts in doll.expected.items():
        for part in parts["weak"]:
            region = _part_mask(part)
            deep = region & (_distance_to_outside(region) > margin)
            assert doll.masks[kind][deep].max() == 0, f"{doll.case} {kind}: deep into {part}"


def test_overall_covers_upper_and_lower_and_the_hull_fills_the_armpit(doll):
    upper, lower, overall = (doll.masks[k] > 0 for k in ("upper", "lower", "overall"))
    assert not (upper & ~overall).any() and not (lower & ~overall).any()
    assert upper[ARMPIT] and overall[ARMPIT]


@pytest.mark.parametrize(("case", "outer"), [("lip", "Coat"), ("coarse", "Outerwear")])
def test_inner_and_outer_split_a_coat_from_the_top_under_it(case, outer):
    label_set = _label_set(case)
    label_map = _draw_doll(label_set, CASES[case][2])
    coat = np.zeros_like(label_map, bool)
    coat[115:300, 125:145] = coat[115:300, 175:195] = True  # open coat over the top's edges
    label_map[coat] = label_set.names.index(outer)
    top = (label_map == label_set.names.index("Upper-clothes")) & ~coat
    inner, outer_mask = (build_mask(label_map, label_set, kind) > 0 for kind in ("inner", "outer"))
    assert inner[top].all() and outer_mask[coat].all()
    margin = get_mask_rules(label_set).params.margin_px(HEIGHT, WIDTH)
    assert not inner[coat & (_distance_to_outside(coat) > margin)].any()
    assert not outer_mask[top & (_distance_to_outside(top) > margin)].any()


def test_isolated_garment_pixels_survive_the_blur():
    label_set = _label_set("merged")
    label_map = np.zeros((HEIGHT, WIDTH), np.uint8)
    label_map[100, 100] = label_map[300, 50] = label_set.names.index("Upper-clothes")
    mask = build_mask(label_map, label_set, "upper")
    assert mask[100, 100] == mask[300, 50] == 255


def test_real_lip_labels_cover_the_top_and_never_the_face(lip_sample_root):
    label_set = _label_set("lip")
    face, top = label_set.names.index("Face"), label_set.names.index("Upper-clothes")
    for path in sorted((lip_sample_root / "val_segmentations").glob("*.png")):
        label_map = np.asarray(Image.open(path))
        upper, lower, overall = (
            build_mask(label_map, label_set, kind) > 0 for kind in ("upper", "lower", "overall")
        )
        assert upper[label_map == top].all(), path.name
        for mask in (upper, lower, overall):
            assert not mask[label_map == face].any(), path.name
        assert not (upper & ~overall).any() and not (lower & ~overall).any(), path.name


def test_hull_none_leaves_the_armpit_gap():
    label_set = _label_set("merged")
    label_map = _draw_doll(label_set, CASES["merged"][2])
    raw = yaml.safe_load(DEFAULT_RULES_PATH.read_text())["masks"]["merged"]
    raw["params"] = {"hull": "none"}
    assert build_mask(label_map, label_set, "upper", raw)[ARMPIT] == 0
    raw["params"] = {"hull": "box"}
    assert build_mask(label_map, label_set, "upper", raw)[ARMPIT] == 255


def test_kinds_per_label_set_and_unsupported_kind_message():
    lip, merged = _label_set("lip"), _label_set("merged")
    assert available_kinds(lip) == KINDS == available_kinds(_label_set("coarse"))
    assert available_kinds(merged) == ("upper", "lower", "overall")
    label_map = np.zeros((8, 8), np.uint8)
    with pytest.raises(
        ValueError,
        match=r"label set 'merged' cannot make a 'inner' mask.*supports upper, lower, overall",
    ):
        build_mask(label_map, merged, "inner")
    with pytest.raises(ValueError, match=r"unknown mask kind 'sleeves'; choose one of upper"):
        build_mask(label_map, merged, "sleeves")


def test_unknown_class_name_in_rules_names_label_set_and_rule():
    merged = _label_set("merged")
    raw = {"background": ["Bkg"], "upper": {"paint": ["Upper-clothes", "Shirt"]}}
    with pytest.raises(
        ValueError,
        match=r"masks\.merged\.upper\.paint: unknown class 'Shirt' for label set 'merged'",
    ):
        resolve_mask_rules(raw, merged)
    with pytest.raises(ValueError, match=r"'Upper-clothes' is both paint and protected"):
        resolve_mask_rules(
            {"upper": {"paint": ["Upper-clothes"], "protect": ["Upper-clothes"]}}, merged
        )
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['blur'\]"):
        resolve_mask_rules({"params": {"blur": 3}, "upper": {"paint": ["Arm"]}}, merged)


def test_rules_file_entry_is_chosen_by_class_names(tmp_path):
    sep, merged = _label_set("sep"), _label_set("merged")
    assert sep.name == merged.name == "merged"
    bare = (replace(sep, mask_rules={}), replace(merged, mask_rules={}))
    assert load_mask_rules(DEFAULT_RULES_PATH, bare[0]).entry == "merged_sep"
    lip_merged = load_mask_rules(DEFAULT_RULES_PATH, bare[1])
    assert lip_merged.entry == "merged"
    assert lip_merged.kinds["upper"].area == (merged.names.index("Arm"),)
    path = tmp_path / "rules.yaml"
    path.write_text("masks:\n  merged:\n    upper: {paint: [Jacket]}\n")
    with pytest.raises(
        ValueError, match=r"rules.yaml: masks\.merged\.upper\.paint: unknown class 'Jacket'"
    ):
        load_mask_rules(path, bare[1])


def test_label_set_mask_rules_win_over_the_rules_file():
    merged = replace(_label_set("merged"), mask_rules={"upper": {"paint": ["Upper-clothes"]}})
    rules = get_mask_rules(merged)
    assert tuple(rules.kinds) == ("upper",) and "label set 'merged'" in rules.source


def test_label_map_with_ids_outside_the_set_is_rejected():
    merged = _label_set("merged")
    with pytest.raises(ValueError, match=r"ids outside 0\.\.8 \(max 12\)"):
        build_mask(np.full((4, 4), 12, np.uint8), merged, "upper")
