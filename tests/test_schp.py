"""SCHP: cycle boundaries, online aggregation = running mean, exact BN re-estimation."""

import pytest
import torch
from torch import nn

from networks.norm import BatchNormAct2d
from utils.schp import bn_re_estimate, is_cycle_end, moving_average

CHANNELS = 3


def test_cycle_ends_follow_the_seed_with_default_settings():
    ends = [e for e in range(150) if is_cycle_end(e, schp_start=100, cycle_epochs=10)]
    assert ends == [99, 109, 119, 129, 139, 149]
    assert [e for e in range(12) if is_cycle_end(e, schp_start=4, cycle_epochs=3)] == [3, 6, 9]


def _tiny_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(CHANNELS, CHANNELS, 1), BatchNormAct2d(CHANNELS), nn.Conv2d(CHANNELS, 2, 1)
    )


def test_aggregation_with_one_over_n_plus_one_is_the_running_mean_of_snapshots():
    torch.manual_seed(0)
    teacher = _tiny_model()
    snapshots = []
    for cycle_n in range(4):
        student = _tiny_model()
        student[1].running_mean.normal_()
        student[1].num_batches_tracked.fill_(10 + cycle_n)
        snapshots.append(student)
        moving_average(teacher, student, alpha=1.0 / (cycle_n + 1))
    for name, value in teacher.state_dict().items():
        stacked = torch.stack([s.state_dict()[name] for s in snapshots])
        if value.is_floating_point():
            assert torch.allclose(value, stacked.mean(dim=0), atol=1e-6), name
        else:  # num_batches_tracked: copied from the last student
            assert torch.equal(value, stacked[-1]), name


def test_first_aggregation_copies_the_student_exactly():
    teacher, student = _tiny_model(), _tiny_model()
    moving_average(teacher, student, alpha=1.0)
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, student.state_dict()[name]), name


def test_aggregation_rejects_different_architectures():
    with pytest.raises(ValueError, match="same"):
        moving_average(_tiny_model(), nn.Sequential(nn.Conv2d(CHANNELS, 2, 1)), alpha=0.5)


class _Probe(nn.Module):
    """Records the batches it sees; BN layers of every kind sit on the raw images."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(CHANNELS)
        self.bn_act = BatchNormAct2d(CHANNELS)
        self.sync_bn = nn.SyncBatchNorm(CHANNELS, momentum=0.3)
        self.scale = nn.Parameter(torch.ones(1))
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        self.bn_act(x)
        self.sync_bn(x)
        return self.drop(self.bn(x) * self.scale)


def _loader(batch_sizes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.randn(n, CHANNELS, 5, 4, generator=gen) * 3 + 2, "label": None}
        for n in batch_sizes
    ]


def _dirty(model: nn.Module) -> None:
    for m in (model.bn, model.bn_act, model.sync_bn):
        m.running_mean.fill_(7.0)
        m.running_var.fill_(9.0)


def test_bn_re_estimation_of_one_batch_gives_the_exact_mean_and_unbiased_var():
    model = _Probe()
    _dirty(model)
    loader = _loader([6])
    bn_re_estimate(model, loader, torch.device("cpu"))
    images = loader[0]["image"].transpose(0, 1).reshape(CHANNELS, -1)
    for m in (model.bn, model.bn_act, model.sync_bn):
        assert torch.allclose(m.running_mean, images.mean(dim=1), atol=1e-5)
        assert torch.allclose(m.running_var, images.var(dim=1, unbiased=True), atol=1e-5)


def test_bn_re_estimation_weights_batches_by_size_and_restores_state():
    model = _Probe()
    _dirty(model)
    scale_before = model.scale.detach().clone()
    loader = _loader([4, 4, 2])  # a short last batch
    returned = bn_re_estimate(model, loader, torch.device("cpu"))
    batches = [b["image"].transpose(0, 1).reshape(CHANNELS, -1) for b in loader]
    sizes = torch.tensor([4.0, 4.0, 2.0])
    weights = sizes / sizes.sum()
    mean = torch.cat(batches, dim=1).mean(dim=1)  # the dataset mean
    var = sum(w * b.var(dim=1, unbiased=True) for w, b in zip(weights, batches, strict=True))
    for m in (model.bn, model.bn_act, model.sync_bn):
        assert torch.allclose(m.running_mean, mean, atol=1e-5)
        assert torch.allclose(m.running_var, var, atol=1e-5)
    assert returned is model and not model.training
    assert (model.bn.momentum, model.bn_act.momentum, model.sync_bn.momentum) == (0.1, 0.1, 0.3)
    assert torch.equal(model.scale, scale_before) and model.scale.grad is None


def test_bn_re_estimation_stops_after_max_batches():
    model = _Probe()
    loader = _loader([3, 3, 3])
    bn_re_estimate(model, loader, torch.device("cpu"), max_batches=1)
    first = loader[0]["image"].transpose(0, 1).reshape(CHANNELS, -1)
    assert torch.allclose(model.bn.running_mean, first.mean(dim=1), atol=1e-5)
    assert model.bn.num_batches_tracked.item() == 1
