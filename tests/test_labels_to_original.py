"""`labels_to_original` equals the argmax of the full bilinear inverse warp."""

import pytest
import torch
import torch.nn.functional as F

from datasets.transforms import logits_to_original
from inference.predict import labels_to_original


def blocky_logits(seed: int, n: int = 2, c: int = 7, h: int = 40, w: int = 30) -> torch.Tensor:
    """Logits of a parsing-like map: smooth class regions plus a little noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, c, (n, h // 5, w // 5), generator=gen)
    one_hot = F.one_hot(coarse, c).permute(0, 3, 1, 2).float() * 4.0
    smooth = F.interpolate(one_hot, size=(h, w), mode="bilinear", align_corners=True)
    return smooth + 0.2 * torch.randn(n, c, h, w, generator=gen)


def reference(logits, center, scale, out_hw, crop_hw):
    full = logits_to_original(logits, center, scale, out_hw, crop_hw)
    return full.max(1).indices.to(torch.uint8)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(
    ("center", "scale", "out_hw"),
    [
        ([[60.0, 80.0], [55.0, 90.0]], [[120.0, 160.0], [100.0, 150.0]], (161, 121)),  # upscale
        ([[20.0, 25.0]], [[45.0, 60.0]], (50, 40)),  # about the logit size
        ([[100.0, 70.0]], [[200.0, 140.0]], (140, 200)),  # letterboxed: border outside the crop
    ],
)
def test_equals_argmax_of_full_warp(seed, center, scale, out_hw):
    logits = blocky_logits(seed)
    args = (logits, center, scale, out_hw, (160, 120))
    labels = labels_to_original(*args)
    assert labels.dtype == torch.uint8 and labels.shape == (2, *out_hw)
    assert torch.equal(labels, reference(*args))


def test_noise_falls_back_to_full_warp_and_stays_equal():
    logits = torch.randn(1, 5, 20, 16, generator=torch.Generator().manual_seed(3))
    args = (logits, [40.0, 50.0], [80.0, 100.0], (97, 83), (80, 64))
    assert torch.equal(labels_to_original(*args), reference(*args))


def test_tiny_logits_and_single_rows():
    for h, w in [(1, 5), (4, 1), (2, 2)]:
        logits = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h * 10 + w))
        args = (logits, [8.0, 8.0], [16.0, 16.0], (17, 13), (4 * h, 4 * w))
        assert torch.equal(labels_to_original(*args), reference(*args))


def test_too_many_classes_for_uint8_is_refused():
    with pytest.raises(ValueError, match="uint8"):
        labels_to_original(torch.zeros(1, 300, 4, 4), [2.0, 2.0], [4.0, 4.0], (8, 8))
