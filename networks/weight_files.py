"""Reading weights files safely: torch checkpoints (weights_only), safetensors, model folders.

Every failure is one `WeightsError` line that names the file and the fix; `networks.weights`
detects the format of what was read and loads it into a model. Also the download of SCHP's
released checkpoints (gdown).
"""

import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from networks.errors import WeightsError
from networks.model_folder import (
    is_model_folder,
    read_model_folder,
    read_safetensors,
    snapshot_weights,
)

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
HEADER_BYTES = 64
DATA_PARALLEL_PREFIX = "module."
# torch's legacy (non-zip) files start with this number, pickled (torch/serialization.py)
LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
SCHP_DOWNLOADS = {  # name: (file name, Google Drive id), from the SCHP README
    "lip": ("exp-schp-201908261155-lip.pth", "1k4dllHpu0bdx38J7H28rVVLpU-kOHmnH"),
    "atr": ("exp-schp-201908301523-atr.pth", "1ruJg4lqR_jgQPj-9K0PP-L2vJERYOxLP"),
    "pascal": ("exp-schp-201908270938-pascal-person-part.pth", "1E5YwNKW2VOEayK9mWCS3Kpsxf-3z04ZE"),
}


def read_file(path: str | Path) -> object:
    """What a weights file or model folder holds, read without unpickling code objects."""
    path = Path(path)
    if is_model_folder(path):  # config.json + model.safetensors (networks/model_folder.py)
        return read_model_folder(path)
    if path.is_dir():  # a Hugging Face snapshot folder
        path = snapshot_weights(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file; check the path (see checkpoints/README.md)")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        return safe_torch_load(path)
    except Exception as exc:  # damage shows as RuntimeError, EOFError, UnpicklingError, ...
        error = exc
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if refused:
        raise WeightsError(
            f"{path}: holds a Python object ({refused[1]}) that safe loading refuses; re-save it "
            "with plain types only, e.g. torch.save({'state_dict': model.state_dict()}, path)"
        )
    if legacy := legacy_format_line(path, error):
        raise WeightsError(legacy)
    raise WeightsError(
        f"{path}: not a PyTorch checkpoint (truncated or corrupt); re-download it or point "
        "--model-restore at a .pth/.pth.tar file"
    )


def safe_torch_load(path: str | Path) -> object:
    """`torch.load(weights_only=True)` on the CPU, without torch's warning about the pickle
    protocol of legacy files (their error is reported in one line instead)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location="cpu", weights_only=True)


def legacy_format_line(path: str | Path, error: Exception) -> str | None:
    """The error line for a legacy-format torch file that safe loading could not read, else None.

    torch < 1.6 wrote a sequence of pickles instead of a zip archive; `torch.load(weights_only=
    True)` reads such files only when they were pickled with protocol 2 or 3 (the default), and
    reports "Unsupported operand" for the others.
    """
    with Path(path).open("rb") as f:
        header = f.read(HEADER_BYTES)
    legacy = not header.startswith(ZIP_MAGIC) and LEGACY_MAGIC in header
    if not legacy or "Unsupported operand" not in str(error):
        return None
    return (
        f"{path}: a legacy-format PyTorch file (not a zip archive: written by torch < 1.6 or "
        "with _use_new_zipfile_serialization=False, pickle protocol > 3) that safe loading "
        "cannot read; if you trust it, re-save it with a current torch: "
        "torch.save(torch.load(f, weights_only=False), f2), and use f2"
    )


def check_finite(state_dict: Mapping[str, Tensor], name: str) -> None:
    """Refuse weights holding NaN or Inf (a diverged run): they would predict background only.

    Raises:
        WeightsError: naming the first non-finite tensor, its count of such values and how many
            tensors have them.
    """
    bad = [
        (key, int((~torch.isfinite(t)).sum()), t.numel())
        for key, t in state_dict.items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        key, count, numel = bad[0]
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise WeightsError(
            f"{name}: {key} has {count} of {numel} values NaN or Inf{more}; the weights are "
            "broken (a diverged run?): use an earlier checkpoint or re-download them"
        )


def state_dict_of(obj: object, name: str) -> dict[str, Tensor]:
    """The tensors of a checkpoint (unwrapping `state_dict`/`model`), without `module.`."""
    if isinstance(obj, Mapping):
        inner = [obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)]
        obj = inner[0] if inner else obj
    if not isinstance(obj, Mapping) or not obj:
        what = f"an empty {type(obj).__name__}" if isinstance(obj, Mapping) else repr(obj)[:40]
        raise WeightsError(
            f"{name}: holds {what}, not model weights; point --model-restore at a checkpoint"
        )
    bad = next((k for k, v in obj.items() if not isinstance(v, Tensor)), None)
    if bad is not None:
        raise WeightsError(f"{name}: entry {bad!r} is not a tensor, so this is not a state dict")
    return {k.removeprefix(DATA_PARALLEL_PREFIX): v for k, v in obj.items()}


def read_checkpoint(path: str | Path) -> dict:
    """Read a whole checkpoint dict safely (weights_only); `WeightsError` names file and fix."""
    state = read_file(path)
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, not a checkpoint dict")
    return state


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a weights file safely; every failure is one `WeightsError` line with the fix."""
    return state_dict_of(read_file(path), str(path))


def download_schp_weights(name: str, dest_dir: str | Path = "checkpoints") -> Path:
    """Fetch a released SCHP checkpoint ("lip", "atr", "pascal") with gdown; kept if present."""
    if name not in SCHP_DOWNLOADS:
        raise WeightsError(
            f"unknown SCHP checkpoint {name!r}; choose from {sorted(SCHP_DOWNLOADS)}"
        )
    filename, drive_id = SCHP_DOWNLOADS[name]
    dest = Path(dest_dir) / filename
    if dest.is_file():
        return dest
    partial = dest.with_name(dest.name + ".part")
    try:
        import gdown

        dest.parent.mkdir(parents=True, exist_ok=True)
        done, reason = gdown.download(id=drive_id, output=str(partial), quiet=False), "no file"
    except Exception as exc:  # ImportError, or whatever network error gdown/requests raise
        done, reason = None, (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if not done or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise WeightsError(
            f"{dest}: could not download the SCHP {name} weights ({reason}); download them by "
            f"hand (`gdown {drive_id}`, see checkpoints/README.md) into {dest.parent}/"
        )
    partial.replace(dest)
    return dest
