"""Everything extract.py writes for one photo, given its crop logits.

Layouts (`--format`): `default` writes parsing/<name>.png (palette PNG of the model's classes);
a try-on format (viton-hd, dresscode, catvton; `mappings/tryon_formats.yaml`) writes the files its
model's dataset code reads instead. Either way `--masks` adds masks/<kind>/<name>.png, `--overlay`
overlay/<name>.jpg, `--save-logits` logits/<name>.npy, `--report` report/<name>.jpg (a contact-sheet
row), and every photo gets its line in manifest.jsonl, written last: a photo is done when its
manifest line and all its files exist.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from inference.api import HumanParser
from inference.mask_rules import MaskControls, get_mask_rules
from inference.masks import build_mask
from inference.predict import argmax_labels
from inference.quality import confidence, photo_cells, quality_record
from inference.report import OVERLAY_ALPHA, Manifest, contact_row, write_contact_row, write_report
from inference.tryon_formats import DEFAULT_FORMAT, load_format
from utils.fileio import atomic_write

PNG_COMPRESS_LEVEL = 1  # zlib level of label PNGs: label maps stay small, encoding stays cheap
PHOTO_JPEG_QUALITY = 95  # photos that cannot be copied as they are (not JPEG, EXIF-rotated)
EXIF_ORIENTATION = 0x0112
JPEG_SUFFIXES = (".jpg", ".jpeg")
logger = logging.getLogger("extract")


def shard_file(stem: str, suffix: str, shard: tuple[int, int]) -> str:
    """`failed.txt`, or `failed_<i>of<n>.txt` for shard i of n (one file per shard)."""
    index, count = shard
    return f"{stem}{suffix}" if count == 1 else f"{stem}_{index}of{count}{suffix}"


def save_palette_png(path: Path, ids: np.ndarray, flat_palette: list[int]) -> None:
    image = Image.fromarray(ids, mode="P")
    image.putpalette(flat_palette)
    atomic_write(path, lambda p: image.save(p, format="PNG", compress_level=PNG_COMPRESS_LEVEL))


def save_mask_png(path: Path, mask: np.ndarray) -> None:
    atomic_write(path, lambda p: cv2.imwrite(p, mask))


def save_jpeg(path: Path, rgb: np.ndarray, quality: int = PHOTO_JPEG_QUALITY) -> None:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    atomic_write(path, lambda p: cv2.imwrite(p, bgr, [cv2.IMWRITE_JPEG_QUALITY, quality]))


def copyable_jpeg(source: str | None) -> bool:
    """A JPEG file whose pixels are what was parsed: no EXIF rotation (OpenCV applies it on
    decoding, PIL-based dataset code does not)."""
    if not source or Path(source).suffix.lower() not in JPEG_SUFFIXES or not Path(source).is_file():
        return False
    try:
        with Image.open(source) as image:
            return image.getexif().get(EXIF_ORIENTATION, 1) == 1
    except OSError:
        return False


def mask_controls(args: argparse.Namespace) -> MaskControls:
    protect = tuple(c for c in args.protect.split(",") if c)
    return MaskControls(dilate=args.dilate, hull=args.hull, feather=args.feather, protect=protect)


class Writer:
    """Writes the outputs of one photo; shared by the writer threads (the manifest locks)."""

    def __init__(self, args: argparse.Namespace, parser: HumanParser):
        """Raises ValueError (one line) for mask kinds, protected classes or a format the
        parser's label set cannot fill."""
        self.parser = parser
        self.label_set = parser.label_set
        self.out = Path(args.output)
        self.kinds = [k for k in args.masks.split(",") if k]
        self.controls = mask_controls(args)
        self.protect_ids = self.controls.protect_ids(self.label_set)
        self.fmt = None
        if args.format != DEFAULT_FORMAT:
            self.fmt = load_format(args.format, self.label_set, args.approximate_left_right)
        self.split, self.category = args.split, args.category
        self.tryon_kind = self.fmt.kind_for(args.category) if self.fmt else None
        all_kinds = [*self.kinds, *([self.tryon_kind] if self.tryon_kind else [])]
        self.rules = get_mask_rules(self.label_set) if all_kinds else None
        for kind in all_kinds:
            if kind not in self.rules.kinds:
                flag = f"--masks {kind}" if kind in self.kinds else f"--category {self.category}"
                raise ValueError(
                    f"{flag}: unknown or unsupported mask kind '{kind}'; label set "
                    f"'{self.label_set.name}' supports {', '.join(self.rules.kinds)}"
                )
        if self.rules is not None:
            strong = {i for k in all_kinds for i in self.rules.kinds[k].protect_strong}
            self.protect_ids = tuple(sorted(strong | set(self.protect_ids)))
        self.overlay = args.overlay
        self.report = args.report
        self.save_logits = args.save_logits
        self.palette = self.label_set.flat_palette()
        self.colours = np.asarray(self.label_set.palette, np.uint8)
        self.manifest = Manifest(self.out / shard_file("manifest", ".jsonl", args.shard))

    def finish(self, failed: list[str], shard: tuple[int, int]) -> None:
        """The run's lists: failed inputs (a stale list is removed), manifest, report.html."""
        path = self.out / shard_file("failed", ".txt", shard)
        if failed:
            atomic_write(path, lambda p: Path(p).write_text("\n".join(failed) + "\n"))
            logger.warning("%d unreadable inputs skipped, listed in %s", len(failed), path)
        else:
            path.unlink(missing_ok=True)
        self.manifest.close()
        if self.report and self.manifest.records:
            kinds = list(dict.fromkeys([*self.kinds, *filter(None, [self.tryon_kind])]))
            report = self.out / shard_file("report", ".html", shard)
            write_report(report, list(self.manifest.records.values()), "report", kinds)
            logger.info("report of %d photos: %s", len(self.manifest.records), report)

    @property
    def needs_rgb(self) -> bool:
        """Whether the decoded photo must travel with the crop (to be drawn or written)."""
        return self.overlay or self.report or self.fmt is not None

    def format_paths(self, name: str) -> dict[str, Path]:
        if self.fmt is None:
            return {}
        paths = self.fmt.paths(name, self.split, self.category)
        return {kind: self.out / path for kind, path in paths.items()}

    def targets(self, name: str) -> list[Path]:
        paths = list(self.format_paths(name).values())
        if self.fmt is None:
            paths.append(self.out / "parsing" / f"{name}.png")
        paths += [self.out / "masks" / kind / f"{name}.png" for kind in self.kinds]
        if self.overlay:
            paths.append(self.out / "overlay" / f"{name}.jpg")
        if self.save_logits != "none":
            paths.append(self.out / "logits" / f"{name}.npy")
        if self.report:
            paths.append(self.out / "report" / f"{name}.jpg")
        return paths

    def done(self, name: str) -> bool:
        return name in self.manifest and all(p.is_file() for p in self.targets(name))

    def write(
        self,
        name: str,
        crop_logits: torch.Tensor,
        meta: dict,
        rgb: np.ndarray | None,
        source: str | None = None,
    ) -> None:
        logits = None
        if self.save_logits != "none":  # the full warp is needed anyway: take labels from it
            logits = self.parser.to_original(crop_logits, meta)  # (C, H, W) on the photo
            labels = argmax_labels(logits)
        else:
            labels = self.parser.to_labels(crop_logits, meta)  # (H, W) uint8 on the photo
        masks = {
            kind: build_mask(labels, self.label_set, kind, self.rules, self.controls)
            for kind in dict.fromkeys([*self.kinds, *([self.tryon_kind] if self.fmt else [])])
        }
        if self.fmt is None:
            save_palette_png(self.out / "parsing" / f"{name}.png", labels, self.palette)
        else:
            self._write_format(name, labels, masks[self.tryon_kind], rgb, source)
        for kind in self.kinds:
            save_mask_png(self.out / "masks" / kind / f"{name}.png", masks[kind])
        if self.overlay:
            blend = cv2.addWeighted(rgb, 1 - OVERLAY_ALPHA, self.colours[labels], OVERLAY_ALPHA, 0)
            save_jpeg(self.out / "overlay" / f"{name}.jpg", blend)
        if logits is not None:
            values = logits.softmax(0) if self.save_logits == "probs" else logits
            array = values.to(torch.float16).cpu().numpy()
            atomic_write(self.out / "logits" / f"{name}.npy", lambda p: np.save(p, array))
        if self.report:
            row = contact_row(rgb, labels, self.colours, list(masks.values()))
            write_contact_row(self.out / "report" / f"{name}.jpg", row)
        inside = photo_cells(meta, self.parser.input_size, tuple(crop_logits.shape[-2:]))
        conf = confidence(crop_logits.cpu(), inside)
        record = quality_record(name, labels, self.label_set, conf, masks, self.protect_ids)
        self.manifest.add(record)

    def _write_format(self, name, labels, mask, rgb, source) -> None:
        paths = self.format_paths(name)
        if copyable_jpeg(source):
            atomic_write(paths["photo"], lambda p: shutil.copyfile(source, p))
        else:
            save_jpeg(paths["photo"], rgb)
        ids = self.fmt.convert(labels) if "parse" in paths else None
        if "parse" in paths:
            save_palette_png(paths["parse"], ids, self.fmt.flat_palette)
        if "parse_agnostic" in paths:
            agnostic = self.fmt.agnostic_parse(ids)
            save_palette_png(paths["parse_agnostic"], agnostic, self.fmt.flat_palette)
        if "agnostic" in paths:
            save_jpeg(paths["agnostic"], self.fmt.agnostic_image(rgb, ids, mask))
        save_mask_png(paths["mask"], mask)
