"""Temporal smoothing (inference/temporal.py, extract.py --smooth): less flicker, same accuracy,
restarts at scene cuts; the extractor reports the flicker with and without it."""

import argparse
import re

import cv2
import numpy as np
import pytest
import torch
from test_extract import _extract, checkpoint  # noqa: F401  (module fixture)

import extract
from datasets.dolls import render_doll
from inference.temporal import FlickerMeter, TemporalSmoother, smooth_alpha

CLASSES, H, W, FRAMES = 5, 64, 48, 24


def _clip(seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    """(T, H, W) ground-truth labels of a person walking right, and noisy per-frame logits."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((FRAMES, H, W), np.int64)
    for t in range(FRAMES):
        x = 8 + t // 2  # one cell every second frame
        truth[t, 8:20, x + 4 : x + 12] = 1  # head
        truth[t, 20:40, x : x + 16] = 2  # top
        truth[t, 40:52, x + 2 : x + 14] = 3  # bottom
        truth[t, 52:60, x + 2 : x + 14] = 4  # legs
    onehot = np.eye(CLASSES, dtype=np.float32)[truth].transpose(0, 3, 1, 2)  # (T, C, H, W)
    logits = 2.0 * onehot + rng.normal(0.0, 1.0, onehot.shape).astype(np.float32)
    return truth, torch.from_numpy(logits)


def _miou(pred: np.ndarray, truth: np.ndarray) -> float:
    confusion = np.bincount(truth.ravel() * CLASSES + pred.ravel(), minlength=CLASSES**2)
    confusion = confusion.reshape(CLASSES, CLASSES)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    return float(np.mean(inter / np.maximum(union, 1)))


def _run(logits: torch.Tensor, alpha: float | None):
    smoother = TemporalSmoother(alpha) if alpha else None
    meter, preds = FlickerMeter(), []
    inside = torch.ones(H, W, dtype=torch.bool)
    for t, frame in enumerate(logits):
        out = smoother(frame, cut=t == 0) if smoother else frame
        labels = out.max(0).indices
        meter.update(labels, inside, cut=t == 0)
        preds.append(labels.numpy())
    return meter.share, np.stack(preds)


@pytest.mark.parametrize("alpha", [0.5, 0.7])
def test_smoothing_lowers_flicker_by_a_fifth_without_losing_a_miou_point(alpha):
    truth, logits = _clip()
    raw_flicker, raw_pred = _run(logits, None)
    smooth_flicker, smooth_pred = _run(logits, alpha)
    assert smooth_flicker <= 0.8 * raw_flicker, (raw_flicker, smooth_flicker)
    assert _miou(smooth_pred, truth) >= _miou(raw_pred, truth) - 0.01


def test_a_scene_cut_restarts_the_average():
    smoother = TemporalSmoother(0.3)
    first = torch.randn(CLASSES, 8, 6)
    second = torch.randn(CLASSES, 8, 6)
    smoother(first, cut=True)
    after_cut = smoother(second, cut=True)
    assert torch.allclose(after_cut.exp(), second.softmax(0), atol=1e-6)
    assert smoother.cuts == 1


def test_scene_cuts_are_found_from_the_frames():
    smoother = TemporalSmoother(0.5)
    dark, bright = torch.full((3, 64, 48), -1.5), torch.full((3, 64, 48), 1.5)
    assert smoother.is_cut(dark)  # the first frame starts a shot
    assert not smoother.is_cut(dark + 0.05 * torch.randn(3, 64, 48))
    assert smoother.is_cut(bright)


@pytest.mark.parametrize("text", ["0", "-0.2", "1.5", "nan", "abc"])
def test_smooth_outside_zero_one_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        smooth_alpha(text)
    with pytest.raises(SystemExit) as err:
        extract.get_args_parser().parse_args(
            ["--model-restore", "m", "--input", "i", "--output", "o", "--smooth", text]
        )
    assert err.value.code == 2


def _video(path, frames: int = 6) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (56, 72))
    for t in range(frames):
        image = render_doll(np.random.default_rng(7), 72, 56, (0.8, 0.95))["image"]
        writer.write(np.roll(image, t, axis=1))
    writer.release()


def test_extract_reports_flicker_and_a_rerun_writes_nothing_new(checkpoint, tmp_path, capfd):  # noqa: F811
    clip = tmp_path / "clip.avi"
    _video(clip)
    out = tmp_path / "out"
    _extract(checkpoint, clip, out, "--smooth", "0.5")
    assert re.search(r"flicker .*: [\d.]+ % raw, [\d.]+ % smoothed", capfd.readouterr().err)
    pngs = sorted((out / "parsing" / "clip").glob("frame_*.png"))
    assert len(pngs) == 6
    mtimes = [p.stat().st_mtime_ns for p in pngs]
    _extract(checkpoint, clip, out, "--smooth", "0.5")
    assert [p.stat().st_mtime_ns for p in pngs] == mtimes
