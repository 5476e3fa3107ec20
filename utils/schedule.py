"""SCHP's SGDR learning-rate schedule as a pure function of the (possibly fractional) epoch.

With L the base LR, η = L/100, W warmup epochs, S = schp_start and C = cycle_epochs:

    e < W        linear warmup      η + e·(L - η)/W
    W <= e < S   cosine annealing   η + (L - η)·(1 + cos(π·(e - W)/(S - W)))/2
    e >= S       SCHP cycles        η + (L/2 - η)·(1 + cos(π·((e - S) mod C)/C))/2

(the seed's `SGDRScheduler` in `utils/schedule.py`; when S <= W the warmup takes
precedence). `sgdr_lr` gives the LR of a group with multiplier 1; `apply_lr` scales it by each
param group's `lr_mult` in every phase (the seed lost the multipliers in the cyclic phase and
started every group's warmup at η; here a ×10 head group runs at 10·η, 10·L, 10·L/2, ...).
"""

from __future__ import annotations

import math

from torch.optim import Optimizer

ETA_MIN_DIVISOR = 100.0  # eta_min = base_lr / 100
CYCLE_PEAK_FACTOR = 0.5  # each SCHP cycle restarts at base_lr / 2
DEFAULT_SCHP_CYCLES = 5  # the seed: 150 epochs, cycles of 10 from epoch 100 (five refined cycles)


def _cosine(progress: float, high: float, low: float) -> float:
    """Cosine from `high` (progress 0) down to `low` (progress 1)."""
    return low + (high - low) * (1.0 + math.cos(math.pi * progress)) / 2.0


def sgdr_lr(
    epoch: float,
    base_lr: float,
    total_epochs: int,
    warmup_epochs: int = 10,
    schp_start: int = 100,
    cycle_epochs: int = 10,
) -> float:
    """Learning rate (for lr_mult 1) at a 0-based, possibly fractional, epoch.

    Raises:
        ValueError: schp_start > total_epochs, cycle_epochs < 1 or warmup_epochs < 0.
    """
    if schp_start > total_epochs:
        raise ValueError(
            f"schp_start ({schp_start}) is after the last epoch ({total_epochs}); "
            "pass --schp-start <= --epochs (equal to --epochs means no SCHP cycle)"
        )
    if cycle_epochs < 1:
        raise ValueError(f"cycle_epochs must be >= 1, got {cycle_epochs}; pass --cycle-epochs >= 1")
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    eta_min = base_lr / ETA_MIN_DIVISOR
    if epoch < warmup_epochs:
        return eta_min + epoch * (base_lr - eta_min) / warmup_epochs
    if epoch < schp_start:
        return _cosine((epoch - warmup_epochs) / (schp_start - warmup_epochs), base_lr, eta_min)
    cycle_peak = base_lr * CYCLE_PEAK_FACTOR
    return _cosine(((epoch - schp_start) % cycle_epochs) / cycle_epochs, cycle_peak, eta_min)


def default_schp_start(total_epochs: int, cycle_epochs: int, warmup_epochs: int) -> int:
    """The SCHP start when --schp-start is not given: the last DEFAULT_SCHP_CYCLES cycles.

    `total_epochs - k * cycle_epochs` with k = DEFAULT_SCHP_CYCLES (the seed's 150, 10 -> 100),
    or the most whole cycles that fit after the warmup when fewer do (0: `total_epochs`, only the
    final aggregation and no refined cycle).
    """
    fit = max(total_epochs - warmup_epochs, 0) // cycle_epochs
    return total_epochs - min(DEFAULT_SCHP_CYCLES, fit) * cycle_epochs


def apply_lr(optimizer: Optimizer, lr: float) -> None:
    """Set every param group's lr to `lr * group["lr_mult"]` (1 when a group has no multiplier)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
