"""CE2P loss: hand-computed CE, brute-force Lovász, edge weights, ignore pixels, soft targets."""

import math

import pytest
import torch
import torch.nn.functional as F

from datasets.label_set import IGNORE_INDEX
from datasets.transforms import generate_edge
from networks import build_model
from networks.contracts import ParsingOutput
from utils.criterion import CE2PLoss, edge_class_weights, parsing_edge_map, soft_target
from utils.lovasz import lovasz_softmax

SHARP = 20.0  # logit scale that makes softmax practically one-hot


def brute_force_lovasz(probas: torch.Tensor, labels: torch.Tensor) -> float:
    """Lovász extension of the Jaccard loss from its set definition, one class at a time."""
    num_classes = probas.shape[1]
    probs = probas.movedim(1, -1).reshape(-1, num_classes).tolist()
    ys = labels.reshape(-1).tolist()
    pixels = [(p, y) for p, y in zip(probs, ys, strict=True) if y != IGNORE_INDEX]
    losses = []
    for c in range(num_classes):
        foreground = {i for i, (_, y) in enumerate(pixels) if y == c}
        if not foreground:
            continue
        errors = [abs((y == c) - p[c]) for p, y in pixels]
        order = sorted(range(len(pixels)), key=lambda i: -errors[i])

        def jaccard_loss(mistakes: set[int], fg: set[int] = foreground) -> float:
            return len(mistakes) / len(fg | mistakes)

        total, previous = 0.0, 0.0
        for k in range(1, len(order) + 1):
            current = jaccard_loss(set(order[:k]))
            total += errors[order[k - 1]] * (current - previous)
            previous = current
        losses.append(total)
    return sum(losses) / len(losses)


def one_hot_logits(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    safe = torch.where(label == IGNORE_INDEX, 0, label)
    return SHARP * F.one_hot(safe, num_classes).movedim(-1, 1).float()


def edge_logits_from(edge: torch.Tensor) -> torch.Tensor:
    return SHARP * (2.0 * F.one_hot(edge, 2).movedim(-1, 1).float() - 1.0)


def random_batch(seed: int = 0, n: int = 2, c: int = 4, h: int = 12, w: int = 10):
    gen = torch.Generator().manual_seed(seed)
    label = torch.randint(0, c, (n, h, w), generator=gen)
    label[:, :3, :4] = IGNORE_INDEX
    edge = generate_edge(label)
    output = ParsingOutput(*(torch.randn(n, k, h, w, generator=gen) for k in (c, c, 2)))
    teacher = ParsingOutput(*(torch.randn(n, k, h, w, generator=gen) for k in (c, c, 2)))
    return output, teacher, label, edge


def test_ce_matches_hand_computed_1x2x2x2_example():
    class0 = torch.tensor([[2.0, 0.0], [1.0, -1.0]])
    class1 = torch.tensor([[0.0, 1.0], [3.0, 0.5]])
    logits = torch.stack([class0, class1])[None]  # (1, 2, 2, 2)
    label = torch.tensor([[[0, 1], [IGNORE_INDEX, 1]]])
    edge = torch.zeros_like(label)
    output = ParsingOutput(logits, logits, torch.zeros(1, 2, 2, 2))
    _, parts = CE2PLoss(lambda_e=0.0, lambda_c=0.0)(output, label, edge)
    ce = (
        math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-1.5))
    ) / 3
    lovasz = brute_force_lovasz(F.softmax(logits, dim=1), label)
    # parsing and fusion each add 0.5 * (Lovász + CE)
    assert parts["seg"].item() == pytest.approx(lovasz + ce, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lovasz_matches_brute_force_over_the_whole_batch(seed):
    gen = torch.Generator().manual_seed(seed)
    probas = F.softmax(torch.randn(2, 4, 3, 4, generator=gen), dim=1)
    labels = torch.randint(0, 3, (2, 3, 4), generator=gen)  # class 3 absent
    labels[0, 0, :2] = IGNORE_INDEX
    expected = brute_force_lovasz(probas, labels)
    assert lovasz_softmax(probas, labels).item() == pytest.approx(expected, rel=1e-5)


def test_lovasz_equals_jaccard_loss_on_one_hot_predictions():
    labels = torch.tensor([[[0, 0, 1], [1, 2, IGNORE_INDEX]]])
    pred = torch.tensor([[[0, 1, 1], [1, 1, 0]]])
    probas = F.one_hot(pred, 3).movedim(-1, 1).float()
    # IoU: class 0 1/2, class 1 2/4, class 2 0/1 (ignore pixel excluded)
    assert lovasz_softmax(probas, labels).item() == pytest.approx((0.5 + 0.5 + 1.0) / 3)


def test_lovasz_without_valid_pixels_is_zero_with_zero_gradient():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = lovasz_softmax(F.softmax(logits, dim=1), torch.full((1, 2, 2), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


def test_edge_weights_are_class_balanced_over_valid_pixels():
    edge = torch.tensor([[[1, 0, 0, 0], [1, 0, 0, 0]]])
    valid = torch.tensor([[[True, True, True, True], [True, True, True, False]]])
    weights = edge_class_weights(edge, valid)
    pos, neg = 2, 5  # the ignore pixel counts for neither
    expected = torch.tensor([[[neg, pos, pos, pos], [neg, pos, pos, 0]]]) / (pos + neg)
    assert torch.allclose(weights, expected)


def test_edge_loss_equals_weighted_cross_entropy_of_ce2p():
    output, _, label, edge = random_batch()
    label = torch.where(label == IGNORE_INDEX, 0, label)  # upstream counts the whole batch
    edge = generate_edge(label)
    _, parts = CE2PLoss(lambda_s=0.0, lambda_c=0.0)(output, label, edge)
    pos, neg = (edge == 1).sum().float(), (edge == 0).sum().float()
    weight = torch.stack([pos, neg]) / (pos + neg)
    expected = F.cross_entropy(output.edge, edge, weight=weight)
    assert parts["edge"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("cycle_n", [None, 1, 3])
def test_ignore_pixels_get_zero_gradient_in_every_term(cycle_n):
    output, teacher, label, edge = random_batch()
    output = ParsingOutput(*(t.requires_grad_() for t in output))
    soft = None if cycle_n is None else teacher
    total, _ = CE2PLoss()(output, label, edge, soft=soft, cycle_n=cycle_n or 0)
    total.backward()
    ignore = (label == IGNORE_INDEX).unsqueeze(1)
    for logits in output:
        assert logits.grad.abs().sum() > 0
        assert torch.all(logits.grad.masked_select(ignore) == 0)


def test_loss_does_not_mutate_the_label():
    output, teacher, label, edge = random_batch()
    label_before, edge_before = label.clone(), edge.clone()
    CE2PLoss()(output, label, edge, soft=teacher, cycle_n=2)
    assert torch.equal(label, label_before) and torch.equal(edge, edge_before)


def test_soft_target_is_a_convex_mix_of_probabilities():
    _, teacher, label, _ = random_batch()
    teacher_probs = F.softmax(teacher.fusion, dim=1)
    one_hot = F.one_hot(torch.where(label == IGNORE_INDEX, 0, label), 4).movedim(-1, 1).float()
    valid = (label != IGNORE_INDEX).unsqueeze(1)
    for cycle_n in (0, 1, 4):
        target = soft_target(teacher.fusion, label, cycle_n)
        alpha = 1.0 / (cycle_n + 1)
        assert torch.allclose(target.sum(dim=1), torch.ones_like(label, dtype=torch.float))
        assert torch.all(target >= 0)
        expected = torch.where(valid, (1 - alpha) * teacher_probs + alpha * one_hot, teacher_probs)
        assert torch.allclose(target, expected)
    at_alpha_one = soft_target(teacher.fusion, label, cycle_n=0)
    assert torch.equal(torch.where(valid, at_alpha_one, one_hot), one_hot)


def test_soft_labels_at_cycle_zero_reproduce_the_hard_loss():
    output, teacher, label, edge = random_batch()
    hard, hard_parts = CE2PLoss()(output, label, edge)
    soft, soft_parts = CE2PLoss()(output, label, edge, soft=teacher, cycle_n=0)
    assert soft.item() == pytest.approx(hard.item(), rel=1e-5)
    assert soft_parts["edge"].item() == pytest.approx(hard_parts["edge"].item(), rel=1e-5)


def test_kl_is_summed_over_classes_and_averaged_over_valid_pixels():
    output, teacher, label, edge = random_batch()
    cycle_n = 2
    _, parts = CE2PLoss(lambda_e=0.0, lambda_c=0.0)(output, label, edge, teacher, cycle_n)
    target = soft_target(teacher.fusion, label, cycle_n)
    valid = label != IGNORE_INDEX
    expected = 0.0
    for logits in (output.parsing, output.fusion):
        kl = (target * (target.log() - F.log_softmax(logits, dim=1))).sum(dim=1)
        expected += 0.5 * (kl[valid].mean() + lovasz_softmax(F.softmax(logits, dim=1), label))
    assert parts["seg"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_parsing_edge_map_of_one_hot_probabilities_equals_generate_edge():
    _, _, label, _ = random_batch(seed=3, h=16, w=13)
    probs = one_hot_logits(label, 4).softmax(dim=1).round()
    edge_map = parsing_edge_map(probs, label != IGNORE_INDEX)
    assert torch.equal(edge_map, generate_edge(label).float())


def test_consistency_is_zero_when_edges_agree_and_has_gradient_when_not():
    label = torch.zeros(1, 12, 12, dtype=torch.long)
    label[:, 3:9, 4:10] = 2
    label[:, :, :2] = IGNORE_INDEX
    edge = generate_edge(label)
    parsing = one_hot_logits(label, 3)
    agree = ParsingOutput(parsing, parsing, edge_logits_from(edge))
    _, parts = CE2PLoss()(agree, label, edge)
    assert parts["cons"].item() < 1e-6

    no_edge = edge_logits_from(torch.zeros_like(edge)).requires_grad_()
    parsing = parsing.clone().requires_grad_()
    _, parts = CE2PLoss(lambda_s=0.0, lambda_e=0.0)(
        ParsingOutput(parsing, parsing, no_edge), label, edge
    )
    assert parts["cons"].item() > 1e-3
    total, _ = CE2PLoss(lambda_s=0.0, lambda_e=0.0)(
        ParsingOutput(parsing * 0.1, parsing * 0.1, no_edge * 0.1), label, edge
    )
    total.backward()
    assert no_edge.grad.abs().sum() > 0 and parsing.grad.abs().sum() > 0


def test_predictions_are_upsampled_with_align_corners_to_the_label_size():
    output, teacher, label, edge = random_batch(h=16, w=12)
    small = ParsingOutput(*(t[..., ::4, ::4].contiguous() for t in output))
    big = ParsingOutput(
        *(F.interpolate(t, size=(16, 12), mode="bilinear", align_corners=True) for t in small)
    )
    total_small, _ = CE2PLoss()(small, label, edge, soft=teacher, cycle_n=1)
    total_big, _ = CE2PLoss()(big, label, edge, soft=teacher, cycle_n=1)
    assert total_small.item() == pytest.approx(total_big.item(), rel=1e-6)


def test_parts_sum_to_total_and_are_detached():
    output, _, label, edge = random_batch()
    output = ParsingOutput(*(t.requires_grad_() for t in output))
    total, parts = CE2PLoss()(output, label, edge)
    assert set(parts) == {"seg", "edge", "cons"}
    assert all(not p.requires_grad for p in parts.values())
    assert total.item() == pytest.approx(sum(p.item() for p in parts.values()), rel=1e-6)


def test_loss_trains_a_real_model_output_at_stride_4():
    torch.manual_seed(0)
    model = build_model("segformer_mit_b0", num_classes=4)
    _, _, label, edge = random_batch(h=64, w=48)
    total, _ = CE2PLoss()(model(torch.randn(2, 3, 64, 48)), label, edge)
    total.backward()
    assert torch.isfinite(total)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
