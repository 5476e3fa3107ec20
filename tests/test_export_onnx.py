"""export_onnx.py: the ONNX parser matches PyTorch, its batch (and optionally H x W) is dynamic,
and a failed check or a missing onnxruntime leaves one clear line and no file."""

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import export_onnx
from datasets.dolls import render_doll
from datasets.labels import load_label_config
from networks import build_model
from utils import checkpoint as ckpt

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install it)")
pytest.importorskip("onnx", reason="onnx is not installed (pip install it)")

REPO = Path(__file__).resolve().parents[1]
CROP = (64, 48)
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    label_set = load_label_config(REPO / "mappings" / "lip_map.yaml").target
    model = build_model("segformer_mit_b0", label_set.num_classes)
    path = tmp_path_factory.mktemp("ckpt") / "best.pth.tar"
    return ckpt.save_checkpoint({**ckpt.model_record(model, label_set, CROP), "epoch": 1}, path)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "doll.jpg"
    cv2.imwrite(str(path), render_doll(np.random.default_rng(5), 90, 61, (0.8, 0.95))["image"])
    return path


def _export(checkpoint: Path, output: Path, *flags: str) -> None:
    export_onnx.main(
        export_onnx.get_args_parser().parse_args(
            ["--model-restore", str(checkpoint), "--output", str(output), *flags]
        )
    )


def _pytorch(checkpoint: Path) -> torch.nn.Module:
    model = build_model("segformer_mit_b0", 9).eval()
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    return model


def test_onnx_matches_pytorch_and_serves_other_batch_sizes(checkpoint, photo, tmp_path, capsys):
    output = tmp_path / "parser.onnx"
    _export(checkpoint, output, "--check-image", str(photo))
    printed = capsys.readouterr().out
    assert "max abs difference ONNX vs PyTorch, fusion" in printed
    assert "with the dynamo exporter" in printed or "with the torchscript exporter" in printed
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["fusion"]
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["input_size"]) == list(CROP) and meta["colour"] == "RGB"
    model = _pytorch(checkpoint)
    torch.manual_seed(1)
    for batch_size in (2, 3):  # exported with a batch of 1
        batch = torch.randn(batch_size, 3, *CROP)
        (got,) = session.run(None, {"image": batch.numpy()})
        with torch.inference_mode():
            expected = model(batch).fusion.numpy()
        assert got.shape == expected.shape == (batch_size, 9, CROP[0] // 4, CROP[1] // 4)
        assert np.abs(got - expected).max() < TOLERANCE


def test_dynamic_size_export_with_all_outputs(checkpoint, photo, tmp_path, capsys):
    output = tmp_path / "parser.onnx"
    _export(checkpoint, output, "--dynamic-size", "--all-outputs", "--data-dir", str(photo.parent))
    assert capsys.readouterr().out.count("max abs difference") == 3
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    batch = torch.randn(2, 3, 80, 56)  # neither the training crop nor the checked sizes
    got = session.run(None, {"image": batch.numpy()})
    with torch.inference_mode():
        expected = _pytorch(checkpoint)(batch)
    for name, onnx_out, ref in zip(("parsing", "fusion", "edge"), got, expected, strict=True):
        assert onnx_out.shape == ref.shape, name
        assert np.abs(onnx_out - ref.numpy()).max() < TOLERANCE, name


def test_failed_check_writes_nothing(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(export_onnx, "max_differences", lambda *args: {"fusion": 0.5})
    output = tmp_path / "parser.onnx"
    with pytest.raises(SystemExit) as err:
        _export(checkpoint, output, "--exporter", "torchscript")
    assert "differs from PyTorch by 0.5 > --tolerance 0.001; not written" in str(err.value.code)
    assert list(tmp_path.iterdir()) == []


def test_missing_onnxruntime_is_one_clear_line(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(
        SystemExit, match=r"onnxruntime is not installed: `pip install onnxruntime`"
    ):
        _export(checkpoint, tmp_path / "parser.onnx")
