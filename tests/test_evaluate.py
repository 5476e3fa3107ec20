"""evaluate.py end to end on real samples (CCP coarse labels, LIP with an original SCHP
checkpoint), its argument checks, and test-time flip / multi-scale in inference.predict."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import evaluate
from datasets.labels import load_label_config
from datasets.synthetic import make_lip_dataset
from datasets.transforms import logits_to_original
from inference.predict import LOGIT_STRIDE, argmax_labels, predict_logits
from networks import ParsingOutput, build_model
from networks.weights import load_weights
from utils import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]
CCP_MAP = REPO / "mappings" / "ccp_map.yaml"
LIP_MAP = REPO / "mappings" / "lip_map.yaml"
SMALL_CROP = (128, 96)
CCP_VAL_IMAGES = 3
PERCENT_KEYS = ("pixel_accuracy", "mean_accuracy", "miou", "miou_all_classes")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "evaluate", *args], cwd=REPO, capture_output=True, text=True
    )


def _lip_layout_subset(root: Path, dest: Path, count: int) -> Path:
    """A LIP-layout view of the first `count` val ids of `root` (symlinks, no copies)."""
    dest.mkdir()
    for folder in ("val_images", "val_segmentations"):
        (dest / folder).symlink_to((root / folder).resolve(), target_is_directory=True)
    ids = (root / "val_id.txt").read_text().split()[:count]
    (dest / "val_id.txt").write_text("".join(f"{i}\n" for i in ids))
    return dest


@pytest.fixture
def ccp_subset(ccp_root, tmp_path) -> Path:
    return _lip_layout_subset(ccp_root, tmp_path / "ccp", CCP_VAL_IMAGES)


@pytest.fixture(scope="module")
def ccp_checkpoint(tmp_path_factory) -> Path:
    """segformer_mit_b0 with random weights and the CCP coarse label set, as train.py saves it."""
    torch.manual_seed(0)
    label_set = load_label_config(CCP_MAP).target
    model = build_model("segformer_mit_b0", label_set.num_classes)
    path = tmp_path_factory.mktemp("ckpt") / "best.pth.tar"
    return ckpt.save_checkpoint(
        {**ckpt.model_record(model, label_set, SMALL_CROP), "epoch": 1}, path
    )


def test_evaluate_ccp_with_seed_flags_writes_every_output_at_original_size(
    ccp_subset, ccp_checkpoint, tmp_path
):
    log_dir = tmp_path / "log"
    result = _run(
        "--arch", "segformer_mit_b0", "--num-classes", "11",  # the seed's command line
        "--model_restore", str(ccp_checkpoint), "--data_dir", str(ccp_subset),
        "--do_lip_mapping", "--lip_map_cfg", str(CCP_MAP), "--log_dir", str(log_dir),
        "--save_results", "--batch-size", "2", "--workers", "0", "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads((log_dir / "results.json").read_text())
    label_set = load_label_config(CCP_MAP).target
    assert record["names"] == list(label_set.names) and record["images"] == CCP_VAL_IMAGES
    assert record["input_size"] == list(SMALL_CROP)  # the checkpoint's crop, not 512,384
    for key in PERCENT_KEYS:
        assert 0.0 <= record[key] <= 100.0, key
    assert all(v is None or 0.0 <= v <= 100.0 for v in record["iou"].values())
    assert "| Background |" in (log_dir / "results.md").read_text()
    seed_dict = torch.load(log_dir / "results.pt", weights_only=True)
    assert seed_dict["Mean IU"] == pytest.approx(record["miou"])
    assert Image.open(log_dir / "confusion.png").format == "PNG"

    # the metrics are those of the saved palette PNGs against the mapped GT, pixel by pixel
    lut = load_label_config(CCP_MAP).lut("ccp", "coarse")
    correct = total = 0
    for name in (ccp_subset / "val_id.txt").read_text().split():
        pred_image = Image.open(log_dir / "sp_results" / f"{name}.png")
        photo = Image.open(ccp_subset / "val_images" / f"{name}.jpg")
        assert pred_image.mode == "P" and pred_image.size == photo.size
        pred = np.asarray(pred_image)
        gt = lut[np.asarray(Image.open(ccp_subset / "val_segmentations" / f"{name}.png"))]
        assert pred.max() < label_set.num_classes
        correct += int((pred == gt).sum())
        total += gt.size
    assert record["pixel_accuracy"] == pytest.approx(100.0 * correct / total)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num-classes", "20"], "checkpoint is num_classes=11 but --num-classes 20 was given"),
        (["--arch", "segformer_mit_b1"], "checkpoint is arch=segformer_mit_b0 but --arch"),
    ],
)
def test_disagreeing_num_classes_or_arch_stops_with_one_line(
    ccp_subset, ccp_checkpoint, tmp_path, flags, message
):
    args = evaluate.get_args_parser().parse_args(
        ["--model-restore", str(ccp_checkpoint), "--data-dir", str(ccp_subset)]
        + ["--log-dir", str(tmp_path / "log"), "--device", "cpu", *flags]
    )
    with pytest.raises(SystemExit) as err:
        evaluate.main(args)
    text = str(err.value.code)
    assert message in text and "drop the flag" in text and "\n" not in text
    assert not (tmp_path / "log").exists()


def test_unmapped_labels_stop_with_one_line_even_from_a_worker(
    ccp_subset, ccp_checkpoint, tmp_path
):
    args = evaluate.get_args_parser().parse_args(
        ["--model-restore", str(ccp_checkpoint), "--data-dir", str(ccp_subset)]
        + ["--lip-map-cfg", str(CCP_MAP), "--log-dir", str(tmp_path / "log")]
        + ["--device", "cpu", "--workers", "1"]  # no --do-mapping: raw CCP ids 0..58
    )
    with pytest.raises(SystemExit) as err:
        evaluate.main(args)
    text = str(err.value.code)
    assert "are outside the 11-class set 'coarse'; map it with --do_mapping" in text
    assert "\n" not in text and "Traceback" not in text


class _LeftEvidence(nn.Module):
    """Known output: the "Left-arm" logit is the red channel's stride-4 average, every other
    class 0, so a flip test that swaps the pair moves half of the evidence to "Right-arm"."""

    def __init__(self, num_classes: int, left: int):
        super().__init__()
        self.num_classes, self.left = num_classes, left

    def forward(self, x: torch.Tensor) -> ParsingOutput:
        evidence = F.avg_pool2d(x[:, :1], LOGIT_STRIDE, ceil_mode=True)  # (N, 1, H/4, W/4)
        fusion = torch.zeros(x.shape[0], self.num_classes, *evidence.shape[-2:])
        fusion[:, self.left] = evidence[:, 0]
        return ParsingOutput(fusion, fusion, fusion[:, :2])


@pytest.fixture
def lip_set():
    return load_label_config(LIP_MAP).spaces["lip"]


def test_flip_averaging_swaps_the_label_sets_left_right_channels(lip_set):
    left, right = lip_set.names.index("Left-arm"), lip_set.names.index("Right-arm")
    model = _LeftEvidence(lip_set.num_classes, left).eval()
    images = torch.zeros(2, 3, 32, 24)
    images[:, 0, :, :8] = 1.0  # bright on the image's left third only
    evidence = F.avg_pool2d(images[:, :1], LOGIT_STRIDE)[:, 0]  # (2, 8, 6)
    plain = predict_logits(model, images)
    assert plain.shape == (2, lip_set.num_classes, 8, 6)
    torch.testing.assert_close(plain[:, left], evidence)
    flipped = predict_logits(model, images, flip_permutation=torch.as_tensor(
        lip_set.flip_permutation()))  # fmt: skip
    # the mirrored crop puts the evidence on the right; flipped back it lies on the left again,
    # but it is Right-arm evidence now: each arm gets half
    torch.testing.assert_close(flipped[:, left], 0.5 * evidence)
    torch.testing.assert_close(flipped[:, right], 0.5 * evidence)
    others = [c for c in range(lip_set.num_classes) if c not in (left, right)]
    assert flipped[:, others].abs().max() == 0


def test_multi_scale_averages_logits_at_the_requested_size(lip_set):
    model = _LeftEvidence(lip_set.num_classes, lip_set.names.index("Left-arm")).eval()
    ramp = torch.linspace(0, 1, 48).expand(1, 3, 64, 48).contiguous()  # linear left to right
    single = predict_logits(model, ramp, out_hw=(64, 48))
    multi = predict_logits(model, ramp, scales=(0.75, 1.0, 1.25), out_hw=(64, 48))
    assert multi.shape == single.shape == (1, lip_set.num_classes, 64, 48)
    # a ramp looks the same at every scale, so the average stays the single-scale ramp
    torch.testing.assert_close(multi, single, atol=0.03, rtol=0)


def _schp_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our resnet101 state dict in the released SCHP naming (inverse of weights._from_schp)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue  # InPlace-ABN keeps no batch counter
        key = key.removeprefix("backbone.")
        key = "fushion." + key.removeprefix("fusion.") if key.startswith("fusion.") else key
        out[f"module.{key}"] = value
    return out


def test_original_schp_checkpoint_evaluates_end_to_end_with_flip_and_scales(
    lip_sample_root, lip_set, tmp_path
):
    torch.manual_seed(0)
    schp = _schp_state_dict(build_model("resnet101", 20))
    assert "module.conv1.weight" in schp and "module.fushion.3.weight" in schp
    path = tmp_path / "exp-schp-201908261155-lip.pth"
    torch.save({"state_dict": schp, "epoch": 150}, path)
    log_dir = tmp_path / "log"
    result = _run(
        "--model-restore", str(path), "--arch", "resnet101", "--num-classes", "20",
        "--input-size", ",".join(map(str, SMALL_CROP)), "--data-dir", str(lip_sample_root),
        "--lip-map-cfg", str(LIP_MAP), "--flip", "--multi-scales", "0.75,1",
        "--log-dir", str(log_dir), "--save-results", "--batch-size", "3", "--workers", "0",
        "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads((log_dir / "results.json").read_text())
    assert record["label_set"] == "lip" and record["names"] == list(lip_set.names)
    assert record["flip"] is True and record["scales"] == [0.75, 1.0]
    assert all(0.0 <= record[key] <= 100.0 for key in PERCENT_KEYS)

    # the saved prediction is what the converted weights give through the public pieces
    model = build_model("resnet101", 20).eval()
    load_weights(model, path)
    dataset = evaluate.build_eval_dataset(
        lip_sample_root, "val", SMALL_CROP, model.input_spec, lip_set, None
    )
    sample = dataset[0]
    meta = sample["meta"]
    logits = predict_logits(
        model, sample["image"][None], (0.75, 1.0), torch.as_tensor(lip_set.flip_permutation())
    )
    full = logits_to_original(
        logits, meta["center"], meta["scale"], (meta["height"], meta["width"]), SMALL_CROP
    )
    saved = np.asarray(Image.open(log_dir / "sp_results" / f"{meta['name']}.png"))
    assert (saved == argmax_labels(full[0])).mean() > 0.999  # BLAS order may flip a near-tie


@pytest.fixture
def nested_ids(tmp_path) -> Path:
    """Synthetic LIP dolls whose val ids hold sub-folders (a/b/doll_val_00000, ...)."""
    root = make_lip_dataset(tmp_path / "nested", 0, 2, (96, 64), seed=0)
    ids = []
    for name in (root / "val_id.txt").read_text().split():
        nested = f"a/b{len(ids)}/{name}"
        for folder, suffix in (("val_images", ".jpg"), ("val_segmentations", ".png")):
            (root / folder / nested).parent.mkdir(parents=True)
            (root / folder / f"{name}{suffix}").rename(root / folder / f"{nested}{suffix}")
        ids.append(nested)
    (root / "val_id.txt").write_text("".join(f"{n}\n" for n in ids))
    return root


def test_save_results_creates_the_sub_folders_of_nested_ids(nested_ids, tmp_path):
    label_set = load_label_config(LIP_MAP).target
    weights = ckpt.save_checkpoint(
        ckpt.model_record(build_model("segformer_mit_b0", 9), label_set, (64, 48)),
        tmp_path / "b0.pth.tar",
    )
    log_dir = tmp_path / "log"
    args = evaluate.get_args_parser().parse_args(
        ["--model-restore", str(weights), "--data-dir", str(nested_ids), "--do-lip-mapping"]
        + ["--log-dir", str(log_dir), "--save-results", "--workers", "0", "--device", "cpu"]
    )
    evaluate.main(args)
    for name in (nested_ids / "val_id.txt").read_text().split():
        saved = Image.open(log_dir / "sp_results" / f"{name}.png")
        assert saved.mode == "P"
        assert saved.size == Image.open(nested_ids / "val_images" / f"{name}.jpg").size
    assert not list(log_dir.rglob(".*"))  # no temporary left


def test_log_dir_that_cannot_be_a_folder_is_refused_before_any_work(tmp_path):
    not_a_folder = tmp_path / "results.txt"
    not_a_folder.write_text("x")
    for log_dir, where in ((not_a_folder, "is a file"), (not_a_folder / "sub", "is inside")):
        args = evaluate.get_args_parser().parse_args(
            ["--model-restore", str(tmp_path / "never_read.pth"), "--log-dir", str(log_dir)]
        )
        with pytest.raises(SystemExit, match=f"--log-dir {log_dir}: {where}"):
            evaluate.main(args)


@pytest.mark.parametrize(("flag", "value"), [("--batch-size", "0"), ("--workers", "-1")])
def test_batch_size_and_workers_out_of_range_name_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit):
        evaluate.get_args_parser().parse_args([flag, value])
    assert f"argument {flag}" in capsys.readouterr().err
