"""LIP-layout human parsing dataset (LIP, CIHP, CCP, preprocessed DeepFashion).

Layout under ``root``::

    {split}_id.txt                      one image id per line
    {split}_images/<id>.jpg             photo (greyscale and RGBA are converted to 3 channels)
    {split}_segmentations/<id>.png      class-index label map (mode L or P), or <id>_segm.png

Each sample is letterboxed into the crop with SCHP's centre/scale affine; ``augment=True`` adds
SCHP's random scale, rotation and flip (left/right pairs swapped by the label set). The draw is a
pure function of ``(seed, epoch, index)``: call ``set_epoch`` before each epoch (with non-persistent
DataLoader workers, which copy the dataset when an epoch's iterator starts).
"""

import logging
from pathlib import Path, PurePosixPath, PureWindowsPath

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

from datasets.images import init_decode_worker
from datasets.label_set import LUT_SIZE, LabelSet, check_label_ids
from datasets.transforms import (
    FLIP_PROB,
    ROTATION_FACTOR,
    SCALE_FACTOR,
    Augmentation,
    box_to_center_scale,
    flip_lut,
    generate_edge,
    get_affine_transform,
    mirror_affine,
    mirror_center,
    normalize,
    sample_augmentation,
    warp_image,
    warp_label,
)
from networks.contracts import DEFAULT_INPUT_SIZE, IMAGENET_RGB, InputSpec

logger = logging.getLogger(__name__)

LABEL_SUFFIXES = (".png", "_segm.png")  # LIP first, then DeepFashion-MultiModal
_LABEL_MODES = ("L", "P")  # single-channel class indices (palette PNGs give their indices)
_IMREAD_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # label grids ignore EXIF too
TARGET_DTYPES = {torch.int64: np.int64, torch.uint8: np.uint8}  # label/edge dtypes on offer
IMAGE_DTYPES = (torch.float32, torch.uint8)  # normalised, or raw bytes for `normalize_batch`
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IHDR = slice(12, 16)  # type of the first chunk
_PNG_DEPTH_COLOUR = slice(24, 26)  # IHDR bit depth and colour type
_PNG_GREY8 = bytes((8, 0))  # 8-bit greyscale
CHECK_BATCH = 32  # samples per worker task of `check_samples`


def _layout(root: Path, split: str) -> str:
    return (
        f"expected LIP layout: {root}/{split}_id.txt, {root}/{split}_images/<id>.jpg, "
        f"{root}/{split}_segmentations/<id>.png"
    )


def read_ids(id_file: Path) -> list[str]:
    """Image ids of an id file; empty lines are skipped, ids escaping the folder are errors."""
    ids = []
    for line_no, line in enumerate(id_file.read_text(encoding="utf-8").splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        for pure in (PurePosixPath(name), PureWindowsPath(name)):
            if pure.is_absolute() or pure.anchor or ".." in pure.parts:
                raise ValueError(
                    f"{id_file}:{line_no}: id {name!r} leaves the image folder; "
                    "ids must be plain names relative to the split folders"
                )
        ids.append(name)
    return ids


def _subset(ids: list[str], num_samples: int, seed: int) -> list[str]:
    """A seeded random subset of ``num_samples`` ids, kept in file order (-1: all)."""
    if num_samples == 0 or num_samples < -1:
        raise ValueError(f"num_samples must be positive or -1 (all), got {num_samples}")
    if num_samples == -1 or num_samples >= len(ids):
        return ids
    keep = np.random.default_rng(seed).choice(len(ids), size=num_samples, replace=False)
    return [ids[i] for i in np.sort(keep)]


def _is_grey8_png(data: bytes) -> bool:
    return (
        data.startswith(_PNG_SIGNATURE)
        and data[_PNG_IHDR] == b"IHDR"
        and data[_PNG_DEPTH_COLOUR] == _PNG_GREY8
    )


def read_label_png(path: Path) -> np.ndarray:
    """(H, W) uint8 class indices of a mode L or P PNG (palette indices, never luminance).

    8-bit greyscale PNGs (most label files) are decoded by OpenCV, faster than PIL with the same
    values; palette and other PNGs go through PIL, which reads palette indices.
    """
    data = Path(path).read_bytes()
    if _is_grey8_png(data):
        label = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if label is not None and label.ndim == 2 and label.dtype == np.uint8:
            return label
    with Image.open(path) as image:
        if image.mode not in _LABEL_MODES:
            raise ValueError(
                f"{path}: label image has mode {image.mode}; expected a "
                "single-channel class-index PNG (mode L or P)"
            )
        return np.asarray(image)


def data_error_line(err: Exception) -> str:
    """The one line of a bad-data error (label id outside the set, missing or unreadable file),
    also when a DataLoader worker re-raised it with the worker's traceback in its message."""
    return str(err).strip().splitlines()[-1].removeprefix(f"{type(err).__name__}: ")


def collate_samples(samples: list[dict]) -> dict:
    """DataLoader ``collate_fn`` for `LIPDataset` samples: tensors stacked, ``meta`` kept as the
    list of the samples' dicts.

    ``default_collate`` would turn every number of ``meta`` into its own small tensor, each sent
    from the worker through its own shared-memory file, a cost the loader would pay per batch
    (benchmarks/README.md).

    Images that are CHW views of HWC crops (``image_dtype=torch.uint8``) are stacked in that
    memory order, a plain copy per image instead of a transposing one: the batch is an
    (N, 3, H, W) channels-last tensor, which the model's
    first conv takes as it is.
    """
    batch = default_collate(
        [{k: v for k, v in s.items() if k not in ("meta", "image")} for s in samples]
    )
    images = [s["image"] for s in samples]
    if all(image.dim() == 3 and image.permute(1, 2, 0).is_contiguous() for image in images):
        batch["image"] = default_collate([image.permute(1, 2, 0) for image in images])
        batch["image"] = batch["image"].permute(0, 3, 1, 2)
    else:
        batch["image"] = default_collate(images)
    batch["meta"] = [s["meta"] for s in samples]
    return batch


class LIPDataset(Dataset):
    """LIP-layout parsing samples, letterboxed (and optionally augmented) into ``input_size``.

    Args:
        root: dataset folder; split: ``train``, ``val``, ...
        input_size: crop (H, W). input_spec: normalisation and colour order of the model.
        label_set: labels of the (mapped) data; validates ids and supplies the flip pairs.
        label_lut: (256,) uint8 raw -> label-set ids, applied on load (before flip and warp).
        augment: SCHP's random scale / rotation / flip. num_samples: seeded random subset (-1 all).
        with_edge: also return the edge targets of the warped label (False: compute them on
            the batch with ``generate_edge(batch["label"])``, on the device).
        target_dtype: dtype of ``label`` and ``edge``; torch.uint8 moves 8x fewer bytes from the
            workers, cast with ``.long()`` on the device for the loss.
        image_dtype: torch.float32 (normalised) or torch.uint8: the warped bytes in the model's
            colour order, 4x fewer bytes from the workers; normalise the batch on the device
            with ``datasets.transforms.normalize_batch(images, input_spec)``.

    ``dataset[i]`` is a dict: ``image`` (3, H, W) image_dtype, ``label`` (H, W) target_dtype (255
    ignore), ``edge`` (H, W) target_dtype in {0, 1} (with_edge), ``meta`` (name, center, scale,
    rotation, height, width, flipped); batch them with `collate_samples`. The fastest loader:
    ``image_dtype=torch.uint8, target_dtype=torch.uint8, with_edge=False`` with the three steps
    above on the batch.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
        input_spec: InputSpec = IMAGENET_RGB,
        label_set: LabelSet | None = None,
        label_lut: np.ndarray | None = None,
        augment: bool = False,
        num_samples: int = -1,
        seed: int = 0,
        scale_factor: float = SCALE_FACTOR,
        rotation_factor: float = ROTATION_FACTOR,
        flip_prob: float = FLIP_PROB,
        with_edge: bool = True,
        target_dtype: torch.dtype = torch.int64,
        image_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.input_spec = input_spec
        self.label_set = label_set
        self.augment = augment
        self.seed = seed
        self.scale_factor = scale_factor
        self.rotation_factor = rotation_factor
        self.flip_prob = flip_prob
        self.with_edge = with_edge
        self.epoch = 0
        if target_dtype not in TARGET_DTYPES:
            raise ValueError(f"target_dtype must be torch.int64 or torch.uint8, got {target_dtype}")
        self.target_dtype = TARGET_DTYPES[target_dtype]
        if image_dtype not in IMAGE_DTYPES:
            raise ValueError(f"image_dtype must be torch.float32 or torch.uint8, got {image_dtype}")
        self.image_dtype = image_dtype
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if augment and flip_prob > 0 and label_set is None:
            raise ValueError(
                "flipping needs a label_set for its left/right pairs; pass "
                "label_set= or flip_prob=0"
            )
        self._flip_lut = None if label_set is None else flip_lut(label_set)
        if label_lut is not None:
            label_lut = np.asarray(label_lut)
            if label_lut.shape != (LUT_SIZE,) or label_lut.dtype != np.uint8:
                raise ValueError(
                    f"label_lut must be a (256,) uint8 array, got "
                    f"{label_lut.shape} {label_lut.dtype}"
                )
        self.label_lut = label_lut
        self.image_dir = self.root / f"{split}_images"
        self.label_dir = self.root / f"{split}_segmentations"
        id_file = self.root / f"{split}_id.txt"
        for path in (self.root, id_file, self.image_dir, self.label_dir):
            if not path.exists():
                raise FileNotFoundError(f"{path}: not found; {_layout(self.root, split)}")
        self.ids = _subset(read_ids(id_file), num_samples, seed)
        if not self.ids:
            raise ValueError(f"{id_file}: no ids; {_layout(self.root, split)}")
        logger.debug("%s/%s: %d images", self.root, split, len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of ``epoch`` (pure function of seed, epoch, index)."""
        self.epoch = epoch

    def image_path(self, index: int) -> Path:
        return self.image_dir / f"{self.ids[index]}.jpg"

    def label_path(self, index: int) -> Path:
        """The first existing label file of the id (``.png``, then ``_segm.png``)."""
        name = self.ids[index]
        candidates = [self.label_dir / f"{name}{suffix}" for suffix in LABEL_SUFFIXES]
        for path in candidates:
            if path.is_file():
                return path
        raise FileNotFoundError(
            f"{candidates[0]}: no label for id {name!r} (also tried "
            f"{candidates[1].name}); {_layout(self.root, self.split)}"
        )

    def read_image(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 photo in BGR order (as decoded by OpenCV)."""
        path = self.image_path(index)
        if not path.is_file():  # before imread, which would print an OpenCV warning
            raise FileNotFoundError(
                f"{path}: image of id {self.ids[index]!r} is missing; "
                f"{_layout(self.root, self.split)}"
            )
        image = cv2.imread(str(path), _IMREAD_FLAGS)
        if image is None:
            raise ValueError(
                f"{path}: image of id {self.ids[index]!r} cannot be decoded; "
                "replace it with a readable JPEG or drop the id"
            )
        return image

    def read_label(self, index: int) -> np.ndarray:
        """(H, W) uint8 label at the original size, mapped by ``label_lut`` and validated."""
        path = self.label_path(index)
        label = read_label_png(path)
        if self.label_lut is not None:
            label = cv2.LUT(label, self.label_lut)
        if self.label_set is not None and label.max() >= self.label_set.num_classes:
            check_label_ids(label, self.label_set, path)  # ids past the set: 255 or an error
        return label

    def augmentation(self, index: int) -> Augmentation:
        """The augmentation of ``index`` in the current epoch (identity without ``augment``)."""
        if not self.augment:
            return Augmentation()
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return sample_augmentation(rng, self.scale_factor, self.rotation_factor, self.flip_prob)

    def _read_checked(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(image, label, center, scale) of a sample whose files passed every check."""
        image = self.read_image(index)
        label = self.read_label(index)
        height, width = label.shape
        if image.shape[:2] != (height, width):
            raise ValueError(
                f"{self.image_path(index)}: image is {image.shape[1]}x"
                f"{image.shape[0]} but its label {self.label_path(index)} is "
                f"{width}x{height}; they must match"
            )
        crop_h, crop_w = self.input_size
        try:
            center, scale = box_to_center_scale(width, height, crop_w / crop_h)
        except ValueError as err:  # a side under 2 px: no crop can be made of it
            raise ValueError(
                f"{self.image_path(index)}: {err}; replace the photo or drop id {self.ids[index]!r}"
            ) from None
        return image, label, center, scale

    def check_sample(self, index: int) -> None:
        """Read sample ``index`` as ``dataset[index]`` does, without warping it.

        Raises:
            FileNotFoundError, ValueError: the image or label is missing or cannot be decoded,
                their sizes differ, a label id is outside the label set or the photo is too
                small to crop; the message names the file.
        """
        self._read_checked(index)

    def __getitem__(self, index: int) -> dict:
        index = range(len(self.ids))[index]  # negative indices too; IndexError past the end
        image, label, center, scale = self._read_checked(index)
        height, width = label.shape
        aug = self.augmentation(index)
        scale = (scale * aug.scale).astype(np.float32)
        if aug.flip:  # SCHP mirrors the photo and its centre; the mirror is folded into the warp
            center = mirror_center(center, width)
        matrix = get_affine_transform(center, scale, aug.rotation, self.input_size)
        if aug.flip:
            matrix = mirror_affine(matrix, width)
        label_crop = warp_label(label, matrix, self.input_size)
        if aug.flip:
            label_crop = cv2.LUT(label_crop, self._flip_lut)  # left/right pairs swap
        # dtype conversions in numpy: torch's thread pool is slow for small ops in busy workers
        sample = {
            "image": self._warp_image(image, matrix),
            "label": torch.from_numpy(label_crop.astype(self.target_dtype, copy=False)),
            "meta": {
                "name": self.ids[index],
                "center": center,
                "scale": scale,
                "rotation": aug.rotation,
                "height": height,
                "width": width,
                "flipped": aug.flip,
            },
        }
        if self.with_edge:
            edge = generate_edge(torch.from_numpy(label_crop)).numpy()
            sample["edge"] = torch.from_numpy(edge.astype(self.target_dtype, copy=False))
        return sample

    def _warp_image(self, image_bgr: np.ndarray, matrix: np.ndarray) -> torch.Tensor:
        """The (3, H, W) crop tensor of ``image_dtype`` (see the class doc)."""
        if self.image_dtype == torch.float32:
            crop = warp_image(image_bgr, matrix, self.input_size)
            return normalize(crop, self.input_spec, image_colour="BGR")
        rgb = self.input_spec.colour == "RGB"
        crop = warp_image(image_bgr, matrix, self.input_size, swap_rb=rgb)
        # a CHW view of the HWC crop: the DataLoader's collate copies it into the batch anyway
        return torch.from_numpy(crop).permute(2, 0, 1)


class _SampleCheck(Dataset):
    """`LIPDataset.check_sample` of some indices, as a dataset for DataLoader workers."""

    def __init__(self, dataset: LIPDataset, indices: range) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> int:
        self.dataset.check_sample(self.indices[position])
        return position


def check_samples(dataset: LIPDataset, workers: int = 0, shard: tuple[int, int] = (0, 1)) -> None:
    """Read every sample of ``dataset`` once (``shard`` = (i, n): every n-th from the i-th), in
    ``workers`` DataLoader processes, so that a bad file is met before a run writes anything.

    Raises:
        FileNotFoundError, ValueError: of the first bad sample met (`LIPDataset.check_sample`);
            from a worker, its message ends with that line (`data_error_line`).
    """
    index, count = shard
    samples = _SampleCheck(dataset, range(index, len(dataset), count))
    loader = DataLoader(
        samples,
        batch_size=CHECK_BATCH,
        num_workers=workers,
        collate_fn=len,
        worker_init_fn=init_decode_worker,
        generator=torch.Generator(),  # its worker seed draw leaves the global RNG alone
    )
    for _ in loader:
        pass
