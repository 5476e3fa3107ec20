"""The extractor's quality outputs: `manifest.jsonl` and the `report.html` contact sheet.

The manifest gets one JSON line per photo as soon as the photo's files are written (appended under
a lock and flushed), so a killed run keeps every finished photo's line; a torn last line is
dropped when the next run reads the file back, and the run ends by rewriting the whole file
atomically, sorted by id. A photo without its line counts as not done and is redone.
"""

from __future__ import annotations

import html
import json
import threading
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np

from inference.quality import worst_first
from utils.fileio import atomic_write

THUMB_HEIGHT = 160  # px of each panel of a report row
OVERLAY_ALPHA = 0.5
JPEG_QUALITY = 85


class Manifest:
    """manifest.jsonl of an output folder (`manifest_<i>of<n>.jsonl` for a shard)."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._read = path.read_text() if path.is_file() else ""
        if self._read:
            for line in self._read.splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # torn by a kill mid-line: that photo is redone
                    continue
                if isinstance(record, dict) and "id" in record:
                    self.records[record["id"]] = record
        self._handle = None

    def __contains__(self, name: str) -> bool:
        return name in self.records

    def add(self, record: dict) -> None:
        with self._lock:
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = self.path.open("a")
            self._handle.write(json.dumps(record) + "\n")
            self._handle.flush()
            self.records[record["id"]] = record

    def close(self) -> None:
        """Rewrite the file whole and sorted (atomically)."""
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
            if not self.records:
                return
            text = "\n".join(json.dumps(self.records[k]) for k in sorted(self.records)) + "\n"
            if text != self._read:  # a rerun that wrote nothing leaves the file as it was
                atomic_write(self.path, lambda p: Path(p).write_text(text))
                self._read = text


def contact_row(
    rgb: np.ndarray, labels: np.ndarray, colours: np.ndarray, masks: list[np.ndarray]
) -> np.ndarray:
    """(THUMB_HEIGHT, W, 3) RGB strip: photo | parse over the photo | each mask."""
    height, width = labels.shape
    size = (max(1, round(width * THUMB_HEIGHT / height)), THUMB_HEIGHT)
    photo = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    small = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
    overlay = cv2.addWeighted(photo, 1 - OVERLAY_ALPHA, colours[small], OVERLAY_ALPHA, 0)
    panels = [photo, overlay]
    for mask in masks:
        grey = cv2.resize(mask, size, interpolation=cv2.INTER_AREA)
        panels.append(np.repeat(grey[..., None], 3, axis=2))
    return np.concatenate(panels, axis=1)


def write_contact_row(path: Path, row: np.ndarray) -> None:
    bgr = cv2.cvtColor(row, cv2.COLOR_RGB2BGR)
    atomic_write(path, lambda p: cv2.imwrite(p, bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]))


def write_report(path: Path, records: list[dict], thumbs: str, kinds: list[str]) -> Path:
    """The contact sheet at `path`: one row per photo, worst first (flags, then confidence);
    `thumbs` is the folder of the rows' images, relative to `path`'s folder."""
    header = "".join(f"<th>{html.escape(k)}</th>" for k in kinds)
    panels = html.escape(" | ".join(["photo", "parse", *kinds]))
    rows = []
    for record in worst_first(records):
        src = quote(f"{thumbs}/{record['id']}.jpg")
        flags = " ".join(f'<span class="flag">{html.escape(f)}</span>' for f in record["flags"])
        areas = "".join(f"<td>{100 * record['mask_area'].get(k, 0):.1f} %</td>" for k in kinds)
        rows.append(
            f'<tr><td><img src="{src}" alt="{html.escape(record["id"])}" loading="lazy">'
            f"</td><td>{html.escape(record['id'])}<br>{record['width']}×{record['height']}</td>"
            f"<td>{100 * record['person_share']:.1f} %</td><td>{record['confidence']:.3f}</td>"
            f"<td>{record['entropy']:.3f}</td>{areas}<td>{flags}</td></tr>"
        )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Parsing report</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
table {{ border-collapse: collapse; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }}
img {{ height: {THUMB_HEIGHT}px; }}
.flag {{ background: #c0392b; color: white; border-radius: 3px; padding: 1px 4px; }}
</style></head><body>
<h1>Parsing report: {len(records)} photos, worst first</h1>
<p>Each row: photo, parse over the photo, then each mask. Confidence is the mean top-class
probability, entropy the mean normalised entropy (1 = uniform).</p>
<table><tr><th>{panels}</th><th>id</th><th>person</th><th>confidence</th><th>entropy</th>{header}<th>flags</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
    return atomic_write(path, lambda p: Path(p).write_text(page))
