"""Lovász-Softmax loss (Berman et al., CVPR 2018), vectorised over classes.

Same semantics as the reference implementation used by SCHP (`per_image=False`,
`classes="present"`): the whole batch is one set of pixels, ignore pixels are left out, and the
result is the mean over the classes present in the labels of the Lovász extension of the
Jaccard loss applied to the sorted errors |1[y = c] - p_c|.

Instead of dropping the ignore pixels (a data-dependent gather that stalls the GPU), their error
and foreground indicator are set to 0: they sort to the tail, where they contribute nothing and
leave the Jaccard gradient of every other pixel unchanged. Absent classes are masked out of the
mean instead of skipped in a Python loop, so the loss is one sort over a (C, P) tensor.

On CPU the sort order comes from numpy's SIMD argsort (x86-simd-sort), about 4x faster than
`torch.sort` for a 9 x 393,216 tensor (a 512x384 batch of 2); the sorted values are still gathered
with autograd. Equal errors may come out in another order than `torch.sort`'s, which leaves the
loss value unchanged (a run of equal errors contributes error x the Jaccard change over the run).
"""

from __future__ import annotations

import numpy as np
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


def descending_order(errors: Tensor) -> Tensor:
    """(C, P) int64 indices that sort each row of `errors` in descending order."""
    if errors.device.type != "cpu":
        return torch.sort(errors.detach(), dim=1, descending=True).indices
    keys = np.ascontiguousarray(-errors.detach().numpy())
    return torch.from_numpy(np.argsort(keys, axis=1))


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
    errors = errors.t()  # (C, P)
    order = descending_order(errors)
    errors_sorted = errors.gather(1, order)
    fg_sorted = fg.t().gather(1, order)
    per_class = (errors_sorted * lovasz_grad(fg_sorted)).sum(dim=1)  # (C,)
    present = (fg_sorted.sum(dim=1) > 0).float()
    return (per_class * present).sum() / present.sum().clamp(min=1.0)
