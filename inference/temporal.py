"""Temporal smoothing of video parsing and the flicker it removes.

`TemporalSmoother` keeps an exponential moving average of each frame's per-class probabilities
on the model's stride-4 crop grid, p_t = alpha * q_t + (1 - alpha) * p_(t-1), and restarts it at a
scene cut (the frame's thumbnail differs from the last one by more than `cut_diff`). Every frame
of a video has the same size, hence the same crop affine, so the grids of consecutive frames are
aligned and the average is taken before the (per-frame) inverse warp.

`FlickerMeter` counts the share of crop-grid cells inside the photo whose label changes between
consecutive frames of one shot: extract.py reports it with and without smoothing.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from inference.quality import photo_cells

THUMB_HW = (24, 32)  # thumbnail of the normalised crop compared for scene cuts
SCENE_CUT_DIFF = 0.5  # mean |difference| of two thumbnails (normalised units, ~29 grey levels)


def smooth_alpha(text: str) -> float:
    """`--smooth` value: the new frame's weight, in (0, 1] (1 = no smoothing)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"{text} is outside (0, 1]: the new frame's weight, e.g. 0.5 (1 turns smoothing off)"
        )
    return value


def thumbnail(crop: torch.Tensor) -> torch.Tensor:
    """(3, H, W) normalised crop -> (h, w) grey thumbnail."""
    return F.adaptive_avg_pool2d(crop.float().mean(0, keepdim=True)[None], THUMB_HW)[0, 0]


class TemporalSmoother:
    """EMA of per-class probabilities across the frames of one video, reset at scene cuts.

    Args:
        alpha: weight of the new frame, in (0, 1].
        cut_diff: thumbnail difference above which a frame starts a new shot.
    """

    def __init__(self, alpha: float, cut_diff: float = SCENE_CUT_DIFF):
        self.alpha, self.cut_diff = alpha, cut_diff
        self.state: torch.Tensor | None = None
        self.last_thumb: torch.Tensor | None = None
        self.cuts = 0

    def is_cut(self, crop: torch.Tensor) -> bool:
        """Whether `crop` starts a new shot (the first frame does); remembers its thumbnail."""
        thumb = thumbnail(crop)
        cut = self.last_thumb is None or (thumb - self.last_thumb).abs().mean() > self.cut_diff
        self.last_thumb = thumb
        return bool(cut)

    def __call__(self, logits: torch.Tensor, cut: bool) -> torch.Tensor:
        """(C, h, w) logits of the next frame -> (C, h, w) log of the smoothed probabilities."""
        probs = logits.float().softmax(0)
        if cut or self.state is None or self.state.shape != probs.shape:
            self.cuts += self.state is not None
            self.state = probs
        else:
            self.state = self.alpha * probs + (1 - self.alpha) * self.state
        return self.state.clamp_min(1e-12).log()


class FlickerMeter:
    """Share of cells whose label changes between consecutive frames (not across cuts)."""

    def __init__(self):
        self.last: torch.Tensor | None = None
        self.changed = 0
        self.total = 0

    def update(self, labels: torch.Tensor, inside: torch.Tensor, cut: bool) -> None:
        """labels: (h, w) class ids of a frame's crop grid; inside: (h, w) bool photo cells."""
        if self.last is not None and not cut and self.last.shape == labels.shape:
            self.changed += int(((labels != self.last) & inside).sum())
            self.total += int(inside.sum())
        self.last = labels

    @property
    def share(self) -> float | None:
        return self.changed / self.total if self.total else None


class VideoSmoothing:
    """--smooth: the temporal smoother over a run's frames, and flicker meters before and after."""

    def __init__(self, alpha: float, input_size: tuple[int, int]):
        self.smoother = TemporalSmoother(alpha)
        self.raw, self.smoothed = FlickerMeter(), FlickerMeter()
        self.input_size = input_size

    def __call__(self, crop_logits: torch.Tensor, crops: torch.Tensor, metas: list[dict]):
        """(N, C, h, w) logits of N consecutive frames -> their smoothed log-probabilities."""
        out = torch.empty_like(crop_logits, dtype=torch.float32)
        for i, meta in enumerate(metas):
            cut = self.smoother.is_cut(crops[i])
            out[i] = self.smoother(crop_logits[i], cut)
            inside = photo_cells(meta, self.input_size, tuple(crop_logits.shape[-2:]))
            inside = inside.to(crop_logits.device)
            self.raw.update(crop_logits[i].max(0).indices, inside, cut)
            self.smoothed.update(out[i].max(0).indices, inside, cut)
        return out
