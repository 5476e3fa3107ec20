"""extract.py --format viton-hd|dresscode|catvton: the files each try-on model's dataset code reads.

Every check reads the written files the way that model's own dataset code does (PIL, as in
shadow2496/VITON-HD datasets.py, sangyun884/HR-VITON cp_dataset.py, aimagelab/dress-code and
zhengchong/CatVTON), with the expected label tables written out here from those sources rather
than taken from inference/tryon_formats.py, and compares them with the same checkpoint's
default-format outputs (parsing/<name>.png, masks/<kind>/<name>.png).
"""

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from test_extract import _extract

import extract
from datasets.dolls import render_doll
from datasets.labels import load_label_config
from inference.tryon_formats import load_format
from networks import build_model
from utils import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]
LIP_MAP = REPO / "mappings" / "lip_map.yaml"
CCP_MAP = REPO / "mappings" / "ccp_map.yaml"
CROP = (64, 48)
NAMES = ("doll", "wide")  # doll.jpg (copied as is), wide.png (encoded as JPEG)
PHOTO_SIZES = ((90, 70), (77, 121))  # (height, width) of each
OLD_MTIME_NS = 1_000_000_000 * 10**9  # 2001: "written long ago"
FEATHER = 4
GREY = 128

# VITON-HD's `labels` table (shadow2496/VITON-HD datasets.py, get_parse_agnostic / __getitem__;
# HR-VITON cp_dataset.py has the same): group name -> parse ids.
VITON_GROUPS = {
    "background": [0, 10],
    "hair": [1, 2],
    "face": [4, 13],
    "upper": [5, 6, 7],
    "bottom": [9, 12],
    "left_arm": [14],
    "right_arm": [15],
    "left_leg": [16],
    "right_leg": [17],
    "left_shoe": [18],
    "right_shoe": [19],
    "socks": [8],
    "noise": [3, 11],
}
# LIP id -> VITON-HD id: identity, except LIP 10 (Jumpsuits) -> 6 (Dress); VITON-HD's 10 is the
# neck, which LIP does not have (its neck skin is Face).
LIP_TO_VITON = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 6, 11, 12, 13, 14, 15, 16, 17, 18, 19]
# HR-VITON's image-parse-agnostic-v3.2 drops upper clothes (5, 6, 7), neck (10) and the arms.
VITON_PARSE_DROP = [5, 6, 7, 10, 14, 15]
# VITON-HD get_img_agnostic pastes back the head (4, 13) and the lower body (9, 12, 16..19).
VITON_IMAGE_KEEP = [4, 13, 9, 12, 16, 17, 18, 19]

# DressCode label_map (aimagelab/dress-code readme): name -> id in label_maps/<id>_4.png.
DRESSCODE_LABELS = {
    "background": 0, "hat": 1, "hair": 2, "sunglasses": 3, "upper_clothes": 4, "skirt": 5,
    "pants": 6, "dress": 7, "belt": 8, "left_shoe": 9, "right_shoe": 10, "head": 11,
    "left_leg": 12, "right_leg": 13, "left_arm": 14, "right_arm": 15, "bag": 16, "scarf": 17,
}  # fmt: skip
# LIP id -> DressCode id; a tuple: either (ATR has no gloves or socks: they join an arm / leg).
LIP_TO_DRESSCODE = [
    0,  # Bkg
    1,  # Hat
    2,  # Hair
    (14, 15),  # Gloves -> left_arm or right_arm
    3,  # Sunglasses
    4,  # Upper-clothes
    7,  # Dress
    4,  # Coat -> upper_clothes
    (12, 13),  # Socks -> left_leg or right_leg
    6,  # Pants
    7,  # Jumpsuits -> dress
    17,  # Scarf
    5,  # Skirt
    11,  # Face -> head
    14,  # Left-arm
    15,  # Right-arm
    12,  # Left-leg
    13,  # Right-leg
    9,  # Left-shoe
    10,  # Right-shoe
]

# LIP ids (mappings/lip_map.yaml space `lip`) and merged ids (space `merged`) used below.
LIP_GLOVES, LIP_SOCKS, LIP_FACE, LIP_LEFT_ARM, LIP_RIGHT_ARM = 3, 8, 13, 14, 15
LIP_LEFT_LEG, LIP_RIGHT_LEG = 16, 17
MERGED_ARM = 3


def _checkpoint(tmp_path_factory, label_set, seed: int) -> Path:
    """segformer_mit_b0 with random weights (the seed picks ones whose parses of the dolls show
    many classes), as train.py saves it."""
    torch.manual_seed(seed)
    model = build_model("segformer_mit_b0", label_set.num_classes)
    path = tmp_path_factory.mktemp(f"ckpt_{label_set.name}") / "best.pth.tar"
    return ckpt.save_checkpoint({**ckpt.model_record(model, label_set, CROP), "epoch": 1}, path)


@pytest.fixture(scope="module")
def lip_checkpoint(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory, load_label_config(LIP_MAP).spaces["lip"], seed=2)


@pytest.fixture(scope="module")
def merged_checkpoint(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory, load_label_config(LIP_MAP).spaces["merged"], seed=3)


@pytest.fixture(scope="module")
def ccp_checkpoint(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory, load_label_config(CCP_MAP).spaces["coarse"], seed=0)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """doll.jpg (no EXIF) and wide.png: synthetic doll photos of two sizes."""
    folder = tmp_path_factory.mktemp("photos")
    doll = render_doll(np.random.default_rng(1), *PHOTO_SIZES[0], (0.8, 0.95))["image"]
    wide = render_doll(np.random.default_rng(2), *PHOTO_SIZES[1], (0.8, 0.95))["image"]
    assert cv2.imwrite(str(folder / "doll.jpg"), doll)
    assert cv2.imwrite(str(folder / "wide.png"), wide)
    return folder


@pytest.fixture(scope="module")
def lip_default(lip_checkpoint, photos, tmp_path_factory) -> Path:
    """The LIP model's default layout: parsing/<name>.png and masks/{upper,lower}/<name>.png."""
    out = tmp_path_factory.mktemp("lip_default") / "out"
    return _extract(lip_checkpoint, photos, out, "--masks", "upper,lower")


@pytest.fixture(scope="module")
def lip_viton(lip_checkpoint, photos, tmp_path_factory) -> Path:
    return _extract(lip_checkpoint, photos, tmp_path_factory.mktemp("viton") / "out", *VITON)


@pytest.fixture(scope="module")
def lip_catvton(lip_checkpoint, photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("catvton") / "out"
    return _extract(lip_checkpoint, photos, out, "--format", "catvton")


VITON = ("--format", "viton-hd")


def _ids(path: Path) -> np.ndarray:
    """A parse map as the datasets read it: np.array(Image.open(path))."""
    return np.array(Image.open(path))


def _photo(path: Path) -> np.ndarray:
    """A photo as the datasets read it: Image.open(path).convert('RGB')."""
    return np.array(Image.open(path).convert("RGB"))


def _mask(path: Path) -> np.ndarray:
    """A try-on mask as CatVTON reads it: Image.open(path).convert('L')."""
    return np.array(Image.open(path).convert("L"))


def _size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file."""
    with Image.open(path) as image:
        return image.height, image.width


def _files(out: Path) -> set[str]:
    """Every file below `out` but the manifest, as posix paths relative to it."""
    return {
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and p.name != "manifest.jsonl"
    }


def _interior(region: np.ndarray, radius: int = 2) -> np.ndarray:
    """`region` shrunk by `radius` px: pixels JPEG ringing at its edges cannot reach."""
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.erode(region.astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE) > 0


def _close(actual: np.ndarray, expected: np.ndarray, where: np.ndarray, what: str) -> None:
    """JPEG tolerance on the pixels `where`: small median and 95th-percentile colour errors."""
    assert where.any(), f"{what}: no pixels to compare"
    error = np.abs(actual[where].astype(int) - expected[where].astype(int)).max(axis=-1)
    assert np.median(error) <= 4 and np.percentile(error, 95) <= 16, (
        f"{what}: JPEG error median {np.median(error)}, 95th percentile "
        f"{np.percentile(error, 95)} over {where.sum()} px"
    )


def _refusal(checkpoint: Path, photos: Path, out: Path, *flags: str) -> str:
    """The one-line SystemExit message of a refused run."""
    with pytest.raises(SystemExit) as err:
        _extract(checkpoint, photos, out, *flags)
    text = str(err.value.code)
    assert "\n" not in text, text
    return text


# --- VITON-HD ---------------------------------------------------------------------------------


def test_viton_hd_writes_the_hr_viton_layout_and_nothing_else(lip_viton):
    expected = {
        f"test/{folder}/{name}{suffix}"
        for name in NAMES
        for folder, suffix in (
            ("image", ".jpg"),
            ("image-parse-v3", ".png"),
            ("image-parse-agnostic-v3.2", ".png"),
            ("agnostic-v3.2", ".jpg"),
            ("agnostic-mask", "_mask.png"),
        )
    }
    assert _files(lip_viton) == expected  # no parsing/ folder, no temporaries
    for name, size in zip(NAMES, PHOTO_SIZES, strict=True):  # the photo at its own size
        assert _size(lip_viton / "test" / "image" / f"{name}.jpg") == size


def test_viton_hd_parse_is_the_lip_parse_in_viton_ids(lip_viton, lip_default, photos):
    all_ids = set()
    for name in NAMES:
        photo = _photo(lip_viton / "test" / "image" / f"{name}.jpg")
        path = lip_viton / "test" / "image-parse-v3" / f"{name}.png"
        assert Image.open(path).mode == "P"
        parse = _ids(path)
        assert parse.dtype == np.uint8 and parse.shape == photo.shape[:2]
        grouped = [i for ids in VITON_GROUPS.values() for i in ids]
        assert sorted(grouped) == list(range(20))  # every id in exactly one group
        assert set(np.unique(parse).tolist()) <= set(grouped)
        lip = _ids(lip_default / "parsing" / f"{name}.png")
        np.testing.assert_array_equal(parse, np.asarray(LIP_TO_VITON, np.uint8)[lip])
        assert 10 not in parse  # VITON-HD's neck: LIP has none
        all_ids |= set(np.unique(lip).tolist())
    # the random-weights model must show the classes this test is about
    assert {10, 14} <= all_ids and all_ids & set(VITON_PARSE_DROP) - {10, 14}


def test_viton_hd_agnostic_parse_drops_upper_clothes_neck_and_arms(lip_viton):
    for name in NAMES:
        parse = _ids(lip_viton / "test" / "image-parse-v3" / f"{name}.png")
        path = lip_viton / "test" / "image-parse-agnostic-v3.2" / f"{name}.png"
        agnostic = _ids(path)
        assert Image.open(path).mode == "P" and agnostic.shape == parse.shape
        expected = np.where(np.isin(parse, VITON_PARSE_DROP), 0, parse)
        np.testing.assert_array_equal(agnostic, expected)


def test_viton_hd_agnostic_image_is_grey_over_the_garment_and_keeps_head_and_legs(lip_viton):
    grey_seen = keep_seen = 0
    for name in NAMES:
        root = lip_viton / "test"
        photo = _photo(root / "image" / f"{name}.jpg")
        agnostic = _photo(root / "agnostic-v3.2" / f"{name}.jpg")
        assert agnostic.shape == photo.shape
        parse = _ids(root / "image-parse-v3" / f"{name}.png")
        dropped = parse != _ids(root / "image-parse-agnostic-v3.2" / f"{name}.png")
        keep = np.isin(parse, VITON_IMAGE_KEEP)
        masked = _mask(root / "agnostic-mask" / f"{name}_mask.png") >= 128
        # this project's agnostic is parsing-based (no pose): grey over the dropped classes
        # and the try-on mask, the head and lower body pasted back from the photo
        grey = (dropped | masked) & ~keep
        expected = np.where(grey[..., None], np.uint8(GREY), photo)
        assert not (dropped & keep).any()
        inside_grey, inside_photo = _interior(grey), _interior(~grey)
        _close(agnostic, expected, inside_grey, f"{name}: grey area")
        _close(agnostic, expected, inside_photo, f"{name}: photo area")
        _close(agnostic, photo, _interior(keep), f"{name}: head and lower body")
        assert (np.abs(photo[inside_grey].astype(int) - GREY).max(-1) > 16).any()  # tells apart
        grey_seen += int(_interior(dropped).sum())
        keep_seen += int(_interior(keep).sum())
    assert grey_seen and keep_seen


def test_viton_hd_mask_is_the_upper_mask_as_catvton_reads_it(lip_viton, lip_default):
    for name in NAMES:
        path = lip_viton / "test" / "agnostic-mask" / f"{name}_mask.png"
        mask = _mask(path)
        assert mask.shape == _size(lip_viton / "test" / "image" / f"{name}.jpg")
        assert set(np.unique(mask).tolist()) <= {0, 255}
        np.testing.assert_array_equal(mask, _mask(lip_default / "masks" / "upper" / f"{name}.png"))


def test_viton_hd_refuses_merged_labels_without_approximate_left_right(
    merged_checkpoint, photos, tmp_path
):
    out = tmp_path / "out"
    text = _refusal(merged_checkpoint, photos, out, *VITON)
    assert "--approximate-left-right" in text
    assert not out.exists() or not any(out.iterdir())


def test_viton_hd_approximate_left_right_splits_merged_arms_at_the_midline(
    merged_checkpoint, photos, tmp_path
):
    default = _extract(merged_checkpoint, photos, tmp_path / "default")
    out = _extract(merged_checkpoint, photos, tmp_path / "out", *VITON, "--approximate-left-right")
    right_seen = left_seen = False
    for name in NAMES:
        merged = _ids(default / "parsing" / f"{name}.png")
        parse = _ids(out / "test" / "image-parse-v3" / f"{name}.png")
        assert parse.shape == merged.shape and parse.max() <= 19
        arm = merged == MERGED_ARM
        assert arm.any(), "the random-weights model shows no arm: pick another seed"
        assert set(np.unique(parse[arm]).tolist()) <= {14, 15}
        assert not np.isin(parse[~arm], [14, 15]).any()
        centre = np.nonzero(merged != 0)[1].mean()  # the person's centre column
        columns = np.broadcast_to(np.arange(merged.shape[1]), merged.shape)
        right, left = arm & (columns > centre), arm & (columns < centre)
        assert (parse[right] == 14).all()  # image right = the person's left (facing the camera)
        assert (parse[left] == 15).all()
        right_seen, left_seen = right_seen or right.any(), left_seen or left.any()
    assert right_seen and left_seen


# --- DressCode --------------------------------------------------------------------------------


def _dresscode_expected(lip: np.ndarray, dresscode: np.ndarray) -> np.ndarray:
    """LIP_TO_DRESSCODE applied to `lip`, taking the written value where either is allowed."""
    expected = np.zeros_like(lip)
    for lip_id, goal in enumerate(LIP_TO_DRESSCODE):
        where = lip == lip_id
        if isinstance(goal, tuple):
            assert np.isin(dresscode[where], goal).all(), f"LIP {lip_id} must become one of {goal}"
            expected[where] = dresscode[where]
        else:
            expected[where] = goal
    return expected


def test_dresscode_label_maps_are_the_lip_parse_in_dresscode_ids(
    lip_checkpoint, photos, lip_default, tmp_path
):
    out = _extract(lip_checkpoint, photos, tmp_path / "out", "--format", "dresscode")
    expected_files = {
        f"upper_body/{folder}/{name}{suffix}"
        for name in NAMES
        for folder, suffix in (("images", "_0.jpg"), ("label_maps", "_4.png"),
                               ("agnostic_masks", "_0.png"))
    }  # fmt: skip
    assert _files(out) == expected_files
    assert sorted(DRESSCODE_LABELS.values()) == list(range(18))
    gloves = 0
    for name in NAMES:
        root = out / "upper_body"
        photo = _photo(root / "images" / f"{name}_0.jpg")
        label_map = _ids(root / "label_maps" / f"{name}_4.png")
        assert label_map.shape == photo.shape[:2] and label_map.max() <= 17
        lip = _ids(lip_default / "parsing" / f"{name}.png")
        np.testing.assert_array_equal(label_map, _dresscode_expected(lip, label_map))
        mask = _mask(root / "agnostic_masks" / f"{name}_0.png")
        assert mask.shape == photo.shape[:2] and set(np.unique(mask).tolist()) <= {0, 255}
        np.testing.assert_array_equal(mask, _mask(lip_default / "masks" / "upper" / f"{name}.png"))
        gloves += int((lip == LIP_GLOVES).sum())
    assert gloves  # the split rule was exercised


def test_dresscode_lower_body_category_writes_the_lower_mask(
    lip_checkpoint, photos, lip_default, tmp_path
):
    out = _extract(
        lip_checkpoint, photos, tmp_path / "out", "--format", "dresscode", "--category",
        "lower_body",
    )  # fmt: skip
    assert {p.split("/")[0] for p in _files(out)} == {"lower_body"}
    for name in NAMES:
        root = out / "lower_body"
        assert (root / "images" / f"{name}_0.jpg").is_file()
        assert _ids(root / "label_maps" / f"{name}_4.png").max() <= 17
        mask = _mask(root / "agnostic_masks" / f"{name}_0.png")
        np.testing.assert_array_equal(mask, _mask(lip_default / "masks" / "lower" / f"{name}.png"))


def test_split_class_joins_the_side_it_touches():
    """LIP -> DressCode on a hand-drawn map: a Gloves blob touching Left-arm becomes left_arm
    (14), one touching Right-arm right_arm (15); Socks under each leg join that leg."""
    fmt = load_format("dresscode", load_label_config(LIP_MAP).spaces["lip"])
    labels = np.zeros((12, 16), np.uint8)
    labels[2:6, 10:14] = LIP_LEFT_ARM  # image right: the person's left arm
    labels[6:8, 10:14] = LIP_GLOVES
    labels[2:6, 2:6] = LIP_RIGHT_ARM
    labels[6:8, 2:6] = LIP_GLOVES
    labels[8:10, 10:14] = LIP_LEFT_LEG
    labels[10:12, 10:14] = LIP_SOCKS
    labels[8:10, 2:6] = LIP_RIGHT_LEG
    labels[10:12, 2:6] = LIP_SOCKS
    expected = np.zeros_like(labels)
    expected[2:8, 10:14] = DRESSCODE_LABELS["left_arm"]
    expected[2:8, 2:6] = DRESSCODE_LABELS["right_arm"]
    expected[8:12, 10:14] = DRESSCODE_LABELS["left_leg"]
    expected[8:12, 2:6] = DRESSCODE_LABELS["right_leg"]
    out = fmt.convert(labels)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_split_class_joins_the_only_side_in_the_photo():
    """A person seen from the side shows one arm: a Gloves blob touching that Left-arm is the
    left hand (14) even where it lies left of the person's centre column (tryon_formats.yaml:
    the nearest placed class decides; the midline only where neither side exists)."""
    fmt = load_format("dresscode", load_label_config(LIP_MAP).spaces["lip"])
    labels = np.zeros((10, 16), np.uint8)
    labels[1:9, 6:12] = LIP_FACE  # the body: the person's centre column is about 6.8
    labels[2:6, 2:6] = LIP_LEFT_ARM  # the only arm, image left of the centre
    labels[6:8, 2:6] = LIP_GLOVES
    out = fmt.convert(labels)
    assert (out[6:8, 2:6] == DRESSCODE_LABELS["left_arm"]).all(), out[6:8, 2:6]


# --- CatVTON ----------------------------------------------------------------------------------


@pytest.mark.parametrize("label_set", ["lip", "merged", "coarse"])
def test_catvton_writes_only_photo_and_mask_for_every_label_set(
    label_set, lip_checkpoint, merged_checkpoint, ccp_checkpoint, photos, tmp_path
):
    checkpoint = {"lip": lip_checkpoint, "merged": merged_checkpoint, "coarse": ccp_checkpoint}
    out = _extract(
        checkpoint[label_set], photos, tmp_path / "out", "--format", "catvton", "--split", "train"
    )
    assert _files(out) == {
        f"train/{kind}/{name}{suffix}"
        for name in NAMES
        for kind, suffix in (("image", ".jpg"), ("agnostic-mask", "_mask.png"))
    }
    for name in NAMES:
        photo = _photo(out / "train" / "image" / f"{name}.jpg")
        mask = _mask(out / "train" / "agnostic-mask" / f"{name}_mask.png")
        assert mask.shape == photo.shape[:2] and set(np.unique(mask).tolist()) <= {0, 255}


def test_viton_hd_refuses_ccp_in_one_line_and_writes_nothing(ccp_checkpoint, photos, tmp_path):
    out = tmp_path / "out"
    text = _refusal(ccp_checkpoint, photos, out, *VITON)
    assert "CCP has one Skin class" in text and "--format viton-hd" in text
    assert not out.exists() or not any(out.iterdir())


def test_feather_softens_only_the_4px_outside_the_hard_mask(
    lip_checkpoint, photos, lip_catvton, tmp_path
):
    out = _extract(
        lip_checkpoint, photos, tmp_path / "out", "--format", "catvton", "--feather", str(FEATHER)
    )
    soft_seen = 0
    for name in NAMES:
        hard = _mask(lip_catvton / "test" / "agnostic-mask" / f"{name}_mask.png")
        soft = _mask(out / "test" / "agnostic-mask" / f"{name}_mask.png")
        assert hard.any() and soft.shape == hard.shape
        assert (soft[hard == 255] == 255).all()
        outside = cv2.distanceTransform(
            (hard == 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
        )
        between = (soft > 0) & (soft < 255)
        assert (hard[between] == 0).all() and (outside[between] <= FEATHER + 1e-3).all()
        assert (soft[outside > FEATHER + 1e-3] == 0).all()
        assert (soft[(outside > 0) & (outside <= 1)] > 0).any()  # a soft edge, not a cut
        soft_seen += int(between.sum())
    assert soft_seen


# --- reruns, photos, flags --------------------------------------------------------------------


def test_viton_hd_rerun_writes_nothing_new(lip_checkpoint, photos, tmp_path):
    out = _extract(lip_checkpoint, photos, tmp_path / "out", *VITON)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(files) == 5 * len(NAMES) + 1  # and manifest.jsonl
    for path in files:
        os.utime(path, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    _extract(lip_checkpoint, photos, out, *VITON)
    assert sorted(p for p in out.rglob("*") if p.is_file()) == files
    assert all(p.stat().st_mtime_ns == OLD_MTIME_NS for p in files)


def test_jpeg_photo_is_copied_byte_for_byte_and_png_is_encoded(lip_catvton, lip_viton, photos):
    for out in (lip_catvton, lip_viton):
        copied = out / "test" / "image" / "doll.jpg"
        assert copied.read_bytes() == (photos / "doll.jpg").read_bytes()
    encoded = lip_catvton / "test" / "image" / "wide.jpg"
    with Image.open(encoded) as image:
        assert image.format == "JPEG" and (image.height, image.width) == PHOTO_SIZES[1]
    error = _photo(encoded).astype(float) - _photo(photos / "wide.png")
    psnr = 10 * np.log10(255**2 / np.mean(error**2))
    assert psnr > 25, f"wide.png as JPEG: PSNR {psnr:.1f} dB"  # its pixels, JPEG-encoded


def test_unknown_format_is_an_argparse_error_listing_the_choices(capsys):
    with pytest.raises(SystemExit) as err:
        extract.get_args_parser().parse_args(
            ["--model-restore", "x.pth", "--input", "in", "--output", "out", "--format", "vitonhd"]
        )
    assert err.value.code == 2
    stderr = capsys.readouterr().err
    assert "--format" in stderr and "invalid choice" in stderr and "vitonhd" in stderr
    choices = stderr.split("choose from", 1)[1]
    for choice in ("default", "viton-hd", "dresscode", "catvton"):
        assert choice in choices
