"""Parsing metrics from one confusion matrix: pixel/mean accuracy, per-class IoU, mIoU, FW IoU.

Rows of the matrix are ground-truth classes, columns predicted classes; pixels whose ground truth
is IGNORE_INDEX are dropped. Counts are accumulated with bincount (numpy, or torch on the tensors'
own device) and matrices from several processes or shards add up (`merge`, `+`).

    cm = ConfusionMatrix(label_set.num_classes)
    for pred, gt in pairs:
        cm.update(pred, gt)
    metrics = cm.compute(label_set.names)
    print(format_markdown(metrics))
    save_confusion_png(cm.matrix, label_set.names, "log/confusion.png")

Averages follow the usual definition: mIoU is the mean over *valid* classes (present in the
ground truth or in the prediction). The seed's variant, which averages over all classes and counts
an absent class as 0, is reported separately as `miou_all_classes`. All values are percentages.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from datasets.label_set import IGNORE_INDEX
from utils.fileio import atomic_write

PERCENT = 100.0
MAX_CLASSES = IGNORE_INDEX  # ids 0..254 are classes, 255 is the ignore label
ANNOTATE_MAX_CLASSES = 25  # write the per-cell percentage only when the grid stays readable
CELL_INCHES = 0.35  # figure size per class
MIN_FIGURE_INCHES = 4.0
FIGURE_DPI = 120


@dataclass(frozen=True)
class ParsingMetrics:
    """Metrics of one evaluation, in percent; dicts are keyed by class name in class-id order.

    `iou` and `class_accuracy` hold NaN for classes they are undefined for (absent from both ground
    truth and prediction, respectively absent from the ground truth).
    """

    names: tuple[str, ...]
    pixel_accuracy: float
    mean_accuracy: float  # over classes present in the ground truth
    miou: float  # over valid classes (present in the ground truth or the prediction)
    miou_all_classes: float  # the seed's variant: over all classes, an absent class counts 0
    frequency_weighted_iou: float
    iou: dict[str, float]
    class_accuracy: dict[str, float]
    gt_pixels: dict[str, int]
    pred_pixels: dict[str, int]
    num_pixels: int
    num_valid_classes: int

    def to_dict(self) -> dict:
        """Plain JSON-ready types; NaN becomes None."""
        return _nan_to_none(asdict(self))


def _nan_to_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(item) for item in value]
    return value


class ConfusionMatrix:
    """num_classes x num_classes int64 counts; row = ground truth, column = prediction."""

    def __init__(self, num_classes: int) -> None:
        if not 1 <= num_classes <= MAX_CLASSES:
            raise ValueError(
                f"ConfusionMatrix: num_classes must be in 1..{MAX_CLASSES} "
                f"({IGNORE_INDEX} is the ignore label), got {num_classes}"
            )
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    @classmethod
    def from_matrix(cls, matrix: np.ndarray | torch.Tensor) -> ConfusionMatrix:
        """Wrap counts reduced elsewhere, e.g. `all_reduce_sum(torch.from_numpy(cm.matrix))`."""
        if isinstance(matrix, torch.Tensor):
            matrix = matrix.detach().cpu().numpy()
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(
                f"ConfusionMatrix.from_matrix: need a square matrix, got {matrix.shape}"
            )
        result = cls(matrix.shape[0])
        result.matrix = matrix.astype(np.int64, copy=True)
        return result

    def update(self, pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> None:
        """Add one batch: integer label maps of the same (any) shape, numpy or torch.

        Ground-truth pixels equal to IGNORE_INDEX are skipped. Torch inputs are counted on their
        device with torch.bincount; a numpy input paired with a tensor is moved to its device.
        """
        if tuple(pred.shape) != tuple(gt.shape):
            raise ValueError(
                f"ConfusionMatrix.update: prediction shape {tuple(pred.shape)} differs from "
                f"ground-truth shape {tuple(gt.shape)}; resize the prediction to the label size"
            )
        if isinstance(pred, torch.Tensor) or isinstance(gt, torch.Tensor):
            self.matrix += self._count_torch(pred, gt)
        else:
            self.matrix += self._count_numpy(np.asarray(pred), np.asarray(gt))

    def _count_numpy(self, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
        for array, what in ((pred, "prediction"), (gt, "ground truth")):
            if not np.issubdtype(array.dtype, np.integer):
                raise ValueError(
                    f"ConfusionMatrix.update: {what} must hold integer ids, got {array.dtype}"
                )
        gt = gt.reshape(-1).astype(np.int64)
        pred = pred.reshape(-1).astype(np.int64)
        keep = gt != IGNORE_INDEX
        gt, pred = gt[keep], pred[keep]
        self._check_ids(pred, gt)
        k = self.num_classes
        return np.bincount(gt * k + pred, minlength=k * k).reshape(k, k)

    def _count_torch(self, pred, gt) -> np.ndarray:
        device = pred.device if isinstance(pred, torch.Tensor) else gt.device
        tensors = [torch.as_tensor(t, device=device) for t in (pred, gt)]
        for tensor, what in zip(tensors, ("prediction", "ground truth"), strict=True):
            if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
                raise ValueError(
                    f"ConfusionMatrix.update: {what} must hold integer ids, got {tensor.dtype}"
                )
        pred, gt = (t.reshape(-1).long() for t in tensors)
        keep = gt != IGNORE_INDEX
        gt, pred = gt[keep], pred[keep]
        self._check_ids(pred, gt)
        k = self.num_classes
        counts = torch.bincount(gt * k + pred, minlength=k * k).reshape(k, k)
        return counts.cpu().numpy().astype(np.int64)

    def _check_ids(self, pred, gt) -> None:
        """Both are flat int64 numpy arrays or tensors with the ignored pixels removed."""
        for array, what in ((pred, "prediction"), (gt, "ground truth")):
            if len(array) == 0:
                continue
            low, high = int(array.min()), int(array.max())
            if low < 0 or high >= self.num_classes:
                raise ValueError(
                    f"ConfusionMatrix.update: {what} holds ids outside 0..{self.num_classes - 1} "
                    f"(min {low}, max {high}; only {IGNORE_INDEX} is ignored, and only in the "
                    "ground truth); check that num_classes and the label mapping match the data"
                )

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts in place (shards, processes); returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"ConfusionMatrix.merge: {other.num_classes} classes cannot be added to "
                f"{self.num_classes}; both sides must use the same label set"
            )
        self.matrix += other.matrix
        return self

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return ConfusionMatrix.from_matrix(self.matrix).merge(other)

    def compute(self, names: Sequence[str] | None = None) -> ParsingMetrics:
        """Metrics in percent; `names` (one per class, default `class_<id>`) key the dicts."""
        k = self.num_classes
        names = tuple(names) if names is not None else tuple(f"class_{i}" for i in range(k))
        if len(names) != k or len(set(names)) != k:
            raise ValueError(
                f"ConfusionMatrix.compute: need {k} distinct class names, got {len(names)} "
                f"({len(set(names))} distinct); pass the label set's names"
            )
        tp = np.diag(self.matrix).astype(np.float64)
        gt_count = self.matrix.sum(axis=1)
        pred_count = self.matrix.sum(axis=0)
        union = gt_count + pred_count - tp
        total = int(gt_count.sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, PERCENT * tp / union, np.nan)
            accuracy = np.where(gt_count > 0, PERCENT * tp / gt_count, np.nan)
        valid = union > 0
        present = gt_count > 0
        pixel_accuracy = PERCENT * tp.sum() / total if total else math.nan
        frequency_weighted = (gt_count[present] / total * iou[present]).sum() if total else math.nan
        return ParsingMetrics(
            names=names,
            pixel_accuracy=float(pixel_accuracy),
            mean_accuracy=float(accuracy[present].mean()) if present.any() else math.nan,
            miou=float(iou[valid].mean()) if valid.any() else math.nan,
            miou_all_classes=float(np.nan_to_num(iou, nan=0.0).mean()),
            frequency_weighted_iou=float(frequency_weighted),
            iou=dict(zip(names, iou.tolist(), strict=True)),
            class_accuracy=dict(zip(names, accuracy.tolist(), strict=True)),
            gt_pixels=dict(zip(names, gt_count.tolist(), strict=True)),
            pred_pixels=dict(zip(names, pred_count.tolist(), strict=True)),
            num_pixels=total,
            num_valid_classes=int(valid.sum()),
        )


def _fmt(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2f}"


def format_markdown(metrics: ParsingMetrics) -> str:
    """Per-class table (id, name, IoU, accuracy, pixel counts) followed by the summary rows."""
    lines = [
        "| id | class | IoU (%) | accuracy (%) | GT pixels | predicted pixels |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for class_id, name in enumerate(metrics.names):
        lines.append(
            f"| {class_id} | {name.replace('|', '/')} | {_fmt(metrics.iou[name])} "
            f"| {_fmt(metrics.class_accuracy[name])} | {metrics.gt_pixels[name]} "
            f"| {metrics.pred_pixels[name]} |"
        )
    num_classes = len(metrics.names)
    summary = [
        ("Pixel accuracy", metrics.pixel_accuracy),
        ("Mean accuracy (classes in GT)", metrics.mean_accuracy),
        (f"mIoU ({metrics.num_valid_classes} valid classes)", metrics.miou),
        (
            f"mIoU over all {num_classes} classes (seed's variant, absent = 0)",
            metrics.miou_all_classes,
        ),
        ("Frequency-weighted IoU", metrics.frequency_weighted_iou),
    ]
    lines += ["", "| metric | value (%) |", "|---|---:|"]
    lines += [f"| {label} | {_fmt(value)} |" for label, value in summary]
    return "\n".join(lines) + "\n"


def save_confusion_png(matrix: np.ndarray, names: Sequence[str], path: str | os.PathLike) -> Path:
    """Row-normalised confusion matrix (each GT row sums to 100 %) as a PNG with named axes.

    Rows without ground-truth pixels stay empty. The file is written atomically; parent folders
    are created. Returns the path.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    k = len(names)
    if matrix.shape != (k, k):
        raise ValueError(
            f"save_confusion_png: matrix shape {matrix.shape} does not match {k} class names"
        )
    rows = matrix.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = np.where(rows > 0, PERCENT * matrix / rows, 0.0)

    side = max(MIN_FIGURE_INCHES, CELL_INCHES * k + 2.0)
    figure = Figure(figsize=(side + 1.0, side), dpi=FIGURE_DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(normalised, cmap="Blues", vmin=0.0, vmax=PERCENT, interpolation="nearest")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="% of ground-truth pixels")
    axes.set_xticks(range(k), labels=list(names), rotation=90)
    axes.set_yticks(range(k), labels=list(names))
    axes.set_xlabel("prediction")
    axes.set_ylabel("ground truth")
    axes.set_title("Confusion matrix (row-normalised)")
    if k <= ANNOTATE_MAX_CLASSES:
        for (row, col), value in np.ndenumerate(normalised):
            if value >= 0.5:
                colour = "white" if value > PERCENT / 2 else "black"
                axes.text(
                    col, row, f"{value:.0f}", ha="center", va="center", fontsize=7, color=colour
                )
    figure.tight_layout()

    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    return Path(path)
