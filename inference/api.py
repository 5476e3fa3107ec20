"""Python API for try-on pipelines: parse photos and build try-on masks.

from inference.api import HumanParser
parser = HumanParser.from_checkpoint("log/run/best.pth.tar", device="cuda")
parser.save_pretrained("models/my-parser")  # model.safetensors + config.json + README.md
parser = HumanParser.from_pretrained("models/my-parser")  # or a Hub repo id, "owner/name"
labels = parser.parse(image)            # (H, W) uint8 class ids at the photo's size
mask = parser.masks(image, "upper")     # (H, W) uint8, 0 or 255

Images are RGB numpy arrays (H, W[, 3|4] uint8) or PIL images. extract.py runs the same steps
(`predict` on a batch of crops, `to_original` per photo) with decoding in DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from datasets.images import prepare_image
from datasets.label_set import LabelSet
from datasets.transforms import MIN_IMAGE_SIDE, logits_to_original
from inference.mask_rules import MaskControls
from inference.masks import build_mask
from inference.predict import labels_to_original, predict_logits
from inference.pretrained import resolve_model_folder, run_files, save_model_folder
from networks import build_model
from networks.contracts import DEFAULT_INPUT_SIZE, MIN_INPUT_SIDE
from networks.weights import WeightsError, load_weights, read_checkpoint
from utils.distributed import resolve_device

RGB_CHANNELS = (3, 4)  # RGB, or RGBA whose alpha is dropped
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")  # PIL's 16-bit greyscale modes


def _as_rgb(image) -> np.ndarray:
    """PIL image or (H, W[, 3|4]) uint8/uint16 array (RGB order) -> (H, W, 3) uint8 RGB.

    PIL images are turned upright by their EXIF orientation first (as extract.py's decoder
    does); 16-bit images (PIL mode I;16, uint16 arrays) keep their top 8 bits, not clipped."""
    if isinstance(image, Image.Image):
        image = ImageOps.exif_transpose(image)
        if image.mode in SIXTEEN_BIT_MODES:
            image = np.asarray(image).astype(np.uint16)
        else:
            image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    if array.ndim >= 2 and min(array.shape[:2]) < MIN_IMAGE_SIDE:
        raise ValueError(
            f"HumanParser: image is {array.shape[1]}x{array.shape[0]} px; "
            f"a photo needs at least {MIN_IMAGE_SIDE} px per side"
        )
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in RGB_CHANNELS or array.dtype != np.uint8:
        raise ValueError(
            f"HumanParser: expected an RGB uint8 image (H, W, 3), got shape {array.shape} "
            f"{array.dtype}; convert it, e.g. np.asarray(pil_image.convert('RGB'))"
        )
    return np.ascontiguousarray(array[..., :3])


class HumanParser:
    """A trained parser with its label set and input convention, ready for photos.

    Args:
        model: a network from `networks.build_model` (weights loaded).
        label_set: the classes the model predicts.
        input_size: crop (H, W) the model was trained with.
        device: torch device; amp: "off", "bf16" or "fp16".
        flip: average with the mirrored photo; scales: test scales of the crop.
    """

    source: Path | None = None  # the checkpoint or model folder `from_checkpoint` read

    def __init__(
        self,
        model: nn.Module,
        label_set: LabelSet,
        input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
        device: str | torch.device = "cpu",
        amp: str = "off",
        flip: bool = False,
        scales: Sequence[float] = (1.0,),
    ):
        size = tuple(int(v) for v in input_size)
        if len(size) != 2 or min(size) < MIN_INPUT_SIDE:
            raise ValueError(
                f"HumanParser: input_size {tuple(input_size)} must be (H, W) with both sides at "
                f"least {MIN_INPUT_SIDE} px, e.g. (512, 384)"
            )
        if not scales or not all(np.isfinite(v) and v > 0 for v in scales):
            raise ValueError(
                f"HumanParser: scales {tuple(scales)} must be numbers above 0, e.g. (1.0,)"
            )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.label_set = label_set
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.amp = amp
        self.scales = tuple(scales)
        self.flip_permutation = torch.as_tensor(label_set.flip_permutation()) if flip else None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", **kwargs) -> HumanParser:
        """Load a self-describing checkpoint written by train.py (arch, label set, input size),
        or a model folder (`save_pretrained`).

        Keyword arguments go to `HumanParser` (`input_size` overrides the training crop).
        Raises FileNotFoundError or ValueError with a message naming the file and the fix.
        """
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such checkpoint; check the path")
        state = read_checkpoint(path)  # WeightsError (a ValueError) names the file and fix
        if "arch" not in state or not state.get("label_set"):
            raise ValueError(
                f"{path}: no arch/label set inside (not written by train.py); "
                "build the model with networks.build_model and use HumanParser(...)"
            )
        model = build_model(state["arch"], state["num_classes"], heads=state.get("heads", "full"))
        try:
            load_weights(model, state)  # the dict already read: no second read of the file
        except WeightsError as err:
            raise ValueError(f"{path}: {err}") from None
        input_size = kwargs.pop("input_size", None) or state["input"]["size"]
        label_set = LabelSet.from_dict(state["label_set"])
        parser = cls(model, label_set, input_size, resolve_device(device), **kwargs)
        parser.source = Path(path)
        return parser

    @classmethod
    def from_pretrained(
        cls, folder_or_repo_id: str | Path, device: str = "auto", **kwargs
    ) -> HumanParser:
        """Load a model folder (`save_pretrained`), local or a Hugging Face Hub repo id.

        A repo id ("owner/name") is fetched with huggingface_hub (config.json, model.safetensors
        and README.md only). Keyword arguments are those of `from_checkpoint`.
        Raises FileNotFoundError, ValueError or, offline, ConnectionError with one line.
        """
        return cls.from_checkpoint(resolve_model_folder(folder_or_repo_id), device, **kwargs)

    def save_pretrained(
        self,
        folder: str | Path,
        args_json: str | Path | None = None,
        results_json: str | Path | None = None,
    ) -> Path:
        """Write a model folder: model.safetensors, config.json and a model card README.md.

        Args:
            args_json, results_json: train.py's args.json and evaluate.py's results.json for
                the card; by default those next to the checkpoint this parser was loaded from.
        """
        found_args, found_results = run_files(self.source)
        return save_model_folder(
            self.model,
            self.label_set,
            self.input_size,
            folder,
            args_json=args_json or found_args,
            results_json=results_json or found_results,
        )

    def predict(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) fusion logits (stride 4) of (N, 3, H, W) normalised crops."""
        crops = crops.to(self.device, non_blocking=True)
        return predict_logits(self.model, crops, self.scales, self.flip_permutation, self.amp)

    def to_original(self, crop_logits: torch.Tensor, meta: dict) -> torch.Tensor:
        """(C, h, w) logits of one crop -> (C, H, W) float32 logits on the photo (`meta` from
        `prepare_image`), by the inverse crop affine."""
        return logits_to_original(
            crop_logits[None],
            meta["center"],
            meta["scale"],
            (meta["height"], meta["width"]),
            self.input_size,
        )[0]

    def to_labels(self, crop_logits: torch.Tensor, meta: dict) -> np.ndarray:
        """(C, h, w) logits of one crop -> (H, W) uint8 class ids on the photo: the argmax of
        `to_original`, interpolated only near class boundaries (`labels_to_original`)."""
        labels = labels_to_original(
            crop_logits[None],
            meta["center"],
            meta["scale"],
            (meta["height"], meta["width"]),
            self.input_size,
        )
        return labels[0].cpu().numpy()

    def _crop_logits(self, images: Sequence) -> tuple[torch.Tensor, list[dict]]:
        prepared = [
            prepare_image(_as_rgb(image), self.input_size, self.model.input_spec)
            for image in images
        ]
        crop_logits = self.predict(torch.stack([tensor for tensor, _ in prepared]))
        return crop_logits, [meta for _, meta in prepared]

    def logits(self, images: Sequence) -> list[torch.Tensor]:
        """(C, H, W) float32 logits of each photo at its own size (none gives [])."""
        if len(images) == 0:
            return []
        crop_logits, metas = self._crop_logits(images)
        return [
            self.to_original(logits, meta) for logits, meta in zip(crop_logits, metas, strict=True)
        ]

    def parse(self, image) -> np.ndarray:
        """(H, W) uint8 class ids of one photo (numpy RGB or PIL), at the photo's size."""
        return self.parse_batch([image])[0]

    def parse_batch(self, images: Sequence) -> list[np.ndarray]:
        """`parse` for several photos in one forward pass (sizes may differ; none gives [])."""
        if len(images) == 0:
            return []
        crop_logits, metas = self._crop_logits(images)
        return [
            self.to_labels(logits, meta) for logits, meta in zip(crop_logits, metas, strict=True)
        ]

    def masks(
        self,
        image,
        kind: str = "upper",
        dilate: int = 0,
        hull: str | None = None,
        feather: int = 0,
        protect: Sequence[str] = (),
    ) -> np.ndarray:
        """(H, W) uint8 try-on mask of `kind` (upper, lower, overall, inner, outer): 0/255, with
        soft edge values only with `feather`.

        Args:
            dilate: grow the mask by this many px; hull: "convex", "box" or "none" instead of
                the rules' mode; feather: soft edge width in px; protect: class names never
                painted (on top of the rules' face/hands/feet). Defaults follow
                mappings/tryon_masks.yaml, as extract.py's --dilate/--hull/--feather/--protect.
        """
        controls = MaskControls(dilate=dilate, hull=hull, feather=feather, protect=tuple(protect))
        return build_mask(self.parse(image), self.label_set, kind, controls=controls)
