"""DeepFashion-MultiModal -> LIP-layout dataset with a chosen label scheme.

    python -m preprocess_deepfashion --mapping_cfg mappings/df_map_sep.yaml \\
        --dest_data_dir data/DeepFashion_Multi/DeepFashion_map_sep --num_train_samples 2500

Input (``--src-dir``, default ``data/DeepFashion_Multi``): ``images/<id>.jpg``,
``segm/<id>_segm.png`` (palette PNG, 0..23) and ``densepose/<id>_densepose.png`` (part index in
RGB channel 2). Only ids with a segm file are used. Labels follow the seed's rule exactly
(``datasets/deepfashion.py``: segm mapped by the YAML, segm "Skin" split by the DensePose parts
grown by 10 px).

Output (``--dest_data_dir``): ``{train,val}_id.txt``, ``{split}_images/<id>.jpg`` (RGB JPEG),
``{split}_segmentations/<id>_segm.png`` (mode L, target class ids), ``label_set.yaml`` (a copy of
the mapping), ``stats.json`` (pixel counts per class and split, skipped ids with reasons) and,
with ``--visualize N``, sample sheets in ``visualize/``.

The split is disjoint and reproducible: the sorted ids are permuted with ``--seed``; train takes
the first ``--num_train_samples``, val the next ``--val-samples`` (default: all the rest). Runs
resume: finished files are kept, every file is written to a temporary name and renamed, and the
id lists of an earlier run must agree with the flags. Missing or unreadable inputs and size
mismatches are listed in stats.json and skipped.
"""

import argparse
import json
import logging
import multiprocessing
import os
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from tqdm import tqdm

from datasets.deepfashion import colour_table, map_deepfashion, read_sample, sample_sheet
from datasets.label_set import IGNORE_INDEX, LUT_SIZE
from datasets.labels import LabelConfig, load_label_config
from utils.fileio import atomic_write, remove_stale_temp_files
from utils.logger import setup_logging

logger = logging.getLogger("preprocess_deepfashion")

SPLITS = ("train", "val")
SEGM_SUFFIX = "_segm.png"
JPEG_QUALITY_RANGE = (1, 100)  # OpenCV takes 0..100; libjpeg reads 0 as 1
CHUNKSIZE = 4
MAX_LOGGED_SKIPS = 10  # the full list is in stats.json


class Job(NamedTuple):
    name: str
    split: str
    visualize: bool


class Outcome(NamedTuple):
    name: str
    split: str
    counts: np.ndarray | None  # (256,) pixels per label value; None when skipped
    error: str | None
    written: bool


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert DeepFashion-MultiModal to a LIP-layout dataset.",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--mapping-cfg",
        "--mapping_cfg",
        type=Path,
        required=True,
        help="Label scheme YAML, e.g. mappings/df_map_sep.yaml.",
    )
    data.add_argument(
        "--src-dir",
        type=Path,
        default=Path("data/DeepFashion_Multi"),
        help="Folder with images/, segm/ and densepose/.",
    )
    data.add_argument(
        "--dest-data-dir",
        "--dest_data_dir",
        type=Path,
        required=True,
        help="Output folder in LIP layout (created).",
    )
    split = parser.add_argument_group("split")
    split.add_argument(
        "--num-train-samples",
        "--num_train_samples",
        type=int,
        default=2500,
        help="Number of training ids.",
    )
    split.add_argument(
        "--val-samples",
        type=int,
        default=None,
        help="Number of validation ids; None takes every id that is not in train.",
    )
    split.add_argument("--seed", type=int, default=0, help="Seed of the train/val permutation.")
    output = parser.add_argument_group("output")
    output.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="Worker processes (1 converts in this process).",
    )
    output.add_argument(
        "--visualize",
        type=int,
        default=0,
        metavar="N",
        help="Write side-by-side sheets of the first N samples to visualize/.",
    )
    output.add_argument(
        "--jpeg-quality",
        type=jpeg_quality,
        default=95,
        help="Quality of the re-encoded JPEG images, 1 (smallest) to 100 (best).",
    )
    return parser


def jpeg_quality(text: str) -> int:
    """--jpeg-quality: an integer in JPEG_QUALITY_RANGE."""
    low, high = JPEG_QUALITY_RANGE
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be {low}..{high}, got {value}")
    return value


def load_mapping(path: Path) -> LabelConfig:
    """The label scheme; it must map segm (and densepose, when it splits skin) to its target."""
    try:
        config = load_label_config(path)
    except FileNotFoundError:
        raise SystemExit(
            f"{path}: mapping YAML not found; pass e.g. mappings/df_map_sep.yaml"
        ) from None
    except ValueError as error:
        raise SystemExit(str(error)) from None
    needed = ["segm"] + (["densepose"] if config.skin_placeholder is not None else [])
    for space in needed:
        if (space, config.target.name) not in config.maps:
            raise SystemExit(
                f"{path}: no {space}_to_{config.target.name} map; --mapping_cfg needs a "
                "DeepFashion scheme such as mappings/df_map_sep.yaml"
            )
    return config


def list_ids(src: Path, need_densepose: bool) -> list[str]:
    """Sorted ids that have a segm file."""
    folders = ["images", "segm"] + (["densepose"] if need_densepose else [])
    for folder in folders:
        if not (src / folder).is_dir():
            raise SystemExit(
                f"{src / folder}: folder not found; --src-dir must hold {', '.join(folders)}"
            )
    ids = sorted(p.name[: -len(SEGM_SUFFIX)] for p in (src / "segm").glob(f"*{SEGM_SUFFIX}"))
    if not ids:
        raise SystemExit(f"{src / 'segm'}: no *{SEGM_SUFFIX} files; check --src-dir")
    return ids


def split_ids(ids: list[str], num_train: int, num_val: int | None, seed: int) -> dict:
    """Disjoint seeded split: the sorted ids, permuted with ``seed``; {split: sorted ids}."""
    ids = sorted(ids)
    num_val = len(ids) - num_train if num_val is None else num_val
    if num_train < 0 or num_val < 0 or num_train + num_val > len(ids):
        raise SystemExit(
            f"--num_train_samples {num_train} + --val-samples {num_val} exceed the {len(ids)} "
            "ids that have a segm file; lower them"
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    picked = {"train": order[:num_train], "val": order[num_train : num_train + num_val]}
    return {split: sorted(ids[i] for i in index) for split, index in picked.items()}


def write_atomic(path: Path, data: bytes) -> None:
    """`data` to `path` through `utils.fileio.atomic_write` (never a half-written file)."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def prepare_dest(dest: Path, mapping_cfg: Path, splits: dict) -> None:
    """Create the folders, check an earlier run's id lists and label set, clear the partial
    files of a killed run."""
    for split in SPLITS:
        id_file = dest / f"{split}_id.txt"
        if id_file.is_file() and not set(id_file.read_text().split()) <= set(splits[split]):
            raise SystemExit(
                f"{id_file}: made with another --seed, --num_train_samples or source; "
                "pick another --dest_data_dir or delete train_id.txt and val_id.txt there"
            )
    label_set = dest / "label_set.yaml"
    if label_set.is_file() and label_set.read_bytes() != mapping_cfg.read_bytes():
        raise SystemExit(
            f"{label_set}: differs from {mapping_cfg}; pick another --dest_data_dir or delete it"
        )
    remove_stale_temp_files(dest, recursive=True)
    for folder in [f"{s}_{kind}" for s in SPLITS for kind in ("images", "segmentations")]:
        (dest / folder).mkdir(parents=True, exist_ok=True)
    write_atomic(label_set, mapping_cfg.read_bytes())
    for split in SPLITS:
        write_atomic(dest / f"{split}_id.txt", "".join(f"{n}\n" for n in splits[split]).encode())


def _counts(label: np.ndarray) -> np.ndarray:
    hist = cv2.calcHist([label], [0], None, [LUT_SIZE], [0, LUT_SIZE])
    return hist.ravel().astype(np.int64)


_STATE: dict = {}  # per worker process: paths, tables, palettes (see main)


def _init_worker(state: dict) -> None:
    cv2.setNumThreads(1)  # one process per core already
    _STATE.update(state)


def _convert(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Read and map one sample: (image RGB, label, segm, DensePose parts or None)."""
    with_densepose = _STATE["dense_lut"] is not None
    image, segm, parts = read_sample(_STATE["src"], name, with_densepose)
    if parts is None:
        return image, cv2.LUT(segm, _STATE["segm_lut"]), segm, None
    label = map_deepfashion(segm, parts, _STATE["segm_lut"], _STATE["dense_lut"], _STATE["skin"])
    return image, label, segm, parts


def process_sample(job: Job) -> Outcome:
    """Convert one id unless its outputs exist; returns its label pixel counts or the error."""
    dest = _STATE["dest"]
    image_path = dest / f"{job.split}_images" / f"{job.name}.jpg"
    label_path = dest / f"{job.split}_segmentations" / f"{job.name}{SEGM_SUFFIX}"
    if image_path.is_file() and label_path.is_file() and not job.visualize:
        label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        if label is not None:
            return Outcome(job.name, job.split, _counts(label), None, False)
    try:
        image, label, segm, parts = _convert(job.name)
    except (OSError, ValueError) as error:
        return Outcome(job.name, job.split, None, str(error), False)
    if not image_path.is_file():
        quality = [cv2.IMWRITE_JPEG_QUALITY, _STATE["jpeg_quality"]]
        write_atomic(image_path, cv2.imencode(".jpg", image[:, :, ::-1], quality)[1].tobytes())
    write_atomic(label_path, cv2.imencode(".png", label)[1].tobytes())
    if job.visualize:
        layers = [("segm", segm), ("densepose", parts), (_STATE["target_name"], label)]
        panels = [
            (title, colours[labels])
            for (title, labels), colours in zip(layers, _STATE["colours"], strict=True)
            if labels is not None
        ]
        sheet = sample_sheet(image, panels)[:, :, ::-1]
        write_atomic(
            dest / "visualize" / f"{job.name}.png", cv2.imencode(".png", sheet)[1].tobytes()
        )
    return Outcome(job.name, job.split, _counts(label), None, True)


def run_jobs(jobs: list[Job], state: dict, workers: int) -> list[Outcome]:
    progress = {"total": len(jobs), "unit": "img", "desc": "preprocess"}
    if workers <= 1:
        _init_worker(state)
        return [process_sample(job) for job in tqdm(jobs, **progress)]
    with multiprocessing.Pool(workers, _init_worker, (state,)) as pool:
        return list(tqdm(pool.imap_unordered(process_sample, jobs, CHUNKSIZE), **progress))


def write_stats(
    path: Path, outcomes: list[Outcome], config: LabelConfig, args: argparse.Namespace
) -> dict:
    """stats.json: per-split pixel counts by class name, and the skipped ids with reasons."""
    names = config.target.names
    splits = {}
    for split in SPLITS:
        done = [o for o in outcomes if o.split == split and o.counts is not None]
        total = np.sum([o.counts for o in done], axis=0) if done else np.zeros(LUT_SIZE, np.int64)
        splits[split] = {
            "images": len(done),
            "pixels": {name: int(total[i]) for i, name in enumerate(names)},
            "ignored_pixels": int(total[IGNORE_INDEX]),
        }
    skipped = [{"id": o.name, "split": o.split, "reason": o.error} for o in outcomes if o.error]
    stats = {
        "mapping_cfg": str(args.mapping_cfg),
        "label_set": config.target.name,
        "classes": list(names),
        "seed": args.seed,
        "num_train_samples": args.num_train_samples,
        "val_samples": args.val_samples,
        "splits": splits,
        "skipped": sorted(skipped, key=lambda s: s["id"]),
    }
    write_atomic(path, (json.dumps(stats, indent=2) + "\n").encode())
    return stats


def main(args: argparse.Namespace) -> None:
    setup_logging()
    config = load_mapping(args.mapping_cfg)
    target = config.target.name
    need_densepose = config.skin_placeholder is not None
    splits = split_ids(
        list_ids(args.src_dir, need_densepose), args.num_train_samples, args.val_samples, args.seed
    )
    dest = args.dest_data_dir
    prepare_dest(dest, args.mapping_cfg, splits)
    shown = set((splits["train"] + splits["val"])[: args.visualize])
    if shown:
        (dest / "visualize").mkdir(exist_ok=True)
    spaces = [config.spaces.get("segm"), config.spaces.get("densepose"), config.target]
    state = {
        "src": args.src_dir,
        "dest": dest,
        "segm_lut": config.lut("segm", target),
        "dense_lut": config.lut("densepose", target) if need_densepose else None,
        "skin": config.skin_placeholder,
        "jpeg_quality": args.jpeg_quality,
        "colours": [colour_table(space) for space in spaces],
        "target_name": target,
    }
    jobs = [Job(n, split, n in shown) for split in SPLITS for n in splits[split]]
    outcomes = run_jobs(jobs, state, args.workers)
    ok = {
        split: {o.name for o in outcomes if o.split == split and o.error is None}
        for split in SPLITS
    }
    for split in SPLITS:  # the final lists hold only the ids whose files exist
        lines = "".join(f"{n}\n" for n in splits[split] if n in ok[split])
        write_atomic(dest / f"{split}_id.txt", lines.encode())
    stats = write_stats(dest / "stats.json", outcomes, config, args)
    written = sum(o.written for o in outcomes)
    logger.info(
        "%s: train %d, val %d images (%d converted now, %d kept from an earlier run), %d skipped",
        dest,
        len(ok["train"]),
        len(ok["val"]),
        written,
        sum(len(v) for v in ok.values()) - written,
        len(stats["skipped"]),
    )
    for skipped in stats["skipped"][:MAX_LOGGED_SKIPS]:
        logger.warning("skipped %s: %s", skipped["id"], skipped["reason"])
    if len(stats["skipped"]) > MAX_LOGGED_SKIPS:
        logger.warning("... and %d more in stats.json", len(stats["skipped"]) - MAX_LOGGED_SKIPS)
    if not any(ok.values()):
        raise SystemExit(f"{dest}: no sample could be converted; see {dest / 'stats.json'}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
