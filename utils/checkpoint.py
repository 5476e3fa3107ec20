"""Self-describing checkpoints, written atomically.

A checkpoint is a plain dict that `torch.load(weights_only=True)` can read:

    arch, num_classes, label_set (LabelSet.to_dict()), input {size, mean, std, colour},
    heads (only for a model built with heads other than "full": readers default to "full"),
    state_dict (from the unwrapped module, never with a `module.` prefix),
    and, for resume: optimizer, scaler, epoch, cycle_n, teacher_state_dict, best_miou,
    history, args. No RNG state: train.py seeds every epoch from (seed, epoch, rank).

File names follow the seed: `checkpoint.pth.tar` (latest), `checkpoint_{epoch}.pth.tar`,
`schp_{cycle}_checkpoint.pth.tar`, plus `best.pth.tar` (best validation mIoU).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from networks.weights import (
    check_finite,
    load_pretrained_backbone,
    load_weights,
    read_checkpoint,
)
from utils.fileio import atomic_write

LATEST_NAME = "checkpoint.pth.tar"
# flags whose change on --resume changes the LR schedule (a warning, not an error)
RESUME_MUST_MATCH = ("epochs", "learning_rate", "warmup_epochs", "schp_start", "cycle_epochs")
BEST_NAME = "best.pth.tar"

logger = logging.getLogger(__name__)


def periodic_name(epoch: int) -> str:
    return f"checkpoint_{epoch}.pth.tar"


def schp_name(cycle_n: int) -> str:
    return f"schp_{cycle_n}_checkpoint.pth.tar"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model behind DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def model_record(model: nn.Module, label_set: Any, input_size: tuple[int, int]) -> dict:
    """The part of a checkpoint that describes and holds the weights."""
    bare = unwrap_model(model)
    spec = bare.input_spec
    heads = getattr(bare, "heads", "full")
    return {
        "arch": bare.arch,
        **({"heads": heads} if heads != "full" else {}),
        "num_classes": bare.num_classes,
        "label_set": label_set.to_dict() if label_set is not None else None,
        "input": {
            "size": list(input_size),
            "mean": list(spec.mean),
            "std": list(spec.std),
            "colour": spec.colour,
        },
        "state_dict": cpu_state_dict(bare),
    }


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unwrapped module's state dict as detached CPU tensors (no `module.` prefix)."""
    return {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, then rename: never a half-written file."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def train_state(
    model: nn.Module,
    teacher: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    label_set: Any,
    input_size: tuple[int, int],
    **progress: Any,
) -> dict:
    """checkpoint.pth.tar: the model record plus everything `load_train_state` restores.

    `progress` holds plain values: epoch, cycle_n, best_miou, history, args.
    """
    return {
        **model_record(model, label_set, input_size),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "teacher_state_dict": cpu_state_dict(teacher),
        **progress,
    }


def load_train_state(
    path: str | os.PathLike,
    model: nn.Module,
    teacher: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> dict:
    """Restore a `train_state` checkpoint in place; returns it (epoch, cycle_n, history, ...).

    Raises:
        ValueError: the file is not a train.py checkpoint.pth.tar, holds NaN or Inf weights or
            does not fit the model or optimizer (another arch, class count or --optimizer).
    """
    state = read_checkpoint(path)  # WeightsError (a ValueError) for unreadable files
    if "optimizer" not in state or "teacher_state_dict" not in state:
        raise ValueError(
            f"{path}: not a train.py checkpoint.pth.tar (no optimizer/teacher state); resume "
            "from <log-dir>/checkpoint.pth.tar, or load weights with --model-restore"
        )
    for key in ("state_dict", "teacher_state_dict"):
        check_finite(state[key], f"{path} ({key})")
    bare = unwrap_model(model)
    if (state.get("arch"), state.get("num_classes")) != (bare.arch, bare.num_classes):
        raise ValueError(
            f"{path}: a {state.get('arch')} checkpoint with {state.get('num_classes')} classes, "
            f"but this run is {bare.arch} with {bare.num_classes}; resume with its own flags"
        )
    try:
        bare.load_state_dict(state["state_dict"])
        unwrap_model(teacher).load_state_dict(state["teacher_state_dict"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError) as err:
        raise ValueError(
            f"{path}: does not fit this run ({str(err).splitlines()[0]}); resume with the "
            "flags of the run that wrote it (same --optimizer, --only_train_module)"
        ) from None
    scaler.load_state_dict(state["scaler"])
    return state


def resume(
    path: str | os.PathLike,
    model: nn.Module,
    teacher: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    args: dict,
) -> dict:
    """`load_train_state`, then the progress to continue from: start_epoch, cycle_n, best_miou,
    history. Warns when `args` changes a flag of `RESUME_MUST_MATCH`.

    Raises:
        ValueError: as `load_train_state`.
    """
    state = load_train_state(path, model, teacher, optimizer, scaler)
    changed = [k for k in RESUME_MUST_MATCH if state["args"].get(k) != args.get(k)]
    if changed:
        logger.warning("--resume with other %s: the LR schedule differs", ", ".join(changed))
    progress = {k: state[k] for k in ("cycle_n", "best_miou", "history")}
    return progress | {"start_epoch": state["epoch"]}


def weights_of(state: dict) -> dict:
    """The weights-only record of a `train_state` (checkpoint_{epoch}, best.pth.tar)."""
    weights = {k: state[k] for k in ("arch", "num_classes", "label_set", "input", "state_dict")}
    return weights | {"epoch": state["epoch"], "best_miou": state["best_miou"]}


def save_weight_checkpoints(
    log_dir: str | os.PathLike, state: dict, periodic: bool, best: bool
) -> None:
    """The weights of a `train_state` as checkpoint_{epoch}.pth.tar when `periodic` and as
    best.pth.tar when `best`. train.py writes checkpoint.pth.tar, the resume point, after them."""
    log_dir = Path(log_dir)
    if periodic:
        save_checkpoint(weights_of(state), log_dir / periodic_name(state["epoch"]))
    if best:
        save_checkpoint(weights_of(state), log_dir / BEST_NAME)


def restore_weights(
    model: nn.Module,
    teacher: nn.Module,
    imagenet_pretrain: str | None = None,
    model_restore: str | None = None,
    schp_restore: str | None = None,
) -> int:
    """train.py's seed flags: backbone weights, then the model's, then the teacher's (which
    starts as a copy of the model); returns the teacher's stored SCHP cycle (0 if none).

    Raises:
        WeightsError: a file that cannot be read or does not fit, named with the fix.
    """
    if imagenet_pretrain:
        load_pretrained_backbone(model, imagenet_pretrain)
    if model_restore:
        load_weights(model, model_restore)
    teacher.load_state_dict(model.state_dict())
    if not schp_restore:
        return 0
    state = read_checkpoint(schp_restore)
    load_weights(teacher, state, name=str(schp_restore))
    return int(state.get("cycle_n", 0))
