"""Data pipeline throughput: LIPDataset next to plain JPEG decoding of the same files.

Both run through a DataLoader with the same workers and batch size, in alternating rounds (fair on a
shared machine). The loader makes SCHP training samples (letterbox affine, random scale / rotation
/ flip, normalisation, edge targets); the baseline only decodes each JPEG with ``cv2.imread``.
Prints JSON: images/s of each (median over rounds), ``loader_vs_decode`` (target >= 0.7), the
same with uint8 label/edge targets (``target_dtype=torch.uint8``) and an in-process profile of
one sample (ms per image of the costliest functions).

    python benchmarks/bench_data.py
    python benchmarks/bench_data.py --data-dir ../shared/data/ccp --num-images 100 --workers 2 \
        --json-out bench_data.json
"""

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import cv2
import torch
from torch.utils.data import DataLoader, Dataset, Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.labels import LabelSet  # noqa: E402
from datasets.lip import LIPDataset  # noqa: E402

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "ccp"
SPLIT = "train"
INPUT_SIZE = (512, 384)  # crop (H, W), the project's default
CLASSES_FILE = "classes.txt"  # "<index> <name>" per line (CCP)
PROFILE_ROWS = 10  # costliest functions listed in the profile


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="LIP-layout dataset with a train split and classes.txt (CCP).",
    )
    parser.add_argument(
        "--num-images",
        type=int,
        default=100,
        help="Images timed per round, after the warm-up batches.",
    )
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes.")
    parser.add_argument("--batch-size", type=int, default=4, help="Images per batch.")
    parser.add_argument(
        "--warmup-batches",
        type=int,
        default=4,
        help="Batches loaded before the clock starts (worker start-up).",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="Alternating rounds of each measurement; the median is reported.",
    )
    parser.add_argument(
        "--profile-images",
        type=int,
        default=50,
        help="Images profiled in-process (one thread, as in a worker); 0: skip.",
    )
    parser.add_argument("--json-out", type=Path, default=None, help="Also write the JSON here.")
    return parser


def load_label_set(data_dir: Path) -> LabelSet:
    """The dataset's classes from ``classes.txt`` (CCP has no left/right pairs)."""
    path = data_dir / CLASSES_FILE
    if not path.is_file():
        raise SystemExit(
            f"{path}: not found; pass --data-dir of a LIP-layout dataset with a "
            f"{CLASSES_FILE} ('<index> <name>' per line), e.g. ../shared/data/ccp"
        )
    names = [line.split(maxsplit=1)[1] for line in path.read_text().splitlines() if line.strip()]
    return LabelSet(data_dir.name, tuple(names))


class _DecodeOnly(Dataset):
    """The baseline: ``cv2.imread`` of each image, nothing else."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(cv2.imread(str(self.paths[index]), cv2.IMREAD_COLOR))


def _as_list(batch: list) -> list:
    return batch


def _images_per_s(batches: Iterable, batch_size: int, warmup_batches: int) -> float:
    """Throughput of an iterable of batches, timed after ``warmup_batches``."""
    iterator = iter(batches)
    for _ in range(warmup_batches):
        next(iterator)
    count, start = 0, time.perf_counter()
    for batch in iterator:
        count += len(batch["image"]) if isinstance(batch, dict) else len(batch)
    return count / (time.perf_counter() - start)


def bench_loader(dataset: LIPDataset, args: argparse.Namespace) -> float:
    """Images/s of augmented training samples with edge targets."""
    indices = range((args.warmup_batches * args.batch_size) + args.num_images)
    loader = DataLoader(
        Subset(dataset, indices), batch_size=args.batch_size, num_workers=args.workers
    )
    return _images_per_s(loader, args.batch_size, args.warmup_batches)


def bench_decode(dataset: LIPDataset, args: argparse.Namespace) -> float:
    """Images/s of plain JPEG decoding of the same files."""
    count = (args.warmup_batches * args.batch_size) + args.num_images
    paths = [dataset.image_path(i) for i in range(count)]
    loader = DataLoader(
        _DecodeOnly(paths),
        batch_size=args.batch_size,
        num_workers=args.workers,
        collate_fn=_as_list,
    )
    return _images_per_s(loader, args.batch_size, args.warmup_batches)


def profile_loader(dataset: LIPDataset, count: int) -> dict[str, float]:
    """Milliseconds per image of ``dataset[i]`` and of its costliest functions (own time).

    Runs in this process with one torch thread, like a DataLoader worker.
    """
    torch.set_num_threads(1)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for index in range(count):
        dataset[index]
    profiler.disable()
    result = {"sample_total": (time.perf_counter() - start) * 1000 / count}
    start = time.perf_counter()
    for index in range(count):
        dataset.read_image(index)
    result["decode_only"] = (time.perf_counter() - start) * 1000 / count
    rows = sorted(pstats.Stats(profiler).stats.items(), key=lambda row: row[1][2], reverse=True)
    for (file, _, function), (_, _, own_seconds, _, _) in rows[:PROFILE_ROWS]:
        name = function if file == "~" else f"{Path(file).stem}.{function}"
        result[name] = own_seconds * 1000 / count
    return {name: round(ms, 3) for name, ms in result.items()}


def main(args: argparse.Namespace) -> dict:
    label_set = load_label_set(args.data_dir)
    loaders = {  # name -> training dataset; the contract's int64 targets, then uint8 targets
        name: LIPDataset(
            args.data_dir,
            split=SPLIT,
            input_size=INPUT_SIZE,
            label_set=label_set,
            augment=True,
            with_edge=True,
            target_dtype=dtype,
        )
        for name, dtype in (("loader", torch.int64), ("loader_uint8_targets", torch.uint8))
    }
    dataset = loaders["loader"]
    needed = (args.warmup_batches * args.batch_size) + args.num_images
    if len(dataset) < needed:
        raise SystemExit(
            f"{args.data_dir}: {len(dataset)} {SPLIT} images, {needed} needed; "
            "lower --num-images or --warmup-batches"
        )
    rates: dict[str, list[float]] = {name: [] for name in [*loaders, "decode"]}
    for _ in range(args.rounds):
        for name, loader_dataset in loaders.items():
            rates[name].append(bench_loader(loader_dataset, args))
        rates["decode"].append(bench_decode(dataset, args))
    results: dict = {
        "data_dir": str(args.data_dir),
        "input_size": list(INPUT_SIZE),
        "workers": args.workers,
        "batch_size": args.batch_size,
        "num_images": args.num_images,
    }
    for name, values in rates.items():
        results[name] = {
            "images_per_s": round(statistics.median(values), 1),
            "rounds": [round(value, 1) for value in values],
        }
    for name in loaders:
        ratio = results[name]["images_per_s"] / results["decode"]["images_per_s"]
        results[f"{name}_vs_decode"] = round(ratio, 3)
    if args.profile_images > 0:
        results["loader_profile_ms_per_image"] = profile_loader(dataset, args.profile_images)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json_out is not None:
        args.json_out.write_text(text + "\n")
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
