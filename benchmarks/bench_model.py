"""Forward speed, peak memory and GFLOP/s of our SegFormer parser next to HF Segformer.

Both models run in the same process on the same input, with the same MiT variant and decoder
width; ours includes the edge and fusion heads, HF is backbone + MLP decoder only. Prints JSON:
median milliseconds per forward (after warm-up, under `torch.inference_mode`, in interleaved
rounds) in fp32 and bf16 autocast, the ratios ours/HF (< 1: ours is faster), the forward FLOPs
(`FlopCounterMode`, matmuls/convs/attention only) and the GFLOP/s reached against the machine's
matmul ceiling (a large `torch.mm` timed in the same run). The row `ours_backbone_decoder` times
our backbone + MLP decoder alone (the fused path the model runs), the like-for-like comparison.

`--memory` adds the peak memory of one batch-4 forward of each model, each in a fresh
subprocess (CPU: growth of the peak RSS over the RSS after construction and a batch-1 warm-up,
plus the profiler's peak of live tensor bytes; CUDA: `torch.cuda.max_memory_allocated`).
`--compile` adds a `torch.compile`d row of ours (off by default: it does not pay on CPU).

    python benchmarks/bench_model.py --threads 1 --memory
    python benchmarks/bench_model.py --arch segformer_mit_b0 --iters 20 --json-out bench.json
    python benchmarks/bench_model.py --device cuda --batch-size 8 --memory
"""

import argparse
import ctypes
import ctypes.util
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from networks import MODELS, build_model  # noqa: E402
from networks.heads import fused_decoder  # noqa: E402
from networks.mit import MIT_CONFIGS  # noqa: E402

NUM_CLASSES = 9  # the seed's merged label set
PRECISIONS = ("fp32", "bf16")
MODEL_NAMES = ("ours", "hf")
MIB = 2**20
KIB = 2**10  # ru_maxrss unit on Linux
MM_REPEATS = 5  # timed products per ceiling measurement
CEILING_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_RESET_PEAK_RSS = "5"  # written to /proc/self/clear_refs: resets VmHWM (Linux >= 4.0)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    archs = sorted(name for name in MODELS if name.startswith("segformer_"))
    parser.add_argument("--arch", default="segformer_mit_b4", choices=archs, help="Model to time.")
    parser.add_argument("--batch-size", type=int, default=1, help="Images per timed forward.")
    parser.add_argument("--height", type=int, default=512, help="Input height in pixels.")
    parser.add_argument("--width", type=int, default=384, help="Input width in pixels.")
    parser.add_argument("--iters", type=int, default=10, help="Timed forwards per measurement.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed forwards before timing.")
    parser.add_argument("--device", default="cpu", help="Torch device, e.g. cpu or cuda.")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default).")
    parser.add_argument("--mm-size", type=int, default=2048, help="Side of the ceiling matmul.")
    parser.add_argument(
        "--memory", action="store_true", help="Also measure peak forward memory (subprocesses)."
    )
    parser.add_argument(
        "--memory-batch-size", type=int, default=4, help="Images per memory-measured forward."
    )
    parser.add_argument(
        "--compile", action="store_true", help="Also time torch.compile(ours) (slow to build)."
    )
    parser.add_argument("--json-out", type=Path, default=None, help="Also write the JSON here.")
    parser.add_argument("--memory-child", choices=MODEL_NAMES, help=argparse.SUPPRESS)
    return parser


def build_ours(arch: str) -> torch.nn.Module:
    return build_model(arch, NUM_CLASSES)


def build_hf(arch: str, decoder_dim: int) -> torch.nn.Module:
    """HF `SegformerForSemanticSegmentation` with our variant's config (random weights)."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    cfg = MIT_CONFIGS[arch.removeprefix("segformer_")]
    hf_config = SegformerConfig(
        hidden_sizes=list(cfg.embed_dims),
        depths=list(cfg.depths),
        num_attention_heads=list(cfg.num_heads),
        sr_ratios=list(cfg.sr_ratios),
        mlp_ratios=list(cfg.mlp_ratios),
        decoder_hidden_size=decoder_dim,
        num_labels=NUM_CLASSES,
    )
    return SegformerForSemanticSegmentation(hf_config)


def build_pair(arch: str, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Our parser and the HF model with the same variant and decoder width (random weights)."""
    ours = build_ours(arch)
    hf = build_hf(arch, ours.head.linear_fuse.conv.out_channels)
    return ours.to(device).eval(), hf.to(device).eval()


def forward_fn(name: str, model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    if name == "hf":
        return lambda: model(pixel_values=x)
    return lambda: model(x)


def time_forwards(
    forwards: dict[str, Callable[[], object]], device: torch.device, iters: int, warmup: int
) -> dict[str, dict[str, float]]:
    """Median / min milliseconds of each forward, timed in interleaved rounds (fair on a shared
    machine)."""
    times: dict[str, list[float]] = {name: [] for name in forwards}
    for forward in forwards.values():
        for _ in range(warmup):
            forward()
    for _ in range(iters):
        for name, forward in forwards.items():
            start = time.perf_counter()
            forward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {
        name: {"median_ms": statistics.median(values), "min_ms": min(values)}
        for name, values in times.items()
    }


def count_flops(forward: Callable[[], object]) -> int:
    """Forward FLOPs (matmul, conv, attention; CPU flash attention counted like CUDA's)."""

    def cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    custom = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    counter = FlopCounterMode(display=False, custom_mapping=custom)
    with torch.inference_mode(), counter:
        forward()
    return counter.get_total_flops()


def matmul_ceiling(dtype: torch.dtype, size: int, device: torch.device) -> float:
    """GFLOP/s of a size x size `torch.mm` (median of MM_REPEATS after one warm-up)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    times = []
    for _ in range(MM_REPEATS + 1):
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times[1:]) / 1e9


def _rss_mib(field: str) -> float:
    """VmRSS / VmHWM of this process from /proc (MiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * KIB / MIB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc), so warm-up garbage does not hide growth."""
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name is not None and hasattr(ctypes.CDLL(libc_name), "malloc_trim"):
        ctypes.CDLL(libc_name).malloc_trim(0)


def _profiler_peak_mib(forward: Callable[[], object]) -> float:
    """Peak of live CPU tensor bytes during one forward, from the profiler's memory events."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        forward()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        memory = event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        current += memory
        peak = max(peak, current)
    return peak / MIB


def measure_memory(name: str, args: argparse.Namespace) -> dict[str, float]:
    """Peak memory of one forward at --memory-batch-size (run in a fresh process per model)."""
    device = torch.device(args.device)
    ours = build_ours(args.arch)
    model = ours if name == "ours" else build_hf(args.arch, ours.head.linear_fuse.conv.out_channels)
    model = model.to(device).eval()
    del ours
    shape = (args.height, args.width)
    x = torch.randn(args.memory_batch_size, 3, *shape, device=device)
    with torch.inference_mode():
        forward_fn(name, model, torch.randn(1, 3, *shape, device=device))()  # warm-up
        forward = forward_fn(name, model, x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            forward()
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
            return {"cuda_peak_mib": peak / MIB, "cuda_peak_increase_mib": (peak - base) / MIB}
        _release_free_heap()
        rss = _rss_mib("VmRSS")
        clear_refs = Path("/proc/self/clear_refs")
        try:
            clear_refs.write_text(_RESET_PEAK_RSS)
            forward()
            peak = _rss_mib("VmHWM")
        except OSError:  # no peak reset: ru_maxrss, the process peak (warm-up used batch 1)
            forward()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB / MIB
        result = {"rss_before_mib": rss, "peak_rss_increase_mib": peak - rss}
        result["profiler_peak_mib"] = _profiler_peak_mib(forward)
    return result


def memory_report(args: argparse.Namespace) -> dict:
    """`measure_memory` of each model in its own subprocess, and the ratios ours/HF."""
    report: dict = {"batch_size": args.memory_batch_size}
    for name in MODEL_NAMES:
        command = [sys.executable, __file__, "--memory-child", name, "--arch", args.arch]
        command += ["--device", args.device, "--threads", str(args.threads)]
        command += ["--height", str(args.height), "--width", str(args.width)]
        command += ["--memory-batch-size", str(args.memory_batch_size)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        report[name] = json.loads(done.stdout)
    for key in report["ours"]:
        if key != "rss_before_mib":
            report[f"ratio_{key}"] = report["ours"][key] / report["hf"][key]
    return report


def main(args: argparse.Namespace) -> dict:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        result = measure_memory(args.memory_child, args)
        print(json.dumps(result))
        return result
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
    forwards = {
        "ours": forward_fn("ours", ours, x),
        "ours_backbone_decoder": lambda: fused_decoder(ours.head, ours.backbone(x)),
        "hf": forward_fn("hf", hf, x),
    }
    flops = {name: count_flops(forward) for name, forward in forwards.items()}
    report["gflops_per_forward"] = {name: value / 1e9 for name, value in flops.items()}
    if args.compile:
        forwards["ours_compiled"] = forward_fn("ours", torch.compile(ours), x)
        flops["ours_compiled"] = flops["ours"]
    for precision in PRECISIONS:
        autocast = torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")
        with torch.inference_mode(), autocast:
            row = time_forwards(forwards, device, args.iters, args.warmup)
        ceiling = matmul_ceiling(CEILING_DTYPES[precision], args.mm_size, device)
        row["matmul_ceiling_gflops_per_s"] = ceiling
        for name in forwards:
            rate = flops[name] / row[name]["median_ms"] / 1e6
            row[name].update(gflops_per_s=rate, fraction_of_ceiling=rate / ceiling)
            if name != "hf":
                row[f"ratio_{name}_over_hf"] = row[name]["median_ms"] / row["hf"]["median_ms"]
        report[precision] = row
    if args.memory:
        del ours, hf, forwards
        report["memory"] = memory_report(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out is not None:
        args.json_out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
