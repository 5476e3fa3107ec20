"""Export a trained parser to ONNX and check it against PyTorch with onnxruntime.

    python -m export_onnx --model-restore log/run/best.pth.tar --output parser.onnx
    python -m export_onnx --model-restore log/run/best.pth.tar --output parser.onnx \
        --dynamic-size --all-outputs --check-image photo.jpg

The ONNX model takes `image`, N x 3 x H x W float32 normalised as the checkpoint records (colour
order, mean and std; also stored in the file's metadata with the class names and crop size, see
`datasets.images.prepare_image` for the crop), and returns `fusion` logits at stride 4
(N x C x ceil(H/4) x ceil(W/4)); with --all-outputs `parsing`, `fusion` and `edge`. The batch is
always dynamic; H x W is the training crop unless --dynamic-size. The dynamo exporter
(`torch.onnx.export(..., dynamo=True)`) is tried first and the TorchScript exporter is the
fallback. The file is kept only when onnxruntime reproduces PyTorch on a real photo (its crop and
its mirror, a batch of 2) within --tolerance.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from datasets.dolls import render_doll
from datasets.images import list_inputs, prepare_image, read_image_rgb
from inference.api import HumanParser
from utils.cli import hw_pair
from utils.logger import setup_logging

logger = logging.getLogger("export_onnx")
DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-3
EXPORTERS = ("auto", "dynamo", "torchscript")
OUTPUT_NAMES = ("parsing", "fusion", "edge")  # ParsingOutput order
DYNAMIC_SIZE_CHECK_SCALE = 0.75  # --dynamic-size is also checked on a crop this much smaller
QUIET_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx")  # per-initializer INFO lines
DOLL_SEED = 0
DOLL_PERSON_SCALE = (0.8, 0.95)  # the synthetic check photo: a person filling most of the height


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export a trained parser to ONNX and verify it with onnxruntime.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        add_help=add_help,
    )
    parser.add_argument(
        "--model-restore",
        "--model_restore",
        dest="model_restore",
        required=True,
        help="Checkpoint written by train.py.",
    )
    parser.add_argument("--output", required=True, help="Path of the .onnx file to write.")
    parser.add_argument(
        "--input-size", type=hw_pair, default=None, help="Crop H,W (default: the training crop)."
    )
    parser.add_argument(
        "--dynamic-size", action="store_true", help="Let H and W vary too (batch always varies)."
    )
    parser.add_argument(
        "--all-outputs",
        action="store_true",
        help="Export parsing, fusion and edge logits instead of fusion only.",
    )
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (17+).")
    parser.add_argument(
        "--exporter", default="auto", choices=EXPORTERS, help="auto: dynamo, else TorchScript."
    )
    check = parser.add_argument_group("check")
    check.add_argument(
        "--check-image",
        default=None,
        help="Photo for the onnxruntime check (default: the first image under --data-dir, "
        "else a synthetic doll).",
    )
    check.add_argument("--data-dir", default=None, help="Folder to take the check photo from.")
    check.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="Largest accepted absolute difference between ONNX and PyTorch logits.",
    )
    check.add_argument("--no-check", action="store_true", help="Skip the onnxruntime check.")
    return parser


class ExportedParser(nn.Module):
    """The parser with plain tensor outputs: fusion logits, or (parsing, fusion, edge)."""

    def __init__(self, model: nn.Module, all_outputs: bool):
        super().__init__()
        self.model = model
        self.all_outputs = all_outputs

    def forward(self, image: torch.Tensor):
        out = self.model(image)
        return (out.parsing, out.fusion, out.edge) if self.all_outputs else out.fusion


def check_photo(args: argparse.Namespace, input_size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 RGB photo for the check: --check-image, --data-dir's first, or a doll."""
    if args.check_image is not None:
        image = read_image_rgb(args.check_image)
        if image is None:
            raise SystemExit(f"{args.check_image}: cannot read the image; pass another one")
        return image
    if args.data_dir is not None:
        try:
            paths = list_inputs(args.data_dir)
        except ValueError as err:
            raise SystemExit(str(err)) from None
        image = next((img for img in map(read_image_rgb, paths) if img is not None), None)
        if image is None:
            raise SystemExit(f"{args.data_dir}: no readable image; pass --check-image")
        return image
    doll = render_doll(np.random.default_rng(DOLL_SEED), *input_size, DOLL_PERSON_SCALE)
    return np.ascontiguousarray(doll["image"][..., ::-1])  # BGR -> RGB


def export(
    module: nn.Module, example: torch.Tensor, path: str, dynamic_size: bool, opset: int, how: str
) -> str:
    """Write `module` to `path` with the dynamo exporter (or TorchScript); returns which."""
    names = list(OUTPUT_NAMES) if module.all_outputs else ["fusion"]
    if how in ("auto", "dynamo"):
        dims = {0: torch.export.Dim.DYNAMIC}
        if dynamic_size:
            dims |= {2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
        try:
            torch.onnx.export(
                module,
                (example,),
                path,
                dynamo=True,
                opset_version=opset,
                input_names=["image"],
                output_names=names,
                dynamic_shapes={"image": dims},
                external_data=False,  # one self-contained file (models here are < 2 GB)
            )
            return "dynamo"
        except Exception as err:  # any exporter failure: report it, then try TorchScript
            if how == "dynamo":
                raise SystemExit(f"dynamo export failed: {type(err).__name__}: {err}") from None
            logger.warning("dynamo export failed (%s); using the TorchScript exporter", err)
    axes = {"image": {0: "batch"}} | {name: {0: "batch"} for name in names}
    if dynamic_size:
        axes["image"] |= {2: "height", 3: "width"}
        for name in names:
            axes[name] |= {2: "height_4", 3: "width_4"}
    with warnings.catch_warnings():  # the legacy exporter's notices; the check below decides
        warnings.simplefilter("ignore", (DeprecationWarning, torch.jit.TracerWarning))
        torch.onnx.export(
            module,
            (example,),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=names,
            dynamic_axes=axes,
        )
    return "torchscript"


def add_metadata(path: str, parser: HumanParser, exporter: str) -> None:
    """Store what a consumer needs to prepare inputs and read outputs in the ONNX file."""
    import onnx

    model = onnx.load(path)
    spec = parser.model.input_spec
    meta = {
        "arch": parser.model.arch,
        "input_size": json.dumps(list(parser.input_size)),
        "colour": spec.colour,
        "mean": json.dumps(list(spec.mean)),
        "std": json.dumps(list(spec.std)),
        "class_names": json.dumps(list(parser.label_set.names)),
        "label_set": parser.label_set.name,
        "exporter": exporter,
    }
    onnx.helper.set_model_props(model, meta)
    onnx.save(model, path)


def max_differences(path: str, module: nn.Module, batch: torch.Tensor) -> dict[str, float]:
    """Max |ONNX - PyTorch| of each output on `batch`, with onnxruntime on the CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = module(batch)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = session.run(None, {"image": batch.numpy()})
    names = [out.name for out in session.get_outputs()]
    return {
        name: float(np.abs(onnx_out - ref.numpy()).max())
        for name, onnx_out, ref in zip(names, got, expected, strict=True)
    }


def check(args, path: str, module: nn.Module, parser: HumanParser) -> dict[str, float]:
    """Differences on the check photo (and its mirror) at the crop size (and a smaller crop)."""
    photo = check_photo(args, parser.input_size)
    sizes = [parser.input_size]
    if args.dynamic_size:
        sizes.append(tuple(round(side * DYNAMIC_SIZE_CHECK_SCALE) for side in parser.input_size))
    worst: dict[str, float] = {}
    for size in sizes:
        crop, _ = prepare_image(photo, size, parser.model.input_spec)
        batch = torch.stack([crop, crop.flip(-1)])  # a batch of 2: the batch axis is dynamic
        for name, diff in max_differences(path, module, batch).items():
            worst[name] = max(worst.get(name, 0.0), diff)
    return worst


def main(args: argparse.Namespace) -> None:
    setup_logging()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if not args.no_check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise SystemExit(
                "onnxruntime is not installed: `pip install onnxruntime` to check the export, "
                "or pass --no-check"
            ) from None
    try:
        parser = HumanParser.from_checkpoint(
            args.model_restore, device="cpu", input_size=args.input_size
        )
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(str(err)) from None
    if args.all_outputs and getattr(parser.model, "heads", "full") == "plain":
        raise SystemExit(
            f"{args.model_restore}: a --heads plain model has no edge output; drop --all-outputs"
        )
    module = ExportedParser(parser.model, args.all_outputs).eval()
    example = torch.zeros(1, 3, *parser.input_size)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.tmp{os.getpid()}.onnx")
    try:
        exporter = export(module, example, str(tmp), args.dynamic_size, args.opset, args.exporter)
        add_metadata(str(tmp), parser, exporter)
        if not args.no_check:
            diffs = check(args, str(tmp), module, parser)
            worst = max(diffs.values())
            for name, diff in diffs.items():
                print(f"max abs difference ONNX vs PyTorch, {name}: {diff:.3g}")
            if worst > args.tolerance:
                raise SystemExit(
                    f"{output}: ONNX output differs from PyTorch by {worst:.3g} > --tolerance "
                    f"{args.tolerance:g}; not written (try another --opset or --exporter)"
                )
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"exported {output} with the {exporter} exporter (opset {args.opset})")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
