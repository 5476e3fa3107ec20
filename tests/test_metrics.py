"""utils/metrics.py against a naive per-pixel loop, plus merging, errors and the report files."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.label_set import IGNORE_INDEX
from utils.metrics import ConfusionMatrix, format_markdown, save_confusion_png

NUM_CLASSES = 7
NAMES = tuple(f"class-{i}" for i in range(NUM_CLASSES))
ABSENT = 6  # never in ground truth nor prediction
PRED_ONLY = 5  # predicted but never in ground truth
GT_ONLY = 4  # in ground truth but never predicted


def _random_pair(seed: int, shape=(23, 17)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = rng.choice([0, 1, 2, 3, GT_ONLY], size=shape).astype(np.uint8)
    pred = np.where(rng.random(shape) < 0.6, gt, rng.choice([0, 1, 2, 3, PRED_ONLY], size=shape))
    pred[pred == GT_ONLY] = 0
    gt[rng.random(shape) < 0.1] = IGNORE_INDEX
    return pred.astype(np.int64), gt


def _naive_metrics(pairs) -> dict:
    """Per-pixel Python loop; IoU only for classes in GT or prediction."""
    tp = [0] * NUM_CLASSES
    gt_n = [0] * NUM_CLASSES
    pred_n = [0] * NUM_CLASSES
    for pred, gt in pairs:
        for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist(), strict=True):
            if g == IGNORE_INDEX:
                continue
            gt_n[g] += 1
            pred_n[p] += 1
            tp[g] += p == g
    total = sum(gt_n)
    iou = [
        100 * tp[c] / (gt_n[c] + pred_n[c] - tp[c]) if gt_n[c] + pred_n[c] else math.nan
        for c in range(NUM_CLASSES)
    ]
    valid = [v for v in iou if not math.isnan(v)]
    in_gt = [c for c in range(NUM_CLASSES) if gt_n[c]]
    return {
        "pixel_accuracy": 100 * sum(tp) / total,
        "mean_accuracy": sum(100 * tp[c] / gt_n[c] for c in in_gt) / len(in_gt),
        "iou": iou,
        "miou": sum(valid) / len(valid),
        "miou_all": sum(0 if math.isnan(v) else v for v in iou) / NUM_CLASSES,
        "fw_iou": sum(gt_n[c] / total * iou[c] for c in in_gt),
        "gt_n": gt_n,
        "pred_n": pred_n,
    }


def test_metrics_match_naive_loop_with_absent_classes_and_ignore():
    pairs = [_random_pair(seed) for seed in range(3)]
    cm = ConfusionMatrix(NUM_CLASSES)
    for pred, gt in pairs:
        cm.update(pred, gt)
    metrics = cm.compute(NAMES)
    ref = _naive_metrics(pairs)

    assert metrics.pixel_accuracy == pytest.approx(ref["pixel_accuracy"])
    assert metrics.mean_accuracy == pytest.approx(ref["mean_accuracy"])
    assert metrics.miou == pytest.approx(ref["miou"])
    assert metrics.miou_all_classes == pytest.approx(ref["miou_all"])
    assert metrics.frequency_weighted_iou == pytest.approx(ref["fw_iou"])
    for class_id, name in enumerate(NAMES):
        assert metrics.iou[name] == pytest.approx(ref["iou"][class_id], nan_ok=True)
        assert metrics.gt_pixels[name] == ref["gt_n"][class_id]
        assert metrics.pred_pixels[name] == ref["pred_n"][class_id]
    assert math.isnan(metrics.iou[NAMES[ABSENT]])
    assert metrics.iou[NAMES[PRED_ONLY]] == 0.0 and metrics.iou[NAMES[GT_ONLY]] == 0.0
    assert metrics.num_valid_classes == NUM_CLASSES - 1
    assert metrics.miou_all_classes < metrics.miou  # the absent class counts 0 only there
    assert metrics.num_pixels == sum(int((gt != IGNORE_INDEX).sum()) for _, gt in pairs)


def test_torch_update_equals_numpy_update():
    pred, gt = _random_pair(7, shape=(2, 9, 11))  # any shape, here a batch
    by_numpy, by_torch, mixed = (ConfusionMatrix(NUM_CLASSES) for _ in range(3))
    by_numpy.update(pred, gt)
    by_torch.update(torch.from_numpy(pred), torch.from_numpy(gt))
    mixed.update(torch.from_numpy(pred), gt)
    np.testing.assert_array_equal(by_numpy.matrix, by_torch.matrix)
    np.testing.assert_array_equal(by_numpy.matrix, mixed.matrix)
    assert by_torch.matrix.dtype == np.int64


def test_merging_two_matrices_equals_one_pass():
    (p1, g1), (p2, g2) = _random_pair(1), _random_pair(2)
    one_pass, first, second = (ConfusionMatrix(NUM_CLASSES) for _ in range(3))
    one_pass.update(p1, g1)
    one_pass.update(p2, g2)
    first.update(p1, g1)
    second.update(p2, g2)
    np.testing.assert_array_equal((first + second).matrix, one_pass.matrix)
    assert first.matrix.sum() < one_pass.matrix.sum()  # + did not modify its operands
    np.testing.assert_array_equal(first.merge(second).matrix, one_pass.matrix)
    reduced = ConfusionMatrix.from_matrix(torch.from_numpy(one_pass.matrix))
    assert reduced.compute(NAMES).to_dict() == one_pass.compute(NAMES).to_dict()


def test_update_rejects_shape_mismatch_and_out_of_range_ids():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"shape \(2, 3\) differs .* \(3, 2\)"):
        cm.update(np.zeros((2, 3), np.int64), np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match=r"prediction holds ids outside 0\.\.2 .*max 3"):
        cm.update(np.array([0, 3]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"ground truth holds ids outside 0\.\.2"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="integer ids"):
        cm.update(np.zeros(2, np.float32), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="merge"):
        cm.merge(ConfusionMatrix(4))
    cm.update(np.array([2, 0]), np.array([IGNORE_INDEX, IGNORE_INDEX]))  # all ignored: fine
    assert cm.matrix.sum() == 0


def test_empty_matrix_gives_nan_not_errors():
    metrics = ConfusionMatrix(2).compute(("a", "b"))
    assert math.isnan(metrics.miou) and math.isnan(metrics.pixel_accuracy)
    assert metrics.miou_all_classes == 0.0


def test_to_dict_is_json_with_none_for_nan():
    pred, gt = _random_pair(3)
    cm = ConfusionMatrix(NUM_CLASSES)
    cm.update(pred, gt)
    data = json.loads(json.dumps(cm.compute(NAMES).to_dict(), allow_nan=False))
    assert data["iou"][NAMES[ABSENT]] is None
    assert data["names"] == list(NAMES)


def test_markdown_names_every_class_and_labels_both_mious():
    pred, gt = _random_pair(4)
    cm = ConfusionMatrix(NUM_CLASSES)
    cm.update(pred, gt)
    text = format_markdown(cm.compute(NAMES))
    for name in NAMES:
        assert f"| {name} |" in text
    assert f"mIoU ({NUM_CLASSES - 1} valid classes)" in text
    assert "seed's variant" in text


def test_confusion_png_is_written_and_readable(tmp_path):
    pred, gt = _random_pair(5)
    cm = ConfusionMatrix(NUM_CLASSES)
    cm.update(pred, gt)
    path = save_confusion_png(cm.matrix, NAMES, tmp_path / "sub" / "confusion.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 100
    assert [p.name for p in path.parent.iterdir()] == ["confusion.png"]  # no temp file left
    with pytest.raises(ValueError, match="does not match 3 class names"):
        save_confusion_png(cm.matrix, NAMES[:3], tmp_path / "bad.png")
