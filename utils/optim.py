"""Optimizers and parameter groups for the seed's `--optimizer` choices.

Rules (the seed's `get_optimizer` in `train.py`), with L the base LR and "heads" = every top-level
child of the model other than `backbone` (decided by module, so the ResNet model's
`context_encoding` and `decoder` are heads too; the seed matched name substrings and missed them,
bugs 17/18):

    sgd              one group, lr L, weight decay on everything, momentum, nesterov off
    adamw_naive      one group, lr L, weight decay on everything
    adamw_custom     backbone L, heads 10·L; no decay for no-decay parameters
    segce2p_phase_1  backbone frozen (requires_grad False), heads 10·L, no-decay split
    segce2p_phase_2  backbone stage k (1..4) L·0.7^(4-k) via `backbone.stage_modules()`, heads 10·L

No-decay parameters: every 1-D tensor, every bias and every parameter of a norm layer (BatchNorm and
its subclasses such as `BatchNormAct2d`, SyncBatchNorm, LayerNorm, GroupNorm), wherever they are.
AdamW uses betas (0.9, 0.999) and torch's fused kernel (CPU and CUDA). Every param group
carries `name`, `lr_mult` (its LR / L, used by `utils.schedule.apply_lr`) and `weight_decay`.

`only_train_module` ("head,edge,fusion") freezes every top-level child not listed, after the mode's
own freezing; parameters without requires_grad join no group. Pass the unwrapped model (not DDP).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from utils.checkpoint import unwrap_model

OPTIMIZERS = ("sgd", "adamw_naive", "adamw_custom", "segce2p_phase_1", "segce2p_phase_2")
HEAD_LR_MULT = 10.0
STAGE_LR_DECAY = 0.7  # segce2p_phase_2: stage k of n gets L * 0.7^(n - k)
ADAMW_BETAS = (0.9, 0.999)
NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
BACKBONE = "backbone"


@dataclass(frozen=True)
class ParamGroupInfo:
    """One optimizer param group, for the startup log."""

    name: str
    num_tensors: int
    num_params: int
    lr: float
    lr_mult: float
    weight_decay: float


def _no_decay_ids(model: nn.Module) -> set[int]:
    """ids of the parameters exempt from weight decay (1-D, biases, norm layers)."""
    ids = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if param.ndim <= 1 or name == "bias" or isinstance(module, NORM_LAYERS):
                ids.add(id(param))
    return ids


def _head_params(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of every top-level child except the backbone (and any owned by the root)."""
    params = list(model.parameters(recurse=False))
    for name, child in model.named_children():
        if name != BACKBONE:
            params.extend(child.parameters())
    return params


def _backbone(model: nn.Module, name: str) -> nn.Module:
    backbone = getattr(model, BACKBONE, None)
    if not isinstance(backbone, nn.Module):
        raise ValueError(
            f"optimizer {name!r} needs a model with a `backbone` submodule ("
            f"{type(model).__name__} has none); use sgd or adamw_naive, or pass the unwrapped model"
        )
    return backbone


def _stage_groups(backbone: nn.Module) -> list[tuple[str, list[nn.Parameter], float]]:
    """segce2p_phase_2 backbone groups: (name, params, lr_mult) per stage; all params covered."""
    stages = backbone.stage_modules()
    groups, covered = [], set()
    for k, modules in enumerate(stages, start=1):
        params = [p for module in modules for p in module.parameters()]
        covered.update(id(p) for p in params)
        groups.append((f"stage{k}", params, STAGE_LR_DECAY ** (len(stages) - k)))
    missing = [n for n, p in backbone.named_parameters() if id(p) not in covered]
    if missing:
        raise ValueError(
            f"backbone.stage_modules() of {type(backbone).__name__} misses parameters "
            f"{missing[:5]}; every backbone parameter must belong to a stage (networks/)"
        )
    return groups


def _freeze_others(model: nn.Module, only_train_module: str) -> None:
    """Freeze every top-level child whose name is not in the comma-separated list."""
    wanted = [name.strip() for name in only_train_module.split(",") if name.strip()]
    children = [name for name, _ in model.named_children()]
    unknown = [name for name in wanted if name not in children]
    if unknown or not wanted:
        raise ValueError(
            f"--only_train_module: unknown module name(s) {unknown or [only_train_module]}; "
            f"valid names: {','.join(children)}"
        )
    model.requires_grad_(False)
    for name, child in model.named_children():
        if name in wanted:
            child.requires_grad_(True)


def _split_groups(
    groups: Iterable[tuple[str, list[nn.Parameter], float]],
    no_decay: set[int],
    lr: float,
    weight_decay: float,
) -> list[dict]:
    """(name, params, lr_mult) -> torch param groups, split into decay / `_no_decay` halves.

    Frozen parameters are dropped, each parameter joins one group only, empty groups are skipped.
    """
    seen: set[int] = set()
    param_groups = []
    for name, params, lr_mult in groups:
        unique = [p for p in params if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in unique)
        halves = (
            (name, [p for p in unique if id(p) not in no_decay], weight_decay),
            (f"{name}_no_decay", [p for p in unique if id(p) in no_decay], 0.0),
        )
        for group_name, group_params, group_wd in halves:
            if group_params:
                param_groups.append(
                    {
                        "params": group_params,
                        "lr": lr * lr_mult,
                        "lr_mult": lr_mult,
                        "weight_decay": group_wd,
                        "name": group_name,
                    }
                )
    return param_groups


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    only_train_module: str | None = None,
) -> tuple[torch.optim.Optimizer, list[ParamGroupInfo]]:
    """Build the optimizer `name` (one of OPTIMIZERS) over the model's trainable parameters.

    May change requires_grad: segce2p_phase_1 freezes the backbone and unfreezes the heads,
    segce2p_phase_2 unfreezes everything, `only_train_module` then freezes the unlisted children.

    Returns:
        (optimizer, one ParamGroupInfo per param group, in order).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if name == "segce2p_phase_1":
        _backbone(model, name).requires_grad_(False)
        for param in _head_params(model):
            param.requires_grad_(True)
    elif name == "segce2p_phase_2":
        model.requires_grad_(True)
    if only_train_module:
        _freeze_others(model, only_train_module)

    if name in ("sgd", "adamw_naive"):
        everything = [("all", list(model.parameters()), 1.0)]
        param_groups = _split_groups(everything, set(), lr, weight_decay)
    else:
        backbone = _backbone(model, name)
        if name == "adamw_custom":
            groups = [(BACKBONE, list(backbone.parameters()), 1.0)]
        elif name == "segce2p_phase_1":
            groups = []
        else:
            groups = _stage_groups(backbone)
        groups.append(("heads", _head_params(model), HEAD_LR_MULT))
        param_groups = _split_groups(groups, _no_decay_ids(model), lr, weight_decay)
    if not param_groups:
        raise ValueError(
            f"optimizer {name!r} with --only_train_module={only_train_module!r} leaves no "
            "trainable parameter; list modules that this optimizer trains"
        )

    if name == "sgd":
        optimizer = torch.optim.SGD(
            param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=False
        )
    else:
        optimizer = torch.optim.AdamW(
            param_groups,
            lr=lr,
            betas=ADAMW_BETAS,
            weight_decay=weight_decay,
            fused=_fusable(param_groups),
        )
    rows = [
        ParamGroupInfo(
            name=g["name"],
            num_tensors=len(g["params"]),
            num_params=sum(p.numel() for p in g["params"]),
            lr=g["lr"],
            lr_mult=g["lr_mult"],
            weight_decay=g["weight_decay"],
        )
        for g in optimizer.param_groups
    ]
    return optimizer, rows


def _fusable(param_groups: list[dict]) -> bool:
    """Whether torch's fused AdamW (one kernel for all parameters) takes these parameters:
    floating point, on CPU or CUDA. Same update up to float rounding, in one kernel where the
    default loops over ~200 tensors with several ops each (benchmarks/README.md)."""
    params = [p for group in param_groups for p in group["params"]]
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def format_param_groups(rows: list[ParamGroupInfo]) -> str:
    """A printable table of the param groups: group, #tensors, #params, lr (×mult), weight decay."""
    lines = [f"{'group':<20} {'tensors':>8} {'params':>12} {'lr':>10} {'lr_mult':>8} {'wd':>8}"]
    for row in rows:
        lines.append(
            f"{row.name:<20} {row.num_tensors:>8} {row.num_params:>12,} {row.lr:>10.3g} "
            f"{row.lr_mult:>8.4g} {row.weight_decay:>8.3g}"
        )
    total_tensors = sum(row.num_tensors for row in rows)
    total_params = sum(row.num_params for row in rows)
    lines.append(f"{'total':<20} {total_tensors:>8} {total_params:>12,}")
    return "\n".join(lines)


def set_train_mode(model: nn.Module) -> None:
    """Train mode, except top-level modules without trainable parameters (kept frozen)."""
    model.train()
    for child in unwrap_model(model).children():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            child.eval()
