"""train.py: seed flags, the three-stage recipe end to end, exact resume, torchrun, AMP, errors.

The end-to-end tests run `python train.py` in subprocesses on tiny synthetic paper dolls (16 train
/ 4 val images of about 96x64, crops of 64x48, segformer_mit_b0, batch 2, CPU, one thread each).
"""

import copy
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import train
from datasets.labels import load_label_config
from datasets.synthetic import make_lip_dataset
from networks import IMAGENET_RGB, build_model
from utils import checkpoint as ckpt
from utils.cli import check_train_args
from utils.distributed import DistInfo
from utils.logger import read_jsonl

REPO_ROOT = Path(__file__).resolve().parents[1]
LIP_MAP = REPO_ROOT / "mappings" / "lip_map.yaml"
NUM_TRAIN, NUM_VAL, DOLL_SIZE = 16, 4, (96, 64)
CROP = "64,48"
BF16_CROP = "64,64"  # 64x48 hits a oneDNN bf16 conv bug (4x3 map, 2x2 stride-2 conv -> NaN)
TIMEOUT_S = 300
RUN_FILES = ("args.json", "train.log", "log.jsonl", "loss_per_epoch.txt", "curves.png")
POLL_S = 0.02


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


def _common(data_dir: Path, log_dir: Path, *extra: str) -> list[str]:
    """Flags every run shares: tiny model and crops, CPU, no workers."""
    return [
        "--arch", "segformer_mit_b0", "--data-dir", str(data_dir), "--log-dir", str(log_dir),
        "--input-size", CROP, "--batch-size", "2", "--workers", "0", "--device", "cpu",
        "--learning-rate", "1e-3", "--warmup-epochs", "1", *extra,
    ]  # fmt: skip


def _train(*flags: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "train.py", *flags],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def _losses(log_dir: Path) -> list[float]:
    """The total column of loss_per_epoch.txt (`epoch, total, seg, edge, cons`)."""
    lines = (log_dir / "loss_per_epoch.txt").read_text().splitlines()
    return [float(line.split(",")[1]) for line in lines]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SimpleNamespace:
    """Synthetic LIP dolls (20 raw classes) and the same dolls mapped to the merged 9 classes."""
    root = tmp_path_factory.mktemp("train_data")
    lip = make_lip_dataset(root / "lip", NUM_TRAIN, NUM_VAL, DOLL_SIZE, seed=0)
    merged = root / "merged"
    config = load_label_config(LIP_MAP)
    lut = config.lut("lip", "merged")
    for split in ("train", "val"):
        shutil.copytree(lip / f"{split}_images", merged / f"{split}_images")
        shutil.copy(lip / f"{split}_id.txt", merged / f"{split}_id.txt")
        (merged / f"{split}_segmentations").mkdir()
        for png in (lip / f"{split}_segmentations").glob("*.png"):
            label = lut[np.asarray(Image.open(png))]
            Image.fromarray(label).save(merged / f"{split}_segmentations" / png.name)
    names = ", ".join(config.spaces["merged"].names)
    (merged / "label_set.yaml").write_text(f"lip_merged_classes: [{names}]\n")
    return SimpleNamespace(root=root, lip=lip, merged=merged, label_set=config.target)


@pytest.fixture(scope="module")
def weights_b0(data) -> Path:
    """A weights-only checkpoint (model record) of a seeded b0 with the merged 9 classes."""
    torch.manual_seed(1)
    model = build_model("segformer_mit_b0", data.label_set.num_classes)
    path = data.root / "b0_init.pth.tar"
    ckpt.save_checkpoint(ckpt.model_record(model, data.label_set, (64, 48)), path)
    return path


# --- command line -------------------------------------------------------------------------

SEED_FLAGS = [  # (seed spelling, kebab/snake twin, value, dest, parsed)
    ("--num_samples", "--num-samples", "2500", "num_samples", 2500),
    ("--only_train_module", "--only-train-module", "head", "only_train_module", "head"),
    ("--cons_loss_type", "--cons-loss-type", "hard", "cons_loss_type", "hard"),
    ("--lip_map_cfg", "--lip-map-cfg", "m.yaml", "lip_map_cfg", "m.yaml"),
    ("--data-dir", "--data_dir", "d", "data_dir", "d"),
    ("--batch-size", "--batch_size", "4", "batch_size", 4),
    ("--input-size", "--input_size", "512,384", "input_size", (512, 384)),
    ("--num-classes", "--num_classes", "9", "num_classes", 9),
    ("--ignore-label", "--ignore_label", "255", "ignore_label", 255),
    ("--learning-rate", "--learning_rate", "6e-5", "learning_rate", 6e-5),
    ("--weight-decay", "--weight_decay", "1e-2", "weight_decay", 1e-2),
    ("--start-epoch", "--start_epoch", "3", "start_epoch", 3),
    ("--eval-epochs", "--eval_epochs", "5", "eval_epochs", 5),
    ("--imagenet-pretrain", "--imagenet_pretrain", "None", "imagenet_pretrain", None),
    ("--imagenet-pretrain", "--imagenet_pretrain", "mit_b4.pth", "imagenet_pretrain", "mit_b4.pth"),
    ("--log-dir", "--log_dir", "log/x", "log_dir", "log/x"),
    ("--model-restore", "--model_restore", "a.pth", "model_restore", "a.pth"),
    ("--schp-start", "--schp_start", "7", "schp_start", 7),
    ("--cycle-epochs", "--cycle_epochs", "2", "cycle_epochs", 2),
    ("--schp-restore", "--schp_restore", "b.pth", "schp_restore", "b.pth"),
    ("--lambda-s", "--lambda_s", "0.5", "lambda_s", 0.5),
    ("--lambda-e", "--lambda_e", "2", "lambda_e", 2.0),
    ("--lambda-c", "--lambda_c", "0.3", "lambda_c", 0.3),
    ("--epochs", "--epochs", "150", "epochs", 150),
    ("--momentum", "--momentum", "0.8", "momentum", 0.8),
    ("--gpu", "--gpu", "0,1", "gpu", "0,1"),
    ("--optimizer", "--optimizer", "segce2p_phase_2", "optimizer", "segce2p_phase_2"),
    ("--arch", "--arch", "segformer_mit_b0", "arch", "segformer_mit_b0"),
    ("--val-every", "--val_every", "2", "val_every", 2),
    ("--print-freq", "--print_freq", "5", "print_freq", 5),
    ("--amp", "--amp", "bf16", "amp", "bf16"),
    ("--seed", "--seed", "3", "seed", 3),
    ("--workers", "--workers", "0", "workers", 0),
    ("--resume", "--resume", "c.pth.tar", "resume", "c.pth.tar"),
    ("--device", "--device", "cpu", "device", "cpu"),
]
SEED_SWITCHES = [  # (seed spelling, twin, dest)
    ("--do_mapping", "--do-mapping", "do_mapping"),
    ("--reset_schp_cycle", "--reset-schp-cycle", "reset_schp_cycle"),
    ("--random-mirror", "--random_mirror", "random_mirror"),
    ("--random-scale", "--random_scale", "random_scale"),
]


@pytest.mark.parametrize(("seed", "twin", "value", "dest", "parsed"), SEED_FLAGS)
def test_every_seed_flag_parses_in_its_seed_spelling_and_its_twin(seed, twin, value, dest, parsed):
    parser = train.get_args_parser()
    for spelling in (seed, twin):
        assert getattr(parser.parse_args([spelling, value]), dest) == parsed, spelling


@pytest.mark.parametrize(("seed", "twin", "dest"), SEED_SWITCHES)
def test_seed_switches_parse_in_both_spellings(seed, twin, dest):
    parser = train.get_args_parser()
    for spelling in (seed, twin):
        assert getattr(parser.parse_args([spelling]), dest) is True, spelling


def test_augmentation_switches_default_on_and_turn_off():
    parser = train.get_args_parser()
    defaults = parser.parse_args([])
    assert defaults.random_mirror and defaults.random_scale
    off = parser.parse_args(["--no-random-mirror", "--no-random-scale"])
    assert not off.random_mirror and not off.random_scale
    assert defaults.cons_loss_type == "soft" and defaults.imagenet_pretrain is None


def test_num_samples_picks_a_seeded_random_subset(data):
    parser = train.get_args_parser()
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    all_ids = (data.lip / "train_id.txt").read_text().split()

    def ids(*flags: str) -> list[str]:
        base = ["--data-dir", str(data.lip), "--do_mapping", "--batch-size", "2"]
        args = parser.parse_args([*base, *flags])
        label_set, lut = train.resolve_labels(args)
        return train.build_train_loader(args, label_set, lut, IMAGENET_RGB, info).dataset.ids

    subsets = {seed: ids("--num_samples", "5", "--seed", str(seed)) for seed in range(4)}
    assert all(len(s) == 5 and set(s) <= set(all_ids) for s in subsets.values())
    assert subsets[0] == ids("--num-samples", "5", "--seed", "0")  # same seed, same subset
    assert len({tuple(s) for s in subsets.values()}) > 1  # the seed picks it
    assert any(s != all_ids[:5] for s in subsets.values())  # not the seed's "first N"
    assert ids() == all_ids


# --- end to end ---------------------------------------------------------------------------


@pytest.mark.slow
def test_seed_three_stage_recipe_runs_and_learns(data, tmp_path):
    lip_log, phase1_log, phase2_log = tmp_path / "lip", tmp_path / "phase1", tmp_path / "phase2"
    _train(
        *_common(data.lip, lip_log, "--weight-decay", "1e-2", "--imagenet-pretrain", "None"),
        *("--num_samples", "12", "--optimizer", "adamw_custom", "--do_mapping"),
        *("--lip_map_cfg", "mappings/lip_map.yaml", "--num-classes", "9"),
        *("--epochs", "3", "--schp-start", "2", "--cycle-epochs", "1"),
        *("--eval-epochs", "1", "--val-every", "1"),
    )
    expected = [*RUN_FILES, "checkpoint.pth.tar", "best.pth.tar"]
    expected += [ckpt.periodic_name(n) for n in (1, 2, 3)] + [ckpt.schp_name(n) for n in (1, 2)]
    assert sorted(p.name for p in lip_log.iterdir()) == sorted(expected)
    losses = _losses(lip_log)
    assert len(losses) == 3 and losses[-1] < losses[0]
    steps = [r for r in read_jsonl(lip_log / "log.jsonl") if r["type"] == "step"]
    assert len(steps) == 3 * 12 // 2 and all("lr" in r and "total" in r for r in steps)
    best = _load(lip_log / "best.pth.tar")
    epochs = [r for r in read_jsonl(lip_log / "log.jsonl") if r["type"] == "epoch"]
    assert best["best_miou"] == max(r["val_miou"] for r in epochs)
    schp_1 = lip_log / ckpt.schp_name(1)
    assert _load(schp_1)["cycle_n"] == 1 and _load(schp_1)["label_set"]["name"] == "merged"

    restore = ("--model-restore", str(schp_1), "--schp-restore", str(schp_1), "--reset_schp_cycle")
    finetune = ("--data-dir", str(data.merged), "--num-classes", "9", "--weight-decay", "1e-3")
    _train(
        *_common(data.merged, phase1_log, "--optimizer", "segce2p_phase_1", *restore, *finetune),
        *("--num_samples", "12", "--epochs", "2", "--schp-start", "1", "--cycle-epochs", "1"),
    )
    before, after = _load(schp_1)["state_dict"], _load(phase1_log / "checkpoint.pth.tar")
    assert after["label_set"]["name"] == "merged"  # from the data folder's label_set.yaml
    backbone = [k for k in before if k.startswith("backbone.")]
    assert backbone and all(torch.equal(before[k], after["state_dict"][k]) for k in backbone)
    assert not torch.equal(before["fusion.3.weight"], after["state_dict"]["fusion.3.weight"])
    assert _load(phase1_log / ckpt.schp_name(2))["cycle_n"] == 2

    schp_2 = str(phase1_log / ckpt.schp_name(2))
    restore = ("--model-restore", schp_2, "--schp-restore", schp_2, "--reset_schp_cycle")
    _train(
        *_common(data.merged, phase2_log, "--optimizer", "segce2p_phase_2", *restore, *finetune),
        *("--epochs", "3", "--schp-start", "1", "--cycle-epochs", "1"),
    )
    assert all((phase2_log / name).is_file() for name in RUN_FILES)
    assert [ckpt.schp_name(n) for n in (1, 2, 3)] == sorted(
        p.name for p in phase2_log.glob("schp_*")
    )
    losses = _losses(phase2_log)
    assert len(losses) == 3 and losses[-1] < losses[0]
    query = "backbone.block1.0.attn.q.weight"  # phase 2 trains the backbone again
    after = _load(phase2_log / "checkpoint.pth.tar")["state_dict"][query]
    assert not torch.equal(after, _load(schp_2)["state_dict"][query])


def _kill_after_epoch(flags: list[str], log_dir: Path, epoch: int) -> None:
    """Run train.py and SIGKILL it during `epoch` (0-based), i.e. after its checkpoint."""
    proc = subprocess.Popen(
        [sys.executable, "train.py", *flags],
        cwd=REPO_ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log, deadline = log_dir / "log.jsonl", time.monotonic() + TIMEOUT_S
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if log.is_file() and f'"epoch": {epoch}, "step": 0' in log.read_text():
                break
            time.sleep(POLL_S)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_killed_and_resumed_run_equals_an_uninterrupted_one(data, tmp_path):
    epochs, kill_epoch = 4, 2  # cycles end after epochs 1, 2, 3: one before the kill, two after
    flags = ["--epochs", str(epochs), "--schp-start", "2", "--cycle-epochs", "1", "--seed", "5"]
    flags += ["--optimizer", "adamw_custom", "--do_mapping"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _train(*_common(data.lip, straight, *flags))
    _kill_after_epoch(_common(data.lip, killed, *flags), killed, kill_epoch)
    state = _load(killed / "checkpoint.pth.tar")
    assert state["epoch"] in (kill_epoch, kill_epoch + 1) and state["cycle_n"] >= 1
    _train(*_common(data.lip, killed, *flags, "--resume", str(killed / "checkpoint.pth.tar")))

    want, got = _load(straight / "checkpoint.pth.tar"), _load(killed / "checkpoint.pth.tar")
    assert got["epoch"] == epochs and got["cycle_n"] == want["cycle_n"] == 3
    for key in ("state_dict", "teacher_state_dict"):
        assert want[key].keys() == got[key].keys()
        for name, tensor in want[key].items():
            assert torch.equal(tensor, got[key][name]), f"{key}: {name}"
    for index, moments in want["optimizer"]["state"].items():
        for name, tensor in moments.items():
            assert torch.equal(tensor, got["optimizer"]["state"][index][name]), (index, name)
    assert (straight / "loss_per_epoch.txt").read_text() == (
        killed / "loss_per_epoch.txt"
    ).read_text()

    def steps(log_dir: Path) -> list[dict]:
        return [r for r in read_jsonl(log_dir / "log.jsonl") if r["type"] == "step"]

    assert steps(straight) == steps(killed)  # the killed epoch's steps were dropped, then redone


@pytest.mark.slow
def test_torchrun_two_gloo_processes_train_and_rank_0_writes(data, tmp_path):
    log_dir = tmp_path / "ddp"
    flags = _common(data.lip, log_dir, "--do_mapping", "--optimizer", "adamw_custom")
    flags += ["--epochs", "2", "--schp-start", "1", "--cycle-epochs", "1", "--val-every", "1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*cmd, "train.py", *flags],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_jsonl(log_dir / "log.jsonl")
    steps_per_epoch = NUM_TRAIN // (2 * 2)  # 2 images per process, 2 processes
    assert sum(r["type"] == "step" for r in records) == 2 * steps_per_epoch  # rank 0 only
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [0, 1]
    assert (log_dir / "train.log").read_text().count("epoch 1: ") == 1
    state = _load(log_dir / "checkpoint.pth.tar")
    plain = build_model("segformer_mit_b0", 9).state_dict()
    assert list(state["state_dict"]) == list(plain)  # no `module.`, same BN keys after SyncBN
    assert list(state["teacher_state_dict"]) == list(plain)
    assert state["cycle_n"] == 2 and (log_dir / ckpt.schp_name(2)).is_file()


@pytest.mark.slow
def test_bf16_autocast_trains_on_cpu(data, tmp_path):
    log_dir = tmp_path / "bf16"
    flags = _common(data.lip, log_dir, "--do_mapping", "--amp", "bf16", "--epochs", "1")
    flags[flags.index(CROP)] = BF16_CROP
    _train(*flags, "--schp-start", "1", "--cycle-epochs", "1")  # includes BN re-estimation
    assert np.isfinite(_losses(log_dir)).all()
    assert (log_dir / ckpt.schp_name(1)).is_file()


@pytest.mark.slow
def test_only_train_module_leaves_every_other_module_unchanged(data, weights_b0, tmp_path):
    log_dir = tmp_path / "head_only"
    flags = ["--model-restore", str(weights_b0), "--only_train_module", "head"]
    flags += ["--epochs", "1", "--schp-start", "1"]
    _train(*_common(data.merged, log_dir, "--optimizer", "adamw_custom", *flags))
    before, after = _load(weights_b0)["state_dict"], _load(log_dir / "checkpoint.pth.tar")
    changed = {k for k in before if not torch.equal(before[k], after["state_dict"][k])}
    assert changed and all(k.startswith("head.") for k in changed)  # BN statistics included


# --- bad inputs ---------------------------------------------------------------------------


def _b1_checkpoint(data) -> Path:
    path = data.root / "b1.pth.tar"
    if not path.is_file():
        model = build_model("segformer_mit_b1", data.label_set.num_classes)
        ckpt.save_checkpoint(ckpt.model_record(model, data.label_set, (64, 48)), path)
    return path


def _broken_copy(data, defect: str) -> Path:
    """A copy of the LIP dolls whose first training sample has `defect`."""
    root = data.root / f"broken_{defect}"
    if root.is_dir():
        return root
    shutil.copytree(data.lip, root)
    name = (root / "train_id.txt").read_text().split()[0]
    image = root / "train_images" / f"{name}.jpg"
    label = root / "train_segmentations" / f"{name}.png"
    if defect == "missing_image":
        image.unlink()
    elif defect == "undecodable_jpeg":
        image.write_bytes(b"not a jpeg at all")
    elif defect == "label_size":
        Image.open(label).resize((DOLL_SIZE[1] + 2, DOLL_SIZE[0])).save(label)
    elif defect == "tiny_photo":
        Image.new("RGB", (1, 1)).save(image)
        Image.new("L", (1, 1)).save(label)
    return root


def _nan_checkpoint(data) -> Path:
    path = data.root / "nan.pth.tar"
    if not path.is_file():
        model = build_model("segformer_mit_b0", data.label_set.num_classes)
        state = ckpt.model_record(model, data.label_set, (64, 48))
        state["state_dict"]["head.linear_pred.weight"][0, :3] = float("nan")
        ckpt.save_checkpoint(state, path)
    return path


BAD_INPUTS = {
    "missing --model-restore": (
        lambda d, w: ["--model-restore", str(d.root / "nope.pth")],
        "nope.pth: file not found",
    ),
    "checkpoint of another arch": (
        lambda d, w: ["--model-restore", str(_b1_checkpoint(d))],
        "segformer_mit_b1",
    ),
    "--num-classes against the mapped label set": (
        lambda d, w: ["--data-dir", str(d.lip), "--num-classes", "20"],
        "--num-classes 20 disagrees",
    ),
    "--schp-start beyond --epochs": (
        lambda d, w: ["--epochs", "2", "--schp-start", "3"],
        "--schp-start 3 is beyond --epochs 2",
    ),
    "data dir that does not exist": (
        lambda d, w: ["--data-dir", str(d.root / "no_such_dir")],
        "no_such_dir",
    ),
    "--resume of a weights-only checkpoint": (
        lambda d, w: ["--resume", str(w)],
        "not a train.py checkpoint",
    ),
    "--amp fp16 on CPU": (lambda d, w: ["--amp", "fp16"], "--amp fp16 on CPU"),
    "NaN weights in --model-restore": (
        lambda d, w: ["--model-restore", str(_nan_checkpoint(d))],
        "head.linear_pred.weight has 3 of",
    ),
    "missing training image": (
        lambda d, w: ["--data-dir", str(_broken_copy(d, "missing_image"))],
        ".jpg: image of id",
    ),
    "undecodable JPEG": (
        lambda d, w: ["--data-dir", str(_broken_copy(d, "undecodable_jpeg"))],
        "cannot be decoded",
    ),
    "label of another size": (
        lambda d, w: ["--data-dir", str(_broken_copy(d, "label_size"))],
        "they must match",
    ),
    "1x1 photo": (
        lambda d, w: ["--data-dir", str(_broken_copy(d, "tiny_photo"))],
        ".jpg: image is 1x1 px",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_one_clear_line_and_writes_nothing(case, data, weights_b0, tmp_path):
    make_flags, message = BAD_INPUTS[case]
    log_dir = tmp_path / "log"
    flags = _common(data.lip, log_dir, "--do_mapping", "--epochs", "2", "--schp-start", "2")
    result = _train(*flags, *make_flags(data, weights_b0), check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not log_dir.exists()  # nothing partially written


@pytest.mark.slow
def test_a_bad_label_met_while_training_ends_with_its_one_line(data, tmp_path):
    """Raw LIP ids (up to 19) without --do_mapping: the loader worker meets ids outside the
    9-class set mid-epoch; the run ends with that line, not the worker's traceback."""
    flags = _common(data.lip, tmp_path / "log", "--epochs", "1", "--no-schp", "--workers", "1")
    result = _train(*flags, check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "outside the 9-class set" in last and "_segmentations" in last, last


# --- reliability (issue 20) ---------------------------------------------------------------


def _one_error_line(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]


@pytest.mark.slow
def test_a_label_id_outside_the_set_is_refused_before_anything_is_written(data, tmp_path):
    log_dir = tmp_path / "log"
    result = _train(*_common(data.lip, log_dir, "--epochs", "1", "--no-schp"), check=False)
    _one_error_line(result, "outside the 9-class set")
    assert not log_dir.exists()


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--learning-rate", "nan"), ("--learning-rate", "inf"), ("--learning-rate", "0"),
     ("--learning-rate", "-1e-3"), ("--workers", "-1"), ("--batch-size", "0")],
)  # fmt: skip
def test_bad_numbers_are_refused_at_parsing_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit):
        train.get_args_parser().parse_args([flag, value])
    assert f"argument {flag}" in capsys.readouterr().err


def test_schp_start_defaults_to_the_last_cycles_of_the_run():
    parser = train.get_args_parser()
    seed = parser.parse_args([])
    check_train_args(seed, torch.device("cpu"))
    assert seed.schp_start == 100  # the seed's 150 epochs, cycles of 10
    short = parser.parse_args(["--epochs", "12", "--warmup-epochs", "1", "--cycle-epochs", "2"])
    check_train_args(short, torch.device("cpu"))
    assert short.schp_start == 2  # five cycles of 2 after the warmup
    tiny = parser.parse_args(["--epochs", "5"])  # the 10-epoch warmup leaves no cycle
    check_train_args(tiny, torch.device("cpu"))
    assert tiny.schp_start == 5
    explicit = parser.parse_args(["--epochs", "12", "--schp-start", "13"])
    with pytest.raises(SystemExit, match="--schp-start 13 is beyond --epochs 12"):
        check_train_args(explicit, torch.device("cpu"))


@pytest.mark.slow
def test_log_dir_that_is_a_file_gets_one_line(data, tmp_path):
    not_a_folder = tmp_path / "log.txt"
    not_a_folder.write_text("a file\n")
    for log_dir in (not_a_folder, not_a_folder / "run"):
        result = _train(*_common(data.lip, log_dir, "--do_mapping", "--epochs", "1"), check=False)
        _one_error_line(result, f"--log-dir {log_dir}: ")
    assert not_a_folder.read_text() == "a file\n"


@pytest.mark.slow
def test_a_non_finite_loss_ends_with_one_line_naming_the_step_and_terms(data, tmp_path):
    """A learning rate of 1e30 makes every output NaN after the first step: the Lovász loss
    used to crash on the NaN probabilities before the loss check could speak."""
    flags = _common(data.lip, tmp_path / "log", "--do_mapping", "--epochs", "1", "--no-schp")
    flags[flags.index("1e-3")] = "1e30"
    result = _train(*flags, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"epoch 0 step \d+: the loss is nan \(seg nan, edge \S+, cons \S+\); .*", last
    )
    assert "lower --learning-rate, try --amp off" in last


def _stub_run(tmp_path: Path, data) -> SimpleNamespace:
    model = build_model("segformer_mit_b0", data.label_set.num_classes)
    args = train.get_args_parser().parse_args(["--input-size", CROP, "--eval-epochs", "1"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    record = {"type": "epoch", "epoch": 0, "total": 1.0, "seg": 0.5, "edge": 0.3, "cons": 0.2}
    return SimpleNamespace(
        args=args, model=model, teacher=copy.deepcopy(model), optimizer=optimizer,
        scaler=scaler, label_set=data.label_set, cycle_n=0, best_miou=-math.inf,
        history=[{**record, "val_miou": 10.0}], log_dir=tmp_path, start_epoch=1,
    )  # fmt: skip


def test_end_of_epoch_writes_the_resume_point_last(data, tmp_path, monkeypatch):
    run = _stub_run(tmp_path, data)
    written = []
    real_replace = os.replace

    def replace(src, dst):
        written.append(Path(dst).name)
        if Path(dst).name == ckpt.LATEST_NAME:
            raise KeyboardInterrupt  # killed before the resume point moves on
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        train.save_epoch(run, 0, run.history[-1])
    everything_else = [ckpt.periodic_name(1), ckpt.BEST_NAME, "loss_per_epoch.txt", "curves.png"]
    assert written == [*everything_else, ckpt.LATEST_NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(everything_else)  # no temp


def test_resume_rewrites_the_files_a_killed_save_left_out(data, tmp_path):
    run = _stub_run(tmp_path, data)
    run.best_miou = 10.0  # the resumed epoch 0 was the best
    train.rewrite_missing_epoch_files(run)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [ckpt.periodic_name(1), ckpt.BEST_NAME, "loss_per_epoch.txt", "curves.png"]
    )
    assert (
        tmp_path / "loss_per_epoch.txt"
    ).read_text() == "0, 1.000000, 0.500000, 0.300000, 0.200000\n"
    assert _load(tmp_path / ckpt.BEST_NAME)["epoch"] == 1
    kept = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    train.rewrite_missing_epoch_files(run)  # nothing missing: nothing rewritten
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == kept


@pytest.mark.slow
def test_resume_with_nothing_left_to_train_rewrites_missing_logs(data, tmp_path):
    log_dir = tmp_path / "log"
    flags = _common(data.lip, log_dir, "--do_mapping", "--epochs", "1", "--no-schp")
    _train(*flags, "--eval-epochs", "1")
    want = {name: (log_dir / name).read_bytes() for name in ("loss_per_epoch.txt", "curves.png")}
    for name in [*want, ckpt.periodic_name(1)]:
        (log_dir / name).unlink()
    (log_dir / ".curves.png.abcd1234.tmp").mkdir()  # a write killed by SIGKILL
    _train(*flags, "--eval-epochs", "1", "--resume", str(log_dir / ckpt.LATEST_NAME))
    assert {name: (log_dir / name).read_bytes() for name in want} == want
    assert (log_dir / ckpt.periodic_name(1)).is_file()
    assert not list(log_dir.glob(".*.tmp"))
