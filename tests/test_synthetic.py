"""Synthetic paper dolls: deterministic, readable LIP layout with every class, LIP's left/right
convention, and DeepFashion-MultiModal-format triples."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.dolls import Lip
from datasets.synthetic import (
    DF_SIZE,
    deepfashion_id,
    make_deepfashion_dataset,
    make_lip_dataset,
)
from make_synthetic import get_args_parser, main

REPO = Path(__file__).resolve().parents[1]
NUM_LIP_CLASSES = 20


def files_of(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def lip_root(tmp_path_factory) -> Path:
    return make_lip_dataset(tmp_path_factory.mktemp("lip"), 40, 8, size=(128, 96), seed=0)


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    make_lip_dataset(tmp_path / "a", 3, 2, size=(96, 64), seed=5)
    make_lip_dataset(tmp_path / "b", 3, 2, size=(96, 64), seed=5)
    make_lip_dataset(tmp_path / "c", 3, 2, size=(96, 64), seed=6)
    assert files_of(tmp_path / "a") == files_of(tmp_path / "b")
    a, c = files_of(tmp_path / "a"), files_of(tmp_path / "c")
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if k.endswith(".png"))
    make_lip_dataset(tmp_path / "d", 5, 2, size=(96, 64), seed=5)  # image i depends on i only
    d = files_of(tmp_path / "d")
    assert all(d[k] == v for k, v in a.items() if k != "train_id.txt")


def test_lip_layout_is_readable_with_every_class_and_varied_sizes(lip_root: Path) -> None:
    present, sizes = set(), set()
    for split, count in (("train", 40), ("val", 8)):
        ids = (lip_root / f"{split}_id.txt").read_text().split()
        assert len(ids) == count == len(set(ids))
        for name in ids:
            image = Image.open(lip_root / f"{split}_images" / f"{name}.jpg")
            label = Image.open(lip_root / f"{split}_segmentations" / f"{name}.png")
            assert image.mode == "RGB" and label.mode == "L" and image.size == label.size
            values = np.array(label)
            assert values.max() < NUM_LIP_CLASSES
            present |= set(np.unique(values).tolist())
            sizes.add(image.size)
    assert present == set(range(NUM_LIP_CLASSES))
    assert len(sizes) > 10


def test_left_classes_are_the_persons_left_on_the_image_right(lip_root: Path) -> None:
    checked = 0
    for name in (lip_root / "train_id.txt").read_text().split():
        label = np.array(Image.open(lip_root / "train_segmentations" / f"{name}.png"))
        for left, right in ((Lip.LEFT_ARM, Lip.RIGHT_ARM), (Lip.LEFT_LEG, Lip.RIGHT_LEG)):
            left_x, right_x = np.nonzero(label == left)[1], np.nonzero(label == right)[1]
            if left_x.size and right_x.size:
                assert left_x.mean() > right_x.mean(), name
                checked += 1
    assert checked > 40


def test_deepfashion_triples_have_the_real_format(tmp_path: Path) -> None:
    with_segm = make_deepfashion_dataset(tmp_path, 5, seed=0)
    assert deepfashion_id(0) == "WOMEN-Tees_Tanks-id_00000001-01_1_front"
    assert len(with_segm) == 4 and deepfashion_id(4) not in with_segm
    assert (tmp_path / "images" / f"{deepfashion_id(4)}.jpg").is_file()
    assert (tmp_path / "densepose" / f"{deepfashion_id(4)}_densepose.png").is_file()
    for name in with_segm:
        image = Image.open(tmp_path / "images" / f"{name}.jpg")
        segm = Image.open(tmp_path / "segm" / f"{name}_segm.png")
        densepose = Image.open(tmp_path / "densepose" / f"{name}_densepose.png")
        assert image.size == segm.size == densepose.size == DF_SIZE[::-1] == (750, 1101)
        assert segm.mode == "P" and densepose.mode == "RGB"
        parts, values = np.array(densepose)[:, :, 2], np.array(segm)
        assert values.max() <= 23 and 15 in values and parts.max() <= 24 and parts.any()
        assert (np.array(densepose)[:, :, :2][parts == 0] == 0).all()  # U, V only on the body


def test_cli_writes_both_kinds(tmp_path: Path) -> None:
    argv = ["--out", str(tmp_path / "lip"), "--num-train", "2", "--num-val", "1"]
    main(get_args_parser().parse_args([*argv, "--size", "64,48"]))
    assert len((tmp_path / "lip" / "val_id.txt").read_text().split()) == 1
    command = [sys.executable, "make_synthetic.py", "--kind", "deepfashion", "--size"]
    command += ["80,56", "--out", str(tmp_path / "df"), "--num-train", "4", "--num-val", "1"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "df" / "segm").iterdir())) == 4
    assert len(list((tmp_path / "df" / "images").iterdir())) == 5
