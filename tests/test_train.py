"""train.py: seed flags, the three-stage recipe end to end, exact resume, torchrun, AMP, errors.

The end-to-end tests run `python train.py` in subprocesses on tiny synthetic paper dolls (16 train
/ 4 val images of about 96x64, crops of 64x48, segformer_mit_b0, batch 2, CPU, one thread each).
"""

import os
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
