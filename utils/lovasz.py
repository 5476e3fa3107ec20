"""Lovász-Softmax loss (Berman et al., CVPR 2018), vectorised over classes.

Same semantics as the reference implementation used by SCHP (`per_image=False`,
`classes="present"`): the whole batch is one set of pixels, ignore pixels are left out, and the
result is the mean over the classes present in the labels of the Lovász extension of the
Jaccard loss applied to the sorted errors |1[y = c] - p_c|.

Instead of dropping the ignore pixels (a data-dependent gather that stalls the GPU), their error
and foreground indicator are set to 0: they sort to the tail, where they contribute nothing and
leave the Jaccard gradient of every other pixel unchanged. Absent classes are masked out of the
mean instead of skipped in a Python loop, so the loss is one sort over a (C, P) tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from datasets.labels import IGNORE_INDEX


def lovasz_grad(fg_sorted: Tensor) -> Tensor:
    """Gradient of the Lovász extension w.r.t. errors sorted in descending order.

    Args:
        fg_sorted: (C, P) foreground indicators (0/1 float) of each class, in the order of that
            class's sorted errors.

    Returns:
        (C, P) tensor g with g[:, i] = J(top i+1 errors) - J(top i errors), J the Jaccard loss.
    """
    gts = fg_sorted.sum(dim=1, keepdim=True)  # (C, 1)
    intersection = gts - fg_sorted.cumsum(dim=1)
    union = gts + (1.0 - fg_sorted).cumsum(dim=1)  # >= 1 everywhere
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)


def lovasz_softmax(probas: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Lovász-Softmax over the whole batch, averaged over the classes present in `labels`.

    Args:
        probas: (N, C, H, W) class probabilities (softmax output).
        labels: (N, H, W) int64 class ids; `ignore_index` pixels are ignored.
        ignore_index: label value to ignore.

    Returns:
        Scalar loss (float32). 0 with a zero gradient when no pixel is valid.
    """
    num_classes = probas.shape[1]
    probas = probas.float().movedim(1, -1).reshape(-1, num_classes)  # (P, C)
    labels = labels.reshape(-1)
    valid = (labels != ignore_index).unsqueeze(1)  # (P, 1)
    fg = F.one_hot(torch.where(valid.squeeze(1), labels, 0), num_classes).float() * valid
    errors = (fg - probas).abs() * valid  # ignore pixels: error 0, fg 0
    errors_sorted, order = torch.sort(errors.t(), dim=1, descending=True)  # (C, P)
    fg_sorted = fg.t().gather(1, order)
    per_class = (errors_sorted * lovasz_grad(fg_sorted)).sum(dim=1)  # (C,)
    present = (fg_sorted.sum(dim=1) > 0).float()
    return (per_class * present).sum() / present.sum().clamp(min=1.0)
