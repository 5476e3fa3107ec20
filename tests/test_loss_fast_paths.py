"""The closed-form backward passes of the loss equal autograd through the plain formulas."""

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datasets.label_set import IGNORE_INDEX
from datasets.transforms import EDGE_WIDTH
from utils.criterion import parsing_edge_map
from utils.lovasz import lovasz_grad, lovasz_softmax

TOL = 1e-6


def reference_lovasz(probas: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The previous implementation: autograd through abs, gather and the Jaccard cumsums."""
    num_classes = probas.shape[1]
    probas = probas.movedim(1, -1).reshape(-1, num_classes)
    labels = labels.reshape(-1)
    valid = (labels != IGNORE_INDEX).unsqueeze(1)
    fg = F.one_hot(torch.where(valid.squeeze(1), labels, 0), num_classes).to(probas) * valid
    errors = ((fg - probas).abs() * valid).t()
    keys = np.ascontiguousarray(-errors.detach().numpy())
    order = torch.from_numpy(np.argsort(keys, axis=1))
    fg_sorted = fg.t().gather(1, order)
    gts = fg_sorted.sum(dim=1, keepdim=True)
    jaccard = 1.0 - (gts - fg_sorted.cumsum(1)) / (gts + (1.0 - fg_sorted).cumsum(1))
    grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    per_class = (errors.gather(1, order) * grad).sum(dim=1)
    present = (fg_sorted.sum(dim=1) > 0).to(probas)
    return (per_class * present).sum() / present.sum().clamp(min=1.0)


def reference_edge_map(probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The previous parsing_edge_map: padded slices, stack, autograd everywhere."""
    v = valid.to(probs)

    def pair(a, b, pad):
        tv = 0.5 * (probs[(..., *a)] - probs[(..., *b)]).abs().sum(dim=1)
        return F.pad(tv * v[(..., *a)] * v[(..., *b)], pad)

    full, head, tail = slice(None), slice(None, -1), slice(1, None)
    raw = torch.stack(
        [
            pair((tail, full), (head, full), (0, 0, 1, 0)),
            pair((full, head), (full, tail), (0, 1, 0, 0)),
            pair((head, head), (tail, tail), (0, 1, 0, 1)),
            pair((head, tail), (tail, head), (1, 0, 0, 1)),
        ]
    ).amax(dim=0)
    pooled = F.max_pool2d(raw.unsqueeze(1), EDGE_WIDTH, stride=1, padding=EDGE_WIDTH // 2)
    return pooled.squeeze(1) * v


def batch(seed: int, n: int = 2, c: int = 5, h: int = 24, w: int = 20, absent: bool = True):
    gen = torch.Generator().manual_seed(seed)
    # blocky labels with ignore pixels; class c-1 absent when `absent`
    label = torch.randint(0, c - 1 if absent else c, (n, h // 4, w // 4), generator=gen)
    label = label.repeat_interleave(4, 1).repeat_interleave(4, 2)
    label[:, :5, :7] = IGNORE_INDEX
    logits = 3.0 * torch.randn(n, c, h, w, generator=gen)
    logits[:, 0, -3:] = 200.0  # probabilities of exactly 0 and 1 (errors of exactly 0)
    return logits, label


def value_and_grad(fn, logits: torch.Tensor, *args) -> tuple[torch.Tensor, torch.Tensor]:
    x = logits.clone().requires_grad_()
    out = fn(F.softmax(x, dim=1), *args)
    weight = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weight).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("absent", [False, True])
def test_lovasz_torch_sort_backend_on_cpu_equals_the_numpy_backend(seed, absent):
    """The GPU path (`torch.sort`, `lovasz_grad`) runs here too and agrees with the numpy path."""
    logits, label = batch(seed, absent=absent)
    numpy_value, numpy_grad = value_and_grad(
        partial(lovasz_softmax, backend="numpy"), logits, label
    )
    torch_value, torch_grad = value_and_grad(
        partial(lovasz_softmax, backend="torch"), logits, label
    )
    assert torch_value.item() == pytest.approx(numpy_value.item(), abs=TOL)
    assert (torch_grad - numpy_grad).abs().max().item() < TOL
    with pytest.raises(ValueError, match="unknown backend"):
        lovasz_softmax(F.softmax(logits, 1), label, backend="cuda")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("absent", [False, True])
def test_lovasz_matches_autograd_reference(seed, absent):
    logits, label = batch(seed, absent=absent)
    value, grad = value_and_grad(lovasz_softmax, logits, label)
    ref_value, ref_grad = value_and_grad(reference_lovasz, logits, label)
    assert value.item() == pytest.approx(ref_value.item(), abs=TOL)
    assert (grad - ref_grad).abs().max().item() < TOL


def test_lovasz_accepts_uint8_labels():
    logits, label = batch(3)
    probs = F.softmax(logits, dim=1)
    expected = lovasz_softmax(probs, label)
    assert lovasz_softmax(probs, label.to(torch.uint8)).item() == expected.item()


def test_lovasz_gradcheck_float64():
    logits, label = batch(4, n=1, c=4, h=8, w=8)
    x = logits.double().div(3.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda z: lovasz_softmax(F.softmax(z, 1), label), (x,))


def test_lovasz_grad_is_the_jaccard_difference():
    fg = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    jaccard = [1 - 1 / 2, 1 - 1 / 3, 1 - 0 / 3, 1 - 0 / 4]  # 1 - intersection/union, top k
    expected = torch.tensor(jaccard).diff(prepend=torch.zeros(1))
    assert torch.allclose(lovasz_grad(fg)[0], expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_parsing_edge_map_matches_autograd_reference(seed):
    logits, label = batch(seed)
    valid = label != IGNORE_INDEX
    value, grad = value_and_grad(parsing_edge_map, logits, valid)
    ref_value, ref_grad = value_and_grad(reference_edge_map, logits, valid)
    assert (value - ref_value).abs().max().item() < TOL
    assert (grad - ref_grad).abs().max().item() < TOL


def test_parsing_edge_map_gradcheck_float64():
    logits, label = batch(5, n=1, c=3, h=8, w=8)
    x = logits.double().div(3.0).requires_grad_()
    valid = label != IGNORE_INDEX
    assert torch.autograd.gradcheck(lambda z: parsing_edge_map(F.softmax(z, 1), valid), (x,))


@pytest.mark.parametrize("subset", [False, True], ids=["whole-row", "kept-subset"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["words", "argsort"])
def test_descending_orders_by_descending_error_then_index(dtype, subset) -> None:
    from utils.lovasz import _descending

    rng = np.random.default_rng(0)
    errors = rng.random(1000).astype(dtype)
    errors[::7] = 0.0  # ignore pixels: exact zeros
    errors[1::9] = 0.5  # runs of equal errors
    kept = np.flatnonzero(rng.random(1000) < 0.6) if subset else None
    order = _descending(errors, kept)
    assert order.dtype == np.int64
    candidates = np.arange(1000) if kept is None else kept
    np.testing.assert_array_equal(np.sort(order), candidates)  # each candidate once
    expected = sorted(candidates, key=lambda i: (-errors[i], i))
    np.testing.assert_array_equal(order, expected)


def test_confident_predictions_drop_background_below_the_last_foreground(monkeypatch):
    """Background errors below every foreground error of their class are not sorted, and loss and
    gradient still equal the reference's."""
    import utils.lovasz

    sorted_fraction = []
    descending = utils.lovasz._descending

    def recording_descending(errors, kept):
        sorted_fraction.append(1.0 if kept is None else len(kept) / errors.size)
        return descending(errors, kept)

    monkeypatch.setattr(utils.lovasz, "_descending", recording_descending)
    logits, label = batch(7)
    # a trained net's shape: other classes' logits far below (most background probabilities
    # below the best foreground error), no probability of exactly 1 away from batch()'s corner
    logits = logits / 10.0 + 10.0 * F.one_hot(label.clamp(max=4), 5).movedim(-1, 1) - 6.0
    value, grad = value_and_grad(lovasz_softmax, logits, label)
    ref_value, ref_grad = value_and_grad(reference_lovasz, logits, label)
    assert value.item() == pytest.approx(ref_value.item(), abs=TOL)
    assert (grad - ref_grad).abs().max().item() < TOL
    assert min(sorted_fraction) < 0.5  # the test exercises the subset path
