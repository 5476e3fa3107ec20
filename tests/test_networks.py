"""Model registry, shapes, gradients, parameter counts and checkpoint key names.

The seed's numbers (its README's model summary): MiT-b4 backbone 60,842,688 parameters;
`segformer_mit_b4` with 20 classes 61,781,260 including the unused `head.conv_seg` (2,580).
"""

import importlib.util
import math

import pytest
import torch
from torch import nn

from networks import IMAGENET_RGB, MODELS, SCHP_BGR, ParsingOutput, build_model
from networks.mit import MixVisionTransformer
from networks.norm import BatchNormAct2d

NUM_CLASSES = 5
SHAPES = [(2, 64, 48), (2, 65, 47)]  # (N, H, W): a multiple of 32 and an odd size; N > 1 for BN
DECODER_DIMS = {
    "segformer_mit_b0": 256,
    "segformer_mit_b1": 256,
    "segformer_mit_b2": 768,
    "segformer_mit_b3": 768,
    "segformer_mit_b4": 256,  # the seed's width, not the official 768
    "segformer_mit_b5": 768,
}
SEED_CLASSES = 20
SEED_B4_BACKBONE_PARAMS = 60_842_688
SEED_B4_TOTAL_PARAMS = 61_781_260
SEED_CONV_SEG_PARAMS = 128 * SEED_CLASSES + SEED_CLASSES
SEED_HEAD_PARAMS, SEED_EDGE_PARAMS, SEED_FUSION_PARAMS = 533_544, 137_232, 267_796
NVLABS_B4_KEYS = 834  # mit_b4.pth, including the ImageNet classifier head.weight/head.bias
B4_DEPTHS = (3, 8, 27, 3)
HAS_RESNET = importlib.util.find_spec("networks.resnet") is not None


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> nn.Module:
    """One registry model at a time (pytest groups the tests by this module-scoped param)."""
    if request.param == "resnet101" and not HAS_RESNET:
        pytest.skip("networks/resnet.py does not exist yet (written by another engineer)")
    torch.manual_seed(0)
    return build_model(request.param, NUM_CLASSES)


@pytest.fixture(scope="module")
def seed_b4() -> nn.Module:
    return build_model("segformer_mit_b4", SEED_CLASSES)


def test_every_arch_gives_stride4_outputs_and_gradients_reach_first_conv(model: nn.Module) -> None:
    model.train()
    first_conv = next(m for m in model.backbone.modules() if isinstance(m, nn.Conv2d))
    for n, h, w in SHAPES:
        model.zero_grad(set_to_none=True)
        out = model(torch.randn(n, 3, h, w))
        assert isinstance(out, ParsingOutput)
        size = (math.ceil(h / 4), math.ceil(w / 4))
        assert out.parsing.shape == out.fusion.shape == (n, NUM_CLASSES, *size)
        assert out.edge.shape == (n, 2, *size)
        sum(t.float().mean() for t in out).backward()
        grad = first_conv.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_every_arch_records_its_contract_attributes(model: nn.Module) -> None:
    arch = model.arch
    assert arch in MODELS
    assert model.num_classes == NUM_CLASSES
    assert model.input_spec == (SCHP_BGR if arch == "resnet101" else IMAGENET_RGB)
    assert {"backbone", "edge", "fusion"} <= {name for name, _ in model.named_children()}
    assert isinstance(model.fusion, nn.Sequential) and isinstance(model.fusion[1], BatchNormAct2d)
    stages = model.backbone.stage_modules()
    assert len(stages) == 4
    staged = {id(p) for modules in stages for m in modules for p in m.parameters()}
    assert staged == {id(p) for p in model.backbone.parameters()}, "stages must cover the backbone"
    if arch in DECODER_DIMS:
        assert model.head.linear_fuse.conv.out_channels == DECODER_DIMS[arch]
        assert tuple(model.backbone.strides) == (4, 8, 16, 32)


def test_decoder_dim_drop_path_and_ln_eps_are_overridable() -> None:
    model = build_model(
        "segformer_mit_b0", NUM_CLASSES, decoder_dim=64, drop_path_rate=0.3, ln_eps=1e-5
    )
    assert model.head.linear_fuse.conv.out_channels == 64
    assert model.fusion[0].in_channels == 64 + 3 * 256
    assert model.backbone.block4[1].drop_path.drop_prob == pytest.approx(0.3)
    eps = {m.eps for m in model.backbone.modules() if isinstance(m, nn.LayerNorm)}
    assert eps == {1e-5}


def test_mit_uses_official_layernorm_eps_and_linear_drop_path() -> None:
    mit = MixVisionTransformer("mit_b0")
    assert mit.block1[0].norm1.eps == mit.block2[1].norm2.eps == mit.norm3.eps == 1e-6
    assert mit.patch_embed1.norm.eps == mit.block1[0].attn.norm.eps == 1e-5
    assert isinstance(mit.block1[0].drop_path, nn.Identity)  # rate 0 for the first block
    assert mit.block4[1].drop_path.drop_prob == pytest.approx(0.1)
    assert mit.block2[0].drop_path.drop_prob == pytest.approx(0.1 * 2 / 7)
    assert not hasattr(mit.block4[0].attn, "sr"), "stage 4 (sr_ratio 1) has no reduction"


def test_mit_accepts_the_smallest_input_and_names_the_limit_below_it() -> None:
    mit = MixVisionTransformer("mit_b0").eval()
    assert mit.min_input_size == 29  # stage 1: ceil(29 / 4) = 8 = its sr ratio
    with torch.inference_mode():
        features = mit(torch.randn(1, 3, 29, 29))
        assert [f.shape[-1] for f in features] == [8, 4, 2, 1]
        with pytest.raises(ValueError, match=">= 29 pixels"):
            mit(torch.randn(1, 3, 28, 64))


def test_unknown_arch_error_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="segformer_mit_b0") as info:
        build_model("segformer_mit_b9", NUM_CLASSES)
    assert str(sorted(MODELS)) in str(info.value)


def test_mit_b4_parameter_counts_match_seed(seed_b4: nn.Module) -> None:
    assert _count(seed_b4.backbone) == SEED_B4_BACKBONE_PARAMS
    assert _count(seed_b4.head) == SEED_HEAD_PARAMS - SEED_CONV_SEG_PARAMS
    assert _count(seed_b4.edge) == SEED_EDGE_PARAMS
    assert _count(seed_b4.fusion) == SEED_FUSION_PARAMS
    assert _count(seed_b4) == SEED_B4_TOTAL_PARAMS - SEED_CONV_SEG_PARAMS


def _seed_b4_keys() -> set[str]:
    """The seed's `segformer_mit_b4` state-dict keys, written from its documented naming."""
    wb, abn = ("weight", "bias"), ("weight", "bias", "running_mean", "running_var")
    keys: set[str] = set()
    for s, depth in enumerate(B4_DEPTHS, start=1):
        keys |= {f"backbone.patch_embed{s}.{m}.{p}" for m in ("proj", "norm") for p in wb}
        layers = ["norm1", "attn.q", "attn.kv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]
        layers += ["mlp.dwconv.dwconv"] + (["attn.sr", "attn.norm"] if s < 4 else [])
        keys |= {f"backbone.block{s}.{j}.{m}.{p}" for j in range(depth) for m in layers for p in wb}
        keys |= {f"backbone.norm{s}.{p}" for p in wb}
    assert len(keys) == NVLABS_B4_KEYS - 2  # NVlabs file minus its ImageNet head
    keys |= {f"head.linear_c{i}.proj.{p}" for i in range(1, 5) for p in wb}
    keys |= {"head.linear_fuse.conv.weight", "head.linear_fuse.bn.num_batches_tracked"}
    keys |= {f"head.linear_fuse.bn.{p}" for p in abn}  # plain BatchNorm2d in the seed
    keys |= {f"head.{m}.{p}" for m in ("linear_pred", "conv_seg") for p in wb}
    keys |= {f"edge.conv{i}.0.weight" for i in (1, 2, 3)}
    keys |= {f"edge.conv{i}.1.{p}" for i in (1, 2, 3) for p in abn}  # InPlace-ABN
    keys |= {f"edge.conv{i}.{p}" for i in (4, 5) for p in wb}
    keys |= {"fusion.0.weight"} | {f"fusion.1.{p}" for p in abn} | {f"fusion.3.{p}" for p in wb}
    return keys


def test_segformer_b4_state_dict_keys_match_seed(seed_b4: nn.Module) -> None:
    ours, seed = set(seed_b4.state_dict()), _seed_b4_keys()
    assert seed - ours == {"head.conv_seg.weight", "head.conv_seg.bias"}
    # InPlace-ABN has no num_batches_tracked; BatchNorm fills it in when loading old files
    counters = {f"edge.conv{i}.1.num_batches_tracked" for i in (1, 2, 3)}
    assert ours - seed == counters | {"fusion.1.num_batches_tracked"}


def test_batchnormact_applies_leaky_relu_or_identity() -> None:
    x = torch.randn(4, 3, 5, 5)
    for activation, expected in [("leaky_relu", 0.01), (None, 1.0)]:
        bn = BatchNormAct2d(3, activation=activation).eval()
        y = bn(x)
        plain = nn.functional.batch_norm(x, bn.running_mean, bn.running_var, eps=bn.eps)
        torch.testing.assert_close(y, torch.where(plain > 0, plain, plain * expected))
