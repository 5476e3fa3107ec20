"""Geometry and target transforms of the SCHP sample pipeline.

Coordinates are pixel centres (x right, y down), as in OpenCV. A sample is placed in the crop with
SCHP's centre/scale affine: the whole image is the person box, its centre goes to the crop centre
``((W-1)/2, (H-1)/2)`` and its (aspect-corrected) width ``scale[0]`` spans ``W-1`` crop pixels, so
the image is letterboxed, never stretched. Training adds a random scale, a random rotation and a
horizontal flip that swaps the label set's left/right pairs. Predictions go back to the photo with
the inverse of the same affine (``logits_to_original``, bilinear on logits).
"""

from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from datasets.label_set import IGNORE_INDEX, LabelSet
from networks.contracts import InputSpec

EDGE_WIDTH = 3  # edge targets are dilated with an EDGE_WIDTH x EDGE_WIDTH box (SCHP: 3)
SCALE_FACTOR = 0.25  # scale jitter: s *= clip(1 + N(0,1) * f, 1 - f, 1 + f) -> 0.75..1.25
ROTATION_FACTOR = 30  # degrees: r = clip(N(0,1) * f, -ROTATION_CLIP_RATIO * f, +...) -> +-60
ROTATION_CLIP_RATIO = 2.0  # SCHP clips the rotation at two rotation factors
ROTATION_PROB = 0.6  # probability that a training sample is rotated at all
FLIP_PROB = 0.5  # probability of a horizontal flip
# warp_image pads 3-channel sources to 4 channels (one pass over the source) when they have at most
# this many times the output's pixels; the warp itself costs per output pixel, and the padding
# pass is cheaper per pixel than the time the 4-channel warp saves (benchmarks/README.md)
RGBA_WARP_MAX_AREA = 4
MIN_IMAGE_SIDE = 2  # px: the centre/scale box of a narrower image is empty (singular affine)
_NUM_BYTE_VALUES = 256
_PIXEL_MAX = 255.0


class Augmentation(NamedTuple):
    """One draw of the training augmentation (identity: ``Augmentation()``)."""

    scale: float = 1.0  # multiplies the centre/scale box (> 1 zooms out)
    rotation: float = 0.0  # degrees
    flip: bool = False


def sample_augmentation(
    rng: np.random.Generator,
    scale_factor: float = SCALE_FACTOR,
    rotation_factor: float = ROTATION_FACTOR,
    flip_prob: float = FLIP_PROB,
) -> Augmentation:
    """Draw SCHP's scale, rotation and flip (in that order) from ``rng``."""
    scale = float(
        np.clip(1 + rng.standard_normal() * scale_factor, 1 - scale_factor, 1 + scale_factor)
    )
    rotation = 0.0
    if rng.random() < ROTATION_PROB:
        limit = ROTATION_CLIP_RATIO * rotation_factor
        rotation = float(np.clip(rng.standard_normal() * rotation_factor, -limit, limit))
    return Augmentation(scale, rotation, bool(rng.random() < flip_prob))


def box_to_center_scale(
    width: int, height: int, aspect_ratio: float
) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale of a whole ``width`` x ``height`` image, widened to ``aspect_ratio``.

    The box is SCHP's ``[0, 0, width-1, height-1]``; ``aspect_ratio`` is crop W / crop H.
    Returns float32 ``center`` (x, y) and ``scale`` (w, h).

    Raises:
        ValueError: a side is below ``MIN_IMAGE_SIDE`` pixels (the message names the size).
    """
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ValueError(
            f"image is {width}x{height} px; a photo needs at least {MIN_IMAGE_SIDE} px per side"
        )
    box_w, box_h = width - 1.0, height - 1.0
    if box_w > aspect_ratio * box_h:
        box_h = box_w / aspect_ratio
    else:
        box_w = box_h * aspect_ratio
    center = np.array([(width - 1) * 0.5, (height - 1) * 0.5], np.float32)
    return center, np.array([box_w, box_h], np.float32)


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` turned by 90 degrees about ``b`` (SCHP's ``get_3rd_point``)."""
    direction = a - b
    return b + np.array([-direction[1], direction[0]])


def get_affine_transform(
    center, scale, rotation: float, output_size_hw: tuple[int, int], inverse: bool = False
) -> np.ndarray:
    """SCHP's crop affine (2x3, float64) from three point pairs.

    The source ``center`` maps to the crop centre ``((W-1)/2, (H-1)/2)``; the point ``scale[0]/2``
    above it, turned by ``rotation`` degrees, maps to ``(W-1)/2`` above the crop centre; the third
    pair is the perpendicular. Only ``scale[0]`` is used: the zoom is ``(W-1) / scale[0]``.
    ``inverse=True`` gives the crop -> source matrix.

    Raises:
        ValueError: ``scale[0]`` is not a positive number, or ``inverse`` with a crop narrower
            than ``MIN_IMAGE_SIDE``: the three points would be collinear (a singular affine).
    """
    out_h, out_w = output_size_hw
    src_w = float(np.asarray(scale, np.float64).reshape(-1)[0])
    if not (np.isfinite(src_w) and src_w > 0) or (inverse and out_w < MIN_IMAGE_SIDE):
        raise ValueError(
            f"no crop affine for a box {src_w:g} px wide and a {out_w}x{out_h} crop: the box "
            f"must be wider than 0 px (and the crop, to invert it, at least {MIN_IMAGE_SIDE})"
        )
    rad = np.deg2rad(rotation)
    src_center = np.asarray(center, np.float64).reshape(2)
    dst_center = np.array([(out_w - 1) * 0.5, (out_h - 1) * 0.5])
    # get_dir([0, -src_w / 2], rad): the "up" vector turned by the rotation
    src_up = src_center + np.array([src_w * 0.5 * np.sin(rad), -src_w * 0.5 * np.cos(rad)])
    dst_up = dst_center + np.array([0.0, -(out_w - 1) * 0.5])
    src = np.stack([src_center, src_up, _third_point(src_center, src_up)])
    dst = np.stack([dst_center, dst_up, _third_point(dst_center, dst_up)])
    if inverse:
        src, dst = dst, src
    # [x y 1] @ M.T = dst for the three pairs
    return np.linalg.solve(np.hstack([src, np.ones((3, 1))]), dst).T


def warp_image(
    image: np.ndarray,
    matrix: np.ndarray,
    output_size_hw: tuple[int, int],
    swap_rb: bool = False,
) -> np.ndarray:
    """Warp an (H, W, C) uint8 image: bilinear, 0 outside the source.

    ``swap_rb`` also reverses the channels of a 3-channel image (BGR <-> RGB). A 3-channel image
    not much larger than the output is warped as a 4-channel one: OpenCV's vectorised 4-channel
    path is about twice as fast, and the three channels come out the same.
    """
    out_h, out_w = output_size_hw
    three = image.ndim == 3 and image.shape[2] == 3
    if swap_rb and not three:
        raise ValueError(f"swap_rb needs an (H, W, 3) image, got {image.shape}")
    padded = three and image.shape[0] * image.shape[1] <= RGBA_WARP_MAX_AREA * out_h * out_w
    if padded:  # the channel swap rides along with the padding pass
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGBA if swap_rb else cv2.COLOR_BGR2BGRA)
    warped = cv2.warpAffine(
        image,
        matrix,
        (out_w, out_h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    if padded:
        return cv2.cvtColor(warped, cv2.COLOR_RGBA2RGB)  # drops the 4th channel, no swap
    return cv2.cvtColor(warped, cv2.COLOR_BGR2RGB) if swap_rb else warped


def warp_label(
    label: np.ndarray, matrix: np.ndarray, output_size_hw: tuple[int, int]
) -> np.ndarray:
    """Warp an (H, W) uint8 label map: nearest, IGNORE_INDEX outside the source."""
    return cv2.warpAffine(
        label,
        matrix,
        (output_size_hw[1], output_size_hw[0]),
        flags=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=IGNORE_INDEX,
    )


def flip_lut(label_set: LabelSet) -> np.ndarray:
    """(256,) uint8 lookup table swapping the label set's left/right pairs; other ids unchanged."""
    lut = np.arange(_NUM_BYTE_VALUES, dtype=np.uint8)
    lut[: label_set.num_classes] = label_set.flip_permutation()
    return lut


def mirror_affine(matrix: np.ndarray, width: int) -> np.ndarray:
    """The (2, 3) affine ``matrix`` of a mirrored image, as a map of the unmirrored one.

    SCHP flips the photo (x -> W - 1 - x) and then warps it with ``matrix``; warping the photo
    itself with ``matrix @ mirror`` gives the same crop (up to the warp's 1/32-pixel coordinate
    rounding) without the two full-size flipped copies. Labels warped with it still need the
    pair swap (`flip_lut`), which is then applied to the crop.
    """
    mirrored = np.array(matrix, dtype=np.float64, copy=True)
    mirrored[:, 2] += mirrored[:, 0] * (width - 1)
    mirrored[:, 0] *= -1.0
    return mirrored


def mirror_center(center: np.ndarray, width: int) -> np.ndarray:
    """SCHP's centre of the mirrored photo: ``x -> W - x - 1``."""
    return np.array([width - center[0] - 1, center[1]], np.float32)


def normalize(
    image_rgb_uint8: np.ndarray, input_spec: InputSpec, image_colour: str = "RGB"
) -> Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 ``(x/255 - mean) / std`` in the spec's colour order.

    One fused OpenCV pass (channel swap, scale, shift, HWC -> CHW). ``image_colour`` names the
    order of the given image ("RGB" or "BGR", e.g. straight from ``cv2.imread``).
    """
    image = image_rgb_uint8
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    for colour in (image_colour, input_spec.colour):
        if colour not in ("RGB", "BGR"):
            raise ValueError(f"colour order must be 'RGB' or 'BGR', got {colour!r}")
    mean = np.asarray(input_spec.mean, np.float64)
    std = np.asarray(input_spec.std, np.float64)
    height, width = image.shape[:2]
    params = cv2.dnn.Image2BlobParams(
        scalefactor=tuple(1.0 / (_PIXEL_MAX * std)),
        size=(width, height),
        mean=tuple(_PIXEL_MAX * mean),
        swapRB=image_colour != input_spec.colour,
        ddepth=cv2.CV_32F,
    )
    return torch.from_numpy(cv2.dnn.blobFromImageWithParams(image, params)[0])


def normalize_batch(images: Tensor, input_spec: InputSpec) -> Tensor:
    """(N, 3, H, W) uint8 in the spec's colour order -> float32 ``(x/255 - mean) / std``.

    For the uint8 images of ``LIPDataset(image_dtype=torch.uint8)``: normalising on the batch
    (on its device) instead of in the loader workers moves 4x fewer bytes between processes.
    Equals ``normalize`` up to float rounding (<= 1e-6).
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"expected an (N, 3, H, W) uint8 batch, got {tuple(images.shape)} {images.dtype}"
        )
    mean = torch.tensor(input_spec.mean, dtype=torch.float32, device=images.device)
    std = torch.tensor(input_spec.std, dtype=torch.float32, device=images.device)
    scale = (1.0 / (_PIXEL_MAX * std)).view(1, 3, 1, 1)
    shift = (-mean / std).view(1, 3, 1, 1)
    return images.float().mul_(scale).add_(shift)  # in place on the new float tensor


def _dilate_box(mask, radius: int):
    """Binary dilation of (N, H, W) bool masks with a (2r+1)^2 box, zero outside (separable).

    Equal to SCHP's ``conv2d(mask, ones(2r+1, 2r+1), padding=r) > 0``; numpy arrays or tensors.
    """
    rows = mask | mask  # a copy, for numpy and torch alike
    for shift in range(1, radius + 1):
        rows[:, :, shift:] |= mask[:, :, :-shift]
        rows[:, :, :-shift] |= mask[:, :, shift:]
    out = rows | rows
    for shift in range(1, radius + 1):
        out[:, shift:, :] |= rows[:, :-shift, :]
        out[:, :-shift, :] |= rows[:, shift:, :]
    return out


def _edge_map(label, width: int):
    """Bool edge map of (N, H, W) labels; the same code runs on numpy arrays and tensors."""
    valid = label != IGNORE_INDEX
    marks = valid & False
    pairs = (  # (marked pixel, its neighbour) per direction
        ((slice(1, None), slice(None)), (slice(None, -1), slice(None))),  # vertical: lower
        ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),  # horizontal: left
        ((slice(None, -1), slice(None, -1)), (slice(1, None), slice(1, None))),  # diagonal
        ((slice(None, -1), slice(1, None)), (slice(1, None), slice(None, -1))),  # anti-diagonal
    )
    for (rows_a, cols_a), (rows_b, cols_b) in pairs:
        a, b = (slice(None), rows_a, cols_a), (slice(None), rows_b, cols_b)
        marks[a] |= (label[a] != label[b]) & valid[a] & valid[b]
    return _dilate_box(marks, width // 2) & valid


def generate_edge(label: Tensor, width: int = EDGE_WIDTH) -> Tensor:
    """Binary edge targets of integer label maps (SCHP's ``generate_edge_tensor``).

    A pixel pair whose labels differ, neither being IGNORE_INDEX, marks one pixel: the lower one
    (vertical pairs), the left one (horizontal), the top-left one (diagonal) and the top-right
    one (anti-diagonal). The marks are dilated with a ``width`` x ``width`` box (SCHP's 3x3 ones
    convolution, > 0). Ignore pixels are never edges (SCHP's dilation may reach 1 px into them).
    CPU tensors are processed with numpy (no thread-pool start-up per small op in data workers).

    Args:
        label: (N, H, W) or (H, W) integer tensor on any device.
        width: odd box size of the dilation.
    Returns:
        Tensor of the same shape, dtype and device, values in {0, 1}; N = 1 keeps its dim.
    """
    if width < 1 or width % 2 == 0:
        raise ValueError(f"edge width must be a positive odd number, got {width}")
    batch = label if label.dim() == 3 else label.unsqueeze(0)
    if batch.device.type == "cpu":
        array = batch.numpy()
        edge = torch.from_numpy(_edge_map(array, width).astype(array.dtype))
    else:
        edge = _edge_map(batch, width).to(label.dtype)
    return edge.reshape(label.shape)


def _normalised_affine(
    center, scale, crop_hw: tuple[int, int], out_hw: tuple[int, int]
) -> np.ndarray:
    """(2, 3) map from output coords in [-1, 1] (align_corners=True) to crop coords in [-1, 1]."""
    crop_h, crop_w = crop_hw
    out_h, out_w = out_hw
    forward = np.vstack([get_affine_transform(center, scale, 0.0, crop_hw), [0.0, 0.0, 1.0]])
    to_crop_norm = np.array(
        [
            [2.0 / max(crop_w - 1, 1), 0.0, -1.0],
            [0.0, 2.0 / max(crop_h - 1, 1), -1.0],
            [0.0, 0.0, 1.0],
        ]
    )
    from_out_norm = np.array(
        [
            [(out_w - 1) * 0.5, 0.0, (out_w - 1) * 0.5],
            [0.0, (out_h - 1) * 0.5, (out_h - 1) * 0.5],
            [0.0, 0.0, 1.0],
        ]
    )
    return (to_crop_norm @ forward @ from_out_norm)[:2]


def logits_to_original(
    logits: Tensor, center, scale, out_hw: tuple[int, int], crop_hw: tuple[int, int] | None = None
) -> Tensor:
    """Map crop logits back onto the original photo with the inverse crop affine.

    Bilinear sampling (``grid_sample``, align_corners=True, 0 outside the crop) on the device of
    ``logits``; take the argmax afterwards. All N images share ``out_hw``: call once per image
    (N = 1) when the originals differ in size.

    Args:
        logits: (N, C, h, w) logits of the crop.
        center, scale: (2,) or (N, 2) centre/scale the crop was made with (``meta``).
        out_hw: (H, W) of the original photo.
        crop_hw: the crop size ``center``/``scale`` refer to; default (h, w). Logits at a lower
            resolution (e.g. stride 4) are read as an align_corners=True resize of that crop.
    Returns:
        (N, C, H, W) float32 logits.
    """
    n, _, h, w = logits.shape
    theta = inverse_theta(n, center, scale, out_hw, crop_hw if crop_hw is not None else (h, w))
    theta_t = torch.as_tensor(theta, dtype=torch.float32, device=logits.device)
    grid = F.affine_grid(theta_t, [n, 1, int(out_hw[0]), int(out_hw[1])], align_corners=True)
    return F.grid_sample(
        logits.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )


def inverse_theta(
    n: int, center, scale, out_hw: tuple[int, int], crop_hw: tuple[int, int]
) -> np.ndarray:
    """(N, 2, 3) `affine_grid` matrices of `logits_to_original` (photo pixel -> crop, [-1, 1])."""
    centers = np.asarray(center, np.float64).reshape(-1, 2)
    scales = np.asarray(scale, np.float64).reshape(-1, 2)
    if len(centers) not in (1, n) or len(scales) not in (1, n):
        raise ValueError(
            f"got {len(centers)} centres and {len(scales)} scales for {n} images; "
            "pass one pair per image or one for all"
        )
    out = (int(out_hw[0]), int(out_hw[1]))
    return np.stack(
        [
            _normalised_affine(centers[i % len(centers)], scales[i % len(scales)], crop_hw, out)
            for i in range(n)
        ]
    )


def inverse_warp_label(
    label_crop: np.ndarray, center, scale, out_hw: tuple[int, int]
) -> np.ndarray:
    """Nearest-neighbour inverse warp of a crop label map to the original size (255 outside)."""
    matrix = get_affine_transform(center, scale, 0.0, label_crop.shape[:2], inverse=True)
    return warp_label(label_crop, matrix, out_hw)
