"""The speed-ups of issue 7 compute what the plain formulations compute.

- heads: the decoder's `linear_fuse` and the fusion head's first conv are evaluated without their
  concats (folded per input block, BatchNorm folded in eval); a naive concat-and-conv reference
  built from the same modules must give the same outputs, gradients and BN statistics;
- data: uint8 images normalised on the batch equal the loader's float images; OpenCV's greyscale
  PNG decoding equals PIL's; the 4-channel warp equals the plain 3-channel warp.
"""

import copy

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from datasets.lip import LIPDataset, read_label_png
from datasets.transforms import normalize_batch, warp_image
from networks import SCHP_BGR, build_model
from networks.contracts import IMAGENET_RGB
from networks.norm import BatchNormAct2d
from networks.ops import conv_bn_act, tap_conv

NUM_CLASSES = 5
INPUT_SHAPE = (2, 3, 97, 70)  # odd sizes: the stride-8/16/32 maps are not exact halvings
CROP = (128, 96)
ATOL = 1e-5


def _randomise_norms(model: nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            shape = module.weight.shape
            module.weight.data = 0.5 + torch.rand(shape, generator=generator)
            module.bias.data = 0.1 * torch.randn(shape, generator=generator)
            module.running_mean = 0.1 * torch.randn(shape, generator=generator)
            module.running_var = 0.5 + torch.rand(shape, generator=generator)


def _project(projection: nn.Module, x: Tensor) -> Tensor:
    return F.linear(x.permute(0, 2, 3, 1), projection.proj.weight, projection.proj.bias).permute(
        0, 3, 1, 2
    )


def naive_heads(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(parsing, fusion, edge) through the explicit concats and the modules' plain forwards."""
    c1, c2, c3, c4 = model.backbone(x)
    head, edge_module = model.head, model.edge
    size = c1.shape[-2:]
    coarse = [(head.linear_c4, c4), (head.linear_c3, c3), (head.linear_c2, c2)]
    resized = [F.interpolate(_project(p, c), size, mode="bilinear") for p, c in coarse]
    fused = head.linear_fuse(torch.cat([*resized, _project(head.linear_c1, c1)], dim=1))
    parsing = head.linear_pred(head.dropout(fused))

    def up(t: Tensor) -> Tensor:
        return F.interpolate(t, size, mode="bilinear", align_corners=True)

    feas = [edge_module.conv1(c1), edge_module.conv2(c2), edge_module.conv3(c3)]
    edges = [edge_module.conv4(fea) for fea in feas]
    edge = edge_module.conv5(torch.cat([edges[0], up(edges[1]), up(edges[2])], dim=1))
    edge_fea = torch.cat([feas[0], up(feas[1]), up(feas[2])], dim=1)
    fusion = nn.Sequential.forward(model.fusion, torch.cat([fused, edge_fea], dim=1))
    return parsing, fusion, edge


@pytest.fixture(scope="module")
def b0() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("segformer_mit_b0", NUM_CLASSES)
    _randomise_norms(model)
    return model


def test_folded_heads_equal_the_concat_reference_in_eval(b0: nn.Module) -> None:
    x = torch.randn(INPUT_SHAPE)
    b0.eval()
    with torch.inference_mode():
        ours = b0(x)
        reference = naive_heads(b0, x)
    for mine, theirs in zip(ours, reference, strict=True):
        torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)


@pytest.mark.parametrize("dropout", [False, True], ids=["no-dropout", "dropout"])
def test_folded_heads_train_with_the_same_gradients_and_bn_statistics(
    b0: nn.Module, dropout: bool
) -> None:
    """Folded BatchNorm (batch statistics), Dropout2d masks and tap convs train as the modules.

    In float64: in float32 a pre-activation within rounding of 0 can take the other side of a
    (Leaky)ReLU's kink in the two formulations and move a weight gradient by ~1e-5.
    """
    x = torch.randn(INPUT_SHAPE, dtype=torch.float64)
    models = [copy.deepcopy(b0).double().train(), copy.deepcopy(b0).double().train()]
    grads, buffers = [], []
    forwards = (lambda m: tuple(m(x)), lambda m: naive_heads(m, x))
    for model, forward in zip(models, forwards, strict=True):
        for module in model.modules():
            if isinstance(module, nn.Dropout2d):
                module.train(dropout)  # dropout: the same masks, drawn in the same order
        torch.manual_seed(1)  # the same DropPath and Dropout2d draws in both
        loss = sum(out.square().mean() for out in forward(model))
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
        buffers.append(dict(model.named_buffers()))
    assert grads[0].keys() == grads[1].keys()
    scale = max(g.abs().max() for g in grads[1].values())
    for name, grad in grads[1].items():
        torch.testing.assert_close(
            grads[0][name], grad, atol=1e-9 * scale, rtol=0, msg=lambda m, name=name: f"{name}: {m}"
        )
    for name, buffer in buffers[1].items():
        torch.testing.assert_close(buffers[0][name], buffer, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("spec", [IMAGENET_RGB, SCHP_BGR], ids=["rgb", "bgr"])
def test_uint8_images_normalised_on_the_batch_equal_float_images(lip_sample_root, spec) -> None:
    common = dict(input_size=CROP, input_spec=spec, augment=True, flip_prob=0.0)
    wide = LIPDataset(lip_sample_root, "val", **common)
    compact = LIPDataset(lip_sample_root, "val", **common, image_dtype=torch.uint8)
    samples = [compact[i] for i in range(len(compact))]
    assert samples[0]["image"].dtype == torch.uint8 and samples[0]["image"].shape == (3, *CROP)
    images = normalize_batch(torch.stack([s["image"] for s in samples]), spec)
    expected = torch.stack([wide[i]["image"] for i in range(len(wide))])
    torch.testing.assert_close(images, expected, atol=1e-6, rtol=0)
    for i, sample in enumerate(samples):
        assert torch.equal(sample["label"], wide[i]["label"])
    with pytest.raises(ValueError, match="image_dtype"):
        LIPDataset(lip_sample_root, "val", image_dtype=torch.float16)
    with pytest.raises(ValueError, match="uint8"):
        normalize_batch(images, spec)


@pytest.mark.parametrize("mode", ["L", "P"])
def test_label_png_decoding_equals_pil(tmp_path, mode: str) -> None:
    values = np.random.default_rng(0).integers(0, 20, (37, 23), dtype=np.uint8)
    image = Image.fromarray(values, mode="L")
    if mode == "P":
        image = image.convert("P")
        image.putpalette([255, 255, 255] * 256)  # luminance would read every id as 255
    path = tmp_path / "label.png"
    image.save(path)
    np.testing.assert_array_equal(read_label_png(path), values)


@pytest.mark.parametrize("swap_rb", [False, True])
@pytest.mark.parametrize("source_hw", [(90, 70), (700, 500)], ids=["padded", "large"])
def test_warp_image_equals_the_plain_three_channel_warp(source_hw, swap_rb: bool) -> None:
    image = np.random.default_rng(1).integers(0, 256, (*source_hw, 3), dtype=np.uint8)
    matrix = np.array([[0.31, 0.05, -4.2], [-0.04, 0.29, 3.7]])
    plain = cv2.warpAffine(image, matrix, (30, 40), flags=cv2.INTER_LINEAR, borderValue=0)
    if swap_rb:
        plain = plain[:, :, ::-1]
    np.testing.assert_array_equal(warp_image(image, matrix, (40, 30), swap_rb=swap_rb), plain)


@pytest.mark.parametrize("in_channels", [6, 24], ids=["covariance", "module-path"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_conv_bn_act_trains_like_conv_then_batchnorm(in_channels: int, momentum) -> None:
    """1x1 conv + BatchNormAct2d in training mode: outputs, input/weight/affine gradients and
    running statistics equal the two modules' (float64)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(in_channels, 12, 1, bias=False).double()
    bn = BatchNormAct2d(12, momentum=momentum).double()
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.normal_()
    x = torch.randn(3, in_channels, 7, 5, dtype=torch.float64)
    x = (x * 3 + 1).contiguous(memory_format=torch.channels_last)
    pairs = [(copy.deepcopy(conv), copy.deepcopy(bn)) for _ in range(2)]
    results = []
    for (c, b), fused in zip(pairs, (True, False), strict=True):
        inputs = x.clone().requires_grad_()
        for _ in range(2):  # two steps: the running statistics update twice
            out = conv_bn_act(inputs, c.weight, b) if fused else b(c(inputs))
        out.pow(2).mean().backward()
        results.append((out, inputs.grad, c.weight.grad, b.weight.grad, b.bias.grad, b))
    for mine, theirs in zip(results[0][:5], results[1][:5], strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-10, rtol=1e-9)
    ours, reference = results[0][5], results[1][5]
    torch.testing.assert_close(ours.running_mean, reference.running_mean, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(ours.running_var, reference.running_var, atol=1e-12, rtol=1e-10)
    assert int(ours.num_batches_tracked) == int(reference.num_batches_tracked) == 2


@pytest.mark.parametrize(
    "kernel, stride, out_channels", [(3, 1, 2), (5, 1, 3), (1, 1, 4), (3, 2, 2)]
)
def test_tap_conv_equals_the_conv_forward_and_backward(kernel, stride, out_channels) -> None:
    """Same-padded stride-1 convs run as tap matmul + one-hot grouped conv; others fall back."""
    torch.manual_seed(0)
    conv = nn.Conv2d(7, out_channels, kernel, stride=stride, padding=kernel // 2).double()
    x = torch.randn(2, 7, 11, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    grads = []
    for run in (tap_conv, lambda t, c: c(t)):
        inputs = x.clone().requires_grad_()
        conv.zero_grad()
        out = run(inputs, conv)
        out.pow(2).sum().backward()
        grads.append((out, inputs.grad, conv.weight.grad.clone(), conv.bias.grad.clone()))
    for mine, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-12, rtol=1e-10)
