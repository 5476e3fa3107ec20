"""Our MiT backbone and MLP decoder equal HF transformers' Segformer on the same random weights.

HF is an independent implementation of the same network; its 5.x keys (`segformer.stages...`)
go through `networks.hf_names.convert_hf_state_dict`, so the converter is checked too.
Both sides use LayerNorm eps 1e-5 (HF hard-codes it; ours via `ln_eps`). Norm weights and BN
statistics are randomised first, so a swapped or skipped norm cannot pass.
"""

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from networks import build_model  # noqa: E402
from networks.hf_names import convert_hf_state_dict  # noqa: E402

HF_LN_EPS = 1e-5
TOLERANCE = 1e-4
NUM_CLASSES = 7
INPUT_SHAPE = (1, 3, 128, 96)

# (our arch, HF SegformerConfig overrides); b4 with the seed's decoder width 256
CASES = {
    "segformer_mit_b0": dict(
        hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256
    ),
    "segformer_mit_b4": dict(
        hidden_sizes=[64, 128, 320, 512], depths=[3, 8, 27, 3], decoder_hidden_size=256
    ),
}


def _randomise_norms(model: nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.LayerNorm | nn.BatchNorm2d):
            shape = module.weight.shape
            module.weight.data = 0.5 + torch.rand(shape, generator=generator)
            module.bias.data = 0.1 * torch.randn(shape, generator=generator)
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean = 0.1 * torch.randn(shape, generator=generator)
            module.running_var = 0.5 + torch.rand(shape, generator=generator)


@pytest.mark.parametrize("arch", sorted(CASES))
def test_backbone_and_decoder_match_hf_segformer(arch: str) -> None:
    torch.manual_seed(0)
    config = transformers.SegformerConfig(num_labels=NUM_CLASSES, **CASES[arch])
    config._attn_implementation = "eager"  # the plain-math reference
    hf = transformers.SegformerForSemanticSegmentation(config).eval()
    _randomise_norms(hf)
    ours = build_model(arch, NUM_CLASSES, ln_eps=HF_LN_EPS).eval()

    missing, unexpected = ours.load_state_dict(convert_hf_state_dict(hf.state_dict()), strict=False)
    assert unexpected == []
    assert {k.split(".")[0] for k in missing} == {"edge", "fusion"}, missing

    x = torch.randn(INPUT_SHAPE)
    with torch.inference_mode():
        hf_out = hf(pixel_values=x, output_hidden_states=True)
        features = ours.backbone(x)
        logits, _ = ours.head(features)
    assert len(hf_out.hidden_states) == len(features) == 4
    for stage, (mine, theirs) in enumerate(zip(features, hf_out.hidden_states, strict=True)):
        assert mine.shape == theirs.shape, stage
        torch.testing.assert_close(mine, theirs, atol=TOLERANCE, rtol=0, msg=f"stage {stage + 1}")
    assert logits.shape == hf_out.logits.shape
    torch.testing.assert_close(logits, hf_out.logits, atol=TOLERANCE, rtol=0)
