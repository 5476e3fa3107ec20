"""Training-step speed of our parser next to HF `SegformerForSemanticSegmentation`, same process.

Ours: forward (parsing, edge and fusion heads), CE2P loss (Lovász + CE on parsing and fusion,
class-balanced edge CE, consistency), backward, AdamW step as train.py builds it (adamw_custom
groups, torch's fused AdamW kernel: b0 15.7 -> 3.4 ms, b4 231 -> 76 ms of the step on 1 thread).
HF: forward with `labels=` (its own CE loss on logits upsampled to the label size), backward,
fused `torch.optim.AdamW` (HF's Trainer default with torch >= 2.8, `adamw_torch_fused`). Same MiT
variant, decoder width, input, labels and batch; random weights. Steps of the two are timed in
alternating rounds (fair on a shared machine). Prints JSON: median seconds per step, images/s and
the ratio ours/HF of the step time (target <= 1.0) for fp32 and bf16 autocast.

    python benchmarks/bench_train.py                     # b0 and b4, 512x384, batch 2, CPU
    python benchmarks/bench_train.py --archs segformer_mit_b0 --iters 5 --json-out bench.json
"""

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_model import NUM_CLASSES, build_pair  # noqa: E402
from datasets.label_set import IGNORE_INDEX  # noqa: E402
from datasets.transforms import generate_edge  # noqa: E402
from networks import MODELS  # noqa: E402
from networks.contracts import DEFAULT_INPUT_SIZE  # noqa: E402
from utils.cli import hw_pair  # noqa: E402
from utils.criterion import CE2PLoss  # noqa: E402
from utils.optim import build_optimizer  # noqa: E402

PRECISIONS = ("fp32", "bf16")
LEARNING_RATE = 6e-5  # the seed README's
WEIGHT_DECAY = 1e-2
IGNORE_FRACTION = 0.05  # share of label pixels set to IGNORE_INDEX
ARCHS = sorted(name for name in MODELS if name.startswith("segformer_"))


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--archs",
        type=lambda text: text.split(","),
        default=["segformer_mit_b0", "segformer_mit_b4"],
        help=f"Comma-separated models to time, from {','.join(ARCHS)}.",
    )
    parser.add_argument("--batch-size", type=int, default=2, help="Images per step.")
    parser.add_argument("--input-size", type=hw_pair, default=DEFAULT_INPUT_SIZE, help="Crop H,W.")
    parser.add_argument("--iters", type=int, default=3, help="Timed steps per model.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps per model first.")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default).")
    parser.add_argument(
        "--precisions",
        type=lambda text: text.split(","),
        default=list(PRECISIONS),
        help="Comma-separated precisions: fp32 and/or bf16 (autocast).",
    )
    parser.add_argument("--json-out", type=Path, default=None, help="Also write the JSON here.")
    return parser


def make_batch(batch_size: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Random images and blocky labels (a few ignore pixels) with their edge targets."""
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(batch_size, 3, *size, generator=gen)
    coarse = torch.randint(
        0, NUM_CLASSES, (batch_size, 1, size[0] // 16, size[1] // 16), generator=gen
    )
    label = torch.nn.functional.interpolate(coarse.float(), size=size, mode="nearest")[:, 0].long()
    label[torch.rand(label.shape, generator=gen) < IGNORE_FRACTION] = IGNORE_INDEX
    return {"image": image, "label": label, "edge": generate_edge(label).long()}


def build_steps(arch: str, batch: dict, precision: str) -> dict[str, Callable[[], float]]:
    """One full training step for each model; each returns its loss."""
    ours, hf = (m.train() for m in build_pair(arch, torch.device("cpu")))
    ours_opt, _ = build_optimizer(ours, "adamw_custom", LEARNING_RATE, WEIGHT_DECAY)
    hf_opt = torch.optim.AdamW(
        hf.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, fused=True
    )
    criterion = CE2PLoss()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def ours_step() -> float:
        with autocast:
            output = ours(batch["image"])
        loss, _ = criterion(output, batch["label"], batch["edge"])
        ours_opt.zero_grad(set_to_none=True)
        loss.backward()
        ours_opt.step()
        return loss.item()

    def hf_step() -> float:
        with autocast:
            loss = hf(pixel_values=batch["image"], labels=batch["label"]).loss
        hf_opt.zero_grad(set_to_none=True)
        loss.backward()
        hf_opt.step()
        return loss.item()

    return {"ours": ours_step, "hf": hf_step}


def time_steps(steps: dict[str, Callable[[], float]], iters: int, warmup: int) -> dict:
    """Median / min seconds per step of each, timed in interleaved rounds."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(iters):
        for name, step in steps.items():
            start = time.perf_counter()
            loss = step()
            times[name].append(time.perf_counter() - start)
            if not torch.isfinite(torch.tensor(loss)):
                raise SystemExit(f"{name}: non-finite loss {loss}; the benchmark is invalid")
    return {name: {"median_s": statistics.median(v), "min_s": min(v)} for name, v in times.items()}


def main(args: argparse.Namespace) -> dict:
    unknown = [arch for arch in args.archs if arch not in ARCHS]
    if unknown:
        raise SystemExit(f"--archs: unknown {unknown}; choose from {','.join(ARCHS)}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    batch = make_batch(args.batch_size, args.input_size)
    report = {
        "input": [args.batch_size, 3, *args.input_size],
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "iters": args.iters,
        "warmup": args.warmup,
    }
    for arch in args.archs:
        for precision in args.precisions:
            row = time_steps(build_steps(arch, batch, precision), args.iters, args.warmup)
            for timing in row.values():
                timing["images_per_s"] = args.batch_size / timing["median_s"]
            row["ratio_ours_over_hf"] = row["ours"]["median_s"] / row["hf"]["median_s"]
            report.setdefault(arch, {})[precision] = row
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out is not None:
        args.json_out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
