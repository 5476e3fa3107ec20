"""Model folders (config.json + model.safetensors + model card): save_pretrained/from_pretrained
round trips, the checkpoint converter for every format, the scripts reading folders, refusals of
tampered configs and pickles, and Hub repo ids (mocked; offline is one line)."""

import json
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image
from test_evaluate import _schp_state_dict
from test_extract import _extract, checkpoint, photos  # noqa: F401  (fixtures)

import convert_to_folder
import evaluate
import inference.pretrained as pretrained
from datasets.dolls import render_doll
from datasets.synthetic import make_lip_dataset
from inference.api import HumanParser
from networks import build_model
from networks import hf_names as H
from networks.model_folder import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME
from networks.weights import WeightsError, load_weights, read_checkpoint
from utils import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]
LIP_MAP = REPO / "mappings" / "lip_map.yaml"
FOLDER_FILES = [CARD_NAME, CONFIG_NAME, WEIGHTS_NAME]
SCHP_CROP = (64, 64)
RUN_ARGS = {"arch": "segformer_mit_b0", "input_size": [64, 48], "do_mapping": True, "gpu": None}
RESULTS = {"data_dir": "data/LIP", "split": "val", "images": 3, "miou": 42.125,
           "iou": {"Face": 61.5}}  # fmt: skip


def _photo(seed: int = 1) -> np.ndarray:
    """An RGB doll photo (render_doll draws BGR)."""
    bgr = render_doll(np.random.default_rng(seed), 90, 70, (0.8, 0.95))["image"]
    return np.ascontiguousarray(bgr[..., ::-1])


def _convert(source: Path, out: Path, *flags: str) -> Path:
    convert_to_folder.main(
        convert_to_folder.get_args_parser().parse_args(
            ["--model-restore", str(source), "--out", str(out), *flags]
        )
    )
    return out


def _assert_same_predictions(a: HumanParser, b: HumanParser) -> None:
    photo = _photo()
    assert torch.equal(a.logits([photo])[0], b.logits([photo])[0])
    assert np.array_equal(a.parse(photo), b.parse(photo))
    for kind in ("upper", "lower"):
        assert np.array_equal(a.masks(photo, kind), b.masks(photo, kind))


@pytest.fixture(scope="module")
def run_dir(checkpoint, tmp_path_factory) -> Path:  # noqa: F811
    """A train.py-like log folder: best.pth.tar with args.json and results.json beside it."""
    folder = tmp_path_factory.mktemp("run")
    (folder / "best.pth.tar").write_bytes(checkpoint.read_bytes())
    (folder / "args.json").write_text(json.dumps(RUN_ARGS))
    (folder / "results.json").write_text(json.dumps(RESULTS))
    return folder


@pytest.fixture(scope="module")
def schp_file(tmp_path_factory) -> Path:
    """A released-SCHP-format resnet101 checkpoint (random weights, 20 LIP classes)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("schp") / "exp-schp-201908261155-lip.pth"
    torch.save({"state_dict": _schp_state_dict(build_model("resnet101", 20))}, path)
    return path


def _folder(tmp_path: Path, checkpoint: Path) -> Path:  # noqa: F811
    return HumanParser.from_checkpoint(checkpoint, device="cpu").save_pretrained(tmp_path / "m")


# ---------------------------------------------------------------- round trips


def test_save_then_load_pretrained_predicts_exactly_like_the_checkpoint(run_dir, tmp_path):
    parser = HumanParser.from_checkpoint(run_dir / "best.pth.tar", device="cpu")
    folder = parser.save_pretrained(tmp_path / "merged-b0")
    assert sorted(p.name for p in folder.iterdir()) == FOLDER_FILES
    loaded = HumanParser.from_pretrained(folder, device="cpu")
    assert loaded.input_size == parser.input_size and loaded.label_set.name == "merged"
    assert loaded.label_set.names == parser.label_set.names
    assert np.array_equal(loaded.label_set.palette, parser.label_set.palette)
    _assert_same_predictions(parser, loaded)
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["label_set"]["mask_rules"]["upper"]["paint"] == ["Upper-clothes", "One-piece"]
    assert config["input"] == {"size": [64, 48], "mean": [0.485, 0.456, 0.406],
                               "std": [0.229, 0.224, 0.225], "colour": "RGB"}  # fmt: skip
    card = (folder / CARD_NAME).read_text()  # args.json / results.json found beside the file
    assert "python train.py \\\n    --arch segformer_mit_b0 \\\n    --input-size 64,48" in card
    assert "--do-mapping" in card and "--gpu" not in card
    assert (
        "| mIoU (valid classes) | 42.12 |" in card and "| 2 | Face | `#ffc896` |  | 61.50 |" in card
    )


def test_folder_reads_as_the_same_dict_a_checkpoint_holds(checkpoint, tmp_path):  # noqa: F811
    state, folder = read_checkpoint(checkpoint), read_checkpoint(_folder(tmp_path, checkpoint))
    assert folder.keys() == {"arch", "num_classes", "label_set", "input", "state_dict"}
    for key in ("arch", "num_classes", "input"):
        assert folder[key] == state[key]
    assert folder["label_set"]["names"] == state["label_set"]["names"]
    assert all(torch.equal(folder["state_dict"][k], v) for k, v in state["state_dict"].items())


def test_converted_original_schp_folder_predicts_like_the_schp_file(schp_file, tmp_path):
    folder = _convert(schp_file, tmp_path / "schp-lip", "--arch", "resnet101", "--num-classes",
                      "20", "--input-size", ",".join(map(str, SCHP_CROP)))  # fmt: skip
    loaded = HumanParser.from_pretrained(folder, device="cpu")
    assert loaded.label_set.name == "lip" and loaded.model.input_spec.colour == "BGR"
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["arch"] == "resnet101" and config["input"]["colour"] == "BGR"
    model = build_model("resnet101", 20)
    load_weights(model, schp_file)
    from_file = HumanParser(model, loaded.label_set, SCHP_CROP, device="cpu")
    _assert_same_predictions(from_file, loaded)


# ---------------------------------------------------------------- converter, every format


def test_converter_writes_folders_from_ours_seed_and_hf(checkpoint, tmp_path):  # noqa: F811
    ours = _convert(checkpoint, tmp_path / "ours")
    reference = HumanParser.from_checkpoint(checkpoint, device="cpu")
    state = reference.model.state_dict()
    abn = ("edge.conv1.1.", "edge.conv2.1.", "edge.conv3.1.", "fusion.1.")
    seed = {f"module.{k}": v for k, v in state.items()
            if not (k.startswith(abn) and k.endswith("num_batches_tracked"))}  # fmt: skip
    torch.save({"state_dict": seed, "cycle_n": 3}, tmp_path / "schp_3_checkpoint.pth.tar")
    seed_folder = _convert(tmp_path / "schp_3_checkpoint.pth.tar", tmp_path / "seed",
                           "--arch", "segformer_mit_b0", "--num-classes", "9",
                           "--input-size", "64,48")  # fmt: skip
    for folder in (ours, seed_folder):
        assert sorted(p.name for p in folder.iterdir()) == FOLDER_FILES
    _assert_same_predictions(reference, HumanParser.from_pretrained(ours, device="cpu"))
    # the seed's InPlace-ABN scales w become |w| + 1e-5: the same logits up to that
    from_seed = HumanParser.from_pretrained(seed_folder, device="cpu")
    photo = _photo()
    torch.testing.assert_close(from_seed.logits([photo])[0], reference.logits([photo])[0],
                               atol=1e-3, rtol=0)  # fmt: skip

    torch.manual_seed(0)
    plain = build_model("segformer_mit_b0", 20, heads="plain").eval()
    hf_dir = tmp_path / "hf-snapshot"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "segformer"}))
    torch.save(H.convert_to_hf_state_dict(plain.state_dict(), "v5"), hf_dir / "pytorch_model.bin")
    with pytest.raises(SystemExit, match="holds no weights for edge, fusion.*--heads plain"):
        _convert(hf_dir, tmp_path / "hf-full", "--arch", "segformer_mit_b0", "--num-classes", "20")
    hf = _convert(hf_dir, tmp_path / "hf", "--arch", "segformer_mit_b0", "--num-classes", "20",
                  "--heads", "plain", "--input-size", "64,48")  # fmt: skip
    loaded = HumanParser.from_pretrained(hf, device="cpu")
    assert loaded.model.heads == "plain" and loaded.label_set.name == "lip"
    _assert_same_predictions(HumanParser(plain, loaded.label_set, (64, 48)), loaded)


def test_converter_needs_arch_for_foreign_files_and_agreeing_flags_for_ours(
    checkpoint,  # noqa: F811
    schp_file,
    tmp_path,
):
    with pytest.raises(SystemExit, match="schp file records no architecture; pass --arch"):
        _convert(schp_file, tmp_path / "a")
    with pytest.raises(SystemExit, match="records num_classes=9 but --num-classes 20 was given"):
        _convert(checkpoint, tmp_path / "b", "--num-classes", "20")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(SystemExit, match="exists and is not a model folder"):
        _convert(checkpoint, tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


# ---------------------------------------------------------------- scripts take folders


def test_evaluate_and_extract_take_a_folder_as_model_restore(checkpoint, photos, tmp_path):  # noqa: F811
    folder = _folder(tmp_path, checkpoint)
    data = make_lip_dataset(tmp_path / "lip", 0, 2, (96, 64), seed=0)
    for name, weights in (("folder", folder), ("file", checkpoint)):
        evaluate.main(
            evaluate.get_args_parser().parse_args(
                ["--model-restore", str(weights), "--data-dir", str(data), "--do-lip-mapping"]
                + ["--log-dir", str(tmp_path / name), "--workers", "0", "--device", "cpu"]
            )
        )
    results = [json.loads((tmp_path / n / "results.json").read_text()) for n in ("folder", "file")]
    assert results[0]["miou"] == results[1]["miou"] and results[0]["input_size"] == [64, 48]
    by_folder = _extract(folder, photos, tmp_path / "x_folder", "--masks", "upper")
    by_file = _extract(checkpoint, photos, tmp_path / "x_file", "--masks", "upper")
    for out in ("parsing/doll_wide.png", "masks/upper/doll_wide.png"):
        assert np.array_equal(np.asarray(Image.open(by_folder / out)),
                              np.asarray(Image.open(by_file / out)))  # fmt: skip


def test_train_restores_model_and_teacher_from_a_folder(checkpoint, tmp_path):  # noqa: F811
    folder = _folder(tmp_path, checkpoint)
    model, teacher = build_model("segformer_mit_b0", 9), build_model("segformer_mit_b0", 9)
    cycle = ckpt.restore_weights(model, teacher, model_restore=folder, schp_restore=folder)
    expected = read_checkpoint(checkpoint)["state_dict"]
    for net in (model, teacher):
        assert all(torch.equal(net.state_dict()[k], v) for k, v in expected.items())
    assert cycle == 0


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(num_classes=20), "label set 'merged' names 9 classes but num_class"),
        (lambda c: c["label_set"].update(names=[f"c{i}" for i in range(20)], palette=None)
         or c.update(num_classes=20), "num_classes is 20 but model.safetensors has 9 classes"),
        (lambda c: c.update(arch="segformer_mit_b9"), "unknown arch 'segformer_mit_b9'"),
        (lambda c: c["input"].update(colour="YUV"), "input colour 'YUV' is not one of RGB, BGR"),
        (lambda c: c.pop("label_set"), "lacks label_set"),
        (lambda c: c.update(format_version=2), "format_version 2 is newer than this code reads"),
    ],
)  # fmt: skip
def test_tampered_config_is_one_line_naming_config_json(checkpoint, tmp_path, edit, message):  # noqa: F811
    folder = _folder(tmp_path, checkpoint)
    config = json.loads((folder / CONFIG_NAME).read_text())
    edit(config)
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=message) as err:
        read_checkpoint(folder)
    line = str(err.value)
    assert line.startswith(f"{folder / CONFIG_NAME}: ") and "\n" not in line
    assert line.endswith("re-create the folder (convert_to_folder.py)")
    with pytest.raises(ValueError, match=message):
        HumanParser.from_pretrained(folder, device="cpu")


def test_broken_json_and_missing_weights_are_named(checkpoint, tmp_path):  # noqa: F811
    folder = _folder(tmp_path, checkpoint)
    (folder / WEIGHTS_NAME).unlink()
    with pytest.raises(WeightsError, match="model.safetensors: missing, so the folder is incompl"):
        read_checkpoint(folder)
    (folder / CONFIG_NAME).write_text('{"format": "schp-segformer-model", ')
    with pytest.raises(WeightsError, match="config.json: not a JSON object"):
        read_checkpoint(folder)


def test_folders_with_only_pickles_are_refused_without_unpickling(tmp_path, monkeypatch):
    def no_unpickling(*args, **kwargs):
        raise AssertionError("a pickle was read from a model folder")

    state = {"state_dict": build_model("segformer_mit_b0", 9).state_dict()}
    pickles = tmp_path / "pickles"
    pickles.mkdir()
    torch.save(state, pickles / "best.pth")
    torch.save(state, pickles / "pytorch_model.bin")  # no transformers config.json beside it
    ours = tmp_path / "ours"  # our config.json, the weights as a pickle instead of safetensors
    ours.mkdir()
    (ours / CONFIG_NAME).write_text(json.dumps({"format": "schp-segformer-model"}))
    torch.save(state, ours / "pytorch_model.bin")
    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(WeightsError, match=r"holds only pickled weights \(best.pth, pytorch_mo"):
        read_checkpoint(pickles)
    with pytest.raises(WeightsError, match="config.json: has no integer format_version"):
        read_checkpoint(ours)
    with pytest.raises(ValueError, match="a file, not a model folder; use HumanParser.from_chec"):
        HumanParser.from_pretrained(pickles / "best.pth")


def test_interrupted_save_leaves_neither_folder_nor_temporary(checkpoint, tmp_path, monkeypatch):  # noqa: F811
    parser = HumanParser.from_checkpoint(checkpoint, device="cpu")
    old = parser.save_pretrained(tmp_path / "m")
    before = (old / WEIGHTS_NAME).read_bytes()
    monkeypatch.setattr(pretrained, "model_card", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        parser.save_pretrained(tmp_path / "m")  # replacing: the old folder stays whole
    with pytest.raises(ZeroDivisionError):
        parser.save_pretrained(tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert (old / WEIGHTS_NAME).read_bytes() == before


# ---------------------------------------------------------------- Hub repo ids


def test_repo_id_downloads_only_json_and_safetensors(checkpoint, tmp_path, monkeypatch):  # noqa: F811
    folder = _folder(tmp_path, checkpoint)
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, allow_patterns))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    parser = HumanParser.from_pretrained("someone/merged-b0", device="cpu")
    assert calls == [("someone/merged-b0", [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME])]
    assert parser.source == folder and parser.label_set.name == "merged"


def test_repo_id_offline_is_one_line_asking_for_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConnectionError) as err:
        HumanParser.from_pretrained("schp-segformer-tests/not-cached", device="cpu")
    line = str(err.value)
    assert line.startswith("schp-segformer-tests/not-cached: cannot reach the Hugging Face Hub")
    assert line.endswith(
        "pass a local model folder instead (download it where the Hub is reachable)"
    )
    assert "\n" not in line
    with pytest.raises(FileNotFoundError, match="no such model folder; check the path"):
        HumanParser.from_pretrained(tmp_path / "missing" / "dir" / "x")
