"""Out-of-box extractor: parsing maps and try-on masks for a folder, a list or a video.

    python -m extract --model-restore log/run/best.pth.tar --input photos/ --output out/ \
        --masks upper,lower,overall --overlay
    python -m extract --model-restore best.pth.tar --input clip.mp4 --output out/ --every 5
    python -m extract ... --shard 0/4     # this machine's quarter of a large folder

Writes <output>/parsing/<name>.png (palette PNG of class ids at the photo's size),
<output>/masks/<kind>/<name>.png (0/255), <output>/overlay/<name>.jpg, <output>/logits/<name>.npy
(float16 C x H x W, with --save-logits) and <output>/failed.txt (failed_<i>of<n>.txt with --shard)
listing unreadable inputs. <name> is the photo's path below the input folder without its suffix
(video frames: <video>/frame_<index>). Finished photos are skipped on a rerun; every file is
written atomically.

Pipeline: DataLoader workers decode and warp the photos; the main thread only runs the model;
writer threads map each crop's stride-4 logits back onto the photo, take the argmax and encode
the outputs, so decoding, inverse warps and PNG encoding overlap with the next forward passes.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.images import (
    VIDEO_SUFFIXES,
    PhotoDataset,
    VideoFrames,
    collate_photos,
    init_decode_worker,
    iter_video_frames,
    list_inputs,
    output_names,
)
from networks.api import HumanParser
from utils.cli import AMP_CHOICES, float_list, hw_pair
from utils.fileio import atomic_write
from utils.inference import argmax_labels, autocast
from utils.logger import setup_logging
from utils.masks import KINDS, build_mask, get_mask_rules

logger = logging.getLogger("extract")
OVERLAY_ALPHA = 0.5
PNG_COMPRESS_LEVEL = 1  # zlib level of label PNGs: label maps stay small, encoding stays cheap
WRITER_THREADS = 2
MAX_DEFAULT_WORKERS = 4
PENDING_BATCHES = 2  # batches handed to the writers before the main thread waits for them


def default_workers() -> int:
    """Decode workers worth having: none on 2 cores (the model's threads use both), then one per
    spare pair of cores, at most MAX_DEFAULT_WORKERS."""
    return max(0, min(MAX_DEFAULT_WORKERS, (os.cpu_count() or 1) // 2 - 1))


def shard_spec(text: str) -> tuple[int, int]:
    """`i/n` -> (i, n) with 0 <= i < n."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n such as 0/4, got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"shard {text}: need 0 <= i < n")
    return index, count


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Extract parsing maps and try-on masks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        add_help=add_help,
    )
    io = parser.add_argument_group("input and output")
    io.add_argument(
        "--model-restore",
        "--model_restore",
        dest="model_restore",
        required=True,
        help="Checkpoint written by train.py (it records the arch, label set and input size).",
    )
    io.add_argument(
        "--input", required=True, help="A folder of photos, a .txt list of paths, or a video file."
    )
    io.add_argument("--output", required=True, help="Output folder.")
    io.add_argument(
        "--masks",
        default="",
        help=f"Comma-separated try-on mask kinds ({', '.join(KINDS)}); empty = none.",
    )
    io.add_argument("--overlay", action="store_true", help="Write colour overlays (JPEG).")
    io.add_argument(
        "--save-logits",
        default="none",
        choices=["none", "logits", "probs"],
        help="Also save per-class logits or probabilities (float16 .npy, C x H x W).",
    )
    io.add_argument("--every", type=int, default=1, help="Video: keep every N-th frame.")
    io.add_argument(
        "--shard",
        type=shard_spec,
        default=(0, 1),
        help="i/n: process every n-th input starting at the i-th (sorted order).",
    )
    io.add_argument("--overwrite", action="store_true", help="Redo finished photos.")
    run = parser.add_argument_group("inference")
    run.add_argument(
        "--input-size",
        type=hw_pair,
        default=None,
        help="Crop H,W (default: the checkpoint's training size).",
    )
    run.add_argument("--batch-size", type=int, default=4, help="Photos per forward pass.")
    run.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="DataLoader decode workers; 0 decodes on the main thread between forward passes "
        "(the default on machines with 2 or fewer cores, where workers slow the model down).",
    )
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
    run.add_argument("--amp", default="off", choices=AMP_CHOICES, help="Autocast dtype.")
    run.add_argument("--flip", action="store_true", help="Flip test-time augmentation.")
    run.add_argument("--multi-scales", type=float_list, default=(1.0,), help="Test scales.")
    return parser


class ExtractStats(NamedTuple):
    written: int
    failed: list[str]
    seconds: float


class Writer:
    """Everything written for one photo, given its crop logits."""

    def __init__(self, args: argparse.Namespace, parser: HumanParser):
        self.parser = parser
        self.out = Path(args.output)
        self.kinds = [k for k in args.masks.split(",") if k]
        self.rules = get_mask_rules(parser.label_set) if self.kinds else None
        self.overlay = args.overlay
        self.save_logits = args.save_logits
        self.palette = parser.label_set.flat_palette()
        self.colours = np.asarray(parser.label_set.palette, np.uint8)

    def targets(self, name: str) -> list[Path]:
        paths = [self.out / "parsing" / f"{name}.png"]
        paths += [self.out / "masks" / kind / f"{name}.png" for kind in self.kinds]
        if self.overlay:
            paths.append(self.out / "overlay" / f"{name}.jpg")
        if self.save_logits != "none":
            paths.append(self.out / "logits" / f"{name}.npy")
        return paths

    def done(self, name: str) -> bool:
        return all(p.is_file() for p in self.targets(name))

    def write(self, name: str, crop_logits: torch.Tensor, meta: dict, rgb: np.ndarray | None):
        logits = None
        if self.save_logits != "none":  # the full warp is needed anyway: take labels from it
            logits = self.parser.to_original(crop_logits, meta)  # (C, H, W) on the photo
            labels = argmax_labels(logits)
        else:
            labels = self.parser.to_labels(crop_logits, meta)  # (H, W) uint8 on the photo
        image = Image.fromarray(labels, mode="P")
        image.putpalette(self.palette)
        atomic_write(
            self.out / "parsing" / f"{name}.png",
            lambda p: image.save(p, format="PNG", compress_level=PNG_COMPRESS_LEVEL),
        )
        for kind in self.kinds:
            mask = build_mask(labels, self.parser.label_set, kind, self.rules)
            atomic_write(
                self.out / "masks" / kind / f"{name}.png", lambda p, m=mask: cv2.imwrite(p, m)
            )
        if self.overlay:
            blend = cv2.addWeighted(rgb, 1 - OVERLAY_ALPHA, self.colours[labels], OVERLAY_ALPHA, 0)
            atomic_write(
                self.out / "overlay" / f"{name}.jpg",
                lambda p: cv2.imwrite(p, cv2.cvtColor(blend, cv2.COLOR_RGB2BGR)),
            )
        if logits is not None:
            values = logits.softmax(0) if self.save_logits == "probs" else logits
            array = values.to(torch.float16).cpu().numpy()
            atomic_write(self.out / "logits" / f"{name}.npy", lambda p: np.save(p, array))


def build_dataset(args: argparse.Namespace, parser: HumanParser, writer: Writer):
    """(dataset, number of inputs to do or None for a video) of this shard, finished ones left
    out unless --overwrite."""
    source = Path(args.input)
    spec, keep_rgb = parser.model.input_spec, args.overlay
    if not source.exists():
        raise SystemExit(f"{source}: no such file or folder; give a folder, .txt list or video")
    if source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        try:
            next(iter_video_frames(source), None)  # fail here, not in a worker
        except ValueError as err:
            raise SystemExit(str(err)) from None
        found = (writer.out / "parsing" / source.stem).glob("frame_*.png")
        done = [f"{source.stem}/{p.stem}" for p in found] if not args.overwrite else []
        skip = [name for name in done if writer.done(name)]
        frames = VideoFrames(
            source, parser.input_size, spec, args.every, args.shard, skip, keep_rgb
        )
        return frames, None
    try:
        paths = list_inputs(source)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    names = output_names(paths, source if source.is_dir() else None)
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise SystemExit(
            f"{source}: two inputs would both write '{twice}' (same name, other suffix); "
            "rename one of them"
        )
    index, count = args.shard
    paths, names = paths[index::count], names[index::count]
    todo = [
        (p, n) for p, n in zip(paths, names, strict=True) if args.overwrite or not writer.done(n)
    ]
    logger.info("%d photos in shard %d/%d, %d to do", len(paths), index, count, len(todo))
    dataset = PhotoDataset(
        [p for p, _ in todo], [n for _, n in todo], parser.input_size, spec, keep_rgb
    )
    return dataset, len(todo)


def extract(args: argparse.Namespace, parser: HumanParser) -> ExtractStats:
    """Run the extractor over --input; returns what was written and what failed."""
    start = time.perf_counter()
    cv2.setNumThreads(1)  # writer threads and decode workers already keep the cores busy
    writer = Writer(args, parser)
    dataset, total = build_dataset(args, parser, writer)
    failed: list[str] = []
    written = 0
    if total == 0:
        return ExtractStats(0, failed, time.perf_counter() - start)
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        num_workers=args.workers if total is not None else min(args.workers, 1),
        collate_fn=collate_photos,
        worker_init_fn=init_decode_worker,
        pin_memory=parser.device.type == "cuda",
    )
    # one autocast region for the whole run: the low-precision weight copies are made once,
    # not on every batch (autocast state is per thread: the writers stay in fp32)
    with (
        autocast(parser.device, parser.amp),
        ThreadPoolExecutor(WRITER_THREADS) as pool,
        tqdm(total=total, desc="extract") as bar,
    ):
        pending: list = []
        for batch in loader:
            failed += batch["failed"]
            bar.update(len(batch["failed"]))
            if batch["image"] is None:
                continue
            crop_logits = parser.predict(batch["image"])  # (N, C, H/4, W/4)
            for name, logits, meta, rgb in zip(
                batch["name"], crop_logits, batch["meta"], batch["rgb"], strict=True
            ):
                pending.append(pool.submit(writer.write, name, logits, meta, rgb))
            while len(pending) > PENDING_BATCHES * args.batch_size:
                pending.pop(0).result()
                written += 1
                bar.update()
        for future in pending:
            future.result()
            written += 1
            bar.update()
    return ExtractStats(written, failed, time.perf_counter() - start)


def write_failed_list(out: Path, shard: tuple[int, int], failed: list[str]) -> None:
    """The unreadable inputs of this run (a stale list from an earlier run is removed)."""
    index, count = shard
    path = out / ("failed.txt" if count == 1 else f"failed_{index}of{count}.txt")
    if not failed:
        path.unlink(missing_ok=True)
        return
    atomic_write(path, lambda p: Path(p).write_text("\n".join(failed) + "\n"))
    logger.warning("%d unreadable inputs skipped, listed in %s", len(failed), path)


def load_parser(args: argparse.Namespace) -> HumanParser:
    """The parser of --model-restore; checks the --masks kinds against its label set."""
    try:
        parser = HumanParser.from_checkpoint(
            args.model_restore,
            device=args.device,
            amp=args.amp,
            flip=args.flip,
            scales=args.multi_scales,
            input_size=args.input_size,
        )
        kinds = [k for k in args.masks.split(",") if k]
        supported = tuple(get_mask_rules(parser.label_set).kinds) if kinds else ()
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(str(err)) from None
    for kind in kinds:
        if kind not in supported:
            raise SystemExit(
                f"--masks {kind}: unknown or unsupported mask kind; label set "
                f"'{parser.label_set.name}' supports {', '.join(supported)}"
            )
    return parser


def main(args: argparse.Namespace) -> None:
    setup_logging()
    if args.every < 1 or args.batch_size < 1:
        raise SystemExit("--every and --batch-size must be at least 1")
    if not Path(args.input).exists():  # before the (slow) model load
        raise SystemExit(f"{args.input}: no such file or folder; give a folder, .txt list or video")
    parser = load_parser(args)
    stats = extract(args, parser)
    write_failed_list(Path(args.output), args.shard, stats.failed)
    rate = stats.written / max(stats.seconds, 1e-9)
    logger.info("%d photos written to %s (%.2f images/s)", stats.written, args.output, rate)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
