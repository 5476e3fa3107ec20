"""Lovász-Softmax loss (Berman et al., CVPR 2018), vectorised over classes.

Same semantics as the reference implementation used by SCHP (`per_image=False`,
`classes="present"`): the whole batch is one set of pixels, ignore pixels are left out, and the
result is the mean over the classes present in the labels of the Lovász extension of the
Jaccard loss applied to the sorted errors |1[y = c] - p_c|.

The loss is a custom autograd function. Its forward sorts each present class's errors (numpy's
SIMD argsort on CPU, about 4x faster than `torch.sort`; `torch.sort` elsewhere), computes the
Lovász gradient vector g of the sorted foreground indicators, and returns mean_c dot(sorted
errors, g). The loss is piecewise linear in the errors, so its gradient w.r.t. the errors is g
itself, put back in pixel order; the backward multiplies it by d|1[y = c] - p_c|/dp_c (-1 on the
foreground, +1 elsewhere, 0 where the error is exactly 0, as autograd's `abs`). No autograd graph
runs through the sort, gather or cumsum.

Ignore pixels get error 0 and foreground 0: they sort to the tail, where they contribute nothing
and leave the Jaccard gradient of every other pixel unchanged. Absent classes are skipped. Equal
errors may come out in another order than `torch.sort`'s, which leaves the loss value unchanged
(a run of equal errors contributes error x the Jaccard change over the run).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from datasets.labels import IGNORE_INDEX


def lovasz_grad(fg_sorted: Tensor) -> Tensor:
    """Gradient of the Lovász extension w.r.t. errors sorted in descending order.

    Args:
        fg_sorted: (C, P) foreground indicators (0/1 float) of each class, in the order of that
            class's sorted errors.

    Returns:
        (C, P) tensor g with g[:, i] = J(top i+1 errors) - J(top i errors), J the Jaccard loss.
    """
    fg_cum = fg_sorted.cumsum(dim=1)
    gts = fg_cum[:, -1:]  # (C, 1)
    rank = torch.arange(1, fg_sorted.shape[1] + 1, dtype=fg_sorted.dtype, device=fg_sorted.device)
    # union = gts + #non-foreground in the top i+1 = gts + (i + 1) - fg_cum (exact integers)
    jaccard = 1.0 - (gts - fg_cum) / (gts + rank - fg_cum)  # union >= 1 everywhere
    jaccard[:, 1:] -= jaccard[:, :-1].clone()
    return jaccard


def descending_order(errors: Tensor) -> Tensor:
    """(C, P) int64 indices that sort each row of `errors` in descending order."""
    if errors.device.type != "cpu":
        return torch.sort(errors.detach(), dim=1, descending=True).indices
    keys = np.ascontiguousarray(-errors.detach().numpy())
    return torch.from_numpy(np.argsort(keys, axis=1))


def _class_major(probas: Tensor) -> Tensor:
    """(N, C, H, W) -> (C, N·H·W), a contiguous copy."""
    return probas.transpose(0, 1).reshape(probas.shape[1], -1)


class _LovaszSoftmax(torch.autograd.Function):
    """Lovász-Softmax with a closed-form backward (module docstring)."""

    @staticmethod
    def forward(ctx: FunctionCtx, probas: Tensor, labels: Tensor, ignore_index: int) -> Tensor:
        num_classes = probas.shape[1]
        flat_labels = labels.reshape(-1)
        valid = flat_labels != ignore_index
        counts = torch.bincount(flat_labels[valid], minlength=num_classes)[:num_classes]
        classes = torch.nonzero(counts).squeeze(1)  # present classes only
        probs = _class_major(probas.detach())[classes]  # (K, P)
        fg = flat_labels.unsqueeze(0) == classes.unsqueeze(1)  # (K, P) bool, False at ignore
        errors = torch.where(fg, 1.0 - probs, probs)  # = |1[y = c] - p_c| exactly
        errors.masked_fill_(~valid, 0.0)
        order = descending_order(errors)
        grad_sorted = lovasz_grad(fg.gather(1, order).to(probs.dtype))
        grad = torch.empty_like(errors).scatter_(1, order, grad_sorted)  # back in pixel order
        num_present = max(int(classes.numel()), 1)
        loss = (errors * grad).sum() / num_present  # = Σ_c dot(sorted errors, g) / #present
        ctx.save_for_backward(grad, fg, errors, classes)
        ctx.shape = probas.shape
        ctx.num_present = num_present
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_output: Tensor) -> tuple[Tensor | None, None, None]:
        grad, fg, errors, classes = ctx.saved_tensors
        n, c, h, w = ctx.shape
        grad = grad * (grad_output / ctx.num_present)
        grad = torch.where(fg, -grad, grad).masked_fill_(errors == 0, 0.0)  # d|fg - p|/dp
        full = grad.new_zeros(c, n, h, w)
        full[classes] = grad.view(-1, n, h, w)
        return full.transpose(0, 1), None, None


def lovasz_softmax(probas: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Lovász-Softmax over the whole batch, averaged over the classes present in `labels`.

    Args:
        probas: (N, C, H, W) class probabilities (softmax output); float64 stays float64,
            other dtypes are computed in float32.
        labels: (N, H, W) integer class ids; `ignore_index` pixels are ignored.
        ignore_index: label value to ignore.

    Returns:
        Scalar loss. 0 with a zero gradient when no pixel is valid.
    """
    if probas.dtype != torch.float64:
        probas = probas.float()
    return _LovaszSoftmax.apply(probas, labels.long(), ignore_index)
