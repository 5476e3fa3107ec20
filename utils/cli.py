"""Flags shared by train.py, evaluate.py and extract.py (joined with `parents=[...]`), and
train.py's own flag groups and their checks.

The seed's spellings are accepted next to kebab-case twins (`--lip_map_cfg` and `--lip-map-cfg`),
each with one canonical `dest`.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch

from datasets.labels import load_label_config
from networks import HEADS, MODELS
from networks.contracts import DEFAULT_INPUT_SIZE, MIN_INPUT_SIDE
from utils.criterion import CONSISTENCY_MODES, LOSSES
from utils.optim import OPTIMIZERS
from utils.schedule import default_schp_start

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


def add_flag(group, name: str, *aliases: str, **kwargs) -> None:
    """Add `--name` with its kebab/snake twin (and the seed's other `aliases`), one snake dest.

    `name` is spelt as the seed spelt it; e.g. `add_flag(g, "num_samples")` gives
    `--num_samples` and `--num-samples`, both stored in `args.num_samples`.
    """
    names = (name, name.replace("_", "-"), name.replace("-", "_"), *aliases)
    flags = [f"--{n}" for n in dict.fromkeys(names)]
    group.add_argument(*flags, dest=name.replace("-", "_"), **kwargs)


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
    num_classes = "Number of output classes; by default taken from the label set or checkpoint."
    add_flag(model, "num-classes", type=int, default=None, help=num_classes)
    add_model_restore_flag(model)
    data = parser.add_argument_group("data")
    layout = "Dataset root in LIP layout ({split}_id.txt, {split}_images/, {split}_segmentations/)."
    add_flag(data, "data-dir", default="./data/LIP", help=layout)
    crop = "Crop size H,W fed to the network."
    add_flag(data, "input-size", type=hw_pair, default=DEFAULT_INPUT_SIZE, help=crop)
    batch = "Images per batch and per process."
    add_flag(data, "batch-size", type=positive_int, default=batch_size_default, help=batch)
    add_workers_flag(data)
    labels = parser.add_argument_group("labels")
    lip_map = "Label-map YAML (LIP 20 -> merged 9 by default); also names the classes in reports."
    add_flag(labels, "lip-map-cfg", default="mappings/lip_map.yaml", help=lip_map)
    mapping = "Map the raw labels on load with the label-map YAML (e.g. LIP 20 -> merged 9)."
    add_flag(
        labels, "do-mapping", "do-lip-mapping", "do_lip_mapping", action="store_true", help=mapping
    )
    label_set = (
        "Label-set YAML of the data (default: <data-dir>/label_set.yaml if present, else the "
        "label-map YAML)."
    )
    add_flag(labels, "label-set", default=None, help=label_set)
    ignore = "Label id ignored by the loss and metrics (fixed at 255 across the toolkit)."
    add_flag(labels, "ignore-label", type=int, default=255, choices=[255], help=ignore)
    runtime = parser.add_argument_group("runtime")
    add_device_flags(runtime)
    gpu = "Seed flag: comma-separated GPU ids, sets CUDA_VISIBLE_DEVICES before CUDA starts."
    runtime.add_argument("--gpu", default=None, help=gpu)
    add_flag(runtime, "log-dir", default="./log", help="Output folder.")
    return parser


def add_model_restore_flag(group, required_help: str = "") -> None:
    """--model-restore: the weights to load (every format `networks.weights` reads)."""
    restore = (
        "Weights to load (ours, seed, original SCHP, NVlabs or HF format). A given path that "
        "does not exist is an error." + required_help
    )
    add_flag(group, "model-restore", type=optional_path, default=None, help=restore)


def add_workers_flag(group) -> None:
    """--workers: DataLoader worker processes."""
    workers = "DataLoader worker processes (0 = load in the main process)."
    group.add_argument(
        "--workers", type=non_negative_int, default=min(4, os.cpu_count() or 1), help=workers
    )


def add_device_flags(group) -> None:
    """--device and --amp (the autocast dtype)."""
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
    amp = "Mixed precision autocast dtype (bf16 or fp16); off = fp32."
    group.add_argument("--amp", default="off", choices=AMP_CHOICES, help=amp)


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """train.py's own flag groups: optimisation, loss, self-correction, training data, run."""
    opt = parser.add_argument_group("optimisation")
    add_flag(opt, "optimizer", default="sgd", choices=OPTIMIZERS, help="Param groups (seed rules).")
    add_flag(opt, "learning-rate", type=positive_float, default=7e-3, help="Base learning rate L.")
    add_flag(opt, "momentum", type=float, default=0.9, help="SGD momentum.")
    add_flag(opt, "weight-decay", type=float, default=5e-4, help="Weight decay of decayed groups.")
    add_flag(opt, "epochs", type=int, default=150, help="Total number of epochs.")
    add_flag(opt, "start-epoch", type=int, default=0, help="First epoch (LR schedule position).")
    add_flag(opt, "warmup-epochs", type=int, default=10, help="Linear LR warmup epochs.")
    add_flag(opt, "only_train_module", help="Train only these top-level modules, e.g. head,edge.")
    loss = parser.add_argument_group("loss")
    losses = "ce2p: Lovasz + CE, edge and consistency (CE2P); ce: plain CE on the parsing logits."
    add_flag(loss, "loss", default="ce2p", choices=LOSSES, help=losses)
    add_flag(loss, "lambda-s", type=float, default=1.0, help="Weight of the parsing losses.")
    add_flag(loss, "lambda-e", type=float, default=1.0, help="Weight of the edge loss.")
    add_flag(loss, "lambda-c", type=float, default=0.1, help="Weight of the consistency loss.")
    consistency = "Consistency of soft (differentiable) or hard (argmax) parsing edges."
    add_flag(loss, "cons_loss_type", default="soft", choices=CONSISTENCY_MODES, help=consistency)
    schp = parser.add_argument_group("self-correction (SCHP)")
    schp_start = (
        "Epoch where SCHP cycles start; None: the last 5 cycles (--epochs - 5 x --cycle-epochs, "
        "the seed's 100 of 150), fewer when 5 do not fit after the warmup."
    )
    add_flag(schp, "schp-start", type=int, default=None, help=schp_start)
    add_flag(schp, "cycle-epochs", type=int, default=10, help="Epochs per SCHP cycle.")
    add_flag(schp, "schp-restore", type=optional_path, help="Teacher weights (and its cycle_n).")
    add_flag(schp, "reset_schp_cycle", action="store_true", help="Cycle 0 after --schp-restore.")
    no_schp = "No self-correction at all: cosine LR to the last epoch, no aggregation."
    add_flag(schp, "no-schp", action="store_true", help=no_schp)
    data = parser.add_argument_group("training data")
    add_flag(data, "num_samples", type=int, default=-1, help="Seeded random subset size (-1: all).")
    on_off = argparse.BooleanOptionalAction
    add_flag(data, "random-mirror", action=on_off, default=True, help="Random horizontal flips.")
    add_flag(data, "random-scale", action=on_off, default=True, help="Random scale and rotation.")
    run = parser.add_argument_group("run")
    heads = "full: CE2P edge + fusion heads; plain: SegFormer decoder only (needs --loss ce)."
    add_flag(run, "heads", default="full", choices=HEADS, help=heads)
    pretrain = (
        "ImageNet backbone weights (NVlabs mit_b*.pth, HF mit-b*, SCHP resnet101); None: off."
    )
    add_flag(run, "imagenet-pretrain", type=optional_path, help=pretrain)
    add_flag(run, "resume", help="checkpoint.pth.tar of a run to continue exactly.")
    add_flag(run, "eval-epochs", type=int, default=10, help="Save checkpoint_{N} every N epochs.")
    add_flag(run, "val-every", type=int, default=0, help="Validate every N epochs (0: never).")
    add_flag(run, "print-freq", type=int, default=10, help="Progress-bar update every N steps.")
    add_flag(run, "seed", type=int, default=0, help="Seed of sampling, augmentation and init.")


def check_train_args(args: argparse.Namespace, device: torch.device) -> None:
    """Refuse inconsistent flags before anything is built or written, one line each; fill in
    the default --schp-start."""
    for name in ("epochs", "cycle_epochs", "eval_epochs", "print_freq"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    for name in ("val_every", "warmup_epochs", "seed"):
        if getattr(args, name) < 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 0; got {getattr(args, name)}")
    if args.schp_start is None:
        args.schp_start = default_schp_start(args.epochs, args.cycle_epochs, args.warmup_epochs)
    if args.heads == "plain" and args.loss != "ce":
        raise SystemExit(
            "--heads plain has no edge/fusion outputs for the CE2P loss; add --loss ce"
        )
    if args.schp_start > args.epochs and not args.no_schp:
        raise SystemExit(
            f"--schp-start {args.schp_start} is beyond --epochs {args.epochs}; no self-correction "
            "cycle would ever end: lower --schp-start or raise --epochs"
        )
    if not 0 <= args.start_epoch < args.epochs:
        raise SystemExit(f"--start-epoch {args.start_epoch} is outside 0..{args.epochs - 1}")
    for flag in ("imagenet_pretrain", "model_restore", "schp_restore", "resume"):
        path = getattr(args, flag)
        if path is not None and not Path(path).exists():  # a file or a model folder
            raise SystemExit(f"{path}: file not found (--{flag.replace('_', '-')}); check the path")
    if args.amp == "fp16" and device.type == "cpu":
        raise SystemExit(
            "--amp fp16 on CPU: float16 kernels are emulated there (about 40x slower than "
            "fp32); use --amp bf16 or --amp off on CPU, fp16 on CUDA"
        )


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
