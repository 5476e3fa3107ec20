"""The original SCHP network (`resnet101`): shapes, strides, SCHP parameter layout, stages."""

import pytest
import torch
from torch import nn

from networks import SCHP_BGR, ParsingOutput, build_model
from networks.norm import BatchNormAct2d

NUM_CLASSES = 7  # Pascal-Person-Part


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet101", NUM_CLASSES)


def test_forward_backward_gives_stride_4_logits_for_odd_sizes(model):
    model.train()
    x = torch.randn(2, 3, 65, 49, requires_grad=True)  # batch 2: the 1x1 PSP bin needs it
    out = model(x)
    assert isinstance(out, ParsingOutput)
    assert out.parsing.shape == out.fusion.shape == (2, NUM_CLASSES, 17, 13)  # ceil(65/4, 49/4)
    assert out.edge.shape == (2, 2, 17, 13)
    (out.parsing.sum() + out.fusion.sum() + out.edge.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad
    model.zero_grad(set_to_none=True)


def test_backbone_has_output_stride_16_with_dilated_layer4(model):
    model.eval()
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, 64, 96))
    sizes = [tuple(f.shape[1:]) for f in features]
    assert sizes == [(256, 16, 24), (512, 8, 12), (1024, 4, 6), (2048, 4, 6)]
    assert model.backbone.out_channels == (256, 512, 1024, 2048)
    assert model.backbone.strides == (4, 8, 16, 16)
    assert model.backbone.layer4[2].conv2.dilation == (2, 2)
    assert model.backbone.layer2[0].conv2.stride == (2, 2)  # stride in the 3x3 conv
    assert model.backbone.layer2[0].conv1.stride == (1, 1)


def test_model_records_schp_input_convention_and_arch(model):
    assert model.arch == "resnet101"
    assert model.num_classes == NUM_CLASSES
    assert model.input_spec == SCHP_BGR
    assert model.input_spec.colour == "BGR"


def test_parameter_names_and_shapes_follow_the_released_schp_checkpoints(model):
    sd = model.state_dict()
    expected = {
        "backbone.conv1.weight": (64, 3, 3, 3),
        "backbone.conv3.weight": (128, 64, 3, 3),
        "backbone.layer1.0.downsample.0.weight": (256, 128, 1, 1),
        "backbone.layer3.22.conv2.weight": (256, 256, 3, 3),
        "context_encoding.stages.3.1.weight": (512, 2048, 1, 1),
        "context_encoding.bottleneck.0.weight": (512, 4096, 3, 3),
        "decoder.conv1.0.weight": (256, 512, 1, 1),
        "decoder.conv2.0.weight": (48, 256, 1, 1),
        "decoder.conv3.0.weight": (256, 304, 1, 1),
        "decoder.conv3.2.weight": (256, 256, 1, 1),
        "decoder.conv4.weight": (NUM_CLASSES, 256, 1, 1),
        "edge.conv3.0.weight": (256, 1024, 1, 1),
        "edge.conv4.weight": (2, 256, 3, 3),
        "edge.conv5.weight": (2, 6, 1, 1),
        "fusion.0.weight": (256, 1024, 1, 1),
        "fusion.3.weight": (NUM_CLASSES, 256, 1, 1),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    bns = [k for k in sd if k.endswith("running_var")]
    for key in ("decoder.conv3.3", "context_encoding.stages.0.2", "fusion.1", "edge.conv1.1"):
        assert f"{key}.running_var" in bns
    assert "backbone.layer4.2.bn3.running_var" in bns


def test_backbone_batchnorms_are_plain_and_head_batchnorms_are_leaky(model):
    backbone_bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert backbone_bns and not any(isinstance(m, BatchNormAct2d) for m in backbone_bns)
    for name in ("context_encoding", "decoder", "edge", "fusion"):
        head_bns = [m for m in getattr(model, name).modules() if isinstance(m, nn.BatchNorm2d)]
        assert head_bns and all(isinstance(m, BatchNormAct2d) for m in head_bns), name
        assert all(m.activation == "leaky_relu" and m.slope == 0.01 for m in head_bns)


def test_stage_modules_cover_every_backbone_parameter_once(model):
    stages = model.backbone.stage_modules()
    assert len(stages) == 4
    assert stages[0][-1] is model.backbone.layer1 and stages[3] == [model.backbone.layer4]
    ids = [id(p) for stage in stages for module in stage for p in module.parameters()]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.backbone.parameters()}


def test_builder_rejects_unknown_options():
    with pytest.raises(TypeError):
        build_model("resnet101", NUM_CLASSES, decoder_dim=768)
