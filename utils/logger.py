"""Logging for the scripts: rank-aware console logging, JSON-lines records, training curves."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

from utils.fileio import atomic_write

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def setup_logging(is_main: bool = True, log_file: str | Path | None = None) -> None:
    """INFO on the main process, WARNING elsewhere; optionally mirrored to a file."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None and is_main:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=logging.INFO if is_main else logging.WARNING,
        format=LOG_FORMAT,
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )


class JsonlWriter:
    """Appends one JSON object per line (machine-readable training log)."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=_json_default) + "\n")

    def keep_epochs_before(self, epoch: int) -> None:
        """Drop the records of `epoch` and later (a resumed run redoes them), atomically."""
        if not self.enabled:
            return
        kept = [r for r in read_jsonl(self.path) if r.get("epoch", 0) < epoch]
        text = "".join(json.dumps(r, default=_json_default) + "\n" for r in kept)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSON-lines file; a torn last line (a run killed mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()  # written without its newline: the process died during the write
    records = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}:{line_no}: not a JSON record ({err.msg}); delete the line or the file"
            ) from None
    return records


def plot_curves(epochs: list[dict], path: str | Path) -> None:
    """Loss parts, learning rate and validation mIoU per epoch, in one PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if not epochs:
        return
    x = [r["epoch"] for r in epochs]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key in ("total", "seg", "edge", "cons"):
        axes[0].plot(x, [r.get(key, math.nan) for r in epochs], label=key, marker=".")
    axes[0].set_title("training loss")
    axes[0].legend()
    axes[1].plot(x, [r.get("lr", math.nan) for r in epochs], marker=".")
    axes[1].set_title("learning rate (base group)")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    val = [(r["epoch"], r["val_miou"]) for r in epochs if r.get("val_miou") is not None]
    if val:
        axes[2].plot([v[0] for v in val], [v[1] for v in val], marker="o", color="tab:green")
    axes[2].set_title("validation mIoU (%)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    finally:
        plt.close(fig)


def write_epoch_logs(log_dir: Path, history: list[dict], parts: tuple[str, ...]) -> None:
    """loss_per_epoch.txt (the seed's columns) and curves.png of the epoch records, atomically."""
    rows = [[str(r["epoch"])] + [f"{r[k]:.6f}" for k in parts] for r in history]
    text = "".join(", ".join(row) + "\n" for row in rows)
    atomic_write(log_dir / "loss_per_epoch.txt", lambda tmp: Path(tmp).write_text(text))
    plot_curves(history, log_dir / "curves.png")
