"""Forward speed of our SegFormer parser next to HF `SegformerForSemanticSegmentation`.

Both models run in the same process on the same input, with the same MiT variant and decoder
width; ours includes the edge and fusion heads, HF is backbone + MLP decoder only. Prints JSON:
median milliseconds per forward (after warm-up, under `torch.inference_mode`) in fp32 and bf16
autocast, the ratios ours/HF (< 1: ours is faster) and, on CUDA, peak memory. The row
`ours_backbone_decoder` times our backbone + MLP decoder alone, the like-for-like comparison.

    python benchmarks/bench_model.py
    python benchmarks/bench_model.py --arch segformer_mit_b0 --iters 20 --json-out bench.json
    python benchmarks/bench_model.py --device cuda --batch-size 8
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

from networks import MODELS, build_model  # noqa: E402
from networks.mit import MIT_CONFIGS  # noqa: E402

NUM_CLASSES = 9  # the seed's merged label set
PRECISIONS = ("fp32", "bf16")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    archs = sorted(name for name in MODELS if name.startswith("segformer_"))
    parser.add_argument("--arch", default="segformer_mit_b4", choices=archs, help="Model to time.")
    parser.add_argument("--batch-size", type=int, default=1, help="Images per forward.")
    parser.add_argument("--height", type=int, default=512, help="Input height in pixels.")
    parser.add_argument("--width", type=int, default=384, help="Input width in pixels.")
    parser.add_argument("--iters", type=int, default=10, help="Timed forwards per measurement.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed forwards before timing.")
    parser.add_argument("--device", default="cpu", help="Torch device, e.g. cpu or cuda.")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default).")
    parser.add_argument("--json-out", type=Path, default=None, help="Also write the JSON here.")
    return parser


def build_pair(arch: str, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Our parser and the HF model with the same variant and decoder width (random weights)."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    ours = build_model(arch, NUM_CLASSES)
    cfg = MIT_CONFIGS[arch.removeprefix("segformer_")]
    hf_config = SegformerConfig(
        hidden_sizes=list(cfg.embed_dims),
        depths=list(cfg.depths),
        num_attention_heads=list(cfg.num_heads),
        sr_ratios=list(cfg.sr_ratios),
        mlp_ratios=list(cfg.mlp_ratios),
        decoder_hidden_size=ours.head.linear_fuse.conv.out_channels,
        num_labels=NUM_CLASSES,
    )
    hf = SegformerForSemanticSegmentation(hf_config)
    return ours.to(device).eval(), hf.to(device).eval()


def time_forwards(
    forwards: dict[str, Callable[[], object]], device: torch.device, iters: int, warmup: int
) -> dict[str, dict[str, float]]:
    """Median / min milliseconds of each forward, timed in interleaved rounds (fair on a shared
    machine), plus the CUDA peak memory of each when on CUDA."""
    cuda = device.type == "cuda"
    times: dict[str, list[float]] = {name: [] for name in forwards}
    peaks: dict[str, float] = {}
    for name, forward in forwards.items():
        for _ in range(warmup):
            forward()
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            forward()
            torch.cuda.synchronize(device)
            peaks[name] = torch.cuda.max_memory_allocated(device) / 2**20
    for _ in range(iters):
        for name, forward in forwards.items():
            start = time.perf_counter()
            forward()
            if cuda:
                torch.cuda.synchronize(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    result = {}
    for name, values in times.items():
        result[name] = {"median_ms": statistics.median(values), "min_ms": min(values)}
        if cuda:
            result[name]["peak_mem_mib"] = peaks[name]
    return result


def main(args: argparse.Namespace) -> dict:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ours, hf = build_pair(args.arch, device)
    x = torch.randn(args.batch_size, 3, args.height, args.width, device=device)
    report = {
        "arch": args.arch,
        "input": [args.batch_size, 3, args.height, args.width],
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "hf_attn_implementation": hf.config._attn_implementation,
        "iters": args.iters,
    }
    for precision in PRECISIONS:
        autocast = torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")
        forwards = {
            "ours": lambda: ours(x),
            "ours_backbone_decoder": lambda: ours.head(ours.backbone(x)),
            "hf": lambda: hf(pixel_values=x),
        }
        with torch.inference_mode(), autocast:
            row = time_forwards(forwards, device, args.iters, args.warmup)
        for name in ("ours", "ours_backbone_decoder"):
            row[f"ratio_{name}_over_hf"] = row[name]["median_ms"] / row["hf"]["median_ms"]
        report[precision] = row
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out is not None:
        args.json_out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
