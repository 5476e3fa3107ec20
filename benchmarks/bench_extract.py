"""Images/s of the extractor (extract.py) next to the bare model forward on the same crops.

Both run in one process, in alternating rounds, with random weights saved as a train.py
checkpoint: the extractor reads, decodes and warps the photos in its DataLoader workers, runs the
model, maps the logits back to each photo and writes label PNGs; the bare rate is the model's
forward alone on the same crops (same crop size and batch size, already in memory). The ratio
extractor / bare shows how well I/O, resizing and inverse warps overlap with compute (target
>= 0.9). Prints JSON: medians of --rounds rounds, the ratio of the best rounds, and the machine's
load average (other processes on a shared machine skew every number, the ratio included).

    python benchmarks/bench_extract.py --data-dir ../shared/data/ccp --num-images 24
    python benchmarks/bench_extract.py --archs segformer_mit_b0 --precisions fp32 --rounds 3
    python benchmarks/bench_extract.py --device cuda --precisions fp32,bf16 --batch-size 8
    python benchmarks/bench_extract.py --archs segformer_mit_b0 --precisions fp32 \
        --variants plain,viton-hd-report,smooth   # try-on format + report, and --smooth, vs plain

Variants other than `plain` run the extractor with more flags (VARIANTS) in the same rounds, on a
checkpoint with LIP's 20 classes (what viton-hd needs); each reports its rate / plain's.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import extract  # noqa: E402
from datasets.images import list_inputs, prepare_image, read_image_rgb  # noqa: E402
from datasets.labels import load_label_config  # noqa: E402
from inference.api import HumanParser  # noqa: E402
from inference.predict import autocast  # noqa: E402
from networks import MODELS, build_model  # noqa: E402
from networks.contracts import DEFAULT_INPUT_SIZE  # noqa: E402
from utils import checkpoint as ckpt  # noqa: E402
from utils.cli import hw_pair  # noqa: E402

PRECISIONS = {"fp32": "off", "bf16": "bf16", "fp16": "fp16"}  # name -> --amp
RUSAGE_WHO = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
MAPPINGS = Path(__file__).resolve().parents[1] / "mappings"
LABEL_MAP = MAPPINGS / "ccp_map.yaml"
LIP_MAP = MAPPINGS / "lip_map.yaml"  # LIP-20 checkpoints, when a variant needs one
VARIANTS = {  # name -> extra extract.py flags
    "plain": [],
    "viton-hd-report": ["--format", "viton-hd", "--report"],
    "smooth": ["--smooth", "0.5"],
}


def comma_list(text: str) -> list[str]:
    return [v for v in text.split(",") if v]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data-dir", default="../shared/data/ccp", help="Photos: a LIP-layout root or a folder."
    )
    parser.add_argument("--split", default="val", help="Split of a LIP-layout --data-dir.")
    parser.add_argument("--num-images", type=int, default=24, help="Photos per round.")
    parser.add_argument(
        "--archs",
        type=comma_list,
        default=["segformer_mit_b0", "segformer_mit_b4"],
        help=f"Comma-separated architectures ({', '.join(sorted(MODELS))}).",
    )
    parser.add_argument(
        "--precisions", type=comma_list, default=["fp32", "bf16"], help="fp32, bf16, fp16."
    )
    parser.add_argument("--input-size", type=hw_pair, default=DEFAULT_INPUT_SIZE, help="Crop H,W.")
    parser.add_argument("--batch-size", type=int, default=4, help="Photos per forward.")
    parser.add_argument(
        "--workers",
        type=int,
        default=extract.default_workers(),
        help="Extractor DataLoader workers (default: the extractor's for this machine).",
    )
    parser.add_argument(
        "--variants",
        type=comma_list,
        default=["plain"],
        help=f"Extractor variants timed in the same rounds ({', '.join(VARIANTS)}).",
    )
    parser.add_argument("--rounds", type=int, default=2, help="Timed rounds (median reported).")
    parser.add_argument("--device", default="cpu", help="Torch device, e.g. cpu or cuda.")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default).")
    parser.add_argument("--json-out", type=Path, default=None, help="Also write the JSON here.")
    return parser


def photo_paths(data_dir: str, split: str, count: int) -> list[Path]:
    """The first `count` photos of a LIP-layout split (id order), else of a folder."""
    root = Path(data_dir)
    ids = root / f"{split}_id.txt"
    if ids.is_file():
        names = ids.read_text().split()[:count]
        return [root / f"{split}_images" / f"{name}.jpg" for name in names]
    return list_inputs(root)[:count]


def save_random_checkpoint(arch: str, input_size, folder: Path, lip20: bool = False) -> Path:
    label_set = load_label_config(LABEL_MAP).target
    if lip20:
        label_set = load_label_config(LIP_MAP).spaces["lip"]
    model = build_model(arch, label_set.num_classes)
    return ckpt.save_checkpoint(
        {**ckpt.model_record(model, label_set, input_size), "epoch": 0},
        folder / f"{arch}.pth.tar",
    )


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the DataLoader workers)."""
    own, children = (resource.getrusage(who) for who in RUSAGE_WHO)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bare_rate(parser: HumanParser, batches: list[torch.Tensor], num_images: int):
    """(images/s, CPU s per image) of the model's forward alone on crops already in memory."""
    start, cpu = time.perf_counter(), cpu_seconds()
    with torch.inference_mode(), autocast(parser.device, parser.amp):
        for batch in batches:
            parser.model(batch.to(parser.device))
    if parser.device.type == "cuda":
        torch.cuda.synchronize(parser.device)
    return num_images / (time.perf_counter() - start), (cpu_seconds() - cpu) / num_images


def extractor_rate(
    parser: HumanParser, args: argparse.Namespace, list_file: Path, out: Path, flags=()
):
    """(images/s, CPU s per image) of the whole extractor (fresh workers, every file written)."""
    extract_args = extract.get_args_parser().parse_args(
        ["--model-restore", "unused", "--input", str(list_file), "--output", str(out)]
        + ["--batch-size", str(args.batch_size), "--workers", str(args.workers)]
        + ["--overwrite", *flags]
    )
    cpu = cpu_seconds()
    stats = extract.extract(extract_args, parser)
    return stats.written / stats.seconds, (cpu_seconds() - cpu) / stats.written


def measure(arch: str, precision: str, args, paths: list[Path], folder: Path) -> dict:
    lip20 = args.variants != ["plain"]
    parser = HumanParser.from_checkpoint(
        save_random_checkpoint(arch, args.input_size, folder, lip20),
        device=args.device,
        amp=PRECISIONS[precision],
    )
    crops = [
        prepare_image(read_image_rgb(p), args.input_size, parser.model.input_spec)[0] for p in paths
    ]
    batches = [
        torch.stack(crops[i : i + args.batch_size]) for i in range(0, len(crops), args.batch_size)
    ]
    list_file = folder / "photos.txt"
    list_file.write_text("".join(f"{p.resolve()}\n" for p in paths))
    warm_list = folder / "warmup.txt"
    warm_list.write_text("".join(f"{p.resolve()}\n" for p in paths[: args.batch_size]))
    bare_rate(parser, batches[:1], args.batch_size)  # warm-up: kernels, allocator, workers
    for name in args.variants:
        extractor_rate(parser, args, warm_list, folder / name, VARIANTS[name])
    bare = []  # (images/s, CPU s per image) of each round
    runs = {name: [] for name in args.variants}
    for _ in range(args.rounds):
        bare.append(bare_rate(parser, batches, len(paths)))
        for name in args.variants:
            runs[name].append(
                extractor_rate(parser, args, list_file, folder / name, VARIANTS[name])
            )
    full = runs[args.variants[0]]
    bare_rate_median = statistics.median(rate for rate, _ in bare)
    full_rate_median = statistics.median(rate for rate, _ in full)
    variants = {
        name: {
            "extract_img_s": round(statistics.median(rate for rate, _ in rounds), 3),
            "vs_first": round(statistics.median(rate for rate, _ in rounds) / full_rate_median, 3),
            "rounds_img_s": [round(rate, 3) for rate, _ in rounds],
        }
        for name, rounds in runs.items()
    }
    return {
        "arch": arch,
        "precision": precision,
        "bare_forward_img_s": round(bare_rate_median, 3),
        "extract_img_s": round(full_rate_median, 3),
        "ratio": round(full_rate_median / bare_rate_median, 3),
        "ratio_of_best_rounds": round(max(full)[0] / max(bare)[0], 3),  # least disturbed rounds
        "cpu_s_per_image": {
            "bare": round(statistics.median(cpu for _, cpu in bare), 4),
            "extract": round(statistics.median(cpu for _, cpu in full), 4),
        },
        "rounds_img_s": {
            "bare": [round(rate, 3) for rate, _ in bare],
            "extract": [round(rate, 3) for rate, _ in full],
        },
        "variants": variants,  # vs_first: rate / the first variant's (plain)
    }


def main(args: argparse.Namespace) -> None:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        raise SystemExit(f"--variants {','.join(unknown)}: choose from {', '.join(VARIANTS)}")
    paths = photo_paths(args.data_dir, args.split, args.num_images)
    if not paths:
        raise SystemExit(f"{args.data_dir}: no photos found; pass --data-dir")
    load_before = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmp:
        for arch in args.archs:
            for precision in args.precisions:
                results.append(measure(arch, precision, args, paths, Path(tmp)))
    report = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "num_images": len(paths),
        "photo_folder": str(paths[0].parent),
        "input_size": list(args.input_size),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # start, end
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out is not None:
        args.json_out.write_text(text + "\n")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
