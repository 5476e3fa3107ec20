"""Out-of-box extractor: parsing maps and try-on masks for a folder, a list or a video.

    python -m extract --model-restore log/run/best.pth.tar --input photos/ --output out/ \
        --masks upper,lower,overall --overlay
    python -m extract --model-restore best.pth.tar --input clip.mp4 --output out/ --every 5
    python -m extract ... --shard 0/4     # this machine's quarter of a large folder
    python -m extract ... --format viton-hd --report     # the files VITON-HD reads, report.html
    python -m extract ... --input clip.mp4 --smooth 0.5  # temporally smoothed video parsing
    python -m extract ... --engine ray --ray-actors 2    # a Ray Data actor pool (docs/scale-out.md)

Writes <output>/parsing/<name>.png (palette PNG of class ids at the photo's size),
<output>/masks/<kind>/<name>.png (0/255), <output>/overlay/<name>.jpg, <output>/logits/<name>.npy
(float16 C x H x W, with --save-logits) and <output>/failed.txt (failed_<i>of<n>.txt with --shard)
listing unreadable inputs, and manifest.jsonl (one quality line per photo; inference/quality.py).
`--format viton-hd|dresscode|catvton` writes the files of that try-on model's dataset instead of
parsing/ (layouts in mappings/tryon_formats.yaml, writer in inference/outputs.py). <name> is the
photo's path below the input folder without its suffix (video frames: <video>/frame_<index>).
Finished photos are skipped on a rerun; every file is written atomically.

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
from inference import ray_engine
from inference.api import HumanParser
from inference.mask_rules import HULL_MODES, KINDS
from inference.outputs import Writer
from inference.predict import autocast
from inference.temporal import VideoSmoothing, smooth_alpha
from inference.tryon_formats import CATEGORIES, DEFAULT_FORMAT, SPLITS, format_names
from utils.cli import (
    AMP_CHOICES,
    check_output_dir,
    float_list,
    hw_pair,
    non_negative_int,
    positive_int,
)
from utils.fileio import remove_stale_temp_files
from utils.logger import setup_logging

logger = logging.getLogger("extract")
STALE_TEMP_AGE_S = 3600  # with --shard, other shards may be writing: only older temporaries go
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
    io.add_argument(
        "--format",
        default=DEFAULT_FORMAT,
        choices=format_names(),
        help="Output layout: default (parsing/, masks/), or the files a try-on model's dataset "
        "code reads (mappings/tryon_formats.yaml says which and cites the sources).",
    )
    io.add_argument(
        "--split", default="test", choices=SPLITS, help="viton-hd/catvton: the split folder."
    )
    io.add_argument(
        "--category",
        default="upper_body",
        choices=sorted(CATEGORIES),
        help="Try-on formats: the garment category, which picks the mask kind (upper_body: "
        "upper, lower_body: lower, dresses: overall) and DressCode's folder; viton-hd is upper.",
    )
    io.add_argument(
        "--approximate-left-right",
        action="store_true",
        help="Let a label set without left/right classes fill a format that needs them: the "
        "person's midline splits arms, legs and shoes (right in the image = the person's left).",
    )
    io.add_argument("--overlay", action="store_true", help="Write colour overlays (JPEG).")
    io.add_argument(
        "--report",
        action="store_true",
        help="Write report.html: a contact sheet (photo, parse, masks), worst quality first.",
    )
    io.add_argument(
        "--save-logits",
        default="none",
        choices=["none", "logits", "probs"],
        help="Also save per-class logits or probabilities (float16 .npy, C x H x W).",
    )
    io.add_argument("--every", type=positive_int, default=1, help="Video: keep every N-th frame.")
    io.add_argument(
        "--smooth",
        type=smooth_alpha,
        default=None,
        help="Video (or a folder of frames in name order): average each frame's class "
        "probabilities with the previous frames', weight ALPHA in (0, 1] for the new frame; "
        "restarts at scene cuts. The log reports the flicker with and without it.",
    )
    masks = parser.add_argument_group("try-on masks (defaults: mappings/tryon_masks.yaml)")
    masks.add_argument(
        "--dilate", type=non_negative_int, default=0, help="Grow every mask by this many px."
    )
    masks.add_argument(
        "--hull", default=None, choices=HULL_MODES, help="Replace the rules' hull mode."
    )
    masks.add_argument(
        "--feather",
        type=non_negative_int,
        default=0,
        help="Soft 8-bit mask edge over this many px outside the mask (0 = hard 0/255).",
    )
    masks.add_argument(
        "--protect",
        default="",
        help="Comma-separated class names never painted (e.g. Face,Hands), added to the rules'.",
    )
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
    run.add_argument("--batch-size", type=positive_int, default=4, help="Photos per forward pass.")
    run.add_argument(
        "--workers",
        type=non_negative_int,
        default=default_workers(),
        help="DataLoader decode workers; 0 decodes on the main thread between forward passes "
        "(the default on machines with 2 or fewer cores, where workers slow the model down).",
    )
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
    run.add_argument("--amp", default="off", choices=AMP_CHOICES, help="Autocast dtype.")
    run.add_argument("--flip", action="store_true", help="Flip test-time augmentation.")
    run.add_argument("--multi-scales", type=float_list, default=(1.0,), help="Test scales.")
    scale = parser.add_argument_group("scale-out (docs/scale-out.md)")
    scale.add_argument(
        "--engine",
        default="torch",
        choices=["torch", "ray"],
        help="torch: this process; ray: a Ray Data actor pool, one parser per actor (photo "
        f"folders and lists; needs {ray_engine.REQUIREMENTS}). Same files either way.",
    )
    scale.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join (e.g. auto, or ray://head:10001); default: a local Ray that "
        "starts and stops with the run.",
    )
    scale.add_argument(
        "--ray-actors",
        type=positive_int,
        default=1,
        help="Actors (model copies); the cluster's CPUs are shared out among them, and each "
        "gets one GPU where the cluster has GPUs.",
    )
    return parser


class ExtractStats(NamedTuple):
    written: int
    failed: list[str]
    seconds: float
    flicker_raw: float | None = None  # share of photo cells changing label between frames
    flicker_smoothed: float | None = None
    scene_cuts: int = 0


def build_dataset(args: argparse.Namespace, parser: HumanParser, writer: Writer):
    """(dataset, number of inputs to do or None for a video) of this shard, finished ones left
    out unless --overwrite."""
    source = Path(args.input)
    spec, keep_rgb = parser.model.input_spec, writer.needs_rgb
    resume = not args.overwrite and args.smooth is None  # smoothing re-predicts finished frames
    if not source.exists():
        raise SystemExit(f"{source}: no such file or folder; give a folder, .txt list or video")
    if source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        try:
            next(iter_video_frames(source), None)  # fail here, not in a worker
        except ValueError as err:
            raise SystemExit(str(err)) from None
        found = writer.manifest.records if resume else ()
        done = [name for name in found if name.startswith(f"{source.stem}/")]
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
    todo = [(p, n) for p, n in zip(paths, names, strict=True) if not resume or not writer.done(n)]
    logger.info("%d photos in shard %d/%d, %d to do", len(paths), index, count, len(todo))
    dataset = PhotoDataset(
        [p for p, _ in todo], [n for _, n in todo], parser.input_size, spec, keep_rgb
    )
    return dataset, len(todo)


def extract(
    args: argparse.Namespace, parser: HumanParser, writer: Writer | None = None
) -> ExtractStats:
    """Run the extractor over --input; returns what was written and what failed."""
    start = time.perf_counter()
    cv2.setNumThreads(1)  # writer threads and decode workers already keep the cores busy
    writer = writer or Writer(args, parser)
    dataset, total = build_dataset(args, parser, writer)
    failed: list[str] = []
    written = 0
    if total == 0:
        return ExtractStats(0, failed, time.perf_counter() - start)
    if args.engine == "ray":
        written, failed = ray_engine.extract(args, writer, dataset.paths, dataset.names)
        return ExtractStats(written, failed, time.perf_counter() - start)
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        num_workers=args.workers if total is not None else min(args.workers, 1),
        collate_fn=collate_photos,
        worker_init_fn=init_decode_worker,
        pin_memory=parser.device.type == "cuda",
    )
    video = VideoSmoothing(args.smooth, parser.input_size) if args.smooth else None
    redo = args.overwrite or video is None  # smoothing re-predicts finished frames, keeps files
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
            if video is not None:
                crop_logits = video(crop_logits, batch["image"], batch["meta"])
            for name, logits, meta, rgb, path in zip(
                batch["name"], crop_logits, batch["meta"], batch["rgb"], batch["path"], strict=True
            ):
                if not redo and writer.done(name):
                    bar.update()
                    continue
                pending.append(pool.submit(writer.write, name, logits, meta, rgb, path))
            while len(pending) > PENDING_BATCHES * args.batch_size:
                pending.pop(0).result()
                written += 1
                bar.update()
        for future in pending:
            future.result()
            written += 1
            bar.update()
    seconds = time.perf_counter() - start
    if video is None:
        return ExtractStats(written, failed, seconds)
    raw, smoothed = video.raw.share, video.smoothed.share
    return ExtractStats(written, failed, seconds, raw, smoothed, video.smoother.cuts)


def load_parser(args: argparse.Namespace) -> tuple[HumanParser, Writer]:
    """The parser of --model-restore and the writer of its outputs; one line when the label set
    cannot give the --masks kinds, --protect classes or --format."""
    try:
        parser = HumanParser.from_checkpoint(
            args.model_restore,
            device=args.device,
            amp=args.amp,
            flip=args.flip,
            scales=args.multi_scales,
            input_size=args.input_size,
        )
        return parser, Writer(args, parser)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(str(err)) from None


def main(args: argparse.Namespace) -> None:
    setup_logging()
    if not Path(args.input).exists():  # before the (slow) model load
        raise SystemExit(f"{args.input}: no such file or folder; give a folder, .txt list or video")
    check_output_dir(args.output, "--output")
    if args.engine == "ray" and (Path(args.input).suffix.lower() in VIDEO_SUFFIXES or args.smooth):
        raise SystemExit(
            f"{args.input}: --engine ray parses photo folders and lists; run videos and --smooth "
            "with --engine torch"
        )
    if args.engine == "ray":
        try:
            ray_engine.import_ray()  # before the (slow) model load
        except ray_engine.RayUnavailable as err:
            raise SystemExit(str(err)) from None
    unknown = [k for k in args.masks.split(",") if k and k not in KINDS]
    if unknown:
        raise SystemExit(
            f"--masks {unknown[0]}: unknown or unsupported mask kind; "
            f"choose from {', '.join(KINDS)}"
        )
    age = 0.0 if args.shard[1] == 1 else STALE_TEMP_AGE_S
    remove_stale_temp_files(args.output, recursive=True, min_age_s=age)  # of killed runs
    parser, writer = load_parser(args)
    stats = extract(args, parser, writer)
    writer.finish(stats.failed, args.shard)
    rate = stats.written / max(stats.seconds, 1e-9)
    logger.info("%d photos written to %s (%.2f images/s)", stats.written, args.output, rate)
    if stats.flicker_raw is not None:
        logger.info(
            "flicker (share of photo cells changing label between frames): %.2f %% raw, "
            "%.2f %% smoothed; %d scene cuts",
            100 * stats.flicker_raw,
            100 * (stats.flicker_smoothed or 0.0),
            stats.scene_cuts,
        )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
