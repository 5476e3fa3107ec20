"""SCHP self-correction: online model aggregation, BN re-estimation, cycle boundaries.

After the last epoch of each cycle (`is_cycle_end`) the trainer calls

    moving_average(teacher, student, alpha=1 / (cycle_n + 1)); cycle_n += 1
    bn_re_estimate(teacher, train_loader, device)

so the teacher's weights are the running mean of the student snapshots taken at the cycle ends
(the first aggregation, cycle_n = 0, copies the student), and its BatchNorm statistics are those of
the averaged weights. The teacher then runs in eval mode (the seed left it in train mode, bug 13).

Buffers in aggregation: floating-point buffers (BN running_mean / running_var) are averaged with
the same weight as the parameters, other buffers (`num_batches_tracked`) are copied from the
student. The BN statistics are re-estimated right after anyway; this choice only makes the first
aggregation an exact copy and keeps a sensible teacher if re-estimation is skipped.

BN re-estimation: every `_BatchNorm` (BatchNorm1d/2d/3d, SyncBatchNorm, `BatchNormAct2d`, the
decode head's `linear_fuse` BN) is reset, then one pass over the training loader in train mode
under no_grad accumulates the cumulative average of the batch statistics, each batch weighted by its
size (momentum b/(n_seen + b), as upstream SCHP; the same as `momentum=None` for equal batches and
exact when the last batch is short). running_mean is then the dataset mean; running_var is the
size-weighted mean of the per-batch *unbiased* variances (PyTorch's running_var convention), i.e.
the within-batch variance, as in SCHP and `torch.optim.swa_utils.update_bn`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextlib import nullcontext

import torch
from torch import nn

from datasets.transforms import normalize_batch
from networks.contracts import InputSpec

logger = logging.getLogger(__name__)


def is_cycle_end(epoch: int, schp_start: int, cycle_epochs: int) -> bool:
    """True after the 0-based `epoch` that closes an SCHP cycle: aggregate and re-estimate then.

    That is (epoch+1) >= schp_start and (epoch+1-schp_start) divisible by cycle_epochs; with the
    defaults (100, 10) after epochs 99, 109, ..., 149.
    """
    done = epoch + 1
    return done >= schp_start and (done - schp_start) % cycle_epochs == 0


@torch.no_grad()
def moving_average(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """teacher = (1 - alpha)·teacher + alpha·student, in place (unwrapped modules, same arch).

    Floating-point buffers are averaged the same way, the others copied from the student.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"moving_average: alpha must be in [0, 1], got {alpha}")
    teacher_state = dict(teacher.named_parameters()) | dict(teacher.named_buffers())
    student_state = dict(student.named_parameters()) | dict(student.named_buffers())
    if teacher_state.keys() != student_state.keys():
        diff = sorted(teacher_state.keys() ^ student_state.keys())
        raise ValueError(
            f"moving_average: teacher and student differ in {diff[:5]}; build both with the same "
            "--arch and --num-classes"
        )
    for name, tensor in teacher_state.items():
        source = student_state[name].to(tensor.device)
        if tensor.is_floating_point():
            tensor.lerp_(source.to(tensor.dtype), alpha)  # exact copy at alpha = 1
        else:
            tensor.copy_(source)


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@torch.no_grad()
def bn_re_estimate(
    model: nn.Module,
    loader: Iterable[dict],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    max_batches: int | None = None,
    input_spec: InputSpec | None = None,
) -> nn.Module:
    """Recompute every BatchNorm's running statistics over `loader` (module docstring).

    Args:
        model: the (teacher) model; its parameters are not changed.
        loader: yields dicts with `image` (N, 3, H, W), normally the augmented training loader.
        device: where the model runs.
        amp_dtype: autocast dtype (torch.bfloat16 / torch.float16), None for full precision.
        max_batches: stop after this many batches (None: the whole loader).
        input_spec: normalisation of uint8 images (`LIPDataset(image_dtype=torch.uint8)`);
            float images are used as they are.

    Returns:
        The model, in eval mode.
    """
    norms = _batch_norms(model)
    if not norms:
        logger.info("bn_re_estimate: the model has no BatchNorm layer; nothing to re-estimate")
        return model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
    autocast = (
        torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype)
        if amp_dtype is not None
        else nullcontext()
    )
    model.train()
    seen = 0
    for index, batch in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        images = batch["image"].to(device, non_blocking=True)
        if images.dtype == torch.uint8:
            if input_spec is None:
                raise ValueError("bn_re_estimate: uint8 images need input_spec to be normalised")
            images = normalize_batch(images, input_spec)
        size = images.shape[0]
        for m in norms:
            m.momentum = size / (seen + size)
        with autocast:
            model(images)
        seen += size
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    logger.info("bn_re_estimate: %d BatchNorm layers over %d images", len(norms), seen)
    return model.eval()
