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
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from networks.errors import WeightsError
from networks.hf_names import convert_hf_state_dict
from networks.mit import MIT_CONFIGS
from networks.model_folder import (
    is_model_folder,
    read_model_folder,
    read_safetensors,
    snapshot_weights,
)

logger = logging.getLogger(__name__)

ABN_EPS = 1e-5  # InPlace-ABN's effective scale is |weight| + eps
DATA_PARALLEL_PREFIX = "module."
CLASSIFIER_KEYS = ("fusion.3.weight", "decoder.conv4.weight", "head.linear_pred.weight")
SHOWN_KEYS = 3  # keys quoted in one error line
SCHP_STEM = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")  # + layer1..4: the backbone
SCHP_DOWNLOADS = {  # name: (file name, Google Drive id), from the SCHP README
    "lip": ("exp-schp-201908261155-lip.pth", "1k4dllHpu0bdx38J7H28rVVLpU-kOHmnH"),
    "atr": ("exp-schp-201908301523-atr.pth", "1ruJg4lqR_jgQPj-9K0PP-L2vJERYOxLP"),
    "pascal": ("exp-schp-201908270938-pascal-person-part.pth", "1E5YwNKW2VOEayK9mWCS3Kpsxf-3z04ZE"),
}
PRETRAINED_FORMATS = ("nvlabs", "hf", "nvlabs_segformer", "resnet_imagenet")
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
# torch's legacy (non-zip) files start with this number, pickled (torch/serialization.py)
LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
HEADER_BYTES = 64


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


def _read(path: str | Path) -> object:
    path = Path(path)
    if is_model_folder(path):  # config.json + model.safetensors (networks/model_folder.py)
        return read_model_folder(path)
    if path.is_dir():  # a Hugging Face snapshot folder
        path = snapshot_weights(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file; check the path (see checkpoints/README.md)")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        return safe_torch_load(path)
    except Exception as exc:  # damage shows as RuntimeError, EOFError, UnpicklingError, ...
        error = exc
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if refused:
        raise WeightsError(
            f"{path}: holds a Python object ({refused[1]}) that safe loading refuses; re-save it "
            "with plain types only, e.g. torch.save({'state_dict': model.state_dict()}, path)"
        )
    if legacy := legacy_format_line(path, error):
        raise WeightsError(legacy)
    raise WeightsError(
        f"{path}: not a PyTorch checkpoint (truncated or corrupt); re-download it or point "
        "--model-restore at a .pth/.pth.tar file"
    )


def safe_torch_load(path: str | Path) -> object:
    """`torch.load(weights_only=True)` on the CPU, without torch's warning about the pickle
    protocol of legacy files (their error is reported in one line instead)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location="cpu", weights_only=True)


def legacy_format_line(path: str | Path, error: Exception) -> str | None:
    """The error line for a legacy-format torch file that safe loading could not read, else None.

    torch < 1.6 wrote a sequence of pickles instead of a zip archive; `torch.load(weights_only=
    True)` reads such files only when they were pickled with protocol 2 or 3 (the default), and
    reports "Unsupported operand" for the others.
    """
    with Path(path).open("rb") as f:
        header = f.read(HEADER_BYTES)
    legacy = not header.startswith(ZIP_MAGIC) and LEGACY_MAGIC in header
    if not legacy or "Unsupported operand" not in str(error):
        return None
    return (
        f"{path}: a legacy-format PyTorch file (not a zip archive: written by torch < 1.6 or "
        "with _use_new_zipfile_serialization=False, pickle protocol > 3) that safe loading "
        "cannot read; if you trust it, re-save it with a current torch: "
        "torch.save(torch.load(f, weights_only=False), f2), and use f2"
    )


def check_finite(state_dict: Mapping[str, Tensor], name: str) -> None:
    """Refuse weights holding NaN or Inf (a diverged run): they would predict background only.

    Raises:
        WeightsError: naming the first non-finite tensor, its count of such values and how many
            tensors have them.
    """
    bad = [
        (key, int((~torch.isfinite(t)).sum()), t.numel())
        for key, t in state_dict.items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        key, count, numel = bad[0]
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise WeightsError(
            f"{name}: {key} has {count} of {numel} values NaN or Inf{more}; the weights are "
            "broken (a diverged run?): use an earlier checkpoint or re-download them"
        )


def _state_dict_of(obj: object, name: str) -> dict[str, Tensor]:
    """The tensors of a checkpoint (unwrapping `state_dict`/`model`), without `module.`."""
    if isinstance(obj, Mapping):
        inner = [obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)]
        obj = inner[0] if inner else obj
    if not isinstance(obj, Mapping) or not obj:
        what = f"an empty {type(obj).__name__}" if isinstance(obj, Mapping) else repr(obj)[:40]
        raise WeightsError(
            f"{name}: holds {what}, not model weights; point --model-restore at a checkpoint"
        )
    bad = next((k for k, v in obj.items() if not isinstance(v, Tensor)), None)
    if bad is not None:
        raise WeightsError(f"{name}: entry {bad!r} is not a tensor, so this is not a state dict")
    return {k.removeprefix(DATA_PARALLEL_PREFIX): v for k, v in obj.items()}


def read_checkpoint(path: str | Path) -> dict:
    """Read a whole checkpoint dict safely (weights_only); `WeightsError` names file and fix."""
    state = _read(path)
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, not a checkpoint dict")
    return state


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a weights file safely; every failure is one `WeightsError` line with the fix."""
    return _state_dict_of(_read(path), str(path))


def _resolve(source: str | Path | Mapping, name: str | None) -> tuple[str, object]:
    if isinstance(source, str | Path):
        return name or str(source), _read(source)
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
    sd, dropped, covers = convert(model, _state_dict_of(obj, name))
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
    keys = _state_dict_of(obj, name).keys()
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


def download_schp_weights(name: str, dest_dir: str | Path = "checkpoints") -> Path:
    """Fetch a released SCHP checkpoint ("lip", "atr", "pascal") with gdown; kept if present."""
    if name not in SCHP_DOWNLOADS:
        raise WeightsError(
            f"unknown SCHP checkpoint {name!r}; choose from {sorted(SCHP_DOWNLOADS)}"
        )
    filename, drive_id = SCHP_DOWNLOADS[name]
    dest = Path(dest_dir) / filename
    if dest.is_file():
        return dest
    partial = dest.with_name(dest.name + ".part")
    try:
        import gdown

        dest.parent.mkdir(parents=True, exist_ok=True)
        done, reason = gdown.download(id=drive_id, output=str(partial), quiet=False), "no file"
    except Exception as exc:  # ImportError, or whatever network error gdown/requests raise
        done, reason = None, (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if not done or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise WeightsError(
            f"{dest}: could not download the SCHP {name} weights ({reason}); download them by "
            f"hand (`gdown {drive_id}`, see checkpoints/README.md) into {dest.parent}/"
        )
    partial.replace(dest)
    return dest
