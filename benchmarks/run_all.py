"""Run every benchmark, each in a subprocess with a timeout; write one JSON and a markdown table.

    python benchmarks/run_all.py                 # short settings, a few minutes on 2 cores
    python benchmarks/run_all.py --full          # the issues' settings (much longer)
    python benchmarks/run_all.py --only bench_model,bench_data

Writes `benchmarks/results.json` (every script's JSON, machine, torch version, date) and
`benchmarks/results.md` (one row per target of issues 4 and 7: measured ratio, target, met), and
refreshes the table between the result markers of `benchmarks/README.md`. A script that is
missing is listed as such; one that fails or times out keeps its stderr tail in the JSON.
The scripts run with OMP_WAIT_POLICY=PASSIVE unless the environment sets it: with OpenMP's
default busy-waiting, torch's threads spin while other processes (loader workers, other users)
need the cores, and a 2-thread forward on a busy 2-core machine took 5x longer than 1 thread.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
RESULTS_JSON = BENCH_DIR / "results.json"
RESULTS_MD = BENCH_DIR / "results.md"
README = BENCH_DIR / "README.md"
MARK_START, MARK_END = "<!-- results:start -->", "<!-- results:end -->"
STDERR_TAIL = 2000  # characters of a failed script's stderr kept in the JSON
SHORT_TIMEOUT_S, FULL_TIMEOUT_S = 1200, 7200
OMP_WAIT_POLICY = "PASSIVE"  # for the scripts, unless the environment sets it (module doc)


@dataclass(frozen=True)
class Row:
    """One line of the table: a measured value against its goal (None: information only)."""

    what: str
    value: float | None
    goal: float | None = None
    higher_is_better: bool = False

    def met(self) -> str:
        if self.goal is None or self.value is None:
            return ""
        good = self.value >= self.goal if self.higher_is_better else self.value <= self.goal
        return "yes" if good else "**no**"


def _get(report: dict, *keys) -> float | None:
    for key in keys:
        if not isinstance(report, dict | list):
            return None
        try:
            report = report[key]
        except (KeyError, IndexError, TypeError):
            return None
    return report if isinstance(report, int | float) else None


def model_rows(r: dict) -> list[Row]:
    arch = r.get("arch", "?")
    mem = r.get("memory", {})
    return [
        Row(
            f"{arch} forward, CPU fp32: ours / HF time", _get(r, "fp32", "ratio_ours_over_hf"), 1.0
        ),
        Row(
            f"{arch} forward, bf16 autocast: ours / HF", _get(r, "bf16", "ratio_ours_over_hf"), 0.8
        ),
        Row(
            f"{arch} forward peak memory, batch {mem.get('batch_size', '?')}: ours / HF (RSS)",
            _get(mem, "ratio_peak_rss_increase_mib"),
            1.0,
        ),
        Row("same, profiler peak of live tensors: ours / HF", _get(mem, "ratio_profiler_peak_mib")),
        Row(
            "ours fp32 GFLOP/s / fp32 matmul ceiling",
            _get(r, "fp32", "ours", "fraction_of_ceiling"),
        ),
        Row("HF fp32 GFLOP/s / fp32 matmul ceiling", _get(r, "fp32", "hf", "fraction_of_ceiling")),
        Row(
            "ours bf16 GFLOP/s / bf16 matmul ceiling",
            _get(r, "bf16", "ours", "fraction_of_ceiling"),
        ),
    ]


def train_rows(r: dict) -> list[Row]:
    rows = []
    for arch, by_precision in r.items():
        if not (isinstance(by_precision, dict) and arch.startswith("segformer_")):
            continue
        for precision in by_precision:
            goal = 1.0 if precision == "fp32" else None
            value = _get(by_precision, precision, "ratio_ours_over_hf")
            rows.append(Row(f"{arch} training step, {precision}: ours / HF", value, goal))
    return rows


def extract_rows(r: dict) -> list[Row]:
    return [
        Row(f"extract / bare forward, {e['arch']} {e['precision']}", e.get("ratio"), 0.9, True)
        for e in r.get("results", [])
    ]


def data_rows(r: dict) -> list[Row]:
    names = [key.removesuffix("_vs_decode") for key in r if key.endswith("_vs_decode")]
    names = [name for name in names if name != "target"]
    rows = [
        Row(f"data: {name} / JPEG decode-only", r[f"{name}_vs_decode"], 0.7, True)
        if name.startswith("loader")
        else Row(f"data: {name} / JPEG decode-only (I/O floor)", r[f"{name}_vs_decode"])
        for name in names
    ]
    if "loader_uint8_vs_decode_one_process" in r:
        rows.append(
            Row(
                "data: loader_uint8 (2 workers) / JPEG decode in one process",
                r["loader_uint8_vs_decode_one_process"],
            )
        )
    return rows


def preprocess_rows(r: dict) -> list[Row]:
    return [
        Row("preprocess images/s", r.get("ours_images_per_s"), 60.0, True),
        Row("preprocess / decode+encode floor", r.get("ours_vs_floor")),
    ]


@dataclass(frozen=True)
class Benchmark:
    """A script `benchmarks/<name>.py`, its arguments and how its JSON becomes table rows."""

    name: str
    rows: Callable[[dict], list[Row]]
    short: tuple[str, ...] = ()
    full: tuple[str, ...] = ()


BENCHMARKS = (
    Benchmark(
        "bench_model",
        model_rows,
        short=("--threads", "1", "--iters", "7", "--memory"),
        full=("--iters", "20", "--memory"),
    ),
    Benchmark(
        "bench_train",
        train_rows,
        short=("--threads", "1", "--iters", "7", "--warmup", "1", "--precisions", "fp32"),
        full=("--iters", "5"),
    ),
    Benchmark("bench_data", data_rows, short=("--num-images", "100", "--rounds", "3")),
    Benchmark("bench_preprocess", preprocess_rows, short=("--num", "50")),
    Benchmark(
        "bench_extract",
        extract_rows,
        short=("--threads", "1", "--archs", "segformer_mit_b0", "--precisions", "fp32,bf16"),
    ),
)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--full", action="store_true", help="Use the issues' settings.")
    parser.add_argument(
        "--only",
        type=lambda text: text.split(","),
        default=[b.name for b in BENCHMARKS],
        help="Comma-separated scripts to run.",
    )
    parser.add_argument(
        "--timeout", type=int, default=None, help="Seconds per script (default: by mode)."
    )
    return parser


def machine() -> dict:
    """CPU model, cores, torch version, device and date of this run."""
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    cuda = torch.cuda.is_available()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if cuda else "none (CPU only; no GPU figures)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", OMP_WAIT_POLICY),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def run_one(bench: Benchmark, full: bool, timeout: int) -> dict:
    """Run `python -m benchmarks.<name> ...` from the repository root; parse its JSON output."""
    if not (BENCH_DIR / f"{bench.name}.py").is_file():
        return {"status": "missing"}
    command = [
        sys.executable,
        "-m",
        f"benchmarks.{bench.name}",
        *(bench.full if full else bench.short),
    ]
    start = time.perf_counter()
    load = os.getloadavg()[0]
    try:
        env = {"OMP_WAIT_POLICY": OMP_WAIT_POLICY, **os.environ}
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout} s", "command": command[2:]}
    entry = {
        "command": command[2:],
        "seconds": round(time.perf_counter() - start, 1),
        "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)],
    }
    text = done.stdout
    try:
        report = json.loads(text[text.index("{") :]) if done.returncode == 0 else None
    except ValueError:
        report = None
    if report is None:
        return {
            **entry,
            "status": f"failed (exit {done.returncode})",
            "stderr": done.stderr[-STDERR_TAIL:],
        }
    return {**entry, "status": "ok", "report": report}


def markdown(results: dict) -> str:
    """The results table (and the machine) as markdown."""
    info = results["machine"]
    lines = [
        f"Measured {info['date']} by `benchmarks/run_all.py{' --full' if results['full'] else ''}`"
        f" on {info['cpu']} ({info['cores']} cores), torch {info['torch']}, GPU: {info['gpu']}.",
        "Ratios are ours / reference measured side by side in one process (medians); "
        "a shared machine's load moves every figure.",
        "",
        "| benchmark | what | measured | target | met |",
        "|---|---|---|---|---|",
    ]
    for bench in BENCHMARKS:
        entry = results["benchmarks"].get(bench.name)
        if entry is None:
            continue
        if entry["status"] != "ok":
            lines.append(f"| {bench.name} | {entry['status']} | | | |")
            continue
        for row in bench.rows(entry["report"]):
            value = "n/a" if row.value is None else f"{row.value:.3g}"
            goal = (
                "" if row.goal is None else f"{'≥' if row.higher_is_better else '≤'} {row.goal:g}"
            )
            lines.append(f"| {bench.name} | {row.what} | {value} | {goal} | {row.met()} |")
    return "\n".join(lines) + "\n"


def update_readme(table: str) -> None:
    """Replace the table between the result markers of benchmarks/README.md, if both exist."""
    if not README.is_file():
        return
    text = README.read_text()
    if MARK_START not in text or MARK_END not in text:
        return
    head, rest = text.split(MARK_START, 1)
    tail = rest.split(MARK_END, 1)[1]
    README.write_text(f"{head}{MARK_START}\n{table}{MARK_END}{tail}")


def main(args: argparse.Namespace) -> dict:
    unknown = sorted(set(args.only) - {b.name for b in BENCHMARKS})
    if unknown:
        raise SystemExit(
            f"--only: unknown benchmark(s) {unknown}; choose from {[b.name for b in BENCHMARKS]}"
        )
    timeout = args.timeout or (FULL_TIMEOUT_S if args.full else SHORT_TIMEOUT_S)
    results: dict = {"machine": machine(), "full": args.full, "benchmarks": {}}
    for bench in BENCHMARKS:
        if bench.name in args.only:
            print(f"running {bench.name} ...", file=sys.stderr, flush=True)
            results["benchmarks"][bench.name] = run_one(bench, args.full, timeout)
            print(f"  {results['benchmarks'][bench.name]['status']}", file=sys.stderr, flush=True)
    table = markdown(results)
    RESULTS_JSON.write_text(json.dumps(results, indent=2) + "\n")
    RESULTS_MD.write_text("# Benchmark results\n\n" + table)
    update_readme(table)
    print(table)
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
