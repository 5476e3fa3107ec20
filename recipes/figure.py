"""Render the README figure: photo, parsing overlay and try-on masks, one row per photo.

    python recipes/figure.py --extract-dir demo_out/extract --photos demo_out/photos \
        --out docs/demo.png --rows 2
    # the same for CCP val photos with the CCP recipe's model (never commit those):
    mkdir -p log/ccp/photos && cp ../shared/data/ccp/val_images/00{05,10,15}.jpg log/ccp/photos/
    python -m extract --model-restore log/ccp/full/train/schp_3_checkpoint.pth.tar \
        --input log/ccp/photos --output log/ccp/extract --masks upper,lower,overall
    python recipes/figure.py --extract-dir log/ccp/extract --photos log/ccp/photos \
        --out log/ccp/figure.png --rows 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

TILE_HEIGHT = 256
MASK_TINT = np.array([255, 80, 80], np.uint8)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=add_help)
    parser.add_argument("--extract-dir", required=True, help="Output of `python -m extract`.")
    parser.add_argument("--photos", required=True, help="Folder with the photos that were parsed.")
    parser.add_argument("--out", required=True, help="PNG to write.")
    parser.add_argument("--rows", type=int, default=2, help="Number of photos (rows).")
    parser.add_argument("--masks", default="upper,lower,overall", help="Mask kinds (columns).")
    return parser


def _tile(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    return cv2.resize(image, (round(width * TILE_HEIGHT / height), TILE_HEIGHT))


def render_row(photo: Path, extract_dir: Path, kinds: list[str]) -> np.ndarray:
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    parsing = np.asarray(Image.open(extract_dir / "parsing" / f"{photo.stem}.png").convert("RGB"))
    tiles = [rgb, parsing]
    for kind in kinds:
        mask = np.asarray(Image.open(extract_dir / "masks" / kind / f"{photo.stem}.png")) > 127
        shown = rgb.copy()
        shown[mask] = (0.35 * shown[mask] + 0.65 * MASK_TINT).astype(np.uint8)
        tiles.append(shown)
    gap = np.full((TILE_HEIGHT, 6, 3), 255, np.uint8)
    row = []
    for tile in tiles:
        row += [_tile(tile), gap]
    return np.concatenate(row[:-1], axis=1)


def main(args: argparse.Namespace) -> None:
    photos = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in (".jpg", ".png"))
    if not photos:
        sys.exit(f"{args.photos}: no .jpg/.png photos")
    kinds = [k for k in args.masks.split(",") if k]
    rows = [render_row(p, Path(args.extract_dir), kinds) for p in photos[: args.rows]]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows)[:-6]).save(args.out, optimize=True)
    print(f"wrote {args.out}: columns photo, parsing, {', '.join(kinds)} masks")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
