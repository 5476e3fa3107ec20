"""Procedural "paper-doll" people, for demos and tests without real data.

Two outputs, both deterministic from the seed (image ``i`` depends only on ``(seed, split, i)``):

- ``lip``: a LIP-layout dataset (``{split}_id.txt``, ``{split}_images/<id>.jpg``,
  ``{split}_segmentations/<id>.png``, mode L, the 20 LIP classes; left = the person's left, which
  is the image right, as in LIP).
- ``deepfashion``: raw DeepFashion-MultiModal triples (``images/<id>.jpg`` 750x1101,
  ``segm/<id>_segm.png`` palette 0..23, ``densepose/<id>_densepose.png`` with the DensePose part
  index in RGB channel 2), some ids without segm, DensePose that misses some limbs so that skin
  lies both near and far (> 10 px) from DensePose coverage.

    python make_synthetic.py --kind lip --out data/synthetic_lip --num-train 200 --num-val 50
    python make_synthetic.py --kind deepfashion --out data/DeepFashion_Multi --num-train 80
"""

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from datasets.dolls import render_doll
from datasets.label_set import LUT_SIZE, voc_palette

LIP_SIZE = (256, 192)  # default (H, W) of LIP dolls; each image varies around it
DF_SIZE = (1101, 750)  # DeepFashion-MultiModal images are 750 wide, 1101 high
SIZE_JITTER = 0.2  # LIP image sides vary by +-20 %
JPEG_QUALITY = 95
UV_NOISE = 3.0  # grey levels of noise on the fake DensePose U/V channels
WITHOUT_SEGM_EVERY = 5  # every 5th DeepFashion id has an image and DensePose but no segm
SPLIT_KEYS = {"train": 0, "val": 1, "deepfashion": 2}
DF_CATEGORIES = ("Tees_Tanks", "Dresses", "Skirts", "Shorts", "Pants", "Jackets_Coats")
DF_VIEWS = ("1_front", "2_side", "3_back", "4_full", "7_additional")


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_KEYS[split], index])


def _write_jpeg(path: Path, image_bgr: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image_bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"{path}: could not write the image; check the output folder")


def _fake_uv(parts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """U/V-like channels: smooth ramps with a little noise on the body, 0 elsewhere; (H, W, 2)."""
    height, width = parts.shape
    rows, cols = np.mgrid[:height, :width].astype(np.float32)
    u = cols * rng.uniform(0.5, 2) + rows * rng.uniform(-0.5, 0.5) + rng.uniform(0, 255)
    v = rows * rng.uniform(0.5, 2) + cols * rng.uniform(-0.5, 0.5) + rng.uniform(0, 255)
    uv = np.dstack([u, v]) % 256 + rng.uniform(0, UV_NOISE, (height, width, 2))
    return np.clip(uv, 0, 255).astype(np.uint8) * (parts > 0)[..., None]


def make_lip_dataset(
    out: str | Path,
    num_train: int,
    num_val: int,
    size: tuple[int, int] = LIP_SIZE,
    seed: int = 0,
) -> Path:
    """Write a LIP-layout dataset of paper dolls (image sides vary by +-20 % around ``size``)."""
    out = Path(out)
    for split, count in (("train", num_train), ("val", num_val)):
        (out / f"{split}_images").mkdir(parents=True, exist_ok=True)
        (out / f"{split}_segmentations").mkdir(parents=True, exist_ok=True)
        ids = [f"doll_{split}_{index:05d}" for index in range(count)]
        for index, name in enumerate(ids):
            rng = _image_rng(seed, split, index)
            height, width = (
                round(side * rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER)) for side in size
            )
            doll = render_doll(rng, height, width, person_scale=(0.55, 1.15))
            _write_jpeg(out / f"{split}_images" / f"{name}.jpg", doll["image"])
            cv2.imwrite(str(out / f"{split}_segmentations" / f"{name}.png"), doll["lip"])
        (out / f"{split}_id.txt").write_text("".join(f"{name}\n" for name in ids))
    return out


def deepfashion_id(index: int) -> str:
    """A DeepFashion-MultiModal-style id, e.g. ``WOMEN-Tees_Tanks-id_00000001-01_1_front``."""
    gender = ("WOMEN", "MEN")[index % 2]
    category = DF_CATEGORIES[index % len(DF_CATEGORIES)]
    view = DF_VIEWS[index % len(DF_VIEWS)]
    return f"{gender}-{category}-id_{index + 1:08d}-{index % 7 + 1:02d}_{view}"


def make_deepfashion_dataset(
    out: str | Path,
    num: int,
    seed: int = 0,
    size: tuple[int, int] = DF_SIZE,
    without_segm_every: int = WITHOUT_SEGM_EVERY,
) -> list[str]:
    """Write ``num`` raw DeepFashion-MultiModal triples; every n-th id gets no segm file.

    Returns the ids that have a segm file (the ones preprocessing uses).
    """
    out = Path(out)
    for folder in ("images", "segm", "densepose"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    palette = voc_palette(LUT_SIZE).ravel().tolist()  # the label sets' default colours
    with_segm = []
    for index in range(num):
        name, rng = deepfashion_id(index), _image_rng(seed, "deepfashion", index)
        doll = render_doll(rng, *size, person_scale=(0.8, 0.98))
        _write_jpeg(out / "images" / f"{name}.jpg", doll["image"])
        densepose_bgr = np.dstack([doll["parts"], _fake_uv(doll["parts"], rng)])  # BGR 0 = RGB 2
        cv2.imwrite(str(out / "densepose" / f"{name}_densepose.png"), densepose_bgr)
        if (index + 1) % without_segm_every == 0:
            continue
        segm = Image.fromarray(doll["segm"], mode="P")
        segm.putpalette(palette)
        segm.save(out / "segm" / f"{name}_segm.png")
        with_segm.append(name)
    return with_segm
