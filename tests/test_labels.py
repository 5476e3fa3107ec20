"""Label sets and maps: the YAML files against the seed's tables, LUT semantics, bad inputs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.label_set import IGNORE_INDEX, LabelSet, apply_lut, check_label_ids, voc_palette
from datasets.labels import load_label_config

MAPPINGS = Path(__file__).resolve().parents[1] / "mappings"

# ---- the seed's tables (its mappings/*.yaml and the README's class lists) ----
SEED_LIP = ["Bkg", "Hat", "Hair", "Gloves", "Sunglasses", "Upper-clothes", "Dress", "Coat",
            "Socks", "Pants", "Jumpsuits", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm",
            "Left-leg", "Right-leg", "Left-shoe", "Right-shoe"]  # fmt: skip
SEED_MERGED = ["Bkg", "Upper-Face", "Face", "Arm", "Leg", "Upper-clothes", "One-piece",
               "Lower-clothes", "Shoe"]  # fmt: skip
SEP_DISPLAY = ["Background", "Upper-Face", "Face", "Hands", "Feet", "Upper-Body", "One-piece",
               "Lower-Body", "Shoe"]  # fmt: skip
SEED_SEGM = ["Bkg", "Top", "Outer", "Skirt", "Dress", "Pants", "Leggings", "Headwear",
             "Eyeglass", "Neckwear", "Belt", "Footwear", "Bag", "Hair", "Face", "Skin", "Ring",
             "Wrist wearing", "Socks", "Gloves", "Necklace", "Rompers", "Earrings",
             "Tie"]  # fmt: skip
# the seed's names with the DensePose-standard feet (5 = left, 6 = right; seed bug 27)
DENSEPOSE = ["bg", "torso_skin", "torso_skin", "R_hand", "L_hand", "L_foot", "R_foot",
             "R_leg", "L_leg", "R_leg", "L_leg", "R_leg", "L_leg", "R_leg", "L_leg",
             "L_arm", "R_arm", "L_arm", "R_arm", "L_arm", "R_arm", "L_arm", "R_arm",
             "face", "face"]  # fmt: skip
SEED_LIP_TO_MERGED = [0, 1, 1, 3, 2, 5, 6, 5, 4, 7, 6, 5, 7, 2, 3, 3, 4, 4, 8, 8]
SEED_DENSEPOSE_TO_MERGED = {  # DP id 0..24
    "sans_torso": [0, 0, 0, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 3, 2, 2],
    "with_torso": [0, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 3, 2, 2],
    "sep": [0, 5, 5, 3, 3, 4, 4, 7, 7, 7, 7, 7, 7, 7, 7, 5, 5, 5, 5, 5, 5, 5, 5, 2, 2],
}
SEED_SEGM_TO_MERGED = {  # segm id 0..23; 15 = the "Skin" placeholder
    "sans_torso": [0, 5, 5, 7, 6, 7, 7, 1, 2, 2, 7, 8, 0, 1, 2, 15, 3, 3, 4, 3, 2, 6, 2, 5],
    "with_torso": [0, 5, 5, 7, 6, 7, 7, 1, 2, 2, 7, 8, 0, 1, 2, 15, 3, 3, 4, 3, 2, 6, 2, 5],
    "sep": [0, 5, 5, 7, 6, 7, 7, 1, 2, 2, 7, 8, 0, 1, 2, 15, 3, 5, 7, 3, 2, 6, 2, 5],
}
SEED_SEGM_TO_LIP = [0, 5, 7, 12, 6, 9, 9, 1, 4, 11, 9, 18, 0, 2, 13, 0, 14, 14, 8, 3, 13, 6,
                    13, 5]  # fmt: skip
SCHEMES = sorted(SEED_SEGM_TO_MERGED)


def test_lip_to_merged_matches_seed_table_cell_by_cell():
    config = load_label_config(MAPPINGS / "lip_map.yaml")
    assert config.spaces["lip"].names == tuple(SEED_LIP)
    assert config.target.name == "merged" and config.target.names == tuple(SEED_MERGED)
    lut = config.lut("lip", "merged")
    for lip_id, merged_id in enumerate(SEED_LIP_TO_MERGED):
        assert lut[lip_id] == merged_id, SEED_LIP[lip_id]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_deepfashion_schemes_match_seed_tables_cell_by_cell(scheme):
    config = load_label_config(MAPPINGS / f"df_map_{scheme}.yaml")
    assert config.spaces["segm"].names == tuple(SEED_SEGM)
    assert config.spaces["densepose"].names == tuple(DENSEPOSE)
    assert config.target.names == tuple(SEP_DISPLAY if scheme == "sep" else SEED_MERGED)
    segm, dense = config.lut("segm", "merged"), config.lut("densepose", "merged")
    for segm_id, merged_id in enumerate(SEED_SEGM_TO_MERGED[scheme]):
        assert segm[segm_id] == merged_id, (scheme, SEED_SEGM[segm_id])
    for part, merged_id in enumerate(SEED_DENSEPOSE_TO_MERGED[scheme]):
        assert dense[part] == merged_id, (scheme, part)
    assert (segm[len(SEED_SEGM) :] == IGNORE_INDEX).all()
    assert (dense[len(DENSEPOSE) :] == IGNORE_INDEX).all()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_skin_placeholder_is_declared_and_carried_through_the_lut(scheme):
    config = load_label_config(MAPPINGS / f"df_map_{scheme}.yaml")
    assert config.skin_placeholder == 15 >= config.target.num_classes
    segm = np.array([[0, 15, 14]], np.uint8)
    mapped = apply_lut(segm, config.lut("segm", "merged"))
    assert mapped.tolist() == [[0, 15, 2]]
    with pytest.raises(ValueError, match="label id 15 is outside the 9-class set 'merged'"):
        check_label_ids(mapped, config.target, "x_segm.png")


def test_historic_deepfashion_to_lip20_map_matches_seed():
    config = load_label_config(MAPPINGS / "df_map_lip20.yaml")
    assert config.target.names == tuple(SEED_LIP) and config.skin_placeholder is None
    assert config.lut("segm", "lip")[: len(SEED_SEGM)].tolist() == SEED_SEGM_TO_LIP


def test_flip_permutation_swaps_lip_pairs_and_is_identity_for_merged():
    config = load_label_config(MAPPINGS / "lip_map.yaml")
    expected = list(range(14)) + [15, 14, 17, 16, 19, 18]
    assert config.spaces["lip"].flip_permutation().tolist() == expected
    assert config.spaces["lip"].flip_permutation().dtype == np.int64
    assert config.target.flip_permutation().tolist() == list(range(9))


def test_unmapped_ids_and_ignore_map_to_ignore():
    lut = load_label_config(MAPPINGS / "lip_map.yaml").lut("lip", "merged")
    assert lut.shape == (256,) and lut.dtype == np.uint8
    assert (lut[20:] == IGNORE_INDEX).all()
    label = np.array([[0, 14, 200], [255, 19, 20]], np.uint8)
    assert apply_lut(label, lut).tolist() == [[0, 3, 255], [255, 8, 255]]


def test_check_label_ids_names_file_set_and_fix():
    lip = load_label_config(MAPPINGS / "lip_map.yaml").spaces["lip"]
    check_label_ids(np.array([[0, 19, 255]], np.uint8), lip, "a.png")
    with pytest.raises(ValueError) as err:
        check_label_ids(np.array([[0, 200, 255]], np.uint8), lip, "data/a.png")
    assert str(err.value) == (
        "data/a.png: label id 200 is outside the 20-class set 'lip'; "
        "map it with --do_mapping/--lip_map_cfg or fix the file"
    )
    with pytest.raises(ValueError, match="label ids 20, 21 are outside the 20-class set;"):
        check_label_ids(np.array([20, 21, 3]), 20, "b.png")


def test_palette_defaults_to_schp_voc_colours_and_flat_palette_has_768_entries():
    lip = load_label_config(MAPPINGS / "lip_map.yaml").spaces["lip"]
    # SCHP's get_palette (the PASCAL-VOC bit colormap)
    for class_id, rgb in {
        0: (0, 0, 0),
        5: (128, 0, 128),
        13: (192, 0, 128),
        19: (128, 192, 0),
    }.items():
        assert tuple(lip.palette[class_id]) == rgb
    flat = lip.flat_palette()
    assert len(flat) == 768 and flat[:60] == lip.palette.ravel().tolist()
    assert flat[-3:] == [224, 224, 192]  # VOC "void" colour for IGNORE_INDEX
    assert (voc_palette(256)[:20] == lip.palette).all()


@pytest.mark.parametrize("name", ["lip_map", "df_map_sep", "ccp_map"])
def test_label_set_round_trips_through_dict_and_checkpoint(name, tmp_path):
    config = load_label_config(MAPPINGS / f"{name}.yaml")
    for label_set in config.spaces.values():
        data = label_set.to_dict()
        json.dumps(data)  # plain python types only
        assert LabelSet.from_dict(data) == label_set
        torch.save({"label_set": data}, tmp_path / "ckpt.pth")
        loaded = torch.load(tmp_path / "ckpt.pth", weights_only=True)["label_set"]
        restored = LabelSet.from_dict(loaded)
        assert restored == label_set and restored.flip_pairs == label_set.flip_pairs
        assert (restored.palette == label_set.palette).all()


def test_label_set_from_minimal_dict_gets_voc_palette_and_no_pairs():
    label_set = LabelSet.from_dict({"name": "x", "names": ["a", "b"]})
    assert label_set.palette.tolist() == [[0, 0, 0], [128, 0, 0]] and label_set.flip_pairs == ()
    with pytest.raises(ValueError, match="lacks 'name'/'names'"):
        LabelSet.from_dict({"names": ["a"]})


SEED_LIP_YAML = """## Mapping LIP classes to Merged classes

lip_classes:
{lip}

lip_merged_classes:
{merged}


lip_to_merged:
{mapping}
"""


@pytest.mark.parametrize("quote", ["", "'"], ids=["int_keys", "string_keys"])
def test_seed_style_yaml_loads_unchanged(tmp_path, quote):
    def block(items):
        return "\n".join(f"  {quote}{i}{quote}: {v!r}  #comment" for i, v in enumerate(items))

    path = tmp_path / "lip_map.yaml"
    path.write_text(SEED_LIP_YAML.format(
        lip=block(SEED_LIP), merged=block(SEED_MERGED), mapping=block(SEED_LIP_TO_MERGED)
    ))  # fmt: skip
    config = load_label_config(path)
    assert config.target.names == tuple(SEED_MERGED)
    assert config.lut("lip", "merged")[:20].tolist() == SEED_LIP_TO_MERGED
    assert config.spaces["lip"].flip_pairs == () and config.skin_placeholder is None


def test_seed_style_deepfashion_yaml_gets_default_skin_placeholder(tmp_path):
    # seed layout: dict-form classes, DensePose keys out of order and names repeated per chart
    dense = "\n".join(f'    {i}:  "{DENSEPOSE[i]}"' for i in [0, 1, 2, 23, 24, 3, 4, 5, 6, 7, 9,
                                                               8, 10, *range(11, 23)])  # fmt: skip
    segm = "\n".join(f"  {i}: '{name}'" for i, name in enumerate(SEED_SEGM))
    merged = "\n".join(f"  {i}: '{name}'" for i, name in enumerate(SEED_MERGED))
    dense_map = "\n".join(f"    {i} : {v}" for i, v in enumerate(SEED_DENSEPOSE_TO_MERGED["sep"]))
    segm_map = "\n".join(f"  {i} : {v}" for i, v in enumerate(SEED_SEGM_TO_MERGED["sep"]))
    path = tmp_path / "df_map_sep.yaml"
    path.write_text(
        f"densepose_classes:\n{dense}\n\nsegm_classes:\n{segm}\n\nlip_merged_classes: "
        f"\n{merged}\n\ndensepose_to_merged:\n{dense_map}\n\nsegm_to_merged:\n{segm_map}"
    )
    config = load_label_config(path)
    assert config.skin_placeholder == 15 and config.target.names == tuple(SEED_MERGED)
    assert config.lut("segm", "merged")[:24].tolist() == SEED_SEGM_TO_MERGED["sep"]
    assert config.spaces["densepose"].names == tuple(DENSEPOSE)


def test_ccp_map_covers_all_59_classes_and_hits_every_coarse_class():
    config = load_label_config(MAPPINGS / "ccp_map.yaml")
    assert config.spaces["ccp"].num_classes == 59 and config.target.name == "coarse"
    assert sorted(config.maps[("ccp", "coarse")]) == list(range(59))
    lut = config.lut("ccp", "coarse")
    assert set(lut[:59].tolist()) == set(range(config.target.num_classes))
    assert 9 <= config.target.num_classes <= 11


def test_ccp_map_names_and_real_labels_fit(ccp_root):
    config = load_label_config(MAPPINGS / "ccp_map.yaml")
    lines = (ccp_root / "classes.txt").read_text().splitlines()
    assert config.spaces["ccp"].names == tuple(line.split(" ", 1)[1] for line in lines)
    first = (ccp_root / "val_id.txt").read_text().split()[0]
    label = np.asarray(Image.open(ccp_root / "val_segmentations" / f"{first}.png"))
    check_label_ids(label, config.spaces["ccp"], first)
    check_label_ids(apply_lut(label, config.lut("ccp", "coarse")), config.target, first)


GOOD = "lip_classes: [a, b, c]\nmerged_classes: [x, y]\nlip_to_merged: {0: 0, 1: 1, 2: 1}\n"
BAD_FILES = {  # case: (file text, expected part of the message after "<path>: ")
    "broken_yaml": ("lip_classes: [a, b\nlip_to_merged: {0: 0}\n", "invalid YAML (line"),
    "not_a_mapping": ("- a\n- b\n", "top level is not a mapping"),
    "class_gap": ("lip_classes: {0: a, 1: b, 3: c}\n", "lip_classes: class id 2 missing"),
    "map_gap": (GOOD.replace("1: 1, ", ""), "lip_to_merged: raw id 1 missing"),
    "duplicate_name": (GOOD.replace("[x, y]", "[x, x]"), "merged_classes: class name 'x'"),
    "duplicate_raw_id": (GOOD.replace("2: 1}", "2: 1, 1: 0}"), "lip_to_merged: raw id 1 is listed"),
    "duplicate_str_int": (GOOD.replace("2: 1}", "2: 1, '1': 0}"), "lip_to_merged: raw id 1 is l"),
    "target_out_of_range": (GOOD.replace("2: 1}", "2: 2}"), "lip_to_merged: raw id 2 maps to 2"),
    "raw_out_of_range": (GOOD.replace("2: 1}", "2: 1, 3: 0}"), "lip_to_merged: raw id 3 is out"),
    "raw_above_254": ("merged_classes: [x]\nraw_to_merged: {255: 0}\n", "raw id 255 is outside"),
    "unknown_flip_name": (GOOD + "flip_pairs: {lip: [[a, d]]}\n", "flip_pairs.lip: unknown class"),
    "palette_length": (GOOD + "palettes: {merged: [[0, 0, 0]]}\n", "palettes.merged: palette has"),
    "undefined_dst": (GOOD + "lip_to_coarse: [0, 0, 0]\n", "lip_to_coarse: no source or undefi"),
    "flip_pair_same_class": (GOOD + "flip_pairs: {lip: [[a, a]]}\n", "flip_pairs.lip: bad flip"),
    "unknown_key": (GOOD + "flip_pair: {}\n", "flip_pair: unknown key"),
    "placeholder_collision": (
        GOOD + "densepose_to_merged: [0]\nskin_placeholder: 1\n",
        "skin_placeholder: 1 is a class of 'merged'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_label_config_raises_one_line_naming_file_and_key(tmp_path, case):
    text, expected = BAD_FILES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_label_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and expected in message and "; " in message
    assert "\n" not in message


def test_minimal_config_the_bad_cases_derive_from_is_valid(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD + "flip_pairs: {lip: [[a, c]]}\n")
    config = load_label_config(path)
    assert config.target.name == "merged" and config.lut("lip", "merged")[:4].tolist() == [
        0,
        1,
        1,
        255,
    ]
    assert config.spaces["lip"].flip_permutation().tolist() == [2, 1, 0]


def test_missing_label_config_names_the_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_label_config(missing)


def test_lut_for_unknown_pair_names_file_and_maps():
    config = load_label_config(MAPPINGS / "lip_map.yaml")
    with pytest.raises(
        ValueError, match=r"lip_map.yaml: no map merged -> lip \(maps: lip_to_merged\)"
    ):
        config.lut("merged", "lip")
    assert config.lut("lip", "lip")[:21].tolist() == [*range(20), IGNORE_INDEX]
