"""SGDR schedule corners (warmup, cosine, SCHP cycles) and per-group multipliers in every phase."""

import math

import pytest
import torch

from utils.schedule import apply_lr, sgdr_lr

BASE_LR = 6e-5
ETA = BASE_LR / 100
TOTAL, WARMUP, START, CYCLE = 150, 10, 100, 10
STAGE_MULTS = [0.7**3, 0.7**2, 0.7, 1.0]
MULTS = [1.0, 10.0, *STAGE_MULTS]


def lr_at(epoch: float) -> float:
    return sgdr_lr(epoch, BASE_LR, TOTAL, WARMUP, START, CYCLE)


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (0, ETA),  # warmup start
        (WARMUP / 2, (ETA + BASE_LR) / 2),  # linear warmup midpoint
        (WARMUP, BASE_LR),  # warmup end = cosine start
        ((WARMUP + START) / 2, (BASE_LR + ETA) / 2),  # cosine midpoint
        (START, BASE_LR / 2),  # first cycle start
        (START + CYCLE / 2, (BASE_LR / 2 + ETA) / 2),  # cycle midpoint (fractional epochs work)
        (START + CYCLE, BASE_LR / 2),  # restart
        (TOTAL - 1, ETA + (BASE_LR / 2 - ETA) * (1 + math.cos(math.pi * 0.9)) / 2),  # cycle end
    ],
)
def test_sgdr_lr_corners(epoch, expected):
    assert lr_at(epoch) == pytest.approx(expected, rel=1e-12)


def test_sgdr_lr_reproduces_the_schp_table():
    """Original SCHP defaults (L = 7e-3): its SGDRScheduler's table."""
    table = {0: 7.0e-5, 5: 3.535e-3, 10: 7.0e-3, 55: 3.535e-3, 105: 1.785e-3, 109: 1.54e-4}
    for epoch, expected in table.items():
        assert sgdr_lr(epoch, 7e-3, 150) == pytest.approx(expected, rel=2e-3)


def test_cosine_phase_decreases_monotonically_to_eta_min():
    values = [lr_at(e) for e in range(WARMUP, START)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert lr_at(START - 1e-9) == pytest.approx(ETA, rel=1e-6)


def test_warmup_takes_precedence_when_schp_starts_before_its_end():
    assert sgdr_lr(3, BASE_LR, 20, warmup_epochs=10, schp_start=5) == pytest.approx(
        ETA + 3 * (BASE_LR - ETA) / 10
    )
    assert sgdr_lr(10, BASE_LR, 20, warmup_epochs=10, schp_start=5) == pytest.approx(
        ETA + (BASE_LR / 2 - ETA) * (1 + math.cos(math.pi * 5 / 10)) / 2
    )


def test_schp_start_after_the_last_epoch_is_rejected():
    with pytest.raises(ValueError, match="--schp-start"):
        sgdr_lr(0, BASE_LR, total_epochs=50, schp_start=100)
    assert sgdr_lr(49, BASE_LR, total_epochs=50, schp_start=50) > 0  # no cycle at all is fine


def _optimizer_with_mults() -> torch.optim.Optimizer:
    groups = [
        {"params": [torch.nn.Parameter(torch.zeros(1))], "lr_mult": mult, "name": f"g{i}"}
        for i, mult in enumerate(MULTS)
    ]
    return torch.optim.AdamW(groups, lr=BASE_LR)


@pytest.mark.parametrize("epoch", [0, WARMUP, (WARMUP + START) / 2, START, TOTAL - 1])
def test_apply_lr_keeps_every_group_multiplier_in_every_phase(epoch):
    optimizer = _optimizer_with_mults()
    lr = lr_at(epoch)
    apply_lr(optimizer, lr)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([lr * m for m in MULTS])


def test_heads_and_stages_start_warmup_at_their_own_eta_and_cycle_at_their_own_peak():
    optimizer = _optimizer_with_mults()
    apply_lr(optimizer, lr_at(0))
    assert optimizer.param_groups[1]["lr"] == pytest.approx(10 * ETA)
    apply_lr(optimizer, lr_at(START))
    assert optimizer.param_groups[1]["lr"] == pytest.approx(10 * BASE_LR / 2)
    assert optimizer.param_groups[2]["lr"] == pytest.approx(0.7**3 * BASE_LR / 2)
