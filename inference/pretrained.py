"""Writing model folders (weights, config, model card) and finding them locally or on the Hub.

`HumanParser.save_pretrained` / `from_pretrained` (inference/api.py) are the front door; the
folder format and its reading live in networks/model_folder.py, so every script that reads
`--model-restore` reads a folder too.

A folder is written whole into a hidden temporary folder next to it and renamed into place, so a
killed write leaves no half folder (`utils.fileio.remove_stale_temp_files` removes the orphan).
It replaces an existing folder only when that is a model folder or empty. The label set is
stored with its try-on mask rules (its own, else its entry of mappings/tryon_masks.yaml), so a
folder is self-contained. The model card (README.md) lists the classes and, when given (or found
next to the checkpoint the parser came from), the training command of the run's args.json and
the metrics of evaluate.py's results.json.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import tempfile
from pathlib import Path

import yaml
from torch import nn

from datasets.label_set import LabelSet
from inference.mask_rules import KINDS, get_mask_rules
from networks.model_folder import (
    CARD_NAME,
    CONFIG_NAME,
    FORMAT_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    is_model_folder,
)
from utils.checkpoint import model_record
from utils.fileio import TEMP_SUFFIX

ARGS_NAME = "args.json"  # train.py's, in its --log-dir
RESULTS_NAME = "results.json"  # evaluate.py's, in its --log-dir
HUB_FILES = [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]  # all a repo id download fetches: no pickles
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # owner/name on the Hugging Face Hub
SUMMARY_METRICS = (  # results.json key: row name
    ("miou", "mIoU (valid classes)"),
    ("miou_all_classes", "mIoU (all classes, the seed's)"),
    ("pixel_accuracy", "pixel accuracy"),
    ("mean_accuracy", "mean class accuracy"),
    ("frequency_weighted_iou", "frequency-weighted IoU"),
)


def _with_mask_rules(label_set: LabelSet) -> LabelSet:
    """`label_set` carrying the raw mask rules `inference.masks.get_mask_rules` would use (its
    own, else its entry of mappings/tryon_masks.yaml); unchanged when it has none."""
    if label_set.mask_rules:
        return label_set
    try:
        rules = get_mask_rules(label_set)
    except (FileNotFoundError, ValueError):  # a label set without try-on rules
        return label_set
    raw = yaml.safe_load(Path(rules.source).read_text())["masks"][rules.entry]
    data = label_set.to_dict() | {"mask_rules": raw}
    return LabelSet.from_dict(data)


def _read_json(path: str | Path | None, what: str) -> dict | None:
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what}; check the path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable {what} ({err}); pass it as written") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a {what} (a JSON object); pass the file as written")
    return data


def run_files(source: str | Path | None) -> tuple[Path | None, Path | None]:
    """args.json and results.json next to the checkpoint file `source` (None where absent)."""
    if source is None or not Path(source).is_file():
        return None, None
    found = [Path(source).parent / name for name in (ARGS_NAME, RESULTS_NAME)]
    return tuple(path if path.is_file() else None for path in found)


def training_command(args: dict) -> str:
    """The train.py command line of a run's args.json: flags at None or False are left out."""
    parts = ["python train.py"]
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            parts.append(flag)
        elif isinstance(value, list | tuple):
            parts.append(f"{flag} {','.join(map(str, value))}")
        else:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    return " \\\n    ".join(parts)


def _number(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "n/a"


def model_card(config: dict, label_set: LabelSet, args: dict | None, results: dict | None) -> str:
    """The README.md of a model folder: usage, model, classes, training and evaluation."""
    spec = config["input"]
    height, width = spec["size"]
    partner = {left: right for left, right in label_set.flip_pairs}
    partner |= {right: left for left, right in label_set.flip_pairs}
    iou = (results or {}).get("iou") or {}
    kinds = [kind for kind in KINDS if kind in label_set.mask_rules]
    lines = [
        "---",
        "library_name: schp-segformer",
        "pipeline_tag: image-segmentation",
        "tags: [human-parsing, virtual-try-on, schp, segformer]",
        "---",
        "",
        f"# {config['arch']} human parser: {label_set.name}, {label_set.num_classes} classes",
        "",
        f"A model folder of schp-segformer: `{WEIGHTS_NAME}` (weights), `{CONFIG_NAME}` (arch, "
        "label set with palette, flip pairs and try-on mask rules, input size and normalisation), "
        "this card. Nothing in it is a pickle.",
        "",
        "```python",
        "from inference.api import HumanParser",
        'parser = HumanParser.from_pretrained("<this folder or its Hub repo id>")',
        "labels = parser.parse(image)         # (H, W) uint8 class ids",
        'mask = parser.masks(image, "upper")  # (H, W) uint8, 0 or 255',
        "```",
        "",
        "Scripts take the folder wherever they take a checkpoint: "
        "`python extract.py --model-restore <folder> --input photos/ --output out/`.",
        "",
        "## Model",
        "",
        "| arch | heads | classes | input (H x W) | colour | mean | std |",
        "|---|---|---|---|---|---|---|",
        f"| {config['arch']} | {config.get('heads', 'full')} | {config['num_classes']} | "
        f"{height} x {width} | {spec['colour']} | {spec['mean']} | {spec['std']} |",
        "",
        f"## Classes (label set `{label_set.name}`)",
        "",
        "| id | name | colour | flip partner |" + (" IoU |" if iou else ""),
        "|---|---|---|---|" + ("---|" if iou else ""),
    ]
    for class_id, name in enumerate(label_set.names):
        colour = "#{:02x}{:02x}{:02x}".format(*label_set.palette[class_id])
        flip = label_set.names[partner[class_id]] if class_id in partner else ""
        row = f"| {class_id} | {name} | `{colour}` | {flip} |"
        lines.append(row + (f" {_number(iou.get(name))} |" if iou else ""))
    lines += ["", f"Try-on masks: {', '.join(kinds) if kinds else 'none (no mask rules)'}."]
    if args is not None:
        lines += ["", "## Training", "", "```bash", training_command(args), "```"]
    if results is not None:
        lines += [
            "",
            "## Evaluation",
            "",
            f"evaluate.py on `{results.get('data_dir')}` ({results.get('split')}, "
            f"{results.get('images')} images), flip {results.get('flip')}, scales "
            f"{results.get('scales')}, input {results.get('input_size')}; percent:",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        lines += [f"| {name} | {_number(results.get(key))} |" for key, name in SUMMARY_METRICS]
    lines += [
        "",
        "## Licences",
        "",
        "These weights inherit the terms of what they were trained from: NVIDIA's MiT ImageNet "
        "weights and SegFormer are under the NVIDIA Source Code License (non-commercial research "
        "use); SCHP's released weights are MIT; LIP, DeepFashion-MultiModal and Clothing "
        "Co-Parsing are for research only, each under its own terms. See the NOTICE section of "
        "the schp-segformer README.",
        "",
    ]
    return "\n".join(lines)


def _replaceable(folder: Path) -> bool:
    return (
        not folder.exists()
        or is_model_folder(folder)
        or (folder.is_dir() and not any(folder.iterdir()))
    )


def save_model_folder(
    model: nn.Module,
    label_set: LabelSet,
    input_size: tuple[int, int],
    folder: str | Path,
    *,
    args_json: str | Path | None = None,
    results_json: str | Path | None = None,
) -> Path:
    """Write `model` as a model folder (model.safetensors, config.json, README.md); returns it.

    Args:
        model: a network from `networks.build_model` (DDP/compile wrappers are unwrapped).
        label_set: its classes; stored with the try-on mask rules it uses.
        input_size: the crop (H, W) it was trained with.
        args_json, results_json: train.py's args.json and evaluate.py's results.json, for the
            model card's training command and metrics.

    Raises:
        ValueError: `folder` exists and is neither a model folder nor empty, or a JSON file is
            not readable; FileNotFoundError: a JSON file does not exist.
    """
    from safetensors.torch import save_file  # optional dependency (requirements.txt)

    folder = Path(folder)
    if not _replaceable(folder):
        raise ValueError(
            f"{folder}: exists and is not a model folder; choose a new or empty folder "
            "(an existing model folder is replaced)"
        )
    args, results = _read_json(args_json, ARGS_NAME), _read_json(results_json, RESULTS_NAME)
    label_set = _with_mask_rules(label_set)
    record = model_record(model, label_set, input_size)
    state_dict = {k: v.contiguous() for k, v in record.pop("state_dict").items()}
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "arch": record["arch"],
        "heads": record.get("heads", "full"),
        **{key: record[key] for key in ("num_classes", "label_set", "input")},
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=TEMP_SUFFIX, dir=folder.parent))
    try:
        save_file(state_dict, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / CARD_NAME).write_text(model_card(config, label_set, args, results))
        _swap_in(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _swap_in(tmp: Path, folder: Path) -> None:
    """Rename the finished `tmp` to `folder`; an old `folder` goes only once `tmp` is in place."""
    if not folder.exists():
        os.replace(tmp, folder)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=TEMP_SUFFIX, dir=folder.parent))
    os.replace(folder, old / folder.name)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def resolve_model_folder(name_or_path: str | Path) -> Path:
    """A local model folder, or the Hub snapshot of a repo id (`owner/name`) downloaded with
    `huggingface_hub.snapshot_download` (config.json, model.safetensors and README.md only).

    Raises:
        FileNotFoundError: no such folder and not a repo id, or the repo is not on the Hub.
        ValueError: a file instead of a folder; ConnectionError: the Hub cannot be reached.
    """
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(
            f"{path}: a file, not a model folder; use HumanParser.from_checkpoint for it, or "
            f"convert it: python convert_to_folder.py --model-restore {path} --out <folder>"
        )
    if not REPO_ID.match(str(name_or_path)):
        raise FileNotFoundError(f"{path}: no such model folder; check the path")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
    except ImportError:
        raise ImportError(
            f"{name_or_path}: downloading from the Hub needs `pip install huggingface_hub`; "
            "or pass a local model folder"
        ) from None
    try:
        return Path(snapshot_download(str(name_or_path), allow_patterns=HUB_FILES))
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise FileNotFoundError(
            f"{name_or_path}: no such model on the Hugging Face Hub (or it is private: log in "
            "with `hf auth login`); check the repo id, or pass a local model folder"
        ) from None
    except Exception as err:  # offline: LocalEntryNotFoundError, httpx/requests errors, ...
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConnectionError(
            f"{name_or_path}: cannot reach the Hugging Face Hub ({reason}); pass a local model "
            "folder instead (download it where the Hub is reachable)"
        ) from None
