"""Loading weights from every format a user may own, with a report of what was (not) loaded.

format (`detect_format`)  file                                          loader
`ours`              utils/checkpoint.py dicts (`arch`, `state_dict`)    `load_weights`
                    or a model folder (networks/model_folder.py)
`plain`             a bare state dict in our names                      `load_weights`
`seed`              seed `segformer_mit_b4` `*.pth.tar`                 `load_seed_checkpoint`
`schp`              SCHP `exp-schp-*.pth` (LIP, ATR, Pascal)            `load_schp_checkpoint`
`nvlabs`            NVlabs ImageNet `mit_b*.pth`                        `load_nvlabs_mit`
`nvlabs_segformer`  NVlabs `segformer.b*.pth` (backbone, decode_head)   `load_weights`
`hf`                HF `nvidia/mit-b*`, `nvidia/segformer-*` (4.x/5.x)  `load_hf_segformer`
`resnet_imagenet`   SCHP's deep-stem `resnet101-imagenet.pth`           `load_imagenet_resnet`

`load_weights` detects the format and dispatches (`load_pretrained_backbone` accepts only the
pretrained-backbone formats, for `--imagenet-pretrain`). A load is strict for the top-level modules
its format holds (ImageNet files: `backbone`; HF and NVlabs segformer files: `backbone` and
`head`; the others: the whole model): missing, unexpected or mis-shaped tensors raise
`WeightsError` unless `strict=False`, which loads what fits and logs the rest. Modules a format
cannot hold (e.g. `edge`, `fusion` for HF files) keep their initial weights and are listed in
`LoadReport.untouched`. Files are read with `torch.load(weights_only=True)`. InPlace-ABN (SCHP
everywhere, the seed's edge/fusion) scales by |w| + 1e-5 and has no `num_batches_tracked`; both
are converted on load.
"""

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from networks.errors import WeightsError
from networks.hf_names import convert_hf_state_dict
from networks.mit import MIT_CONFIGS
from networks.weight_files import (
    check_finite,
    download_schp_weights,
    read_checkpoint,
    read_file,
    read_state_dict,
    state_dict_of,
)

logger = logging.getLogger(__name__)

__all__ = [  # the reading side is defined in networks.weight_files and offered here too
    "LoadReport",
    "WeightsError",
    "check_finite",
    "detect_format",
    "download_schp_weights",
    "load_hf_segformer",
    "load_imagenet_resnet",
    "load_nvlabs_mit",
    "load_pretrained_backbone",
    "load_schp_checkpoint",
    "load_seed_checkpoint",
    "load_weights",
    "read_checkpoint",
    "read_state_dict",
]

ABN_EPS = 1e-5  # InPlace-ABN's effective scale is |weight| + eps
CLASSIFIER_KEYS = ("fusion.3.weight", "decoder.conv4.weight", "head.linear_pred.weight")
SHOWN_KEYS = 3  # keys quoted in one error line
SCHP_STEM = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")  # + layer1..4: the backbone
PRETRAINED_FORMATS = ("nvlabs", "hf", "nvlabs_segformer", "resnet_imagenet")


class LoadReport(NamedTuple):
    """What one load did; key names are in our naming."""

    source: str
    fmt: str
    loaded: int
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()  # deliberately discarded (ImageNet classifiers, conv_seg)
    untouched: tuple[str, ...] = ()  # top-level modules the format cannot hold


def _resolve(source: str | Path | Mapping, name: str | None) -> tuple[str, object]:
    if isinstance(source, str | Path):
        return name or str(source), read_file(source)
    return name or "state dict", source


def _shape(t: Tensor) -> str:
    return "[" + ",".join(map(str, t.shape)) + "]"


def _keys(keys: list[str] | tuple[str, ...]) -> str:
    more = f", ... {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def _mit_variant(sd: Mapping[str, Tensor]) -> str | None:
    """The MiT variant with the widths and depths of `backbone.*` (None: no MiT keys)."""
    embeds = [f"backbone.patch_embed{k}.proj.weight" for k in range(1, 5)]
    dims = tuple(sd[key].shape[0] for key in embeds if key in sd)
    blocks = {m.groups() for k in sd if (m := re.match(r"backbone\.block(\d)\.(\d+)\.", k))}
    depths = tuple(1 + max((int(j) for s, j in blocks if s == str(k)), default=-1) for k in "1234")
    found = [v for v, cfg in MIT_CONFIGS.items() if (cfg.embed_dims, cfg.depths) == (dims, depths)]
    return found[0] if found else (f"MiT with widths {dims}, depths {depths}" if dims else None)


def _check_fit(sd: Mapping, own: Mapping, name: str, fmt: str, arch: str) -> None:
    """Raise the clearest one-line reason why `sd` does not fit `own` (the covered keys)."""
    for key in CLASSIFIER_KEYS:
        if key in sd and key in own and sd[key].shape[1:] == own[key].shape[1:]:
            got, want = sd[key].shape[0], own[key].shape[0]
            if got != want:
                raise WeightsError(
                    f"{name}: checkpoint has {got} classes ({key} {_shape(sd[key])}) but the model "
                    f"was built with {want}; pass --num-classes {got} or use a matching checkpoint"
                )
    file_mit, model_mit = _mit_variant(sd), _mit_variant(own)
    if file_mit and model_mit and file_mit != model_mit:
        fix = (
            f"pass --arch segformer_{file_mit}" if file_mit in MIT_CONFIGS else "use other weights"
        )
        raise WeightsError(
            f"{name}: holds {file_mit} weights but the model {arch} needs {model_mit}; use "
            f"{model_mit} weights (e.g. {model_mit}.pth) or {fix}"
        )
    width = "head.linear_fuse.conv.weight"  # (E, 4E, 1, 1)
    if width in sd and width in own and sd[width].shape != own[width].shape:
        raise WeightsError(
            f"{name}: the file's decoder is {sd[width].shape[0]} wide but {arch} was built with "
            f"{own[width].shape[0]}; build the model with decoder_dim={sd[width].shape[0]}"
        )
    if mismatched := [k for k in own if k in sd and sd[k].shape != own[k].shape]:
        key = mismatched[0]
        raise WeightsError(
            f"{name}: {key} is {_shape(sd[key])} in the file but {_shape(own[key])} in {arch} "
            f"({len(mismatched)} tensors differ); use {fmt} weights built for {arch}"
        )
    missing, unexpected = sorted(own.keys() - sd.keys()), sorted(sd.keys() - own.keys())
    if missing or unexpected:
        raise WeightsError(
            f"{name}: {fmt} weights do not fit {arch}: {len(missing)} missing ({_keys(missing)}), "
            f"{len(unexpected)} unexpected ({_keys(unexpected)}); use weights built for {arch}"
        )


def _fix_batchnorms(
    sd: dict[str, Tensor], model: nn.Module, prefixes: tuple[str, ...], inplace_abn: bool
) -> dict[str, Tensor]:
    """Fill missing `num_batches_tracked`; InPlace-ABN weights w become |w| + 1e-5."""
    out = dict(sd)
    for path, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d) and path.startswith(prefixes):
            if inplace_abn and f"{path}.weight" in out:
                out[f"{path}.weight"] = out[f"{path}.weight"].abs() + ABN_EPS
            if f"{path}.running_mean" in out:
                out.setdefault(f"{path}.num_batches_tracked", torch.zeros((), dtype=torch.long))
    return out


Converted = tuple[dict[str, Tensor], tuple[str, ...], tuple[str, ...] | None]


def _drop(sd: dict[str, Tensor], prefix: str) -> tuple[dict[str, Tensor], tuple[str, ...]]:
    dropped = tuple(k for k in sd if k.startswith(prefix))
    return {k: v for k, v in sd.items() if not k.startswith(prefix)}, dropped


def _as_is(model: nn.Module, sd: dict[str, Tensor]) -> Converted:
    return sd, (), None


def _from_seed(model: nn.Module, sd: dict[str, Tensor]) -> Converted:
    sd, dropped = _drop(sd, "head.conv_seg.")  # mmseg leftover, never used
    return _fix_batchnorms(sd, model, ("edge.", "fusion."), inplace_abn=True), dropped, None


def _from_schp(model: nn.Module, sd: dict[str, Tensor]) -> Converted:
    renamed = {}
    for key, value in sd.items():
        top, _, rest = key.partition(".")
        key = f"backbone.{key}" if top in SCHP_STEM or top.startswith("layer") else key
        renamed[f"fusion.{rest}" if top == "fushion" else key] = value
    return _fix_batchnorms(renamed, model, ("",), inplace_abn=True), (), None  # every BN is ABN


def _from_nvlabs(model: nn.Module, sd: dict[str, Tensor]) -> Converted:
    sd, dropped = _drop(sd, "head.")  # ImageNet classifier
    return {f"backbone.{k}": v for k, v in sd.items()}, dropped, ("backbone",)


def _from_nvlabs_segformer(model: nn.Module, sd: dict[str, Tensor]) -> Converted:
    sd, dropped = _drop(sd, "decode_head.conv_seg.")  # mmseg leftover, never used
    renamed = {re.sub(r"^decode_head\.", "head.", k): v for k, v in sd.items()}
    return renamed, dropped, ("backbone", "head")


def _from_hf(model: nn.Module, sd: dict[str, Tensor]) -> Converted:
    sd, dropped = _drop(convert_hf_state_dict(sd), "classifier.")  # ImageNet classifier
    covers = ("backbone", "head") if any(k.startswith("head.") for k in sd) else ("backbone",)
    return sd, dropped, covers


def _from_resnet_imagenet(model: nn.Module, sd: dict[str, Tensor]) -> Converted:
    sd, dropped = _drop(sd, "fc.")
    sd = {f"backbone.{k}": v for k, v in sd.items()}
    return _fix_batchnorms(sd, model, ("backbone.",), inplace_abn=False), dropped, ("backbone",)


# format: (converter to our names, arch family it fits, --arch hint)
_FORMATS: dict[str, tuple[Callable[[nn.Module, dict], Converted], str, str]] = {
    "ours": (_as_is, "", ""),
    "plain": (_as_is, "", ""),
    "seed": (_from_seed, "segformer", "segformer_mit_b4"),
    "schp": (_from_schp, "resnet101", "resnet101"),
    "nvlabs": (_from_nvlabs, "segformer", "segformer_mit_b*"),
    "nvlabs_segformer": (_from_nvlabs_segformer, "segformer", "segformer_mit_b*"),
    "hf": (_from_hf, "segformer", "segformer_mit_b*"),
    "resnet_imagenet": (_from_resnet_imagenet, "resnet101", "resnet101"),
}


def _load(
    model: nn.Module, source: str | Path | Mapping, fmt: str, strict: bool, name: str | None
) -> LoadReport:
    name, obj = _resolve(source, name)
    convert, family, hint = _FORMATS[fmt]
    arch = getattr(model, "arch", type(model).__name__)
    if not arch.startswith(family):
        raise WeightsError(f"{name}: {fmt} weights do not fit {arch}; pass --arch {hint}")
    if fmt == "ours" and obj["arch"] != arch:  # the class count is checked from the shapes
        raise WeightsError(
            f"{name}: checkpoint is for {obj['arch']}, not {arch}; pass --arch {obj['arch']}"
        )
    sd, dropped, covers = convert(model, state_dict_of(obj, name))
    check_finite(sd, name)
    own = {
        k: v for k, v in model.state_dict().items() if covers is None or k.split(".")[0] in covers
    }
    if strict:
        _check_fit(sd, own, name, fmt, arch)
    mismatched = tuple(k for k in own if k in sd and sd[k].shape != own[k].shape)
    fitting = {k: v for k, v in sd.items() if k in own and k not in mismatched}
    model.load_state_dict(fitting, strict=False)
    report = LoadReport(
        source=name,
        fmt=fmt,
        loaded=len(fitting),
        missing=tuple(sorted(own.keys() - sd.keys())),
        unexpected=tuple(sorted(sd.keys() - own.keys())),
        mismatched=mismatched,
        dropped=dropped,
        untouched=tuple(c for c, _ in model.named_children() if covers and c not in covers),
    )
    logger.info("%s: loaded %d tensors (%s format)", name, report.loaded, fmt)
    if report.untouched:
        logger.info("%s: %s keep their initial weights", name, ", ".join(report.untouched))
    for what in ("missing", "unexpected", "mismatched"):
        if keys := getattr(report, what):
            logger.warning("%s: %d %s keys: %s", name, len(keys), what, _keys(keys))
    return report


def load_nvlabs_mit(
    model: nn.Module, path: str | Path | Mapping, strict: bool = True, *, name: str | None = None
) -> LoadReport:
    """NVlabs ImageNet `mit_b*.pth` into `model.backbone` (its classifier `head.*` dropped)."""
    return _load(model, path, "nvlabs", strict, name)


def load_hf_segformer(
    model: nn.Module,
    path_or_state_dict: str | Path | Mapping,
    strict: bool = True,
    *,
    name: str | None = None,
) -> LoadReport:
    """HF `nvidia/mit-b*` (backbone; the ImageNet `classifier.*` is dropped) or
    `nvidia/segformer-*` (backbone + `head`) weights in 4.x or 5.x names (.bin, .pth,
    .safetensors or a snapshot folder). HF files hold no `edge`/`fusion`: those keep their
    initial weights (`LoadReport.untouched`) and strictness covers backbone and head only."""
    return _load(model, path_or_state_dict, "hf", strict, name)


def load_seed_checkpoint(
    model: nn.Module, path: str | Path | Mapping, strict: bool = True, *, name: str | None = None
) -> LoadReport:
    """The seed's `segformer_mit_b4` checkpoints: `module.` keys, unused `head.conv_seg`,
    InPlace-ABN in `edge`/`fusion` (the head's `linear_fuse.bn` is a plain BatchNorm)."""
    return _load(model, path, "seed", strict, name)


def load_schp_checkpoint(
    model: nn.Module, path: str | Path | Mapping, strict: bool = True, *, name: str | None = None
) -> LoadReport:
    """Original SCHP checkpoints (LIP/ATR/Pascal, or the seed's resnet101) into `resnet101`."""
    return _load(model, path, "schp", strict, name)


def load_imagenet_resnet(
    model: nn.Module, path: str | Path | Mapping, strict: bool = True, *, name: str | None = None
) -> LoadReport:
    """SCHP's ImageNet `resnet101-imagenet.pth` (deep stem, plain BN) into `model.backbone`."""
    return _load(model, path, "resnet_imagenet", strict, name)


def detect_format(state_or_path: str | Path | Mapping, name: str | None = None) -> str:
    """The format of a checkpoint (a key of the module docstring's table), from its keys."""
    name, obj = _resolve(state_or_path, name)
    if isinstance(obj, Mapping) and "arch" in obj and "state_dict" in obj:
        return "ours"
    keys = state_dict_of(obj, name).keys()
    if {"backbone.patch_embed1.proj.weight", "decode_head.linear_c1.proj.weight"} <= keys:
        return "nvlabs_segformer"
    if any(k.startswith(("segformer.", "encoder.", "stages.", "decode_head.")) for k in keys):
        return "hf"
    if "fushion.0.weight" in keys or {"layer1.0.conv1.weight", "decoder.conv4.weight"} <= keys:
        return "schp"
    if "patch_embed1.proj.weight" in keys:
        return "nvlabs"
    if {"conv1.weight", "layer4.0.conv1.weight"} <= keys:
        return "resnet_imagenet"
    mit_parser = {"backbone.patch_embed1.proj.weight", "edge.conv1.1.weight"} <= keys
    inplace_abn = "head.conv_seg.weight" in keys or "fusion.1.num_batches_tracked" not in keys
    if mit_parser and inplace_abn:
        return "seed"
    if any(k.startswith("backbone.") for k in keys):
        return "plain"
    raise WeightsError(
        f"{name}: unrecognised weights (first key {next(iter(keys))!r}); "
        "checkpoints/README.md lists the supported files"
    )


def load_weights(
    model: nn.Module, path: str | Path | Mapping, strict: bool = True, name: str | None = None
) -> LoadReport:
    """Detect the format of `path` and load it (the file is read once).

    `path` may be a dict already read (`read_checkpoint`); `name` then names it in errors.
    """
    name, obj = _resolve(path, name)
    return _load(model, obj, detect_format(obj, name), strict, name)


def load_pretrained_backbone(
    model: nn.Module, path: str | Path | Mapping, strict: bool = True
) -> LoadReport:
    """`--imagenet-pretrain`: a pretrained-backbone file (NVlabs `mit_b*.pth`, HF `nvidia/mit-b*`
    or `segformer-*`, NVlabs `segformer.b*`, `resnet101-imagenet.pth`), not a parser checkpoint."""
    name, obj = _resolve(path, None)
    fmt = detect_format(obj, name)
    if fmt not in PRETRAINED_FORMATS:
        raise WeightsError(
            f"{name}: is a parser checkpoint ({fmt}), not pretrained backbone weights; pass it as "
            "--model-restore, or give --imagenet-pretrain a mit_b*.pth / resnet101-imagenet.pth"
        )
    return _load(model, obj, fmt, strict, name)
