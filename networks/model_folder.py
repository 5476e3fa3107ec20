"""Model folders: a trained parser as JSON and safetensors, with nothing to unpickle.

    config.json        {"format": "schp-segformer-model", "format_version": 1, "arch", "heads",
                        "num_classes", "label_set" (datasets.labels.LabelSet.to_dict: name,
                        names, palette, flip_pairs, mask_rules),
                        "input": {"size": [H, W], "mean", "std", "colour"}}
    model.safetensors  the state dict in our names (utils.checkpoint.cpu_state_dict)
    README.md          the model card (inference/pretrained.py writes it; nothing reads it)

`read_model_folder` returns the dict a train.py checkpoint holds (utils/checkpoint.py
`model_record`), so `networks.weights.read_checkpoint(folder)` and `load_weights(model, folder)`
read a folder as they read a `.pth.tar`, and every `--model-restore` takes one. `input.mean`,
`std` and `colour` describe the arch's normalisation for readers outside this project; the
model applies its own (`model.input_spec`). A folder is ours when its config.json is not a
Hugging Face transformers config (those have `model_type`); from any other folder
`snapshot_weights` takes `model.safetensors`, or `pytorch_model.bin` of a transformers snapshot,
and refuses folders that hold only pickles (`*.pth`, `*.bin`, ...).
"""

import json
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from networks import HEADS, MODELS
from networks.contracts import MIN_INPUT_SIDE
from networks.errors import WeightsError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FORMAT_NAME = "schp-segformer-model"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("arch", "num_classes", "label_set", "input")
COLOURS = ("RGB", "BGR")
CHANNELS = 3
HF_PICKLE_NAME = "pytorch_model.bin"  # read only from a transformers snapshot folder
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".tar", ".pkl", ".ckpt")
# the 1x1 convs with one output channel per class (as networks.weights.CLASSIFIER_KEYS)
CLASSIFIER_KEYS = ("fusion.3.weight", "decoder.conv4.weight", "head.linear_pred.weight")
CONFIG_FIX = "restore the folder's own config.json or re-create the folder (convert_to_folder.py)"


def _json_dict(path: Path) -> dict | None:
    """The JSON object in `path`, None when it is not one (unreadable, not JSON, a list)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _is_transformers_config(path: Path) -> bool:
    data = _json_dict(path)
    return data is not None and "model_type" in data


def is_model_folder(path: str | Path) -> bool:
    """True for a folder with a config.json that is not a Hugging Face transformers config."""
    config = Path(path) / CONFIG_NAME
    return config.is_file() and not _is_transformers_config(config)


def snapshot_weights(folder: str | Path) -> Path:
    """The weights file of a folder that is not ours: `model.safetensors`, or the
    `pytorch_model.bin` of a transformers snapshot (its config.json has `model_type`).

    Raises:
        WeightsError: the folder holds no such file (e.g. only `*.pth` pickles).
    """
    folder = Path(folder)
    if (folder / WEIGHTS_NAME).is_file():
        return folder / WEIGHTS_NAME
    if (folder / HF_PICKLE_NAME).is_file() and _is_transformers_config(folder / CONFIG_NAME):
        return folder / HF_PICKLE_NAME
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise WeightsError(
            f"{folder}: holds only pickled weights ({', '.join(pickles)}), and a folder is read "
            f"from {CONFIG_NAME} + {WEIGHTS_NAME} only; pass the file itself "
            f"({folder / pickles[0]}) or convert it: python convert_to_folder.py "
            f"--model-restore {folder / pickles[0]} --out <folder>"
        )
    raise WeightsError(
        f"{folder}: not a model folder (no {CONFIG_NAME} + {WEIGHTS_NAME}); pass a checkpoint "
        "file, or write a folder with python convert_to_folder.py"
    )


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a `.safetensors` file on the CPU; `WeightsError` names the file and fix."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise WeightsError(f"{path}: reading it needs `pip install safetensors`") from None
    try:
        return load_file(path, device="cpu")
    except Exception:  # safetensors has its own error types for damaged files
        raise WeightsError(f"{path}: not a readable safetensors file; re-download it") from None


def _numbers(value: object, count: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == count
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    )


def _config_problem(config: object) -> str | None:
    """What is wrong with a parsed config.json (None: nothing), as the middle of one line."""
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        return f"not a {FORMAT_NAME} config (format {found!r})"
    if not isinstance(config.get("format_version"), int):
        return "has no integer format_version"
    if config["format_version"] > FORMAT_VERSION:
        return (
            f"format_version {config['format_version']} is newer than this code reads "
            f"({FORMAT_VERSION}); update schp-segformer"
        )
    if missing := [key for key in REQUIRED_KEYS if key not in config]:
        return f"lacks {', '.join(missing)}"
    if config["arch"] not in MODELS:
        return f"unknown arch {config['arch']!r} (known: {', '.join(sorted(MODELS))})"
    if config.get("heads", "full") not in HEADS:
        return f"unknown heads {config['heads']!r} (known: {', '.join(HEADS)})"
    num_classes = config["num_classes"]
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        return f"num_classes {num_classes!r} is not a positive integer"
    labels = config["label_set"]
    if not isinstance(labels, dict) or not isinstance(labels.get("names"), list):
        return "label_set has no list of names"
    if len(labels["names"]) != num_classes:
        return (
            f"label set {labels.get('name')!r} names {len(labels['names'])} classes but "
            f"num_classes is {num_classes}"
        )
    palette = labels.get("palette")
    if palette is not None and (not isinstance(palette, list) or len(palette) != num_classes):
        return f"label set palette does not have one colour for each of the {num_classes} classes"
    pairs = labels.get("flip_pairs", [])
    if not isinstance(pairs, list) or any(not _numbers(pair, 2) for pair in pairs):
        return "label set flip_pairs is not a list of [left, right] class ids"
    if any(not 0 <= i < num_classes for pair in pairs for i in pair):
        return f"label set flip_pairs name class ids outside 0..{num_classes - 1}"
    spec = config["input"]
    size = spec.get("size") if isinstance(spec, dict) else None
    if not _numbers(size, 2) or not all(isinstance(v, int) and v >= MIN_INPUT_SIDE for v in size):
        return f"input size {size!r} is not [H, W] with sides of at least {MIN_INPUT_SIDE} px"
    if not (_numbers(spec.get("mean"), CHANNELS) and _numbers(spec.get("std"), CHANNELS)):
        return f"input mean/std are not {CHANNELS} numbers each"
    if spec.get("colour") not in COLOURS:
        return f"input colour {spec.get('colour')!r} is not one of {', '.join(COLOURS)}"
    return None


def _check_classes(num_classes: int, state_dict: Mapping[str, Tensor], config_path: Path) -> None:
    for key in CLASSIFIER_KEYS:
        if key in state_dict and state_dict[key].shape[0] != num_classes:
            raise WeightsError(
                f"{config_path}: num_classes is {num_classes} but {WEIGHTS_NAME} has "
                f"{state_dict[key].shape[0]} classes ({key}); {CONFIG_FIX}"
            )


def read_model_folder(folder: str | Path) -> dict:
    """A model folder as the dict a train.py checkpoint holds (arch, num_classes, label_set,
    input, state_dict; heads when not "full").

    Raises:
        WeightsError: one line naming config.json or model.safetensors and the fix (a config
            that is not ours, incomplete, or disagrees with itself or with the weights).
    """
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    config = _json_dict(config_path)
    if config is None:
        raise WeightsError(f"{config_path}: not a JSON object; {CONFIG_FIX}")
    if problem := _config_problem(config):
        raise WeightsError(f"{config_path}: {problem}; {CONFIG_FIX}")
    weights_path = folder / WEIGHTS_NAME
    if not weights_path.is_file():
        raise WeightsError(
            f"{weights_path}: missing, so the folder is incomplete; copy the whole folder again "
            "or re-create it with convert_to_folder.py"
        )
    state_dict = read_safetensors(weights_path)
    _check_classes(config["num_classes"], state_dict, config_path)
    heads = config.get("heads", "full")
    return {
        "arch": config["arch"],
        **({"heads": heads} if heads != "full" else {}),
        "num_classes": config["num_classes"],
        "label_set": config["label_set"],
        "input": config["input"],
        "state_dict": state_dict,
    }
