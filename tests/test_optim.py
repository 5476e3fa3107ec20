"""Optimizer param groups for every --optimizer choice on a real segformer_mit_b0."""

import pytest
import torch
from torch import nn

from networks import build_model
from utils.optim import HEAD_LR_MULT, OPTIMIZERS, build_optimizer, format_param_groups

LR, WD = 6e-5, 1e-2
HEADS = ("head", "edge", "fusion")
NUM_CLASSES = 4


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("segformer_mit_b0", num_classes=NUM_CLASSES)


def groups_by_name(optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    return {g["name"]: g for g in optimizer.param_groups}


def ids(params) -> set[int]:
    return {id(p) for p in params}


def no_decay_expected(model: nn.Module) -> set[int]:
    """1-D tensors: every bias and every norm weight/bias (LayerNorm, BatchNorm, BatchNormAct2d)."""
    return {id(p) for p in model.parameters() if p.ndim <= 1}


def assert_partition(optimizer: torch.optim.Optimizer, expected: set[int]) -> None:
    seen = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(seen) == len(set(seen)), "a parameter is in two groups"
    assert set(seen) == expected


@pytest.mark.parametrize("name", ["sgd", "adamw_naive"])
def test_single_group_optimizers_cover_everything_with_decay(model, name):
    optimizer, rows = build_optimizer(model, name, LR, WD)
    (group,) = optimizer.param_groups
    assert group["name"] == "all" and group["lr"] == LR and group["lr_mult"] == 1.0
    assert group["weight_decay"] == WD
    assert_partition(optimizer, ids(model.parameters()))
    assert rows[0].num_params == sum(p.numel() for p in model.parameters())
    if name == "sgd":
        assert isinstance(optimizer, torch.optim.SGD)
        assert group["momentum"] == 0.9 and group["nesterov"] is False
    else:
        assert isinstance(optimizer, torch.optim.AdamW) and group["betas"] == (0.9, 0.999)
        assert optimizer.defaults["fused"]  # one kernel per step on CPU and CUDA


def test_adamw_custom_heads_at_10x_and_no_decay_for_norms_and_biases(model):
    optimizer, _ = build_optimizer(model, "adamw_custom", LR, WD)
    groups = groups_by_name(optimizer)
    assert set(groups) == {"backbone", "backbone_no_decay", "heads", "heads_no_decay"}
    assert isinstance(optimizer, torch.optim.AdamW) and groups["heads"]["betas"] == (0.9, 0.999)
    backbone = ids(model.backbone.parameters())
    heads = ids(p for name in HEADS for p in getattr(model, name).parameters())
    no_decay = no_decay_expected(model)
    assert ids(groups["backbone"]["params"]) == backbone - no_decay
    assert ids(groups["backbone_no_decay"]["params"]) == backbone & no_decay
    assert ids(groups["heads"]["params"]) == heads - no_decay
    assert ids(groups["heads_no_decay"]["params"]) == heads & no_decay
    for name, group in groups.items():
        mult = HEAD_LR_MULT if name.startswith("heads") else 1.0
        assert group["lr_mult"] == mult and group["lr"] == pytest.approx(LR * mult)
        assert group["weight_decay"] == (0.0 if name.endswith("no_decay") else WD)
    # the BatchNormAct2d weights of edge/fusion (the seed's phase groups decayed them, bug 17)
    assert id(model.fusion[1].weight) in ids(groups["heads_no_decay"]["params"])
    assert id(model.edge.conv1[1].weight) in ids(groups["heads_no_decay"]["params"])


def test_phase_1_freezes_the_backbone_and_leaves_it_untouched_after_a_step(model):
    optimizer, rows = build_optimizer(model, "segce2p_phase_1", LR, WD)
    assert {r.name for r in rows} == {"heads", "heads_no_decay"}
    assert all(r.lr == pytest.approx(HEAD_LR_MULT * LR) for r in rows)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    head_params = [p for name in HEADS for p in getattr(model, name).parameters()]
    assert all(p.requires_grad for p in head_params)
    assert_partition(optimizer, ids(head_params))

    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    heads_before = [p.detach().clone() for p in head_params]
    output = model(torch.randn(2, 3, 64, 48))
    sum(t.square().mean() for t in output).backward()
    optimizer.step()
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key
    assert all(p.grad is None for p in model.backbone.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(head_params, heads_before, strict=True))


def test_phase_2_gives_stage_k_a_0_7_power_lr(model):
    model.backbone.requires_grad_(False)  # phase 2 unfreezes a phase-1 model
    optimizer, _ = build_optimizer(model, "segce2p_phase_2", LR, WD)
    groups = groups_by_name(optimizer)
    no_decay = no_decay_expected(model)
    for k in range(1, 5):
        stage = ids(
            p
            for prefix in ("patch_embed", "block", "norm")
            for p in getattr(model.backbone, f"{prefix}{k}").parameters()
        )
        for suffix, members in (("", stage - no_decay), ("_no_decay", stage & no_decay)):
            group = groups[f"stage{k}{suffix}"]
            assert ids(group["params"]) == members
            assert group["lr"] == pytest.approx(LR * 0.7 ** (4 - k))
            assert group["lr_mult"] == pytest.approx(0.7 ** (4 - k))
    assert groups["heads"]["lr"] == pytest.approx(10 * LR)
    assert groups["stage4"]["lr"] == pytest.approx(LR)
    assert_partition(optimizer, ids(model.parameters()))
    assert all(p.requires_grad for p in model.parameters())


def test_only_train_module_freezes_the_other_children(model):
    optimizer, rows = build_optimizer(model, "adamw_custom", LR, WD, only_train_module="head, edge")
    assert {r.name for r in rows} == {"heads", "heads_no_decay"}
    trained = ids(p for name in ("head", "edge") for p in getattr(model, name).parameters())
    assert_partition(optimizer, trained)
    assert not any(p.requires_grad for p in model.fusion.parameters())
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_only_train_module_rejects_unknown_names_listing_the_valid_ones(model):
    with pytest.raises(ValueError, match="valid names: backbone,head,edge,fusion"):
        build_optimizer(model, "adamw_custom", LR, WD, only_train_module="head,decoder")


def test_unknown_optimizer_is_rejected(model):
    with pytest.raises(ValueError, match="choose one of"):
        build_optimizer(model, "adam", LR, WD)


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if n not in ("sgd", "adamw_naive")])
def test_resnet_context_encoding_and_decoder_are_heads_in_every_grouped_optimizer(name):
    model = build_model("resnet101", num_classes=NUM_CLASSES)  # the seed missed them (bugs 17/18)
    optimizer, _ = build_optimizer(model, name, LR, WD)
    in_heads = ids(
        p for g in optimizer.param_groups if g["name"].startswith("heads") for p in g["params"]
    )
    for child in ("context_encoding", "decoder", "edge", "fusion"):
        assert ids(getattr(model, child).parameters()) <= in_heads, child
    expected = ids(model.parameters()) - (
        ids(model.backbone.parameters()) if name == "segce2p_phase_1" else set()
    )
    assert_partition(optimizer, expected)


def test_format_param_groups_is_a_table_with_totals(model):
    _, rows = build_optimizer(model, "segce2p_phase_2", LR, WD)
    table = format_param_groups(rows)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["group", "tensors", "params"]
    assert len(lines) == len(rows) + 2 and lines[-1].startswith("total")
    assert "stage1_no_decay" in table and f"{sum(p.numel() for p in model.parameters()):,}" in table
