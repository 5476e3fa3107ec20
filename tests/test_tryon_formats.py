"""extract.py --format: the written files read back as each try-on model's dataset code reads them.

The expected ids are written out here from the cited sources (not from utils/tryon_formats.py):
VITON-HD datasets.py / HR-VITON cp_dataset.py (LIP-style ids, 10 = neck), the DressCode readme
(18 ATR ids), CatVTON inference.py (agnostic-mask/<name>_mask.png, agnostic_masks/<name>_0.png).
"""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import extract
from datasets.dolls import render_doll
from datasets.labels import load_label_config
from networks import build_model
from utils import checkpoint as ckpt
from utils.tryon_formats import load_format

REPO = Path(__file__).resolve().parents[1]
LIP_CONFIG = load_label_config(REPO / "mappings" / "lip_map.yaml")
CROP = (64, 48)
NAMES = ("p0", "p1", "p2")
# VITON-HD datasets.py `labels`: every id 0..19 belongs to one group
VITON_GROUPS = [[0, 10], [1, 2], [4, 13], [5, 6, 7], [9, 12], [14], [15], [16], [17], [18], [19],
                [8], [3, 11]]  # fmt: skip
LIP_TO_VITON = {i: i for i in range(20)} | {10: 6}  # LIP Jumpsuits -> Dress (VITON-HD 10 = neck)
# DressCode readme label_map; LIP Gloves (3) and Socks (8) have no ATR class: the nearest arm/leg
LIP_TO_DRESSCODE = {0: 0, 1: 1, 2: 2, 3: (14, 15), 4: 3, 5: 4, 6: 7, 7: 4, 8: (12, 13),
                    9: 6, 10: 7, 11: 17, 12: 5, 13: 11, 14: 14, 15: 15, 16: 12, 17: 13, 18: 9,
                    19: 10}  # fmt: skip


def _checkpoint(folder: Path, label_set) -> Path:
    torch.manual_seed(0)
    model = build_model("segformer_mit_b0", label_set.num_classes)
    record = {**ckpt.model_record(model, label_set, CROP), "epoch": 1}
    return ckpt.save_checkpoint(record, folder / f"{label_set.name}.pth.tar")


@pytest.fixture(scope="module")
def lip20(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("lip20"), LIP_CONFIG.spaces["lip"])


@pytest.fixture(scope="module")
def merged(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("merged"), LIP_CONFIG.target)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(NAMES[:2]):
        image = render_doll(np.random.default_rng(i), 96, 72, (0.8, 0.95))["image"]
        cv2.imwrite(str(folder / f"{name}.jpg"), image)
    image = render_doll(np.random.default_rng(2), 80, 70, (0.8, 0.95))["image"]
    cv2.imwrite(str(folder / f"{NAMES[2]}.png"), image)
    return folder


def _run(checkpoint: Path, source: Path, out: Path, *flags: str) -> None:
    extract.main(
        extract.get_args_parser().parse_args(
            ["--model-restore", str(checkpoint), "--input", str(source), "--output", str(out)]
            + ["--workers", "0", "--device", "cpu", *flags]
        )
    )


@pytest.fixture(scope="module")
def lip_parse(lip20, photos, tmp_path_factory) -> dict[str, np.ndarray]:
    """The default-format LIP-20 parse of each photo."""
    out = tmp_path_factory.mktemp("default")
    _run(lip20, photos, out, "--masks", "upper,lower")
    parse = {n: np.array(Image.open(out / "parsing" / f"{n}.png")) for n in NAMES}
    parse["masks"] = out / "masks"
    return parse


def test_viton_hd_files_read_as_viton_hd_and_catvton_read_them(lip20, photos, lip_parse, tmp_path):
    root = tmp_path / "vitonhd"
    _run(lip20, photos, root, "--format", "viton-hd")
    for name in NAMES:
        photo = Image.open(root / "test" / "image" / f"{name}.jpg").convert("RGB")
        parse_image = Image.open(root / "test" / "image-parse-v3" / f"{name}.png")
        parse = np.array(parse_image)
        assert parse_image.mode == "P" and parse.dtype == np.uint8
        assert parse.shape == (photo.height, photo.width)
        assert all(any(i in g for g in VITON_GROUPS) for i in np.unique(parse))
        expected = np.vectorize(LIP_TO_VITON.get)(lip_parse[name])
        assert np.array_equal(parse, expected)
        agnostic = np.array(Image.open(root / "test" / "image-parse-agnostic-v3.2" / f"{name}.png"))
        dropped = np.isin(parse, [5, 6, 7, 10, 14, 15])
        assert not agnostic[dropped].any() and np.array_equal(agnostic[~dropped], parse[~dropped])
        image_agnostic = np.array(Image.open(root / "test" / "agnostic-v3.2" / f"{name}.jpg"))
        kept = np.isin(parse, [4, 13, 9, 12, 16, 17, 18, 19])
        grey = dropped & ~kept
        if grey.sum() > 50:
            assert np.abs(image_agnostic[grey].astype(int) - 128).mean() < 12
        mask = np.array(
            Image.open(root / "test" / "agnostic-mask" / f"{name}_mask.png").convert("L")
        )
        assert mask.shape == parse.shape and set(np.unique(mask)) <= {0, 255}
    # a .jpg without EXIF rotation is copied as it is; a .png is written as a JPEG of its size
    assert (root / "test/image/p0.jpg").read_bytes() == (photos / "p0.jpg").read_bytes()
    assert Image.open(root / "test/image/p2.jpg").format == "JPEG"
    # a rerun writes nothing new
    files = sorted(p for p in root.rglob("*") if p.is_file())
    mtimes = [p.stat().st_mtime_ns for p in files]
    _run(lip20, photos, root, "--format", "viton-hd")
    assert [p.stat().st_mtime_ns for p in files] == mtimes


def test_dresscode_files_read_as_dresscode_reads_them(lip20, photos, lip_parse, tmp_path):
    root = tmp_path / "dresscode"
    _run(lip20, photos, root, "--format", "dresscode", "--category", "lower_body")
    for name in NAMES:
        assert Image.open(root / "lower_body" / "images" / f"{name}_0.jpg").format == "JPEG"
        label_map = np.array(Image.open(root / "lower_body" / "label_maps" / f"{name}_4.png"))
        assert label_map.max() <= 17
        source = lip_parse[name]
        for lip_id, goal in LIP_TO_DRESSCODE.items():
            where = source == lip_id
            assert np.isin(label_map[where], goal).all(), (lip_id, goal)
        mask = np.array(Image.open(root / "lower_body" / "agnostic_masks" / f"{name}_0.png"))
        lower = np.array(Image.open(lip_parse["masks"] / "lower" / f"{name}.png"))
        assert np.array_equal(mask, lower)  # --category lower_body = the 'lower' mask kind


def test_catvton_writes_image_and_mask_only_for_any_label_set(photos, tmp_path):
    ccp = load_label_config(REPO / "mappings" / "ccp_map.yaml").spaces["coarse"]
    model = _checkpoint(tmp_path, ccp)
    root = tmp_path / "catvton"
    _run(model, photos, root, "--format", "catvton", "--feather", "4")
    written = {p.relative_to(root).as_posix() for p in (root / "test").rglob("*") if p.is_file()}
    assert written == {f"test/image/{n}.jpg" for n in NAMES} | {
        f"test/agnostic-mask/{n}_mask.png" for n in NAMES
    }
    for name in NAMES:
        mask = np.array(Image.open(root / "test" / "agnostic-mask" / f"{name}_mask.png"))
        hard = (mask == 255).astype(np.uint8)
        soft = (mask > 0) & (mask < 255)
        if hard.any() and soft.any():
            outside = cv2.distanceTransform(1 - hard, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
            assert outside[soft].max() <= 4
    refused = tmp_path / "refused"
    with pytest.raises(SystemExit) as err:
        _run(model, photos, refused, "--format", "viton-hd")
    assert "one Skin class" in str(err.value.code) and "\n" not in str(err.value.code)
    assert not refused.exists()


def test_merged_set_needs_the_left_right_flag_and_splits_at_the_midline(merged, photos, tmp_path):
    with pytest.raises(SystemExit) as err:
        _run(merged, photos, tmp_path / "no", "--format", "viton-hd")
    assert "--approximate-left-right" in str(err.value.code)
    fmt = load_format("viton-hd", LIP_CONFIG.target, approximate_left_right=True)
    arm = LIP_CONFIG.target.names.index("Arm")
    labels = np.zeros((20, 40), np.uint8)
    labels[5:15, 15:25] = LIP_CONFIG.target.names.index("Upper-clothes")
    labels[5:15, 5:10] = arm  # image left: the person's right arm
    labels[5:15, 30:35] = arm
    ids = fmt.convert(labels)
    assert (ids[5:15, 5:10] == 15).all() and (ids[5:15, 30:35] == 14).all()


def test_gloves_join_the_nearest_arm_for_dresscode():
    lip = LIP_CONFIG.spaces["lip"]
    fmt = load_format("dresscode", lip)
    labels = np.zeros((30, 60), np.uint8)
    labels[5:20, 5:12] = lip.names.index("Left-arm")
    labels[5:20, 48:55] = lip.names.index("Right-arm")
    labels[20:25, 5:12] = lip.names.index("Gloves")
    labels[20:25, 48:55] = lip.names.index("Gloves")
    ids = fmt.convert(labels)
    assert (ids[20:25, 5:12] == 14).all() and (ids[20:25, 48:55] == 15).all()


def test_unknown_format_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as err:
        extract.get_args_parser().parse_args(
            ["--model-restore", "m", "--input", "i", "--output", "o", "--format", "x"]
        )
    message = capsys.readouterr().err.splitlines()[-1]
    assert err.value.code == 2 and "argument --format: invalid choice" in message
    assert all(name in message for name in ("viton-hd", "dresscode", "catvton"))
