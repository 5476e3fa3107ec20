"""Issue 20: atomic writes and their stale temporaries, degenerate photos in extraction, output
folder checks, the default SCHP start and NaN weights on resume."""

import copy
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from datasets.images import PhotoDataset, collate_photos
from datasets.labels import load_label_config
from networks import IMAGENET_RGB, build_model
from networks.weights import WeightsError
from utils import checkpoint as ckpt
from utils.cli import check_output_dir
from utils.fileio import atomic_write, remove_stale_temp_files
from utils.schedule import default_schp_start

REPO = Path(__file__).resolve().parents[1]
MASK = np.arange(48, dtype=np.uint8).reshape(6, 8)

WRITERS = {  # file name: (writer of the temporary path, reader of the result)
    "mask.png": (lambda p: cv2.imwrite(p, MASK), lambda p: cv2.imread(str(p), 0)),
    "overlay.jpg": (lambda p: cv2.imwrite(p, np.dstack([MASK] * 3)), lambda p: cv2.imread(str(p))),
    "logits.npy": (lambda p: np.save(p, MASK), np.load),
    "parsing.png": (
        lambda p: Image.fromarray(MASK).save(p, format="PNG"),
        lambda p: np.asarray(Image.open(p)),
    ),
    "weights.pth.tar": (lambda p: torch.save({"w": torch.ones(2)}, p), torch.load),
    "ids.txt": (lambda p: Path(p).write_text("a\nb\n"), lambda p: Path(p).read_text()),
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_atomic_write_serves_writers_that_infer_the_format_from_the_suffix(name, tmp_path):
    write, read = WRITERS[name]
    seen = []

    def spy(tmp: str) -> None:
        seen.append(sorted(p.name for p in tmp_path.glob(f"*{Path(name).suffix}")))
        write(tmp)

    path = atomic_write(tmp_path / "out" / name, spy)
    assert path == tmp_path / "out" / name and read(path) is not None
    assert seen == [[]]  # while writing, nothing in the folder is named like a finished file
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [name]  # no .npy.npy, no temp
    assert (path.stat().st_mode & 0o777) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_write_that_fails_leaves_neither_the_file_nor_a_temporary(tmp_path):
    (tmp_path / "kept.png").write_bytes(b"old")

    def fails(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "kept.png", fails)
    assert [p.name for p in tmp_path.iterdir()] == ["kept.png"]
    assert (tmp_path / "kept.png").read_bytes() == b"old"


def _killed_write(folder: Path, name: str) -> Path:
    """What a SIGKILL inside `atomic_write` leaves: its temporary folder and a partial file."""
    temp = folder / f".{name}.k2j3h4l5.tmp"
    temp.mkdir(parents=True)
    (temp / name).write_bytes(b"partial")
    return temp


def test_remove_stale_temp_files_removes_only_our_temporaries_of_the_pattern(tmp_path):
    pngs = [_killed_write(tmp_path, "a.png"), _killed_write(tmp_path / "sub", "b.png")]
    npy = _killed_write(tmp_path, "c.npy")
    older_writer = tmp_path / ".d.png.12345.tmp"  # preprocess_deepfashion's own temporaries
    older_writer.write_bytes(b"partial")
    theirs = [tmp_path / "e.tmp", tmp_path / ".hidden", tmp_path / "f.png", tmp_path / ".tmp"]
    for path in theirs:
        path.write_bytes(b"the user's")
    assert remove_stale_temp_files(tmp_path, "*.png") == sorted([pngs[0], older_writer])
    assert remove_stale_temp_files(tmp_path, "*.png", recursive=True) == [pngs[1]]
    assert remove_stale_temp_files(tmp_path) == [npy]
    assert all(p.read_bytes() == b"the user's" for p in theirs)
    assert remove_stale_temp_files(tmp_path / "missing") == []


def test_remove_stale_temp_files_spares_young_temporaries_when_given_an_age(tmp_path):
    young, old = _killed_write(tmp_path, "young.png"), _killed_write(tmp_path, "old.png")
    hour_ago = time.time() - 3600
    for path in (old, old / "old.png"):
        os.utime(path, (hour_ago, hour_ago))
    assert remove_stale_temp_files(tmp_path, min_age_s=600) == [old]
    assert young.is_dir()


def test_a_photo_too_small_to_crop_is_failed_and_the_folder_goes_on(tmp_path):
    paths = [tmp_path / "dot.png", tmp_path / "good.png", tmp_path / "broken.jpg"]
    Image.new("RGB", (1, 1)).save(paths[0])
    Image.new("RGB", (40, 30)).save(paths[1])
    paths[2].write_bytes(b"not an image")
    dataset = PhotoDataset(paths, ["dot", "good", "broken"], (64, 48), IMAGENET_RGB)
    batch = collate_photos([dataset[i] for i in range(len(dataset))])
    assert batch["name"] == ["good"] and batch["image"].shape == (1, 3, 64, 48)
    assert batch["failed"] == [str(paths[0]), str(paths[2])]


def test_output_dir_check_names_the_flag_the_path_and_the_fix(tmp_path, monkeypatch):
    check_output_dir(tmp_path / "new" / "run")  # creatable: fine, and nothing is created
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match=f"--log-dir {tmp_path / 'file'}: is a file, not a"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(SystemExit, match="is inside the file"):
        check_output_dir(tmp_path / "file" / "run", "--output")
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)  # read-only
    with pytest.raises(SystemExit, match=f"--log-dir {tmp_path}: not writable; pass a folder"):
        check_output_dir(tmp_path)
    with pytest.raises(SystemExit, match=f"not writable \\(its parent {tmp_path}\\)"):
        check_output_dir(tmp_path / "run")


@pytest.mark.parametrize(
    ("epochs", "cycle", "warmup", "start"),
    [(150, 10, 10, 100), (20, 1, 1, 15), (12, 2, 1, 2), (12, 10, 1, 2), (5, 10, 10, 5),
     (10, 1, 10, 10), (3, 1, 0, 0)],
)  # fmt: skip
def test_default_schp_start_keeps_the_last_five_cycles_that_fit(epochs, cycle, warmup, start):
    assert default_schp_start(epochs, cycle, warmup) == start


def test_resume_refuses_a_checkpoint_with_nan_weights(tmp_path):
    label_set = load_label_config(REPO / "mappings" / "lip_map.yaml").target
    model = build_model("segformer_mit_b0", label_set.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        teacher.fusion[3].bias[0] = float("nan")
    state = ckpt.train_state(model, teacher, optimizer, scaler, label_set, (64, 48), epoch=1)
    path = ckpt.save_checkpoint(state, tmp_path / ckpt.LATEST_NAME)
    with pytest.raises(WeightsError, match=r"\(teacher_state_dict\): fusion.3.bias has 1 of 9"):
        ckpt.load_train_state(path, model, teacher, optimizer, scaler)
