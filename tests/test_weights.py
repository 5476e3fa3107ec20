"""Loading foreign weights: every format round-trips from weights the test writes in that format,
HF names match the installed transformers exactly, and bad files fail with one clear line."""

import argparse
import os
import re

import pytest
import torch
from torch import Tensor, nn

from networks import build_model
from networks import hf_names as H
from networks import weights as W
from utils import checkpoint as ckpt

ABN_PREFIXES = ("edge.conv1.1.", "edge.conv2.1.", "edge.conv3.1.", "fusion.1.")
CORRUPT = "not a PyTorch checkpoint (truncated or corrupt); re-download it or point --model-restore"


def _randomize(model: nn.Module, seed: int = 0) -> dict[str, Tensor]:
    """Random values for the 1-D tensors the init leaves constant (norms, biases, BN statistics;
    weights are random already); returns a copy of the state dict."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and t.dim() == 1:
                t.uniform_(-0.1, 0.1)
                if name.endswith("running_var"):
                    t.add_(1.0)  # variances stay positive
    return {k: v.clone() for k, v in model.state_dict().items()}


def _zero(model: nn.Module) -> None:
    with torch.no_grad():
        for t in model.state_dict().values():
            t.zero_()


def _assert_state_equal(model: nn.Module, expected: dict[str, Tensor], keys=None) -> None:
    own = model.state_dict()
    for key in keys if keys is not None else expected:
        assert torch.equal(own[key], expected[key]), key


def _b0(num_classes: int = 20, **kw) -> nn.Module:
    return build_model("segformer_mit_b0", num_classes, **kw).eval()


@pytest.fixture(scope="module")
def b4() -> nn.Module:
    return build_model("segformer_mit_b4", 20).eval()


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return build_model("resnet101", 20).eval()


@pytest.mark.parametrize(
    ("keys", "fmt"),
    [
        (["segformer.encoder.block.0.0.attention.self.key.weight"], "hf"),
        (["backbone.patch_embed1.proj.weight", "decode_head.linear_c1.proj.weight"],
         "nvlabs_segformer"),
        (["stages.0.blocks.0.attention.k_proj.weight"], "hf"),
        (["module.fushion.0.weight", "module.layer1.0.conv1.weight"], "schp"),
        (["patch_embed1.proj.weight", "head.weight"], "nvlabs"),
        (["conv1.weight", "layer4.0.conv1.weight", "fc.weight"], "resnet_imagenet"),
        (["module.backbone.patch_embed1.proj.weight", "module.edge.conv1.1.weight"], "seed"),
        (["backbone.patch_embed1.proj.weight", "edge.conv1.1.weight", "head.conv_seg.weight",
          "fusion.1.num_batches_tracked"], "seed"),
        (["backbone.patch_embed1.proj.weight", "edge.conv1.1.weight",
          "fusion.1.num_batches_tracked"], "plain"),
    ],
)  # fmt: skip
def test_detect_format_rules(keys, fmt):
    assert W.detect_format(dict.fromkeys(keys, torch.ones(1))) == fmt
    assert W.detect_format({"arch": "resnet101", "state_dict": {}}) == "ours"


# ---------------------------------------------------------------- NVlabs mit_b*.pth


def test_nvlabs_imagenet_file_loads_into_the_backbone_and_drops_its_classifier(tmp_path):
    source = _b0()
    expected = _randomize(source)
    nvlabs = {k.removeprefix("backbone."): v for k, v in expected.items() if k.startswith("backb")}
    nvlabs |= {"head.weight": torch.randn(1000, 256), "head.bias": torch.randn(1000)}
    path = tmp_path / "mit_b0.pth"
    torch.save(nvlabs, path)
    assert W.detect_format(path) == "nvlabs"
    model = _b0()
    report = W.load_weights(model, path)
    _assert_state_equal(model, expected, [k for k in expected if k.startswith("backbone.")])
    assert report.fmt == "nvlabs" and report.loaded == len(nvlabs) - 2
    assert report.dropped == ("head.weight", "head.bias")
    assert report.untouched == ("head", "edge", "fusion")
    assert not report.missing and not report.unexpected


def test_pretrained_backbone_loader_refuses_parser_checkpoints(tmp_path):
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"arch": "segformer_mit_b0", "state_dict": _b0().state_dict()}, path)
    with pytest.raises(
        W.WeightsError, match=r"is a parser checkpoint \(ours\), not pretrained backbone"
    ):
        W.load_pretrained_backbone(_b0(), path)
    backbone = {k: v for k, v in _b0().state_dict().items() if k.startswith("backbone.")}
    nvlabs = {k.removeprefix("backbone."): v for k, v in backbone.items()}
    report = W.load_pretrained_backbone(_b0(), nvlabs)
    assert report.fmt == "nvlabs" and report.untouched == ("head", "edge", "fusion")


def test_nvlabs_b0_file_into_a_b4_model_names_both_variants(tmp_path, b4):
    nvlabs = {k.removeprefix("backbone."): v for k, v in _b0().state_dict().items()}
    path = tmp_path / "mit_b0.pth"
    torch.save({k: v for k, v in nvlabs.items() if not k.startswith(("head", "edge", "fus"))}, path)
    with pytest.raises(W.WeightsError) as err:
        W.load_nvlabs_mit(b4, path)
    assert str(err.value).startswith(f"{path}: holds mit_b0 weights but the model segformer_mit_b4")
    assert "needs mit_b4" in str(err.value)


# ---------------------------------------------------------------- Hugging Face


@pytest.mark.parametrize("naming", ["v4", "v5"])
def test_hf_names_round_trip(naming):
    sd = _randomize(_b0())
    hf = H.convert_to_hf_state_dict(sd, naming)
    assert all(k.startswith(("segformer.", "decode_head.")) for k in hf)
    back = H.convert_hf_state_dict(hf)
    own = {k: v for k, v in sd.items() if k.startswith(("backbone.", "head."))}
    assert back.keys() == own.keys()
    assert all(torch.equal(back[k], own[k]) for k in own)


def test_hf_v5_names_are_exactly_the_installed_transformers_names():
    transformers = pytest.importorskip("transformers")
    config = transformers.SegformerConfig(num_labels=20)
    reference = transformers.SegformerForSemanticSegmentation(config).state_dict()
    ours = H.convert_to_hf_state_dict(_b0().state_dict(), "v5")
    assert ours.keys() == reference.keys()
    assert all(ours[k].shape == reference[k].shape for k in reference)


def test_hf_random_model_loads_and_our_head_reproduces_its_logits():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    reference = transformers.SegformerForSemanticSegmentation(
        transformers.SegformerConfig(num_labels=20)
    ).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        reference.decode_head.batch_norm.running_mean.normal_()
        reference.decode_head.batch_norm.running_var.uniform_(0.5, 2.0)
    model = _b0(ln_eps=1e-5)  # HF uses LayerNorm eps 1e-5 everywhere
    report = W.load_hf_segformer(model, reference.state_dict())
    assert report.untouched == ("edge", "fusion") and not report.missing
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        hidden = reference.segformer(x, output_hidden_states=True).hidden_states
        logits = reference(pixel_values=x).logits
        features = model.backbone(x)
        out = model(x)
    for ours, theirs in zip(features, hidden, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.parsing, logits, atol=1e-4, rtol=0)


def test_hf_v4_names_are_what_the_installed_transformers_reads_from_hub_files(tmp_path):
    transformers = pytest.importorskip("transformers")
    safetensors = pytest.importorskip("safetensors.torch")
    model = _b0(ln_eps=1e-5)
    _randomize(model)
    hf4 = {
        k: v.contiguous() for k, v in H.convert_to_hf_state_dict(model.state_dict(), "v4").items()
    }
    transformers.SegformerConfig(num_labels=20).save_pretrained(tmp_path)
    safetensors.save_file(hf4, tmp_path / "model.safetensors")
    reference, info = transformers.SegformerForSemanticSegmentation.from_pretrained(
        tmp_path, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    reloaded = _b0(ln_eps=1e-5)
    assert W.load_weights(reloaded, tmp_path).fmt == "hf"  # a snapshot folder
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        logits = reference.eval()(pixel_values=x).logits
        torch.testing.assert_close(reloaded(x).parsing, logits, atol=1e-4, rtol=0)


def test_hf_backbone_only_file_loads_the_backbone_and_drops_the_imagenet_classifier(tmp_path):
    expected = _randomize(_b0())
    backbone = {k: v for k, v in expected.items() if k.startswith("backbone.")}
    hf = H.convert_to_hf_state_dict(backbone, "v4")
    hf |= {"classifier.weight": torch.randn(1000, 256), "classifier.bias": torch.randn(1000)}
    path = tmp_path / "pytorch_model.bin"
    torch.save(hf, path)
    model = _b0()
    report = W.load_weights(model, path)
    _assert_state_equal(model, expected, backbone)
    assert report.fmt == "hf" and report.dropped == ("classifier.weight", "classifier.bias")
    assert report.untouched == ("head", "edge", "fusion")


def test_hf_head_for_other_classes_loads_all_but_the_classifier_when_not_strict():
    expected = _randomize(_b0(num_classes=150))  # an ADE20K-like SegFormer
    hf = H.convert_to_hf_state_dict(expected, "v5")
    model = _b0(num_classes=20)
    with pytest.raises(W.WeightsError, match="checkpoint has 150 classes"):
        W.load_hf_segformer(model, hf)
    report = W.load_hf_segformer(model, hf, strict=False)
    assert report.mismatched == ("head.linear_pred.weight", "head.linear_pred.bias")
    _assert_state_equal(model, expected, ["head.linear_fuse.bn.running_var"])


def test_hf_decoder_of_another_width_asks_for_decoder_dim():
    wide = H.convert_to_hf_state_dict(_b0(decoder_dim=768).state_dict(), "v5")
    with pytest.raises(W.WeightsError, match="decoder is 768 wide .* with 256; build the model"):
        W.load_hf_segformer(_b0(), wide, name="segformer-b0")


def test_nvlabs_segmentation_checkpoint_fills_backbone_and_head():
    expected = _randomize(_b0())
    nvlabs = {
        re.sub(r"^head\.", "decode_head.", k): v
        for k, v in expected.items()
        if k.startswith(("backbone.", "head."))
    }
    nvlabs |= {"decode_head.conv_seg.weight": torch.randn(20, 128, 1, 1)}
    model = _b0()
    report = W.load_weights(model, {"state_dict": nvlabs, "meta": {"iter": 160000}})
    assert report.fmt == "nvlabs_segformer" and report.untouched == ("edge", "fusion")
    assert report.dropped == ("decode_head.conv_seg.weight",)
    _assert_state_equal(model, expected, [k for k in expected if k.startswith(("backb", "head"))])


# ---------------------------------------------------------------- seed and SCHP checkpoints


def test_seed_checkpoint_converts_inplace_abn_and_drops_conv_seg(tmp_path, b4):
    expected = _randomize(b4)
    raw = dict(expected)
    raw["edge.conv1.1.weight"][:3] = torch.tensor([-0.5, 0.0, 0.7])
    raw["head.linear_fuse.bn.weight"][0] = -0.25  # plain mmcv BN: stored as it is
    expected = dict(raw)
    for prefix in ABN_PREFIXES:  # InPlace-ABN: y = x_hat * (|w| + eps) + b, no batch counter
        expected[prefix + "weight"] = raw[prefix + "weight"].abs() + W.ABN_EPS
        del raw[prefix + "num_batches_tracked"]
        expected[prefix + "num_batches_tracked"] = torch.tensor(0)
    seed = {f"module.{k}": v for k, v in raw.items()}
    seed |= {"module.head.conv_seg.weight": torch.randn(20, 128, 1, 1)}
    seed |= {"module.head.conv_seg.bias": torch.randn(20)}
    path = tmp_path / "schp_6_checkpoint.pth.tar"
    torch.save({"state_dict": seed, "cycle_n": 6}, path)
    _zero(b4)
    report = W.load_weights(b4, path)
    _assert_state_equal(b4, expected)
    abs_plus_eps = [0.5 + 1e-5, 1e-5, 0.7 + 1e-5]
    assert b4.state_dict()["edge.conv1.1.weight"][:3].tolist() == pytest.approx(abs_plus_eps)
    assert b4.state_dict()["head.linear_fuse.bn.weight"][0] == -0.25
    assert report.fmt == "seed"
    assert report.dropped == ("head.conv_seg.weight", "head.conv_seg.bias")
    assert report.loaded == len(expected) and not report.untouched


def test_schp_checkpoint_loads_with_fushion_and_abn_scales_everywhere(tmp_path, resnet):
    model = resnet
    ours = _randomize(model)
    ours["backbone.bn1.weight"][0] = -0.3  # SCHP's backbone BNs are InPlace-ABN too
    ours["fusion.1.weight"][1] = -0.2
    expected, schp = dict(ours), {}
    for key, value in ours.items():
        module, _, param = key.rpartition(".")
        if param == "num_batches_tracked":
            expected[key] = torch.tensor(0)
            continue
        if param == "weight" and key.replace("weight", "running_var") in ours:
            expected[key] = value.abs() + W.ABN_EPS
        name = key.removeprefix("backbone.").replace("fusion.", "fushion.", 1)
        schp[f"module.{name}"] = value
    path = tmp_path / "exp-schp-201908261155-lip.pth"
    torch.save({"state_dict": schp}, path)
    _zero(model)
    report = W.load_weights(model, path)
    _assert_state_equal(model, expected)
    assert report.fmt == "schp" and report.loaded == len(expected)
    assert model.state_dict()["backbone.bn1.weight"][0] == pytest.approx(0.3 + 1e-5)
    with pytest.raises(W.WeightsError, match="do not fit segformer_mit_b0; pass --arch resnet101"):
        W.load_weights(_b0(), path)


def test_imagenet_resnet_loads_the_backbone_with_plain_batchnorms(resnet):
    expected = _randomize(resnet)
    expected["backbone.bn1.weight"][0] = -0.3  # plain BN: no |w| conversion
    imagenet = {
        k.removeprefix("backbone."): v
        for k, v in expected.items()
        if k.startswith("backbone.") and not k.endswith("num_batches_tracked")
    }
    imagenet |= {"fc.weight": torch.randn(1000, 2048), "fc.bias": torch.randn(1000)}
    assert W.detect_format(imagenet) == "resnet_imagenet"
    _zero(resnet)
    report = W.load_imagenet_resnet(resnet, imagenet)
    _assert_state_equal(resnet, expected, [k for k in expected if k.startswith("backbone.")])
    assert report.dropped == ("fc.weight", "fc.bias")
    assert report.untouched == ("context_encoding", "decoder", "edge", "fusion")


def test_our_checkpoint_loads_strictly_after_checking_the_arch(tmp_path):
    expected = _randomize(_b0())
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"arch": "segformer_mit_b0", "num_classes": 20, "state_dict": expected}, path)
    model = _b0()
    assert W.load_weights(model, path).fmt == "ours"
    _assert_state_equal(model, expected)
    with pytest.raises(W.WeightsError, match="is for segformer_mit_b0, not resnet101; pass --arch"):
        W.load_weights(build_model("resnet101", 20), path)


# ---------------------------------------------------------------- bad inputs


def test_nine_class_checkpoint_into_a_twenty_class_model_says_how_to_fix_it(tmp_path):
    path = tmp_path / "x.pth"
    torch.save(
        {"arch": "segformer_mit_b0", "num_classes": 9, "state_dict": _b0(9).state_dict()}, path
    )
    with pytest.raises(W.WeightsError) as err:
        W.load_weights(_b0(20), path)
    assert str(err.value) == (
        f"{path}: checkpoint has 9 classes (fusion.3.weight [9,256,1,1]) but the model was built "
        "with 20; pass --num-classes 9 or use a matching checkpoint"
    )


def test_truncated_random_and_missing_files_fail_with_one_line(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"a": torch.ones(3)}, good)
    truncated, noise = tmp_path / "truncated.pth", tmp_path / "noise.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    noise.write_bytes(os.urandom(4096))
    for path in (truncated, noise):
        with pytest.raises(W.WeightsError) as err:
            W.read_state_dict(path)
        assert str(err.value) == f"{path}: {CORRUPT} at a .pth/.pth.tar file"
    with pytest.raises(W.WeightsError, match=re.escape(f"{tmp_path / 'nope.pth'}: no such file")):
        W.load_weights(_b0(), tmp_path / "nope.pth")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([1, 2], "holds [1, 2], not model weights"),
        ("hello", "holds 'hello', not model weights"),
        ({}, "holds an empty dict, not model weights"),
        ({"w": torch.ones(1), "epoch": 3}, "entry 'epoch' is not a tensor"),
        (argparse.Namespace(lr=1.0), "holds a Python object (argparse.Namespace) that safe"),
    ],
)
def test_pickles_that_are_not_weights_are_named(tmp_path, payload, message):
    path = tmp_path / "odd.pth"
    torch.save(payload, path)
    with pytest.raises(W.WeightsError) as err:
        W.read_state_dict(path)
    assert str(err.value).startswith(f"{path}: {message}")
    assert "\n" not in str(err.value)


def test_unrecognised_state_dict_is_refused():
    with pytest.raises(W.WeightsError, match="unrecognised weights .first key 'foo.weight'"):
        W.detect_format({"foo.weight": torch.ones(1)})


def test_download_offline_fails_with_a_manual_recipe(tmp_path, monkeypatch):
    gdown = pytest.importorskip("gdown")

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to establish a new connection")

    monkeypatch.setattr(gdown, "download", offline)
    with pytest.raises(W.WeightsError) as err:
        W.download_schp_weights("lip", tmp_path)
    message = str(err.value)
    assert "Failed to establish a new connection" in message
    assert "gdown 1k4dllHpu0bdx38J7H28rVVLpU-kOHmnH" in message and str(tmp_path) in message
    assert list(tmp_path.iterdir()) == []  # no partial file left behind
    existing = tmp_path / "exp-schp-201908301523-atr.pth"
    existing.write_bytes(b"already here")
    assert W.download_schp_weights("atr", tmp_path) == existing  # no network needed
    with pytest.raises(W.WeightsError, match="unknown SCHP checkpoint 'cihp'"):
        W.download_schp_weights("cihp", tmp_path)


def test_non_finite_weights_are_refused_naming_the_first_tensor_and_its_count(tmp_path):
    state = _b0(9).state_dict()
    state["head.linear_pred.weight"][0, :2] = float("nan")
    state["fusion.3.weight"][1] = float("inf")
    path = tmp_path / "diverged.pth"
    torch.save({"arch": "segformer_mit_b0", "num_classes": 9, "state_dict": state}, path)
    for load in (W.load_weights, W.load_seed_checkpoint):
        with pytest.raises(W.WeightsError) as err:
            load(_b0(9), path)
        message = str(err.value)
        assert message.startswith(f"{path}: ") and len(message.splitlines()) == 1
        first = next(k for k in state if k in ("fusion.3.weight", "head.linear_pred.weight"))
        count = {"fusion.3.weight": 256, "head.linear_pred.weight": 2}[first]
        assert f"{first} has {count} of " in message and "(and 1 more tensors)" in message


def test_legacy_format_file_safe_loading_cannot_read_is_named_with_the_fix(tmp_path):
    weights = {"state_dict": _b0(9).state_dict()}
    readable = tmp_path / "legacy_protocol2.pth"
    torch.save(weights, readable, _use_new_zipfile_serialization=False)
    assert W.read_state_dict(readable).keys() == weights["state_dict"].keys()
    legacy = tmp_path / "legacy_protocol4.pth"
    torch.save(weights, legacy, _use_new_zipfile_serialization=False, pickle_protocol=4)
    with pytest.raises(W.WeightsError) as err:
        W.read_state_dict(legacy)
    message = str(err.value)
    assert message.startswith(f"{legacy}: a legacy-format PyTorch file") and CORRUPT not in message
    assert "torch.save(torch.load(f, weights_only=False), f2)" in message
    with pytest.raises(W.WeightsError, match=re.escape(message)):
        ckpt.read_checkpoint(legacy)
