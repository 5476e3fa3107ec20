"""DeepFashion preprocessing throughput, next to the plain decode+encode floor, in one run.

    python -m benchmarks.bench_preprocess  # 125 ids, 100 with segm, --workers = CPU count

Writes ``--num`` synthetic DeepFashion-MultiModal triples (750x1101) to a temporary folder, then
times (1) ``preprocess_deepfashion`` with ``--workers`` processes and (2) the floor: the same
reads (JPEG, segm PNG, DensePose PNG) and writes (JPEG, label PNG) with no mapping, same pool.
A single-process profile gives the CPU milliseconds per image of each stage. Prints one JSON object.
"""

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

import preprocess_deepfashion
from datasets.deepfashion import map_deepfashion, read_densepose, read_image, read_segm
from datasets.labels import load_label_config
from datasets.synthetic import make_deepfashion_dataset

JPEG_QUALITY = 95
PROFILE_IMAGES = 20


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, add_help=add_help)
    parser.add_argument("--num", type=int, default=125, help="Synthetic ids (every 5th: no segm).")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Processes.")
    parser.add_argument(
        "--mapping-cfg",
        type=Path,
        default=Path("mappings/df_map_sep.yaml"),
        help="Label scheme YAML.",
    )
    return parser


def _floor_one(task: tuple[Path, Path, str]) -> None:
    """Decode and re-encode one triple with no mapping: the I/O cost every converter pays."""
    src, dest, name = task
    image = read_image(src / "images" / f"{name}.jpg")
    segm = read_segm(src / "segm" / f"{name}_segm.png")
    read_densepose(src / "densepose" / f"{name}_densepose.png")
    jpeg = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1]
    (dest / f"{name}.jpg").write_bytes(jpeg.tobytes())
    (dest / f"{name}_segm.png").write_bytes(cv2.imencode(".png", segm)[1].tobytes())


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool workers)."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measured(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its workers) of ``fn(*args)``."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    fn(*args)
    return time.perf_counter() - wall, _cpu_seconds() - cpu


def run_floor(src: Path, dest: Path, ids: list[str], workers: int) -> None:
    dest.mkdir(parents=True)
    tasks = [(src, dest, name) for name in ids]
    with multiprocessing.Pool(workers, cv2.setNumThreads, (1,)) as pool:
        pool.map(_floor_one, tasks, chunksize=4)


def run_preprocess(src: Path, dest: Path, mapping_cfg: Path, num_train: int, workers: int) -> None:
    argv = [
        "--mapping_cfg",
        str(mapping_cfg),
        "--src-dir",
        str(src),
        "--dest_data_dir",
        str(dest),
        "--num_train_samples",
        str(num_train),
        "--workers",
        str(workers),
    ]
    preprocess_deepfashion.main(preprocess_deepfashion.get_args_parser().parse_args(argv))


def profile_stages(src: Path, ids: list[str], mapping_cfg: Path) -> dict[str, float]:
    """Median CPU milliseconds per image of each stage (CPU time: unaffected by other load)."""
    config = load_label_config(mapping_cfg)
    target = config.target.name
    segm_lut, dense_lut = config.lut("segm", target), config.lut("densepose", target)
    stages: dict[str, list[float]] = {}

    def timed(stage, fn, *args):
        start = time.process_time()
        result = fn(*args)
        stages.setdefault(stage, []).append((time.process_time() - start) * 1000)
        return result

    for name in ids[:PROFILE_IMAGES]:
        image = timed("decode_jpeg", read_image, src / "images" / f"{name}.jpg")
        segm = timed("decode_segm_png", read_segm, src / "segm" / f"{name}_segm.png")
        parts = timed(
            "decode_densepose_png", read_densepose, src / "densepose" / f"{name}_densepose.png"
        )
        label = timed("map_with_skin_split", map_deepfashion, segm, parts, segm_lut, dense_lut)
        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        timed("encode_jpeg", cv2.imencode, ".jpg", np.ascontiguousarray(image[:, :, ::-1]), params)
        timed("encode_label_png", cv2.imencode, ".png", label)
    return {stage: round(statistics.median(ms), 2) for stage, ms in stages.items()}


def main(args: argparse.Namespace) -> None:
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "DeepFashion_Multi"
        ids = make_deepfashion_dataset(src, args.num, seed=0)
        num_train = len(ids) // 2
        floor = measured(run_floor, src, Path(tmp) / "floor", ids, args.workers)
        ours = measured(
            run_preprocess, src, Path(tmp) / "out", args.mapping_cfg, num_train, args.workers
        )
        profile = profile_stages(src, ids, args.mapping_cfg)
    result = {
        "benchmark": "preprocess_deepfashion",
        "images": len(ids),
        "size_hw": [1101, 750],
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "mapping_cfg": str(args.mapping_cfg),
        "load_average_1min": os.getloadavg()[0],
        "ours_images_per_s": round(len(ids) / ours[0], 1),
        "floor_decode_encode_images_per_s": round(len(ids) / floor[0], 1),
        "ours_vs_floor": round(floor[0] / ours[0], 3),
        # CPU time does not depend on what else runs on the machine; with one worker per free
        # core the throughput would be about workers * 1000 / cpu_ms_per_image
        "ours_cpu_ms_per_image": round(ours[1] * 1000 / len(ids), 1),
        "floor_cpu_ms_per_image": round(floor[1] * 1000 / len(ids), 1),
        "ours_images_per_s_on_free_cores": round(args.workers * len(ids) / ours[1], 1),
        "profile_cpu_ms_per_image": profile,
    }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
