"""Quality outputs of extract.py: manifest.jsonl (one line per photo, kept over kills), flags,
report.html (worst first), and the output-folder checks made before any work."""

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from test_extract import _extract, checkpoint, photos  # noqa: F401  (fixtures)

import extract
from datasets.labels import load_label_config
from inference.quality import photo_cells, quality_record, worst_first

LIP_MAP = Path(__file__).resolve().parents[1] / "mappings" / "lip_map.yaml"
MERGED = load_label_config(LIP_MAP).target
FIELDS = {"id", "height", "width", "person_share", "confidence", "entropy", "mask_area", "flags"}


def _manifest(out: Path) -> dict[str, dict]:
    lines = (out / "manifest.jsonl").read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


def test_manifest_has_one_line_per_photo_and_a_torn_line_is_redone(checkpoint, photos, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    _extract(checkpoint, photos, out, "--masks", "upper,lower")
    records = _manifest(out)
    assert set(records) == {"a/doll_small", "doll_wide", "grey", "rgba"}
    for record in records.values():
        assert set(record) >= FIELDS
        assert set(record["mask_area"]) == {"upper", "lower"}
        assert 0 <= record["confidence"] <= 1 and 0 <= record["entropy"] <= 1
    assert records["doll_wide"]["height"] == 77 and records["doll_wide"]["width"] == 121
    # a kill mid-line leaves a torn last line: that photo is redone, the others are kept
    lines = (out / "manifest.jsonl").read_text().splitlines()
    kept = [ln for ln in lines if '"grey"' not in ln]
    (out / "manifest.jsonl").write_text("\n".join(kept) + '\n{"id": "grey", "hei')
    parse = out / "parsing"
    before = {p: p.stat().st_mtime_ns for p in parse.rglob("*.png")}
    _extract(checkpoint, photos, out, "--masks", "upper,lower")
    changed = {p.stem for p in parse.rglob("*.png") if p.stat().st_mtime_ns != before[p]}
    assert changed == {"grey"}
    assert set(_manifest(out)) == set(records)


def test_report_lists_every_photo_worst_first(checkpoint, photos, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    _extract(checkpoint, photos, out, "--masks", "upper", "--report")
    page = (out / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 4
    assert all((out / s).is_file() for s in sources)
    order = [Path(s).with_suffix("").as_posix().removeprefix("report/") for s in sources]
    assert order == [r["id"] for r in worst_first(list(_manifest(out).values()))]


def _labels() -> np.ndarray:
    ids = {n: i for i, n in enumerate(MERGED.names)}
    labels = np.zeros((100, 80), np.uint8)
    labels[20:80, 20:60] = ids["Upper-clothes"]
    labels[40:50, 35:45] = ids["Face"]  # e.g. a hand or face in front of the garment
    return labels


def test_flags_no_person_low_confidence_and_protected_inside_the_mask():
    empty = np.zeros((50, 40), np.uint8)
    record = quality_record("x", empty, MERGED, (0.3, 0.9), {})
    assert record["flags"] == ["no_person", "low_confidence"] and record["person_share"] == 0
    labels = _labels()
    mask = np.where(labels == MERGED.names.index("Upper-clothes"), 255, 0).astype(np.uint8)
    face = (MERGED.names.index("Face"),)
    flagged = quality_record("y", labels, MERGED, (0.9, 0.1), {"upper": mask}, face)
    assert flagged["flags"] == ["protected_inside_upper"]
    filled = np.where(labels > 0, 255, 0).astype(np.uint8)  # no hole: nothing enclosed
    assert quality_record("z", labels, MERGED, (0.9, 0.1), {"upper": filled}, face)["flags"] == []


def test_photo_cells_cover_the_photo_and_not_the_padding():
    # a wide photo in a tall crop: the photo fills the width and a band of the height
    meta = {"center": np.array([99.5, 24.5]), "scale": np.array([200.0, 266.7]), "height": 50,
            "width": 200}  # fmt: skip
    inside = photo_cells(meta, (512, 384), (128, 96))
    rows = torch.nonzero(inside.any(1)).ravel()
    assert inside[:, 0].any() and inside[:, -1].any()
    assert rows.min() > 0 and rows.max() < 127
    assert abs(len(rows) - 128 * 50 * 384 / (200 * 512)) <= 2


def test_output_that_is_a_file_is_refused_before_the_model_loads(photos, tmp_path):  # noqa: F811
    target = tmp_path / "taken"
    target.write_text("not a folder")
    with pytest.raises(SystemExit) as err:
        _extract(tmp_path / "no_such_model.pth.tar", photos, target)
    assert "--output" in str(err.value.code) and "is a file" in str(err.value.code)


def test_stale_temporaries_of_a_killed_run_are_removed_at_start(checkpoint, photos, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    stale = out / "parsing" / ".doll_wide.png.abc123xy.tmp"
    stale.mkdir(parents=True)
    (stale / "doll_wide.png").write_bytes(b"half")
    mine = out / "parsing" / "notes.txt"
    mine.write_text("keep me")
    _extract(checkpoint, photos, out)
    assert not stale.exists() and mine.read_text() == "keep me"


def test_api_masks_take_the_same_controls_as_the_cli(checkpoint, photos):  # noqa: F811
    from inference.api import HumanParser
    from inference.masks import MaskControls, build_mask

    parser = HumanParser.from_checkpoint(checkpoint, device="cpu")
    image = np.asarray(Image.open(photos / "doll_wide.jpg").convert("RGB"))
    controls = {"dilate": 4, "hull": "box", "feather": 3, "protect": ("Face",)}
    mask = parser.masks(image, "upper", **controls)
    expected = build_mask(
        parser.parse(image), parser.label_set, "upper", controls=MaskControls(**controls)
    )
    assert np.array_equal(mask, expected)
    with pytest.raises(ValueError, match="dilate"):
        parser.masks(image, "upper", dilate=-3)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--dilate", "-3"], "--dilate"),
        (["--feather", "x"], "--feather"),
        (["--hull", "round"], "--hull"),
        (["--format", "viton"], "--format"),
        (["--workers", "-1"], "--workers"),
    ],
)
def test_bad_flags_name_the_flag(flags, named, capsys):
    with pytest.raises(SystemExit) as err:
        extract.get_args_parser().parse_args(
            ["--model-restore", "m", "--input", "i", "--output", "o"] + flags
        )
    assert err.value.code == 2 and f"error: argument {named}" in capsys.readouterr().err


def test_undecodable_video_is_one_line_and_writes_nothing(checkpoint, tmp_path):  # noqa: F811
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not a video at all" * 100)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as err:
        _extract(checkpoint, clip, out, "--smooth", "0.5", "--format", "catvton")
    assert "clip.mp4" in str(err.value.code) and "\n" not in str(err.value.code)
    assert not out.exists() or not any(out.rglob("*"))


def test_api_reads_16_bit_and_exif_rotated_photos_as_extract_does(checkpoint, tmp_path):  # noqa: F811
    from inference.api import HumanParser, _as_rgb

    grey16 = (np.linspace(0, 65535, 40 * 30).reshape(40, 30)).astype(np.uint16)
    image16 = Image.fromarray(grey16)  # mode I;16
    rgb = _as_rgb(image16)
    assert rgb.max() == 255 and rgb.min() == 0 and len(np.unique(rgb)) > 200  # not clipped
    assert np.array_equal(_as_rgb(grey16), rgb)
    # a photo stored sideways with EXIF orientation 6 (rotate 90° clockwise to view)
    stored = np.zeros((30, 50, 3), np.uint8)
    stored[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif)
    upright = _as_rgb(Image.open(path))
    decoded = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)  # extract.py's decoder
    assert upright.shape == decoded.shape == (50, 30, 3)
    parser = HumanParser.from_checkpoint(checkpoint, device="cpu")
    assert parser.parse(Image.open(path)).shape == (50, 30)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.parse(np.zeros((0, 0, 3), np.uint8)), "0x0 px"),
        (lambda p: p.parse(np.zeros((1, 40, 3), np.uint8)), "40x1 px"),
        (lambda p: type(p)(p.model, p.label_set, input_size=(0, 0)), "input_size"),
        (lambda p: type(p)(p.model, p.label_set, (64, 48), scales=(0,)), "scales"),
    ],
)
def test_api_degenerate_inputs_raise_one_clear_value_error(checkpoint, call, message):  # noqa: F811
    from inference.api import HumanParser

    parser = HumanParser.from_checkpoint(checkpoint, device="cpu")
    with pytest.raises(ValueError, match=message):
        call(parser)
    assert parser.parse_batch([]) == []
