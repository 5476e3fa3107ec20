"""Flags shared by train.py, evaluate.py and extract.py (joined with `parents=[...]`).

The seed's spellings are accepted next to kebab-case twins (`--lip_map_cfg` and `--lip-map-cfg`),
each with one canonical `dest`.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from datasets.labels import load_label_config
from networks import MODELS
from networks.contracts import DEFAULT_INPUT_SIZE, MIN_INPUT_SIDE

AMP_CHOICES = ("off", "bf16", "fp16")


def hw_pair(text: str) -> tuple[int, int]:
    """`512,384` -> (512, 384): crop height and width, as the seed's --input-size."""
    try:
        h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W such as 512,384, got {text!r}") from None
    if min(h, w) < MIN_INPUT_SIDE:
        raise argparse.ArgumentTypeError(
            f"input size {h},{w} is too small (minimum {MIN_INPUT_SIDE},{MIN_INPUT_SIDE})"
        )
    return h, w


def float_list(text: str) -> tuple[float, ...]:
    """`0.75,1,1.25` -> (0.75, 1.0, 1.25)."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, counts)."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (worker processes: 0 = the main process)."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates): NaN and Inf are refused."""
    value = _number(text, float)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text!r}")
    return value


def _number(text: str, kind: type) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def check_output_dir(path: str | os.PathLike, flag: str = "--log-dir") -> None:
    """Refuse an output folder that cannot be written, in one line, before a script does any work.

    An existing `path` must be a writable folder; a missing one must be creatable (its nearest
    existing parent a writable folder). Nothing is created.
    """
    path = Path(path)
    existing = next(p for p in (path, *path.absolute().parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is inside the file {existing}"
        raise SystemExit(f"{flag} {path}: {where}, not a folder; pass a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" (its parent {existing})"
        raise SystemExit(
            f"{flag} {path}: not writable{where}; pass a folder you can write to or fix its "
            "permissions"
        )


def optional_path(text: str) -> str | None:
    """The seed disables a weights file with the literal string `None`."""
    return None if text in ("", "None", "none") else text


def common_parser(arch_default: str | None, batch_size_default: int) -> argparse.ArgumentParser:
    """Model, data, label-map and runtime flags that every script shares."""
    parser = argparse.ArgumentParser(add_help=False)
    model = parser.add_argument_group("model")
    model.add_argument(
        "--arch",
        default=arch_default,
        choices=sorted(MODELS),
        help="Network architecture (registry key).",
    )
    model.add_argument(
        "--num-classes",
        "--num_classes",
        dest="num_classes",
        type=int,
        default=None,
        help="Number of output classes; by default taken from the label set or checkpoint.",
    )
    model.add_argument(
        "--model-restore",
        "--model_restore",
        dest="model_restore",
        type=optional_path,
        default=None,
        help="Weights to load (ours, seed, original SCHP, NVlabs or HF format). A given path "
        "that does not exist is an error.",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-dir",
        "--data_dir",
        dest="data_dir",
        default="./data/LIP",
        help="Dataset root in LIP layout ({split}_id.txt, {split}_images/, "
        "{split}_segmentations/).",
    )
    data.add_argument(
        "--input-size",
        "--input_size",
        dest="input_size",
        type=hw_pair,
        default=DEFAULT_INPUT_SIZE,
        help="Crop size H,W fed to the network.",
    )
    data.add_argument(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        type=positive_int,
        default=batch_size_default,
        help="Images per batch and per process.",
    )
    data.add_argument(
        "--workers",
        type=non_negative_int,
        default=min(4, os.cpu_count() or 1),
        help="DataLoader worker processes (0 = load in the main process).",
    )
    labels = parser.add_argument_group("labels")
    labels.add_argument(
        "--lip-map-cfg",
        "--lip_map_cfg",
        dest="lip_map_cfg",
        default="mappings/lip_map.yaml",
        help="Label-map YAML (LIP 20 -> merged 9 by default); also names the classes in reports.",
    )
    labels.add_argument(
        "--do-mapping",
        "--do_mapping",
        "--do-lip-mapping",
        "--do_lip_mapping",
        dest="do_mapping",
        action="store_true",
        help="Map the raw labels on load with the label-map YAML (e.g. LIP 20 -> merged 9).",
    )
    labels.add_argument(
        "--label-set",
        "--label_set",
        dest="label_set",
        default=None,
        help="Label-set YAML of the data (default: <data-dir>/label_set.yaml if present, "
        "else the label-map YAML).",
    )
    labels.add_argument(
        "--ignore-label",
        "--ignore_label",
        dest="ignore_label",
        type=int,
        default=255,
        choices=[255],
        help="Label id ignored by the loss and metrics (fixed at 255 across the toolkit).",
    )
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument(
        "--device",
        default="auto",
        help="auto, cpu, cuda or cuda:N.",
    )
    runtime.add_argument(
        "--gpu",
        default=None,
        help="Seed flag: comma-separated GPU ids, sets CUDA_VISIBLE_DEVICES before CUDA starts.",
    )
    runtime.add_argument(
        "--amp",
        default="off",
        choices=AMP_CHOICES,
        help="Mixed precision autocast dtype (bf16 or fp16); off = fp32.",
    )
    runtime.add_argument(
        "--log-dir",
        "--log_dir",
        dest="log_dir",
        default="./log",
        help="Output folder.",
    )
    return parser


def apply_gpu_flag(gpu: str | None) -> None:
    """The seed's --gpu: restrict visible GPUs before anything touches CUDA."""
    if gpu not in (None, "", "None", "none"):
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def resolve_labels(args: argparse.Namespace, label_set=None):
    """The label set of the data and the raw-id lookup table to apply on load (or None).

    The label set comes from, in order: `label_set` (e.g. stored in a checkpoint), --label-set,
    `<data-dir>/label_set.yaml` (written by preprocess_deepfashion), --lip-map-cfg. With
    --do-mapping the raw labels are mapped into the YAML's target set (LIP 20 -> merged 9).
    """
    path = args.label_set
    if path is None:
        candidate = Path(args.data_dir) / "label_set.yaml"
        path = str(candidate) if candidate.is_file() and not args.do_mapping else args.lip_map_cfg
    try:
        config = load_label_config(path)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(str(err)) from None
    lut = None
    if args.do_mapping:
        target = label_set if label_set is not None else config.target
        sources = sorted(src for src, dst in config.maps if dst == target.name)
        if len(sources) != 1:
            raise SystemExit(
                f"{path}: --do-mapping needs exactly one map into '{target.name}', found "
                f"{sources or 'none'}; pass a label-map YAML with one <raw>_to_{target.name} map"
            )
        lut = config.lut(sources[0], target.name)
        label_set = target
    elif label_set is None:
        label_set = config.target
        if args.num_classes is not None and args.num_classes != label_set.num_classes:
            matches = [s for s in config.spaces.values() if s.num_classes == args.num_classes]
            label_set = matches[0] if len(matches) == 1 else label_set
    if args.num_classes is not None and args.num_classes != label_set.num_classes:
        raise SystemExit(
            f"--num-classes {args.num_classes} disagrees with label set '{label_set.name}' "
            f"({label_set.num_classes} classes) from {path}; drop --num-classes or pick the "
            "right --lip-map-cfg / --label-set"
            + ("" if args.do_mapping else " (LIP labels into 9 classes need --do_mapping)")
        )
    return label_set, lut
