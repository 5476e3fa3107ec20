"""`extract.py --engine ray`: the extractor's photos on a Ray Data actor pool.

    python -m extract --engine ray --model-restore best.pth.tar --input photos/ --output out/
    python -m extract --engine ray --ray-address auto --ray-actors 8 ...   # an existing cluster

The driver lists the photos and leaves out the finished ones exactly as the single-process
extractor does, cuts the rest into the same batches (`--batch-size` consecutive photos), and
hands them to Ray Data as rows. Each actor of the pool holds one `HumanParser` (one GPU when the
cluster has GPUs) and one `Writer` over the shared output folder: it decodes and warps the photos
of a batch (`PhotoDataset`), runs one forward pass and writes every file of every photo
(atomically) with the same writer steps, so each file is byte-for-byte what the single-process
extractor writes. The actors send back only the manifest lines and the unreadable inputs; the
driver appends the lines to its manifest as they arrive and ends the run with the same
`Writer.finish` (sorted manifest, failed list, report.html). Photos, the checkpoint and the
output folder must be at the same paths on every node (a shared or mounted file system).

Ray is optional (requirements-ray.txt) and imported only here, when the engine runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import torch
from tqdm import tqdm

from datasets.images import PhotoDataset, collate_photos
from inference.api import HumanParser
from inference.outputs import Writer
from inference.predict import autocast

logger = logging.getLogger("extract")
REQUIREMENTS = "requirements-ray.txt"
WRITER_THREADS = 2  # per actor, as the single-process extractor's writer threads
BATCHES_PER_BLOCK = 4  # rows (batches) per Ray Data block: small blocks keep every actor busy


class RayUnavailable(ImportError):
    """Ray Data is not installed (the message names the requirements file)."""


def import_ray():
    """The `ray` module; RayUnavailable (one line naming the requirements file) if missing."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray without the [data] extra has no ray.data)
    except ImportError:
        raise RayUnavailable(
            f"--engine ray needs Ray Data, which is not installed: pip install -r {REQUIREMENTS}"
        ) from None
    return ray


class _Records:
    """Collects an actor's manifest lines for the driver (stands in for the writer's manifest:
    only the driver writes manifest.jsonl)."""

    def __init__(self):
        self.lines: list[dict] = []
        self._lock = threading.Lock()

    def add(self, record: dict) -> None:
        with self._lock:
            self.lines.append(record)

    def take(self) -> list[dict]:
        with self._lock:
            lines, self.lines = self.lines, []
        return lines


class BatchParser:
    """A Ray Data actor: parses and writes whole batches of photos.

    Args:
        args: extract.py's arguments (checkpoint, output folder, formats, masks, inference).
        threads: torch CPU threads of this actor (the CPUs Ray reserved for it).
    """

    def __init__(self, args: argparse.Namespace, threads: int):
        cv2.setNumThreads(1)  # the writer threads are the parallelism, as in extract.py
        torch.set_num_threads(threads)
        self.parser = HumanParser.from_checkpoint(
            args.model_restore,
            device=args.device,
            amp=args.amp,
            flip=args.flip,
            scales=args.multi_scales,
            input_size=args.input_size,
        )
        self.writer = Writer(args, self.parser)
        self.writer.manifest = self.records = _Records()
        self.pool = ThreadPoolExecutor(WRITER_THREADS)

    def __call__(self, rows: dict) -> dict:
        """Rows of `batch` (index), `paths` and `names` (JSON lists) -> rows of `batch`,
        `records` (the photos' manifest lines) and `failed` (unreadable inputs), as JSON."""
        out = {"batch": [], "records": [], "failed": []}
        for index, paths, names in zip(rows["batch"], rows["paths"], rows["names"], strict=True):
            photos = self._parse(json.loads(paths), json.loads(names))
            out["batch"].append(int(index))
            out["records"].append(json.dumps(self.records.take()))
            out["failed"].append(json.dumps(photos["failed"]))
        return out

    def _parse(self, paths: list[str], names: list[str]) -> dict:
        parser, writer = self.parser, self.writer
        spec, keep_rgb = parser.model.input_spec, writer.needs_rgb
        dataset = PhotoDataset([Path(p) for p in paths], names, parser.input_size, spec, keep_rgb)
        photos = collate_photos([dataset[i] for i in range(len(dataset))])
        if photos["image"] is None:
            return photos
        with autocast(parser.device, parser.amp):
            crop_logits = parser.predict(photos["image"])  # (N, C, H/4, W/4)
        outputs = zip(
            photos["name"], crop_logits, photos["meta"], photos["rgb"], photos["path"], strict=True
        )
        jobs = [self.pool.submit(writer.write, *photo) for photo in outputs]
        for job in jobs:
            job.result()
        return photos


def batches(paths: list[Path], names: list[str], batch_size: int) -> list[dict]:
    """Ray Data rows: the extractor's batches of consecutive photos, paths and names as JSON."""
    return [
        {
            "batch": start // batch_size,
            "paths": json.dumps([str(p) for p in paths[start : start + batch_size]]),
            "names": json.dumps(names[start : start + batch_size]),
        }
        for start in range(0, len(paths), batch_size)
    ]


def actor_resources(ray, actors: int, device: str) -> tuple[float, float]:
    """(CPUs, GPUs) per actor: the cluster's CPUs shared out, one GPU each where there are
    GPUs (and --device is not cpu)."""
    resources = ray.cluster_resources()
    gpus = 1.0 if resources.get("GPU", 0) >= 1 and device != "cpu" else 0.0
    cpus = max(1.0, math.floor(resources.get("CPU", 1) / actors))
    return cpus, gpus


def extract(
    args: argparse.Namespace, writer: Writer, paths: list[Path], names: list[str]
) -> tuple[int, list[str]]:
    """Parse and write `paths` (to do, named `names`) on a Ray actor pool; the manifest lines
    go to `writer`'s manifest as they arrive. Returns (photos written, unreadable inputs in
    input order). Joins `args.ray_address`, else uses the Ray of this process or starts a local
    one that stops with the run. Raises RayUnavailable (one line) without Ray."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=False)
    try:
        cpus, gpus = actor_resources(ray, args.ray_actors, args.device)
        rows = batches(paths, names, args.batch_size)
        ray.data.DataContext.get_current().enable_progress_bars = False  # tqdm counts photos
        logger.info("Ray: %d actors, %g CPUs and %g GPUs each", args.ray_actors, cpus, gpus)
        dataset = ray.data.from_items(
            rows, override_num_blocks=max(1, math.ceil(len(rows) / BATCHES_PER_BLOCK))
        ).map_batches(
            BatchParser,
            fn_constructor_args=(args, int(cpus)),
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=args.ray_actors),
            num_cpus=cpus,
            num_gpus=gpus,
        )
        failed: dict[int, list[str]] = {}
        written = 0
        with tqdm(total=len(paths), desc="extract (ray)") as bar:
            for row in dataset.iter_rows():
                records = json.loads(row["records"])
                for record in records:
                    writer.manifest.add(record)
                failed[int(row["batch"])] = json.loads(row["failed"])
                written += len(records)
                bar.update(len(records) + len(failed[int(row["batch"])]))
        return written, [path for index in sorted(failed) for path in failed[index]]
    finally:
        if started:
            ray.shutdown()
