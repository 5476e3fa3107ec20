"""Lovász-Softmax loss (Berman et al., CVPR 2018), vectorised over classes.

Same semantics as the reference implementation used by SCHP (`per_image=False`,
`classes="present"`): the whole batch is one set of pixels, ignore pixels are left out, and the
result is the mean over the classes present in the labels of the Lovász extension of the
Jaccard loss applied to the sorted errors |1[y = c] - p_c|.

The loss is a custom autograd function. Its forward sorts each present class's errors, computes the
Lovász gradient vector g of the sorted foreground indicators, and returns mean_c dot(sorted errors,
g). On CPU (`_row_lovasz_grad`, classes split over torch's intra-op threads) only the pixels that
can have a non-zero g are sorted: past a class's last foreground pixel in the order g is 0, so
background pixels with an error below the smallest foreground error are left out (most (class,
pixel) pairs of a trained model; exact, the kept ones sort to the full sort's prefix), and numpy's
SIMD sort of (error bits, pixel index) words is faster than `torch.sort` (`backend="torch"`, the
path off CPU; figures in benchmarks/README.md). The forward makes one class-major copy of the
probabilities and subtracts the foreground from it in place. The loss is piecewise linear in the
errors, so its gradient w.r.t. the errors is g itself, put back in pixel order; the backward
multiplies it by d|1[y = c] - p_c|/dp_c (-1 on the foreground, +1 elsewhere, 0 where the error is
exactly 0, as autograd's `abs`). No autograd graph runs through the sort, gather or cumsum.

Ignore pixels get error 0 and foreground 0: they sort to the tail, where they contribute nothing
and leave the Jaccard gradient of every other pixel unchanged. Absent classes are skipped. Equal
errors may come out in another order than `torch.sort`'s, which leaves the loss value unchanged
(a run of equal errors contributes error x the Jaccard change over the run).
"""

from __future__ import annotations

import functools
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from datasets.label_set import IGNORE_INDEX


def lovasz_grad(fg_sorted: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Gradient of the Lovász extension w.r.t. errors sorted in descending order.

    Args:
        fg_sorted: (C, P) foreground indicators (bool or 0/1 float) of each class, in the order
            of that class's sorted errors.
        dtype: floating dtype of the result; default `fg_sorted`'s when floating, else float32.

    Returns:
        (C, P) tensor g with g[:, i] = J(top i+1 errors) - J(top i errors), J the Jaccard loss
        J = 1 - intersection / union, written as g[:, i] = r[:, i-1] - r[:, i] with r the
        intersection / union ratio (g[:, 0] = 1 - r[:, 0]). Four full-size passes after the cumsum.
    """
    if dtype is None:
        dtype = fg_sorted.dtype if fg_sorted.is_floating_point() else torch.float32
    fg_cum = fg_sorted.to(dtype).cumsum(dim=1)  # a float cumsum: faster than one from bool
    gts = fg_cum[:, -1:].clone()  # (C, 1)
    rank = torch.arange(1, fg_sorted.shape[1] + 1, dtype=dtype, device=fg_sorted.device)
    # union = gts + #non-foreground in the top i+1 = gts + (i + 1) - fg_cum (exact integers, >= 1)
    union = (rank + gts).sub_(fg_cum)
    ratio = fg_cum.neg_().add_(gts).div_(union)  # intersection / union, in fg_cum's memory
    grad = union  # reuse the buffer: union is no longer needed
    grad[:, :1] = 1.0 - ratio[:, :1]
    torch.sub(ratio[:, :-1], ratio[:, 1:], out=grad[:, 1:])
    return grad


_LITTLE_ENDIAN = sys.byteorder == "little"
_INDEX_BITS = 32  # the low half of a sort word holds the pixel index
_SUBSET_MAX_FRACTION = 0.5  # above this share of kept pixels the whole row is sorted (no gather)


def _descending(errors: np.ndarray, kept: np.ndarray | None) -> np.ndarray:
    """Pixel indices of a row of non-negative errors (only `kept` ones when given), by
    descending error; equal errors by pixel index.

    float32 errors are sorted as uint64 words (~bits << 32 | index): the bit patterns of
    non-negative floats order like their values, and numpy's SIMD sort of uint64 values runs
    faster than its argsort of the floats. Other dtypes use a stable argsort.
    """
    if errors.dtype != np.float32 or errors.size >= 2**_INDEX_BITS or not _LITTLE_ENDIAN:
        if kept is None:
            return np.argsort(-errors, kind="stable")
        return kept[np.argsort(-errors[kept], kind="stable")]
    bits = errors.view(np.uint32)
    if kept is None:
        words = np.empty(errors.size, np.uint64)
        halves = words.view(np.uint32).reshape(-1, 2)  # [:, 0] is the low word
        np.invert(bits, out=halves[:, 1])  # larger error -> smaller key
        halves[:, 0] = np.arange(errors.size, dtype=np.uint32)
    else:
        words = np.invert(bits[kept]).astype(np.uint64)
        words <<= np.uint64(_INDEX_BITS)
        words |= kept.astype(np.uint64)
    words.sort()
    return (words & np.uint64(2**_INDEX_BITS - 1)).astype(np.int64)


def _row_lovasz_grad(errors: np.ndarray, fg: np.ndarray, out: np.ndarray) -> None:
    """Write one present class's Lovász gradient w.r.t. its errors into `out` (pixel order).

    Once the class's last foreground pixel has passed in the descending order, the intersection
    term is 0 and the Jaccard loss stays 1, so every later pixel has gradient 0 (and adds 0 to the
    loss). Those are the background pixels with an error below the smallest foreground error:
    they are not sorted and keep the 0 already in `out`; the others (ties at the threshold
    included) sort to the same prefix as a full sort, so the result is the full sort's. On a
    trained model this keeps a fraction of the (class, pixel) pairs; on the near-uniform
    predictions of random weights only the foreground.
    """
    threshold = np.min(errors, where=fg, initial=np.inf)
    if np.isnan(threshold):  # NaN probabilities (a diverged model): a NaN loss, never a crash
        out.fill(np.nan)
        return
    keep = errors >= threshold
    share = np.count_nonzero(keep) / keep.size
    kept = None if share > _SUBSET_MAX_FRACTION else np.flatnonzero(keep)
    order = _descending(errors, kept)
    dtype = np.float32 if errors.dtype == np.float32 and errors.size < 2**24 else np.float64
    passed = np.cumsum(fg[order], dtype=dtype)  # foreground among the first i+1 (exact integers)
    inter = passed[-1] - passed  # foreground not yet passed (all of it is in the sorted part)
    rank = np.arange(1, len(order) + 1, dtype=dtype)
    ratio = inter / (inter + rank)  # intersection / union, union = gts + rank - passed
    grad = np.empty_like(ratio)
    grad[0] = 1.0 - ratio[0]
    np.subtract(ratio[:-1], ratio[1:], out=grad[1:])
    out[order] = grad


@functools.cache
def _sort_pool(threads: int) -> ThreadPoolExecutor:
    """One reusable pool per thread count (`torch.set_num_threads` may change between calls)."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lovasz-sort")


def _lovasz_grad_cpu(errors: Tensor, fg: Tensor) -> Tensor:
    """(K, P) Lovász gradient w.r.t. the errors of K present classes, in pixel order.

    Rows run on torch's intra-op threads (numpy's sort, gathers and cumsums release the GIL),
    so a 2-thread training process handles two classes at a time.
    """
    errors_np, fg_np = errors.numpy(), fg.numpy()
    grad = np.zeros(errors_np.shape, errors_np.dtype)
    rows = range(errors_np.shape[0])
    threads = min(torch.get_num_threads(), len(rows))

    def row(r: int) -> None:
        _row_lovasz_grad(errors_np[r], fg_np[r], grad[r])

    if threads <= 1:
        for r in rows:
            row(r)
    else:
        list(_sort_pool(threads).map(row, rows))
    return torch.from_numpy(grad)


def descending_order(errors: Tensor) -> Tensor:
    """(C, P) int64 indices that sort each row of non-negative `errors` in descending order
    (`torch.sort`, the path off CPU)."""
    return torch.sort(errors, dim=1, descending=True).indices


class _LovaszSoftmax(torch.autograd.Function):
    """Lovász-Softmax with a closed-form backward (module docstring)."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, probas: Tensor, labels: Tensor, ignore_index: int, backend: str
    ) -> Tensor:
        n, c, h, w = probas.shape
        flat_labels = labels.reshape(-1)
        valid = flat_labels != ignore_index
        counts = torch.bincount(flat_labels[valid], minlength=c)[:c]
        classes = torch.nonzero(counts).squeeze(1)  # present classes only
        num_present = max(int(classes.numel()), 1)
        fg = flat_labels.unsqueeze(0) == classes.unsqueeze(1)  # (K, P) bool, False at ignore
        # Signed errors p_c - 1[y = c], class-major (one copy): |.| is the error, sgn its
        # derivative (0 where the error is exactly 0, as autograd's abs). Ignore pixels: 0.
        pixels = flat_labels.numel()
        diff = probas.detach().transpose(0, 1).index_select(0, classes).view(-1, pixels)
        # - 1 at each valid pixel's own class: a K x P pass on all threads (P indexed updates
        # are fewer operations but run on one thread, and take longer)
        diff.sub_(fg.to(diff.dtype)).masked_fill_(~valid, 0.0)
        errors = diff.abs()
        if backend == "numpy" or (backend == "auto" and errors.device.type == "cpu"):
            grad = _lovasz_grad_cpu(errors.cpu(), fg.cpu()).to(errors.device)
        else:
            order = descending_order(errors)
            grad = lovasz_grad(fg.gather(1, order), dtype=diff.dtype)
            grad = torch.empty_like(errors).scatter_(1, order, grad)  # back in pixel order
        loss = errors.mul_(grad).sum() / num_present  # = Σ_c dot(sorted errors, g) / #present
        ctx.save_for_backward(grad, diff, classes)
        ctx.shape = probas.shape
        ctx.num_present = num_present
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_output: Tensor) -> tuple[Tensor | None, None, None, None]:
        grad, diff, classes = ctx.saved_tensors
        n, c, h, w = ctx.shape
        grad = diff.sgn().mul_(grad).mul_(grad_output / ctx.num_present)  # d|p - fg|/dp · g
        full = grad.new_zeros(n, c, h, w) if len(classes) < c else grad.new_empty(n, c, h, w)
        full.transpose(0, 1).index_copy_(0, classes, grad.view(-1, n, h, w))
        return full, None, None, None


LOVASZ_BACKENDS = ("auto", "numpy", "torch")


def lovasz_softmax(
    probas: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX, backend: str = "auto"
) -> Tensor:
    """Lovász-Softmax over the whole batch, averaged over the classes present in `labels`.

    Args:
        probas: (N, C, H, W) class probabilities (softmax output); float64 stays float64,
            other dtypes are computed in float32.
        labels: (N, H, W) integer class ids; `ignore_index` pixels are ignored.
        ignore_index: label value to ignore.
        backend: how the errors are sorted: "numpy" (the pruned SIMD sort, CPU threads),
            "torch" (`torch.sort` on the tensors' device) or "auto" (numpy on CPU, else torch).
            Both give the same loss and gradient.

    Returns:
        Scalar loss. 0 with a zero gradient when no pixel is valid.
    """
    if backend not in LOVASZ_BACKENDS:
        raise ValueError(
            f"lovasz_softmax: unknown backend {backend!r}; use one of {LOVASZ_BACKENDS}"
        )
    if probas.dtype != torch.float64:
        probas = probas.float()
    return _LovaszSoftmax.apply(probas, labels.long(), ignore_index, backend)
