"""extract.py and the HumanParser API: awkward photos, reruns, shards, lists, videos, masks."""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import extract
from datasets.dolls import render_doll
from datasets.labels import load_label_config
from inference.api import HumanParser
from networks import build_model
from utils import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]
LIP_MAP = REPO / "mappings" / "lip_map.yaml"
CROP = (64, 48)
MASKS = ("upper", "lower", "overall")
GOOD = ("a/doll_small", "doll_wide", "grey", "rgba")  # output names of the readable photos
OLD_MTIME_NS = 1_000_000_000 * 10**9  # 2001: "written long ago"
VIDEO_FRAMES = 5


def _doll_bgr(seed: int, height: int, width: int) -> np.ndarray:
    return render_doll(np.random.default_rng(seed), height, width, (0.8, 0.95))["image"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """segformer_mit_b0, random weights, the merged 9-class LIP set, as train.py saves it."""
    torch.manual_seed(0)
    label_set = load_label_config(LIP_MAP).target
    model = build_model("segformer_mit_b0", label_set.num_classes)
    path = tmp_path_factory.mktemp("ckpt") / "best.pth.tar"
    return ckpt.save_checkpoint({**ckpt.model_record(model, label_set, CROP), "epoch": 1}, path)


@pytest.fixture
def photos(tmp_path) -> Path:
    """Two dolls (one in a sub-folder), a greyscale JPEG, an RGBA PNG and a corrupt JPEG."""
    folder = tmp_path / "photos"
    (folder / "a").mkdir(parents=True)
    cv2.imwrite(str(folder / "a" / "doll_small.jpg"), _doll_bgr(1, 90, 70))
    cv2.imwrite(str(folder / "doll_wide.jpg"), _doll_bgr(2, 77, 121))
    cv2.imwrite(str(folder / "grey.jpg"), cv2.cvtColor(_doll_bgr(3, 100, 64), cv2.COLOR_BGR2GRAY))
    alpha = np.full((81, 57, 1), 200, np.uint8)
    cv2.imwrite(str(folder / "rgba.png"), np.concatenate([_doll_bgr(4, 81, 57), alpha], axis=2))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 20)
    return folder


def _sizes(folder: Path) -> dict[str, tuple[int, int]]:
    """Output name -> (height, width) of each readable photo."""
    sizes = {}
    for path in folder.rglob("*"):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.is_file() else None
        if image is not None:
            sizes[path.relative_to(folder).with_suffix("").as_posix()] = image.shape[:2]
    return sizes


def _extract(checkpoint: Path, source: Path, out: Path, *flags: str) -> Path:
    """Run extract.py's main on CPU without workers; returns `out`."""
    extract.main(
        extract.get_args_parser().parse_args(
            ["--model-restore", str(checkpoint), "--input", str(source), "--output", str(out)]
            + ["--workers", "0", "--device", "cpu", *flags]
        )
    )
    return out


def _names(out: Path) -> set[str]:
    return {p.relative_to(out / "parsing").with_suffix("").as_posix()
            for p in (out / "parsing").rglob("*.png")}  # fmt: skip


def test_extract_folder_handles_corrupt_greyscale_and_rgba_photos(checkpoint, photos, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "extract", "--model-restore", str(checkpoint),
         "--input", str(photos), "--output", str(out), "--masks", ",".join(MASKS),
         "--overlay", "--save-logits", "probs", "--workers", "1", "--batch-size", "3",
         "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (out / "failed.txt").read_text().split() == [str(photos / "broken.jpg")]
    sizes = _sizes(photos)
    assert _names(out) == set(GOOD) == set(sizes)
    num_classes = load_label_config(LIP_MAP).target.num_classes
    for name in GOOD:
        parsing = Image.open(out / "parsing" / f"{name}.png")
        assert parsing.mode == "P" and parsing.size[::-1] == sizes[name]
        assert np.asarray(parsing).max() < num_classes
        for kind in MASKS:
            mask = cv2.imread(str(out / "masks" / kind / f"{name}.png"), cv2.IMREAD_UNCHANGED)
            assert mask.shape == sizes[name] and set(np.unique(mask)) <= {0, 255}
        assert cv2.imread(str(out / "overlay" / f"{name}.jpg")).shape[:2] == sizes[name]
        probs = np.load(out / "logits" / f"{name}.npy")
        assert probs.dtype == np.float16 and probs.shape == (num_classes, *sizes[name])
        np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=1e-2)
    assert not list(out.rglob(".*"))  # no temporary files left behind


def test_rerun_skips_finished_photos_and_overwrite_redoes_them(checkpoint, photos, tmp_path):
    out = tmp_path / "out"
    _extract(checkpoint, photos, out)
    pngs = sorted((out / "parsing").rglob("*.png"))
    assert len(pngs) == len(GOOD)
    for png in pngs:
        os.utime(png, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    _extract(checkpoint, photos, out)
    assert all(p.stat().st_mtime_ns == OLD_MTIME_NS for p in pngs)
    assert (out / "failed.txt").read_text().split() == [str(photos / "broken.jpg")]
    _extract(checkpoint, photos, out, "--overwrite")
    assert all(p.stat().st_mtime_ns != OLD_MTIME_NS for p in pngs)


def test_shards_partition_the_inputs_exactly(checkpoint, photos, tmp_path):
    outs = [tmp_path / f"shard{i}" for i in range(2)]
    for i, out in enumerate(outs):
        _extract(checkpoint, photos, out, "--shard", f"{i}/2")
    first, second = _names(outs[0]), _names(outs[1])
    assert first and second and not first & second and first | second == set(GOOD)
    failed = [
        (out / f"failed_{i}of2.txt").read_text().split()
        for i, out in enumerate(outs)
        if (out / f"failed_{i}of2.txt").is_file()
    ]
    assert failed == [[str(photos / "broken.jpg")]]


def test_text_list_input_names_outputs_below_the_common_folder(checkpoint, photos, tmp_path):
    listing = photos / "list.txt"
    listing.write_text(f"a/doll_small.jpg\n\n{photos / 'grey.jpg'}\nmissing.jpg\n")
    out = tmp_path / "out"
    _extract(checkpoint, listing, out)
    assert _names(out) == {"a/doll_small", "grey"}
    assert (out / "failed.txt").read_text().split() == [str(photos / "missing.jpg")]


def test_video_every_second_frame(checkpoint, tmp_path):
    video = tmp_path / "clip.avi"
    height, width = 70, 52
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (width, height))
    for index in range(VIDEO_FRAMES):
        writer.write(_doll_bgr(index, height, width))
    writer.release()
    out = tmp_path / "out"
    _extract(checkpoint, video, out, "--every", "2", "--batch-size", "2")
    assert _names(out) == {"clip/frame_000000", "clip/frame_000002", "clip/frame_000004"}
    for png in (out / "parsing" / "clip").glob("*.png"):
        assert Image.open(png).size == (width, height)


def test_unknown_mask_kind_stops_with_one_line(checkpoint, photos, tmp_path):
    with pytest.raises(SystemExit) as err:
        _extract(checkpoint, photos, tmp_path / "out", "--masks", "upper,sleeves")
    text = str(err.value.code)
    assert "--masks sleeves: unknown or unsupported mask kind" in text and "upper" in text
    assert "\n" not in text and not (tmp_path / "out").exists()


def test_human_parser_api_parses_pil_and_numpy_at_the_photo_size(checkpoint, photos, tmp_path):
    parser = HumanParser.from_checkpoint(checkpoint, device="cpu")
    assert parser.input_size == CROP and parser.label_set.name == "merged"
    pil = Image.open(photos / "doll_wide.jpg")
    labels = parser.parse(pil)
    assert labels.shape == (pil.height, pil.width) and labels.dtype == np.uint8
    assert labels.max() < parser.label_set.num_classes
    rgb = np.asarray(Image.open(photos / "rgba.png"))  # (H, W, 4): alpha is dropped
    mask = parser.masks(rgb, "upper")
    assert mask.shape == rgb.shape[:2] and set(np.unique(mask)) <= {0, 255}
    small, wide = parser.parse_batch([np.asarray(Image.open(photos / "grey.jpg")), pil])
    assert small.shape == (100, 64) and np.array_equal(wide, labels)
    # the extractor writes what the API returns
    _extract(checkpoint, photos, tmp_path / "out")
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "out" / "parsing" / "doll_wide.png")), labels
    )
    with pytest.raises(ValueError, match="unknown mask kind 'sleeves'"):
        parser.masks(rgb, "sleeves")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        HumanParser.from_checkpoint(tmp_path / "missing.pth")
