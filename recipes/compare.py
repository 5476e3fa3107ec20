"""Side-by-side table of evaluate.py results: mIoU, pixel accuracy and per-class IoU.

    python recipes/compare.py full=log/ccp/full/eval/results.json \
        plain=log/ccp/plain/eval/results.json --out log/ccp/comparison.md

Columns follow the order given; with two runs a last column holds the difference (first - second).
Classes come from the first run's results (all runs must use the same label set).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

SUMMARY_ROWS = (("mIoU", "miou"), ("pixel accuracy", "pixel_accuracy"))
PAIR = 2  # a difference column only makes sense for two runs


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"


def _diff(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{a - b:+.2f}"


def load_runs(specs: list[str]) -> dict[str, dict]:
    """`name=path/results.json` strings -> {name: results dict}; SystemExit on bad input."""
    runs = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"compare: {spec!r} is not NAME=PATH; e.g. full=log/x/results.json")
        if not Path(path).is_file():
            raise SystemExit(f"{path}: file not found; run `python -m evaluate` for {name} first")
        runs[name] = json.loads(Path(path).read_text())
    label_sets = {run.get("label_set") for run in runs.values()}
    if len(label_sets) > 1:
        raise SystemExit(f"compare: runs use different label sets {sorted(map(str, label_sets))}")
    return runs


def comparison_table(runs: dict[str, dict]) -> str:
    """Markdown table: summary rows then one row per class (IoU in percent)."""
    names = list(runs)
    results = list(runs.values())
    with_diff = len(names) == PAIR
    header = ["", *names] + ([f"{names[0]} - {names[1]}"] if with_diff else [])
    rows = [[label, *(r[key] for r in results)] for label, key in SUMMARY_ROWS]
    rows += [[cls, *(r["iou"].get(cls) for r in results)] for cls in results[0]["iou"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, *values in rows:
        cells = [label, *map(_fmt, values)] + ([_diff(*values)] if with_diff else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=path/to/results.json, in column order")
    parser.add_argument("--out", type=Path, help="Also write the table to this file.")
    args = parser.parse_args(argv)
    table = comparison_table(load_runs(args.runs))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    sys.stdout.write(table + "\n")


if __name__ == "__main__":
    main()
