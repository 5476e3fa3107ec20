"""Data pipeline throughput: LIPDataset next to plain JPEG decoding of the same files.

All run through a DataLoader with the same workers and batch size, in alternating rounds (fair on
a shared machine). The loaders make SCHP training samples (letterbox affine, random scale /
rotation / flip); the baseline ``decode`` only decodes each JPEG with ``cv2.imread`` (the issue's
yardstick), ``decode_jpeg_png`` also decodes the label PNG (the I/O floor of any loader), and
``decode_one_process`` is the JPEG decode as a plain loop in one process (the other reading of
the target: the 2-worker loader against one decoding core, ``<name>_vs_decode_one_process``).
Loader options, from the contract's default to the fastest:

    loader                  float32 image, int64 label + edge made in the workers (default)
    loader_uint8_targets    target_dtype=torch.uint8
    loader_uint8_no_edge    + with_edge=False (edges made on the batch, on the device)
    loader_uint8            + image_dtype=torch.uint8 (normalised on the batch, on the device)

Prints JSON: images/s of each (median over rounds), ``<name>_vs_decode`` (target >= 0.7), an
in-process profile of the default and the fastest sample (ms per image of the costliest calls)
and ``deferred_batch_work_ms_per_image``: the work ``loader_uint8`` leaves to the training loop
(``normalize_batch``, ``generate_edge``, ``.long()``) timed on the CPU with one thread; on a GPU
it runs on the device.

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
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import torch
from torch.utils.data import DataLoader, Dataset, Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.images import init_decode_worker  # noqa: E402
from datasets.label_set import LabelSet  # noqa: E402
from datasets.lip import LIPDataset, collate_samples, read_label_png  # noqa: E402
from datasets.transforms import generate_edge, normalize_batch  # noqa: E402
from networks.contracts import DEFAULT_INPUT_SIZE  # noqa: E402

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "ccp"
SPLIT = "train"
INPUT_SIZE = DEFAULT_INPUT_SIZE  # crop (H, W)
CLASSES_FILE = "classes.txt"  # "<index> <name>" per line (CCP)
PROFILE_ROWS = 10  # costliest functions listed in the profile
TARGET = 0.7  # loader / decode-only (issues 4 and 7)
UINT8 = dict(target_dtype=torch.uint8)
LOADERS = {  # name -> LIPDataset options
    "loader": {},
    "loader_uint8_targets": UINT8,
    "loader_uint8_no_edge": {**UINT8, "with_edge": False},
    "loader_uint8": {**UINT8, "with_edge": False, "image_dtype": torch.uint8},
}
FASTEST = "loader_uint8"
PROFILE_REPEATS = 5  # timings of the deferred batch work per round


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
    """The baseline: ``cv2.imread`` of each image (and its label PNG), nothing else."""

    def __init__(self, dataset: LIPDataset, count: int, with_label: bool) -> None:
        self.dataset = dataset
        self.count = count
        self.with_label = with_label

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(cv2.imread(str(self.dataset.image_path(index)), cv2.IMREAD_COLOR))
        if not self.with_label:
            return image
        return image, torch.from_numpy(read_label_png(self.dataset.label_path(index)))


def _as_list(batch: list) -> list:
    return batch


def _images_per_s(batches: Iterable, warmup_batches: int) -> float:
    """Throughput of an iterable of batches, timed after ``warmup_batches``."""
    iterator = iter(batches)
    for _ in range(warmup_batches):
        next(iterator)
    count, start = 0, time.perf_counter()
    for batch in iterator:
        count += len(batch["image"]) if isinstance(batch, dict) else len(batch)
    return count / (time.perf_counter() - start)


def bench_loader(dataset: LIPDataset, args: argparse.Namespace) -> float:
    """Images/s of augmented training samples."""
    indices = range((args.warmup_batches * args.batch_size) + args.num_images)
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=args.batch_size,
        num_workers=args.workers,
        worker_init_fn=init_decode_worker,
        collate_fn=collate_samples,  # as train.py
    )
    return _images_per_s(loader, args.warmup_batches)


def bench_decode(
    dataset: LIPDataset, args: argparse.Namespace, with_label: bool, workers: int | None = None
) -> float:
    """Images/s of plain JPEG decoding (and label PNG decoding) of the same files, with the
    loaders' workers (or `workers`; 0: a plain loop in this process, one OpenCV thread)."""
    count = (args.warmup_batches * args.batch_size) + args.num_images
    workers = args.workers if workers is None else workers
    if workers == 0:
        init_decode_worker(0)
    loader = DataLoader(
        _DecodeOnly(dataset, count, with_label),
        batch_size=args.batch_size,
        num_workers=workers,
        collate_fn=_as_list,
        worker_init_fn=init_decode_worker,
    )
    return _images_per_s(loader, args.warmup_batches)


def profile_loader(dataset: LIPDataset, count: int) -> dict[str, float]:
    """Milliseconds per image of ``dataset[i]`` and of its costliest functions (own time).

    Runs in this process with one torch and one OpenCV thread, like a DataLoader worker.
    """
    torch.set_num_threads(1)
    init_decode_worker(0)
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


def time_batch_work(dataset: LIPDataset, args: argparse.Namespace) -> float:
    """Milliseconds per image of what a ``loader_uint8`` batch needs before the forward."""
    torch.set_num_threads(1)
    batch = collate_samples([dataset[i] for i in range(args.batch_size)])
    times = []
    for _ in range(args.rounds * PROFILE_REPEATS):
        start = time.perf_counter()
        normalize_batch(batch["image"], dataset.input_spec)
        generate_edge(batch["label"]).long()
        batch["label"].long()
        times.append((time.perf_counter() - start) * 1000 / args.batch_size)
    return round(statistics.median(times), 3)


def main(args: argparse.Namespace) -> dict:
    label_set = load_label_set(args.data_dir)
    loaders = {
        name: LIPDataset(
            args.data_dir,
            split=SPLIT,
            input_size=INPUT_SIZE,
            label_set=label_set,
            augment=True,
            **options,
        )
        for name, options in LOADERS.items()
    }
    dataset, fastest = loaders["loader"], loaders[FASTEST]
    needed = (args.warmup_batches * args.batch_size) + args.num_images
    if len(dataset) < needed:
        raise SystemExit(
            f"{args.data_dir}: {len(dataset)} {SPLIT} images, {needed} needed; "
            "lower --num-images or --warmup-batches"
        )
    runs: dict[str, Callable[[], float]] = {
        "decode": lambda: bench_decode(dataset, args, with_label=False),
        "decode_jpeg_png": lambda: bench_decode(dataset, args, with_label=True),
        "decode_one_process": lambda: bench_decode(dataset, args, with_label=False, workers=0),
        **{name: (lambda d=d: bench_loader(d, args)) for name, d in loaders.items()},
    }
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            rates[name].append(run())
    results: dict = {
        "data_dir": str(args.data_dir),
        "input_size": list(INPUT_SIZE),
        "workers": args.workers,
        "batch_size": args.batch_size,
        "num_images": args.num_images,
        "target_vs_decode": TARGET,
    }
    for name, values in rates.items():
        results[name] = {
            "images_per_s": round(statistics.median(values), 1),
            "rounds": [round(value, 1) for value in values],
        }
    decode_rate = results["decode"]["images_per_s"]
    for name in rates:
        if name not in ("decode", "decode_one_process"):
            results[f"{name}_vs_decode"] = round(results[name]["images_per_s"] / decode_rate, 3)
    single = results["decode_one_process"]["images_per_s"]
    for name in LOADERS:  # the other reading of the target: 2 loader workers vs 1 decoding loop
        results[f"{name}_vs_decode_one_process"] = round(results[name]["images_per_s"] / single, 3)
    if args.profile_images > 0:
        results["loader_profile_ms_per_image"] = profile_loader(dataset, args.profile_images)
        results[f"{FASTEST}_profile_ms_per_image"] = profile_loader(fastest, args.profile_images)
        results["deferred_batch_work_ms_per_image"] = time_batch_work(fastest, args)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json_out is not None:
        args.json_out.write_text(text + "\n")
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
