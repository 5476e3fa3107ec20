"""Turn any checkpoint the project loads into a model folder (config.json, model.safetensors and
a model card README.md), which every --model-restore and HumanParser.from_pretrained take.

    python convert_to_folder.py --model-restore log/run/best.pth.tar --out models/lip-b4
    python convert_to_folder.py --model-restore checkpoints/exp-schp-201908261155-lip.pth \
        --arch resnet101 --num-classes 20 --input-size 473,473 --out models/schp-lip
    python convert_to_folder.py --model-restore seed/schp_6_checkpoint.pth.tar \
        --arch segformer_mit_b4 --num-classes 9 --out models/seed-b4
    python convert_to_folder.py --model-restore hf-snapshot/ --arch segformer_mit_b0 \
        --heads plain --num-classes 150 --label-set ade.yaml --out models/ade-b0

Our checkpoints (train.py's, and model folders) record arch, label set and input size. Foreign
files (seed, original SCHP, HF, NVlabs segformer, bare state dicts) need --arch; their label set
is --label-set's target set, or its set with --num-classes classes. A file that lacks weights
the parser predicts with (an HF or NVlabs file has no edge/fusion heads: pass --heads plain;
an ImageNet backbone has no head at all) is refused. The card's training command comes from
--args-json (default: args.json next to a train.py checkpoint), its metrics from --results-json
(default: results.json next to it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from datasets.label_set import LabelSet
from datasets.labels import load_label_config
from inference.api import HumanParser
from networks import HEADS, MODELS, build_model
from networks.contracts import DEFAULT_INPUT_SIZE
from networks.weights import WeightsError, detect_format, load_weights, read_checkpoint
from utils.cli import hw_pair
from utils.logger import setup_logging

DEFAULT_LABEL_SET = "mappings/lip_map.yaml"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert a checkpoint into a model folder (safetensors + JSON + model card).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        add_help=add_help,
    )
    parser.add_argument(
        "--model-restore",
        "--model_restore",
        dest="model_restore",
        required=True,
        help="Checkpoint to convert: ours, seed, original SCHP, HF (file or snapshot folder), "
        "NVlabs segformer or a model folder.",
    )
    parser.add_argument("--out", required=True, help="Model folder to write (new, empty or ours).")
    foreign = parser.add_argument_group("foreign files (ours record these)")
    foreign.add_argument(
        "--arch", default=None, choices=sorted(MODELS), help="Network architecture of the file."
    )
    foreign.add_argument(
        "--num-classes",
        "--num_classes",
        dest="num_classes",
        type=int,
        default=None,
        help="Classes of the file; picks the --label-set space with that many classes.",
    )
    foreign.add_argument(
        "--heads",
        default=None,
        choices=HEADS,
        help="Heads of the model (full when not given); plain for HF/NVlabs segmentation files.",
    )
    foreign.add_argument(
        "--label-set",
        "--label_set",
        dest="label_set",
        default=DEFAULT_LABEL_SET,
        help="Label-set YAML naming the file's classes (used when the file records none).",
    )
    parser.add_argument(
        "--input-size",
        "--input_size",
        dest="input_size",
        type=hw_pair,
        default=None,
        help=f"Crop H,W the model was trained with (default: the checkpoint's, else "
        f"{DEFAULT_INPUT_SIZE[0]},{DEFAULT_INPUT_SIZE[1]}).",
    )
    card = parser.add_argument_group("model card")
    card.add_argument(
        "--args-json",
        default=None,
        help="train.py's args.json of the run (default: the one next to the checkpoint).",
    )
    card.add_argument(
        "--results-json",
        default=None,
        help="evaluate.py's results.json for the card's metrics (default: the one next to the "
        "checkpoint).",
    )
    return parser


def label_set_of(path: str, num_classes: int | None) -> LabelSet:
    """The YAML's target label set, or its one set with `num_classes` classes."""
    try:
        config = load_label_config(path)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(str(err)) from None
    if num_classes is None or config.target.num_classes == num_classes:
        return config.target
    matches = [s for s in config.spaces.values() if s.num_classes == num_classes]
    if len(matches) != 1:
        spaces = ", ".join(f"{s.name} ({s.num_classes})" for s in config.spaces.values())
        raise SystemExit(
            f"{path}: no single label set with {num_classes} classes (it has {spaces}); pass "
            f"--label-set with a YAML defining the file's {num_classes} classes"
        )
    return matches[0]


def _check_agrees(args: argparse.Namespace, state: dict) -> None:
    """A flag given for one of our checkpoints must say what the checkpoint records."""
    stored = {"arch": state["arch"], "num_classes": state["num_classes"]}
    stored["heads"] = state.get("heads", "full")
    for flag, value in stored.items():
        given = getattr(args, flag)
        if given is not None and given != value:
            raise SystemExit(
                f"{args.model_restore}: the checkpoint records {flag}={value} but "
                f"--{flag.replace('_', '-')} {given} was given; drop the flag"
            )


def load_parser(args: argparse.Namespace) -> HumanParser:
    """The parser of --model-restore, of any format, with its label set and input size."""
    name = str(args.model_restore)
    try:
        state = read_checkpoint(args.model_restore)
        fmt = detect_format(state, name)
    except WeightsError as err:
        raise SystemExit(str(err)) from None
    if fmt == "ours":
        _check_agrees(args, state)
        arch, heads, num_classes = state["arch"], state.get("heads", "full"), state["num_classes"]
        label_set = (
            LabelSet.from_dict(state["label_set"])
            if state.get("label_set")
            else label_set_of(args.label_set, num_classes)
        )
        input_size = args.input_size or tuple(state["input"]["size"])
    elif args.arch is None:
        raise SystemExit(
            f"{name}: a {fmt} file records no architecture; pass --arch (and --num-classes, "
            "--label-set for its classes)"
        )
    else:
        arch, heads = args.arch, args.heads or "full"
        label_set = label_set_of(args.label_set, args.num_classes)
        num_classes, input_size = label_set.num_classes, args.input_size or DEFAULT_INPUT_SIZE
    try:
        model = build_model(arch, num_classes, heads=heads)
        report = load_weights(model, state, name=name)
    except (WeightsError, ValueError) as err:
        raise SystemExit(str(err)) from None
    if report.untouched:
        raise SystemExit(
            f"{name}: a {fmt} file holds no weights for {', '.join(report.untouched)}, which "
            f"the {heads} {arch} parses with; pass --heads plain for a segmentation file with a "
            "decoder, or convert a trained parser"
        )
    parser = HumanParser(model, label_set, input_size, device="cpu")
    parser.source = Path(args.model_restore)  # for args.json / results.json next to it
    return parser


def main(args: argparse.Namespace) -> None:
    setup_logging()
    parser = load_parser(args)
    try:
        out = parser.save_pretrained(args.out, args.args_json, args.results_json)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(str(err)) from None
    sizes = [f"{p.name} ({p.stat().st_size / 2**20:.1f} MiB)" for p in sorted(out.iterdir())]
    print(f"wrote {out}: {', '.join(sizes)}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
