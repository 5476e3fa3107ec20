"""DeepFashion-MultiModal label mapping: segm + DensePose parts -> one label map.

The seed's rule (``DeepFashion_Mapping.ipynb``, reproduced exactly):

1. ``segm_mapped = segm_lut[segm]``; the segm class "Skin" (15) maps to a placeholder (15).
2. ``dense_mapped = dense_lut[dense_parts]`` (DensePose parts -> target ids, 0 = none).
3. ``dense_expanded = expand_labels(dense_mapped, 10)``: every non-zero region grows into the zero
   pixels around it by up to 10 px (Euclidean); a zero pixel takes the label of its nearest
   non-zero pixel when that pixel is at most 10 px away, else stays 0.
4. Pixels whose mapped segm label is the placeholder take ``dense_expanded`` when their raw segm
   label is Skin (and 0 otherwise). Skin more than 10 px away from DensePose becomes background.

``expand_labels`` follows scikit-image's definition (exact Euclidean distance, ``<=``) and is
computed with OpenCV's exact distance transform, without scikit-image or SciPy. Ties (a pixel
equally far from two labels) are implementation-defined in scikit-image; here the smallest label
id wins.
"""

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from datasets.label_set import LUT_SIZE, LabelSet, voc_palette
from datasets.labels import SEED_SKIN_PLACEHOLDER

SEGM_NUM_CLASSES = 24  # DeepFashion-MultiModal parsing labels 0..23
DENSEPOSE_NUM_PARTS = 25  # DensePose part index I: 0 (background) .. 24
SEGM_SKIN_ID = 15  # the "Skin" class of the segm label space
SKIN_PLACEHOLDER = SEED_SKIN_PLACEHOLDER  # what segm "Skin" maps to before the DensePose split
SKIN_EXPAND_PX = 10  # how far DensePose labels grow into uncovered skin
DENSEPOSE_PART_CHANNEL_RGB = 2  # the part index is the 3rd channel of the RGB image
_DENSEPOSE_PART_CHANNEL_BGR = 2 - DENSEPOSE_PART_CHANNEL_RGB  # OpenCV decodes to BGR
_JPEG_START, _JPEG_SCAN, _JPEG_END = b"\xff\xd8", b"\xff\xda", b"\xff\xd9"  # SOI, SOS, EOI
SHEET_HEIGHT = 551  # sample sheet panels are resized to this height (half of 1101)


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """Bounding box of the non-zero pixels of ``mask`` grown by ``margin``, clipped to the image."""
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    height, width = mask.shape
    rows = slice(max(y - margin, 0), min(y + h + margin, height))
    cols = slice(max(x - margin, 0), min(x + w + margin, width))
    return rows, cols


def _as_lut(lut: np.ndarray) -> np.ndarray:
    """A 256-entry uint8 table for ``cv2.LUT`` (ids past the end of ``lut`` map to 255)."""
    table = np.full(LUT_SIZE, 255, np.uint8)
    table[: len(lut)] = lut[:LUT_SIZE]
    return table


def nearest_labels(
    labels: np.ndarray, distance: float, query: np.ndarray
) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """The nearest non-zero label within ``distance`` of each query pixel.

    Args:
        labels: (H, W) uint8 label map, 0 = unlabelled.
        distance: maximal Euclidean distance in pixels (inclusive).
        query: (H, W) bool, the pixels to resolve.

    Returns:
        ``(rows, cols)`` of the query pixels and their labels (uint8, 0 when no label lies within
        ``distance``; ties between labels at the same distance go to the smallest label id).
    """
    rows, cols = np.nonzero(query)
    found = np.zeros(rows.size, np.uint8)
    if rows.size == 0:
        return (rows, cols), found
    margin = int(np.floor(distance)) + 1
    near_rows, near_cols = _bbox(query, margin)  # every label that can be within reach is here
    near = labels[near_rows, near_cols]
    present = cv2.calcHist([near], [0], None, [LUT_SIZE], [0, LUT_SIZE])
    best_sq = np.full(rows.size, np.inf)
    for label in (
        np.flatnonzero(present.ravel()[1:]) + 1
    ):  # ascending: a tie keeps the smaller label
        is_label = near == label
        box_rows, box_cols = _bbox(is_label, margin)
        top, left = near_rows.start + box_rows.start, near_cols.start + box_cols.start
        inside = (rows >= top) & (rows < top + box_rows.stop - box_rows.start)
        inside &= (cols >= left) & (cols < left + box_cols.stop - box_cols.start)
        if not inside.any():
            continue
        # exact Euclidean distance (Felzenszwalb) from every pixel to the nearest `label` pixel
        dist = cv2.distanceTransform(
            (~is_label[box_rows, box_cols]).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
        )
        sq = np.full(rows.size, np.inf)
        picked = dist[rows[inside] - top, cols[inside] - left].astype(np.float64)
        sq[inside] = np.rint(picked**2)  # integer squared distances: ties compare exactly
        closer = sq < best_sq
        best_sq[closer] = sq[closer]
        found[closer] = label
    found[best_sq > distance**2] = 0
    return (rows, cols), found


def expand_labels(labels: np.ndarray, distance: float = SKIN_EXPAND_PX) -> np.ndarray:
    """``skimage.segmentation.expand_labels`` for a 2-D uint8 map (ties: smallest label wins)."""
    out = labels.copy()
    (rows, cols), found = nearest_labels(labels, distance, labels == 0)
    out[rows, cols] = found
    return out


def map_deepfashion(
    segm: np.ndarray,
    dense_parts: np.ndarray,
    segm_lut: np.ndarray,
    dense_lut: np.ndarray,
    skin_placeholder: int = SKIN_PLACEHOLDER,
    expand_px: float = SKIN_EXPAND_PX,
) -> np.ndarray:
    """Map one DeepFashion-MultiModal sample to the target label space (the seed's rule).

    Args:
        segm: (H, W) uint8 parsing labels 0..23.
        dense_parts: (H, W) uint8 DensePose part index 0..24.
        segm_lut: uint8 lookup table segm id -> target id (Skin -> ``skin_placeholder``).
        dense_lut: uint8 lookup table DensePose part -> target id (0 = no label).
        skin_placeholder: the target id that marks skin to be split by DensePose.
        expand_px: how far DensePose labels grow into uncovered skin, in pixels.

    Returns:
        (H, W) uint8 label map in the target space.
    """
    if segm.shape != dense_parts.shape:
        raise ValueError(f"segm {segm.shape} and DensePose {dense_parts.shape} differ in size")
    result = cv2.LUT(segm, _as_lut(segm_lut))
    placeholder = result == skin_placeholder
    if not placeholder.any():
        return result
    # only placeholder pixels read dense_expanded, and only DensePose labels within expand_px of
    # them matter: work inside their bounding box grown by that distance
    rows, cols = _bbox(placeholder, int(np.floor(expand_px)) + 1)
    placeholder = placeholder[rows, cols]
    dense_mapped = cv2.LUT(dense_parts[rows, cols], _as_lut(dense_lut))
    skin = placeholder & (segm[rows, cols] == SEGM_SKIN_ID)
    out = result[rows, cols]
    np.copyto(out, np.where(skin, dense_mapped, 0).astype(np.uint8), where=placeholder)
    (skin_rows, skin_cols), found = nearest_labels(
        dense_mapped, expand_px, skin & (dense_mapped == 0)
    )
    out[skin_rows, skin_cols] = found
    return result


def read_segm(path: str | Path) -> np.ndarray:
    """Read a DeepFashion parsing PNG as class indices (palette or L; never luminance)."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise ValueError(
                    f"{path}: segm PNG has mode {image.mode}, expected a palette or L image of "
                    f"class ids 0..{SEGM_NUM_CLASSES - 1}; use the original parsing PNGs"
                )
            segm = np.asarray(image)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: segm PNG not found; check the segm/ folder") from None
    except (OSError, SyntaxError) as error:
        raise ValueError(f"{path}: unreadable segm PNG ({error}); re-download the file") from None
    top = int(segm.max(initial=0))
    if top >= SEGM_NUM_CLASSES:
        raise ValueError(
            f"{path}: segm label id {top} is outside 0..{SEGM_NUM_CLASSES - 1}; "
            "the file is not a DeepFashion-MultiModal parsing PNG"
        )
    return segm


def read_densepose(path: str | Path) -> np.ndarray:
    """Read the DensePose part index (0..24) from a 3-channel DeepFashion DensePose PNG."""
    path = str(path)
    encoded = np.fromfile(path, np.uint8) if Path(path).is_file() else None
    if encoded is None:
        raise FileNotFoundError(f"{path}: DensePose PNG not found; check the densepose/ folder")
    image = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    if image is None or image.ndim != 3 or image.shape[2] < 3 or image.dtype != np.uint8:
        raise ValueError(
            f"{path}: unreadable DensePose PNG (expected 8-bit RGB with the part index in "
            f"channel {DENSEPOSE_PART_CHANNEL_RGB}); re-download the file"
        )
    parts = np.ascontiguousarray(image[:, :, _DENSEPOSE_PART_CHANNEL_BGR])
    top = int(parts.max(initial=0))
    if top >= DENSEPOSE_NUM_PARTS:
        raise ValueError(
            f"{path}: DensePose part index {top} is outside 0..{DENSEPOSE_NUM_PARTS - 1}; "
            "the file is not a DeepFashion-MultiModal DensePose PNG"
        )
    return parts


def _truncated_jpeg(data: np.ndarray) -> bool:
    """A JPEG whose end-of-image marker does not follow its last start-of-scan marker.

    Entropy-coded data byte-stuffs 0xFF, so these markers cannot occur inside it; an EXIF
    thumbnail's end marker comes before the main image's scans.
    """
    raw = data.tobytes()
    return raw.startswith(_JPEG_START) and raw.rfind(_JPEG_END) < raw.rfind(_JPEG_SCAN)


def read_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB view of an image file (greyscale converted, EXIF orientation ignored,
    as the label PNGs are stored); truncated JPEGs raise instead of decoding half."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: image not found; check the images/ folder")
    data = np.fromfile(path, np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None or _truncated_jpeg(data):
        raise ValueError(f"{path}: unreadable or truncated image; re-download the file")
    return bgr[:, :, ::-1]


def read_sample(
    src: str | Path, name: str, with_densepose: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One DeepFashion-MultiModal sample of the ``src`` folder: (image RGB, segm, DensePose parts).

    ``src`` holds ``images/<name>.jpg``, ``segm/<name>_segm.png`` and
    ``densepose/<name>_densepose.png``; parts is None when ``with_densepose`` is False.
    """
    src = Path(src)
    segm = read_segm(src / "segm" / f"{name}_segm.png")
    parts = read_densepose(src / "densepose" / f"{name}_densepose.png") if with_densepose else None
    image = read_image(src / "images" / f"{name}.jpg")
    sizes = [array.shape[:2] for array in (image, segm, parts) if array is not None]
    if len(set(sizes)) > 1:
        listed = ", ".join(f"{h}x{w}" for h, w in sizes)
        raise ValueError(
            f"{src / 'images' / name}.jpg: image, segm and densepose sizes differ ({listed}, HxW); "
            "re-download this sample"
        )
    return image, segm, parts


def colour_table(label_set: LabelSet | None) -> np.ndarray:
    """(256, 3) uint8 RGB colour per label value: the set's palette, VOC colours past it."""
    colours = voc_palette(LUT_SIZE)
    if label_set is not None:
        colours[: label_set.num_classes] = label_set.palette
    return colours


def sample_sheet(image: np.ndarray, panels: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """The RGB image and coloured label maps side by side, titled, each SHEET_HEIGHT high."""
    width = round(image.shape[1] * SHEET_HEIGHT / image.shape[0])
    tiles = []
    for title, panel in [("image", image), *panels]:
        tile = cv2.resize(
            np.ascontiguousarray(panel), (width, SHEET_HEIGHT), interpolation=cv2.INTER_NEAREST
        )
        cv2.putText(tile, title, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
        tiles.append(tile)
    return np.hstack(tiles)
