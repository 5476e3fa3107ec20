"""Mask controls (inference.masks.MaskControls; extract.py --dilate/--hull/--feather/--protect):
dilation grows and contains, protected classes are never painted, feather stays in its width."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.labels import load_label_config
from inference.mask_rules import MaskControls
from inference.masks import build_mask

LIP_MAP = Path(__file__).resolve().parents[1] / "mappings" / "lip_map.yaml"
MERGED = load_label_config(LIP_MAP).target  # Bkg, Upper-Face, Face, Arm, Leg, Upper-clothes, ...


def _person() -> np.ndarray:
    """A front-facing person in the merged classes, a hand (Arm) held in front of the top."""
    ids = {n: i for i, n in enumerate(MERGED.names)}
    labels = np.zeros((400, 260), np.uint8)
    labels[20:60, 110:150] = ids["Upper-Face"]
    labels[60:100, 112:148] = ids["Face"]
    labels[100:230, 80:180] = ids["Upper-clothes"]
    labels[100:220, 50:78] = ids["Arm"]
    labels[100:220, 182:210] = ids["Arm"]
    labels[150:175, 120:145] = ids["Arm"]  # a hand in front of the torso
    labels[230:300, 85:175] = ids["Lower-clothes"]
    labels[300:380, 90:125] = ids["Leg"]
    labels[300:380, 135:170] = ids["Leg"]
    labels[380:395, 90:170] = ids["Shoe"]
    return labels


@pytest.mark.parametrize("kind", ["upper", "lower", "overall"])
@pytest.mark.parametrize("radius", [3, 12])
def test_dilation_grows_the_mask_and_contains_the_undilated_one(kind, radius):
    labels = _person()
    plain = build_mask(labels, MERGED, kind)
    grown = build_mask(labels, MERGED, kind, controls=MaskControls(dilate=radius))
    face = labels == MERGED.names.index("Face")
    assert np.all(grown[plain > 0] == 255)
    assert (grown > 0).sum() > (plain > 0).sum()
    # growth is bounded by the disc radius (outside the protected face, which stays 0)
    dist = cv2.distanceTransform((plain == 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    assert dist[grown > 0].max() <= radius + 1
    assert not grown[face].any()


@pytest.mark.parametrize("kind", ["upper", "overall"])
def test_protected_classes_are_never_painted_even_after_dilation_and_feather(kind):
    labels = _person()
    controls = MaskControls(dilate=20, feather=8, hull="box", protect=("Arm", "upper face"))
    mask = build_mask(labels, MERGED, kind, controls=controls)
    for name in ("Arm", "Upper-Face", "Face"):  # the two given and the rules' own Face
        assert not mask[labels == MERGED.names.index(name)].any(), name
    assert build_mask(labels, MERGED, kind)[labels == MERGED.names.index("Arm")].any()


@pytest.mark.parametrize("width", [1, 5, 15])
def test_feather_gives_8_bit_edges_only_within_the_feather_width(width):
    labels = _person()
    hard = build_mask(labels, MERGED, "upper")
    soft = build_mask(labels, MERGED, "upper", controls=MaskControls(feather=width))
    assert np.all(soft[hard > 0] == 255)
    partial = (soft > 0) & (soft < 255)
    assert partial.any()
    outside = cv2.distanceTransform(
        (hard == 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
    )
    assert outside[partial].max() <= width
    assert not soft[outside > width].any()
    # the ramp falls with the distance
    near, far = partial & (outside <= 1), partial & (outside >= width - 0.5)
    if width > 2:
        assert soft[near].mean() > soft[far].mean()


def test_hull_override_changes_the_shape():
    labels = _person()
    box = build_mask(labels, MERGED, "upper", controls=MaskControls(hull="box"))
    none = build_mask(labels, MERGED, "upper", controls=MaskControls(hull="none"))
    assert (box > 0).sum() > (none > 0).sum()


@pytest.mark.parametrize(
    ("controls", "message"),
    [
        ({"dilate": -3}, "dilate"),
        ({"feather": 2.5}, "feather"),
        ({"hull": "round"}, "hull"),
    ],
)
def test_bad_controls_are_refused_in_one_line(controls, message):
    with pytest.raises(ValueError, match=message):
        MaskControls(**controls)


def test_unknown_protected_class_names_the_flag_and_the_classes():
    with pytest.raises(ValueError, match=r"--protect.*Hands.*Upper-clothes"):
        build_mask(_person(), MERGED, "upper", controls=MaskControls(protect=("Hands",)))
