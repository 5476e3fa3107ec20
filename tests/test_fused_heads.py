"""The fused head path (`networks.ops` kernels) equals the plain modules for every registered model.

float64, so any difference beyond rounding is a bug: forward outputs, the gradient of every
parameter, and the BatchNorm running statistics after a training step; eval mode too.
"""

import copy

import pytest
import torch

from networks import MODELS, build_model, fuse_heads
from networks.norm import convert_sync_batchnorm

TOL = {"rtol": 1e-9, "atol": 1e-10}
INPUT = (2, 3, 64, 48)
NUM_CLASSES = 5


def _plain_and_fused(arch: str, heads: str = "full"):
    torch.manual_seed(0)
    plain = build_model(arch, NUM_CLASSES, heads=heads, fused=False).double()
    fused = fuse_heads(copy.deepcopy(plain))
    assert (plain.fused, fused.fused) == (False, True)
    return plain, fused


def _step(model, x, seed: int):
    """Forward (dropout drawn from `seed`) and backward of a loss touching every output."""
    torch.manual_seed(seed)
    out = model(x)
    loss = sum(
        (t * torch.linspace(-1, 1, t.numel(), dtype=t.dtype).view_as(t)).sum()
        for t in out
        if t is not None
    )
    loss.backward()
    return out


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_fused_heads_train_like_the_plain_modules(arch: str) -> None:
    plain, fused = _plain_and_fused(arch)
    x = torch.randn(INPUT, dtype=torch.float64)
    for model in (plain, fused):
        model.train()
    out_plain, out_fused = _step(plain, x, seed=1), _step(fused, x, seed=1)
    for name, a, b in zip(out_plain._fields, out_plain, out_fused, strict=True):
        torch.testing.assert_close(b, a, **TOL, msg=f"{arch} {name}")
    grads = {n: p.grad for n, p in fused.named_parameters()}
    for name, p in plain.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, **TOL, msg=f"{arch} grad {name}")
    buffers = dict(fused.named_buffers())
    for name, buffer in plain.named_buffers():
        torch.testing.assert_close(buffers[name], buffer, **TOL, msg=f"{arch} buffer {name}")


@pytest.mark.parametrize("arch", ["segformer_mit_b0", "resnet101"])
def test_fused_heads_predict_like_the_plain_modules_in_eval(arch: str) -> None:
    plain, fused = _plain_and_fused(arch)
    x = torch.randn(INPUT, dtype=torch.float64)
    for model in (plain, fused):  # non-trivial running statistics to fold
        model.train()
        torch.manual_seed(1)  # the same stochastic depth in both
        with torch.no_grad():
            model(x * 2 + 0.5)
        model.eval()
    with torch.no_grad():
        for a, b in zip(plain(x), fused(x), strict=True):
            torch.testing.assert_close(b, a, **TOL)


def test_plain_segformer_heads_fuse_too() -> None:
    plain, fused = _plain_and_fused("segformer_mit_b0", heads="plain")
    x = torch.randn(INPUT, dtype=torch.float64)
    out_plain, out_fused = _step(plain.train(), x, 2), _step(fused.train(), x, 2)
    assert out_fused.edge is None
    torch.testing.assert_close(out_fused.fusion, out_plain.fusion, **TOL)


def test_sync_batchnorm_keeps_fused_and_plain_equal() -> None:
    """SyncBatchNormAct2d has its own forward: the fused kernels leave it to run itself."""
    plain, fused = _plain_and_fused("segformer_mit_b0")
    plain, fused = convert_sync_batchnorm(plain), convert_sync_batchnorm(fused)
    x = torch.randn(INPUT, dtype=torch.float64)
    out_plain, out_fused = _step(plain.train(), x, 3), _step(fused.train(), x, 3)
    for a, b in zip(out_plain, out_fused, strict=True):
        torch.testing.assert_close(b, a, **TOL)


def test_build_model_fuses_unless_told_not_to() -> None:
    assert build_model("segformer_mit_b0", 3).fused
    assert not build_model("segformer_mit_b0", 3, fused=False).fused
    with pytest.raises(TypeError, match="no fused head path"):
        fuse_heads(torch.nn.Linear(2, 2))
