"""Evaluate a human parser on a LIP-layout split: pixel/mean accuracy, per-class IoU, mIoU.

Model and label set come from the checkpoint; the seed's command lines still work:

    python -m evaluate --arch segformer_mit_b4 --data-dir data/LIP/ --input-size 512,384 \
        --num-classes 9 --log-dir ./log/eval_results/lip/segformer_big \
        --model-restore ./log/segformer_big/lip_train/schp_6_checkpoint.pth.tar \
        --do-lip-mapping --lip-map-cfg mappings/lip_map.yaml

    python -m evaluate --model-restore exp-schp-201908261155-lip.pth --arch resnet101 \
        --num-classes 20 --input-size 473,473 --data-dir data/LIP --flip   # original SCHP weights

The crop size defaults to the checkpoint's training crop (512,384 for foreign checkpoints).
The stride-4 fusion logits (averaged over --flip and --multi-scales) are mapped straight back to
each photo with the inverse affine (bilinear on logits, then argmax) and scored at the original
resolution. Writes results.json, results.md, results.pt (the seed's dict), confusion.png and,
with --save-results, palette PNGs in <log-dir>/sp_results/.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from datasets.images import init_decode_worker
from datasets.label_set import LabelSet
from datasets.lip import LIPDataset, data_error_line
from inference.predict import labels_to_original, predict_logits
from networks import build_model
from networks.contracts import DEFAULT_INPUT_SIZE
from networks.weights import WeightsError, load_weights, read_checkpoint
from utils.cli import apply_gpu_flag, check_output_dir, common_parser, float_list, resolve_labels
from utils.distributed import DistInfo, all_reduce_sum, cleanup, init_distributed
from utils.fileio import atomic_write
from utils.logger import setup_logging
from utils.metrics import ConfusionMatrix, format_markdown, save_confusion_png

logger = logging.getLogger("evaluate")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate a human parser on a LIP-layout split.",
        parents=[common_parser(arch_default=None, batch_size_default=4)],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        add_help=add_help,
    )
    group = parser.add_argument_group("evaluation")
    group.add_argument("--split", default="val", help="Split to score ({split}_id.txt).")
    group.add_argument(
        "--flip",
        action="store_true",
        help="Average with the horizontally flipped image (left/right classes "
        "swapped by the label set's flip pairs).",
    )
    group.add_argument(
        "--multi-scales",
        "--multi_scales",
        dest="multi_scales",
        type=float_list,
        default=(1.0,),
        help="Comma-separated test scales, e.g. 0.75,1,1.25.",
    )
    group.add_argument(
        "--save-results",
        "--save_results",
        dest="save_results",
        action="store_true",
        help="Write palette PNGs to <log-dir>/sp_results/.",
    )
    parser.set_defaults(input_size=None)  # the checkpoint's training crop, else DEFAULT_INPUT_SIZE
    return parser


class _WithGroundTruth(Dataset):
    """Adds the index and the original-size label to each sample (read in the workers)."""

    def __init__(self, dataset: LIPDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return index, self.dataset[index], self.dataset.read_label(index)


def _collate(items):
    indices, samples, labels = zip(*items, strict=True)
    images = torch.stack([s["image"] for s in samples])
    return list(indices), images, [s["meta"] for s in samples], list(labels)


def build_eval_dataset(data_dir, split, input_size, input_spec, label_set, lut):
    """Un-augmented LIPDataset of a split, or None when the split has no id list."""
    if not (Path(data_dir) / f"{split}_id.txt").is_file():
        return None
    return LIPDataset(
        data_dir,
        split=split,
        input_size=input_size,
        input_spec=input_spec,
        label_set=label_set,
        label_lut=lut,
        augment=False,
        with_edge=False,
    )


def save_palette_png(labels: np.ndarray, palette: list[int], path: Path) -> None:
    """(H, W) uint8 labels as a palette PNG, atomically; ids with sub-folders (a/b/0001) get
    their folders."""
    image = Image.fromarray(labels, mode="P")
    image.putpalette(palette)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def evaluate(
    model,
    dataset,
    label_set,
    info: DistInfo,
    *,
    batch_size=4,
    workers=2,
    amp="off",
    flip=False,
    scales=(1.0,),
    save_dir: Path | None = None,
):
    """Score `model` on `dataset`; returns (ParsingMetrics, ConfusionMatrix) on every rank."""
    was_training = model.training
    model.eval()
    # every image exactly once over all ranks (DistributedSampler would pad with repeats)
    sampler = range(info.rank, len(dataset), info.world_size) if info.distributed else None
    loader = DataLoader(
        _WithGroundTruth(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=_collate,
        worker_init_fn=init_decode_worker,
    )
    flip_perm = torch.as_tensor(label_set.flip_permutation()) if flip else None
    confusion = ConfusionMatrix(label_set.num_classes)
    palette = label_set.flat_palette()
    for indices, images, metas, labels in tqdm(
        loader, desc="evaluate", disable=not info.is_main, dynamic_ncols=True
    ):
        logits = predict_logits(model, images.to(info.device), scales, flip_perm, amp)
        for i, meta, gt in zip(range(len(indices)), metas, labels, strict=True):
            pred = (
                labels_to_original(
                    logits[i : i + 1], meta["center"], meta["scale"], gt.shape, dataset.input_size
                )[0]
                .cpu()
                .numpy()
            )  # (H, W) uint8 at the photo's size
            confusion.update(pred, gt)
            if save_dir is not None:
                save_palette_png(pred, palette, save_dir / f"{meta['name']}.png")
    if info.distributed:
        matrix = torch.as_tensor(confusion.matrix, device=info.device)
        confusion.matrix = all_reduce_sum(matrix, info).cpu().numpy()
    model.train(was_training)
    return confusion.compute(label_set.names), confusion


class EvalModel(NamedTuple):
    """What `load_model_for_eval` resolved from the checkpoint and the flags."""

    model: nn.Module
    label_set: LabelSet
    lut: np.ndarray | None
    arch: str
    input_size: tuple[int, int]


def load_model_for_eval(args: argparse.Namespace) -> EvalModel:
    """Build the model from the checkpoint (ours) or from --arch/--num-classes (foreign).

    The checkpoint is read once; `args` is not changed.
    """
    if args.model_restore is None:
        raise SystemExit("--model-restore is required: the checkpoint to evaluate")
    try:
        state = read_checkpoint(args.model_restore)
    except WeightsError as err:
        raise SystemExit(str(err)) from None
    arch, input_size, label_set = args.arch, args.input_size, None
    if "arch" in state:  # ours: self-describing
        for flag, stored in (("arch", state["arch"]), ("num_classes", state["num_classes"])):
            given = getattr(args, flag)
            if given is not None and given != stored:
                raise SystemExit(
                    f"{args.model_restore}: checkpoint is {flag}={stored} but "
                    f"--{flag.replace('_', '-')} {given} was given; drop the flag "
                    "or pick the matching checkpoint"
                )
        arch = state["arch"]
        trained_size = tuple(state["input"]["size"])
        if input_size is None:
            input_size = trained_size
        elif tuple(input_size) != trained_size:
            logger.warning(
                "evaluating at --input-size %s; the checkpoint was trained at %s",
                input_size,
                trained_size,
            )
        if state.get("label_set"):
            label_set = LabelSet.from_dict(state["label_set"])
    elif arch is None:
        raise SystemExit(
            f"{args.model_restore}: not a self-describing checkpoint; pass --arch and --num-classes"
        )
    label_set, lut = resolve_labels(args, label_set)
    model = build_model(arch, label_set.num_classes, heads=state.get("heads", "full"))
    try:
        load_weights(model, state, name=str(args.model_restore))
    except WeightsError as err:
        raise SystemExit(str(err)) from None
    size = tuple(input_size) if input_size is not None else DEFAULT_INPUT_SIZE
    return EvalModel(model, label_set, lut, arch, size)


def main(args: argparse.Namespace) -> None:
    check_output_dir(args.log_dir)
    apply_gpu_flag(args.gpu)
    info = init_distributed(args.device)
    setup_logging(info.is_main)
    model, label_set, lut, arch, input_size = load_model_for_eval(args)
    model.to(info.device)
    dataset = build_eval_dataset(
        args.data_dir, args.split, input_size, model.input_spec, label_set, lut
    )
    if dataset is None:
        raise SystemExit(
            f"{args.data_dir}: no {args.split}_id.txt; expected LIP layout "
            f"({args.split}_id.txt, {args.split}_images/, "
            f"{args.split}_segmentations/)"
        )
    log_dir = Path(args.log_dir)
    save_dir = log_dir / "sp_results" if args.save_results else None
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    try:
        metrics, confusion = evaluate(
            model,
            dataset,
            label_set,
            info,
            batch_size=args.batch_size,
            workers=args.workers,
            amp=args.amp,
            flip=args.flip,
            scales=args.multi_scales,
            save_dir=save_dir,
        )
    except (ValueError, FileNotFoundError) as err:  # a bad or missing label / image file
        raise SystemExit(data_error_line(err)) from None
    if info.is_main:
        log_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "checkpoint": args.model_restore,
            "arch": arch,
            "input_size": list(input_size),
            "data_dir": args.data_dir,
            "split": args.split,
            "images": len(dataset),
            "label_set": label_set.name,
            "flip": args.flip,
            "scales": list(args.multi_scales),
            **metrics.to_dict(),
        }
        (log_dir / "results.json").write_text(json.dumps(record, indent=2))
        table = format_markdown(metrics)
        (log_dir / "results.md").write_text(table + "\n")
        torch.save(
            {name: float(np.nan_to_num(v)) for name, v in metrics.iou.items()}
            | {
                "Pixel accuracy": metrics.pixel_accuracy,
                "Mean accuracy": metrics.mean_accuracy,
                "Mean IU": metrics.miou,
            },
            log_dir / "results.pt",
        )
        save_confusion_png(confusion.matrix, label_set.names, log_dir / "confusion.png")
        print(table)
        logger.info("results in %s", log_dir)
    cleanup(info)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
