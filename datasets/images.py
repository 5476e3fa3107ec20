"""Unlabelled photos for extraction: folders, text lists and video files.

Each photo becomes the same centre/scale crop that training and evaluation use (no augmentation);
`meta` keeps what is needed to map the prediction back onto the photo. Decoding and warping run
in DataLoader workers (`PhotoDataset` for files, `VideoFrames` for a video), so they overlap with
the model on the main process.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from datasets.transforms import box_to_center_scale, get_affine_transform, normalize, warp_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def read_image_rgb(path: str | Path) -> np.ndarray | None:
    """(H, W, 3) uint8 RGB, or None when the file is missing or cannot be decoded.

    Greyscale is expanded to three channels, alpha is dropped, EXIF orientation is applied.
    """
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:  # missing, a folder, no permission
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def prepare_image(image_rgb: np.ndarray, input_size: tuple[int, int], input_spec):
    """Crop tensor (3, H, W) and meta (center, scale, height, width) of one photo.

    Raises:
        ValueError: the photo has a side under 2 px (the message names its size).
    """
    height, width = image_rgb.shape[:2]
    crop_h, crop_w = input_size
    center, scale = box_to_center_scale(width, height, crop_w / crop_h)
    matrix = get_affine_transform(center, scale, 0.0, input_size)
    crop = warp_image(image_rgb, matrix, input_size)
    meta = {"center": center, "scale": scale, "height": height, "width": width}
    return normalize(crop, input_spec), meta


def init_decode_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: one OpenCV thread per worker (workers are the parallelism),
    and a heap that keeps freed memory for the next sample (`keep_freed_heap`)."""
    cv2.setNumThreads(1)
    keep_freed_heap()


_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's upper limit on 64-bit
_TRIM_THRESHOLD = 1 << 30


def keep_freed_heap() -> bool:
    """Stop glibc from returning freed heap memory to the OS (and from mmapping buffers < 32 MB).

    A worker allocates and frees a few MB per sample (decoded photo, padded copy, warped crops);
    by default glibc trims the top of the heap once a few MB are free and serves large buffers
    with fresh mmaps, so every sample page-faults its buffers back in (a tenth of a sample's
    time, benchmarks/README.md). Process-wide; no effect off glibc. Returns whether it applied.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(
            libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
            and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
        )
    except (OSError, AttributeError):  # not glibc
        return False


def list_inputs(source: str | Path) -> list[Path]:
    """Photos of a folder (sorted, recursive) or of a text list (one path per line, relative
    paths taken from the list's folder)."""
    source = Path(source)
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if source.suffix.lower() == ".txt":
        base = source.parent
        lines = [ln.strip() for ln in source.read_text().splitlines()]
        return [Path(ln) if Path(ln).is_absolute() else base / ln for ln in lines if ln]
    raise ValueError(
        f"{source}: not a folder, .txt list or video ({', '.join(VIDEO_SUFFIXES)}); "
        "give one of those as --input"
    )


def output_names(paths: list[Path], root: Path | None = None) -> list[str]:
    """Output name of each photo: its path below `root` (default: the photos' common folder)
    without the suffix, so that photos in different sub-folders never collide."""
    if not paths:
        return []
    if root is None:
        root = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
        paths = [p.resolve() for p in paths]
    return [p.relative_to(root).with_suffix("").as_posix() for p in paths]


class PhotoDataset(Dataset):
    """Photos by path; an unreadable one, or one too small to crop (a side under 2 px), yields
    `image=None` so the caller can list and skip it.

    Args:
        paths, names: the photos and their output names.
        input_size: crop (H, W); input_spec: the model's normalisation.
        keep_rgb: also return the decoded photo (for overlays); off, it never leaves the worker.
    """

    def __init__(self, paths: list[Path], names: list[str], input_size, input_spec, keep_rgb=False):
        self.paths, self.names = paths, names
        self.input_size, self.input_spec = input_size, input_spec
        self.keep_rgb = keep_rgb

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        image = read_image_rgb(self.paths[index])
        sample = {"name": self.names[index], "path": str(self.paths[index]), "image": None}
        if image is None:
            return sample
        try:
            sample["image"], sample["meta"] = prepare_image(image, self.input_size, self.input_spec)
        except ValueError:  # too small to crop (a side under MIN_IMAGE_SIDE): failed, as unreadable
            return sample
        sample["rgb"] = image if self.keep_rgb else None
        return sample


def iter_video_frames(path: str | Path, every: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, RGB frame) of a video file, every `every`-th frame."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"{path}: cannot open the video (codec or damaged file); convert to mp4")
    index = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index % every == 0:
                yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()


def video_frame_name(video: Path, index: int) -> str:
    return f"{video.stem}/frame_{index:06d}"


class VideoFrames(IterableDataset):
    """Prepared frames of one video (decoded in one DataLoader worker, in order).

    Args:
        path: the video; every: keep every N-th frame; shard: (i, n) keeps every n-th kept frame
            starting at the i-th; skip: names of frames already finished.
        input_size, input_spec, keep_rgb: as `PhotoDataset`.
    """

    def __init__(
        self, path, input_size, input_spec, every=1, shard=(0, 1), skip=(), keep_rgb=False
    ):
        self.path, self.every, self.shard = Path(path), every, shard
        self.input_size, self.input_spec = input_size, input_spec
        self.skip, self.keep_rgb = frozenset(skip), keep_rgb

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        if info is not None and info.id > 0:  # one decoder per video: frames stay in order
            return
        index, count = self.shard
        for number, (frame_index, frame) in enumerate(iter_video_frames(self.path, self.every)):
            name = video_frame_name(self.path, frame_index)
            if number % count != index or name in self.skip:
                continue
            tensor, meta = prepare_image(frame, self.input_size, self.input_spec)
            rgb = frame if self.keep_rgb else None
            yield {"name": name, "path": name, "image": tensor, "meta": meta, "rgb": rgb}


def collate_photos(samples: list[dict]) -> dict:
    """Batch the readable photos; keep the unreadable ones' paths for the failure list."""
    good = [s for s in samples if s["image"] is not None]
    return {
        "image": torch.stack([s["image"] for s in good]) if good else None,
        "meta": [s["meta"] for s in good],
        "rgb": [s["rgb"] for s in good],
        "name": [s["name"] for s in good],
        "path": [s["path"] for s in good],
        "failed": [s["path"] for s in samples if s["image"] is None],
    }
