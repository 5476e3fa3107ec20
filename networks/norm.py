"""Normalisation: BatchNormAct2d (InPlace-ABN's BatchNorm + LeakyReLU), BatchNorm2d's running-stat
update (`update_running_stats`, shared by the fused kernels) and its synchronised twin.

Synchronised BatchNorm that keeps BatchNormAct2d's activation (used only when distributed):

`nn.SyncBatchNorm.convert_sync_batchnorm` would turn BatchNormAct2d into a plain SyncBatchNorm and
silently drop its LeakyReLU, and `nn.SyncBatchNorm` runs on CUDA only (DistributedDataParallel
refuses it on CPU). `convert_sync_batchnorm` here maps every BatchNorm2d (BatchNormAct2d included)
to `SyncBatchNormAct2d`, sharing the parameters and buffers of the module it replaces, so an
optimizer built before the conversion still holds them.

`SyncBatchNormAct2d` in training mode, when a process group of more than one process is up,
normalises with the mean and biased variance over every process's batch (two differentiable
all-reduces: gloo on CPU, NCCL on CUDA; gradients flow across processes as with SyncBatchNorm) and
updates its running statistics from them (unbiased variance, PyTorch's convention). Otherwise (one
process, or eval mode) it is exactly a BatchNormAct2d.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

LEAKY_SLOPE = 0.01  # InPlace-ABN's default activation


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm2d followed by LeakyReLU(0.01) in one module (InPlace-ABN replacement).

    Args:
        num_features: channels C of the (N, C, H, W) input.
        activation: "leaky_relu" (default) or None for plain BatchNorm.
        slope: negative slope of the LeakyReLU.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        activation: str | None = "leaky_relu",
        slope: float = LEAKY_SLOPE,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        if activation not in ("leaky_relu", None):
            raise ValueError(
                f"networks/norm.py: unknown activation {activation!r}; use 'leaky_relu' or None"
            )
        self.activation = activation
        self.slope = slope

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if self.activation is None:
            return x
        return F.leaky_relu(x, self.slope, inplace=True)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}, slope={self.slope}"


def update_running_stats(
    bn: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: int | Tensor
) -> None:
    """BatchNorm2d's update of the running mean and (unbiased) variance from the batch mean and
    biased variance of `count` values per channel (a tensor keeps it on the device)."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        momentum = bn.momentum
        if momentum is None:  # cumulative moving average
            momentum = 1.0 / float(bn.num_batches_tracked)
        count = torch.as_tensor(count, dtype=var.dtype, device=var.device)
        unbiased = var * (count / (count - 1).clamp(min=1))
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
        bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)


def has_standard_forward(bn: nn.Module) -> bool:
    """Whether `bn` normalises as BatchNorm2d (+ BatchNormAct2d's activation) does, so that a fused
    kernel may compute its output from its parameters and buffers; SyncBatchNormAct2d may not."""
    return isinstance(bn, nn.BatchNorm2d) and type(bn).forward in (
        nn.BatchNorm2d.forward,
        BatchNormAct2d.forward,
    )


def conv_bn_act_layers(in_channels: int, out_channels: int, kernel: int = 1) -> list[nn.Module]:
    """[conv k x k (same padding, no bias), BatchNormAct2d]: SCHP's conv + InPlace-ABN pair."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False)
    return [conv, BatchNormAct2d(out_channels)]


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; its gradient is the all-reduced sum of every process's gradient."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce(x: Tensor) -> Tensor:
    """Differentiable sum of `x` over the processes of the default group."""
    return _AllReduceSum.apply(x)


def _synchronising() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class SyncBatchNormAct2d(BatchNormAct2d):
    """BatchNormAct2d whose training-mode statistics span all processes of the default group."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and _synchronising()):
            return super().forward(x)
        x = self._sync_batch_norm(x)
        if self.activation is None:
            return x
        return F.leaky_relu(x, self.slope, inplace=True)

    def _sync_batch_norm(self, x: Tensor) -> Tensor:
        """(N, C, H, W) on this process -> normalised with the statistics of all processes."""
        shape = (1, -1, 1, 1)  # broadcast (C,) over (N, C, H, W)
        count = x.new_full((1,), x.numel() // x.shape[1])
        sums = all_reduce(torch.cat([x.sum((0, 2, 3)), count]))  # (C + 1,)
        total = sums[-1]
        mean = sums[:-1] / total
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum((0, 2, 3))) / total  # biased
        if self.track_running_stats:
            update_running_stats(self, mean, var, total)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d (incl. BatchNormAct2d) in `module` becomes a SyncBatchNormAct2d."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, SyncBatchNormAct2d):
        is_act = isinstance(module, BatchNormAct2d)
        sync = SyncBatchNormAct2d(
            module.num_features,
            module.eps,
            module.momentum,
            activation=module.activation if is_act else None,
            slope=module.slope if is_act else LEAKY_SLOPE,
        )
        sync.affine, sync.track_running_stats = module.affine, module.track_running_stats
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            setattr(sync, name, getattr(module, name))
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child))
    return module
