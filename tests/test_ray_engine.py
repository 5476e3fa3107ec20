"""extract.py --engine ray: the same files as the single-process extractor, on a local Ray."""

import filecmp
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_extract import _doll_bgr, _extract

import extract
from datasets.labels import load_label_config
from inference import ray_engine
from networks import build_model
from utils import checkpoint as ckpt

ray = pytest.importorskip("ray", reason=f"Ray is optional ({ray_engine.REQUIREMENTS})")

REPO = Path(__file__).resolve().parents[1]
LIP_MAP = REPO / "mappings" / "lip_map.yaml"
CROP = (64, 48)
RAY_CPUS, ACTORS = 2, 2
ACTOR_THREADS = RAY_CPUS // ACTORS  # torch threads of each actor (its share of the CPUs)
NUM_PHOTOS = 16  # 15 dolls and one corrupt JPEG
OLD_MTIME_NS = 1_000_000_000 * 10**9  # 2001: "written long ago"
RUN_LISTS = {"failed.txt", "report.html"}  # rewritten by every run, as by the single process
FLAGS = {  # every output the writer has, in the default layout and in a try-on format
    "default": ["--masks", "upper,lower", "--overlay", "--save-logits", "probs", "--report"],
    "viton-hd": ["--format", "viton-hd", "--masks", "overall"],
}


@pytest.fixture(scope="module")
def local_ray():
    """One 2-CPU local Ray for the module (start-up takes seconds); the engine joins it."""
    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """segformer_mit_b0, random weights, LIP's 20 classes (what viton-hd needs)."""
    torch.manual_seed(0)
    label_set = load_label_config(LIP_MAP).spaces["lip"]
    model = build_model("segformer_mit_b0", label_set.num_classes)
    path = tmp_path_factory.mktemp("ckpt") / "best.pth.tar"
    return ckpt.save_checkpoint({**ckpt.model_record(model, label_set, CROP), "epoch": 1}, path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """15 dolls of different sizes (JPEG and PNG, some in a sub-folder) and a corrupt JPEG."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "sub").mkdir()
    for i in range(NUM_PHOTOS - 1):
        path = folder / ("sub" if i % 3 == 0 else ".") / f"doll_{i:02d}.{'png' if i % 4 else 'jpg'}"
        cv2.imwrite(str(path), _doll_bgr(i, 70 + 3 * i, 50 + 5 * i))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 20)
    return folder


def _files(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def _assert_same_files(expected: Path, got: Path) -> None:
    names = _files(expected)
    assert names == _files(got)
    match, mismatch, errors = filecmp.cmpfiles(expected, got, names, shallow=False)
    assert (mismatch, errors) == ([], [])


@pytest.mark.parametrize("layout", sorted(FLAGS))
def test_ray_writes_the_single_process_files_and_a_rerun_writes_nothing(
    local_ray, checkpoint, photos, tmp_path, layout
):
    flags = [*FLAGS[layout], "--batch-size", "3"]
    threads = torch.get_num_threads()
    torch.set_num_threads(ACTOR_THREADS)  # float outputs (.npy) round alike at equal threads
    try:
        single = _extract(checkpoint, photos, tmp_path / "single", *flags)
    finally:
        torch.set_num_threads(threads)
    out = _extract(checkpoint, photos, tmp_path / "ray", *flags, "--engine", "ray",
                   "--ray-actors", str(ACTORS))  # fmt: skip
    _assert_same_files(single, out)
    assert (out / "failed.txt").read_text().split() == [str(photos / "broken.jpg")]
    assert len((out / "manifest.jsonl").read_text().splitlines()) == NUM_PHOTOS - 1
    files = [out / name for name in _files(out)]
    for path in files:
        os.utime(path, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    _extract(checkpoint, photos, out, *flags, "--engine", "ray", "--ray-actors", str(ACTORS))
    assert _files(out) == _files(single)
    touched = {p.name for p in files if p.stat().st_mtime_ns != OLD_MTIME_NS}
    assert touched <= RUN_LISTS  # the corrupt photo is tried again and listed again
    _assert_same_files(single, out)


def test_missing_ray_stops_with_one_line_naming_the_requirements_file(
    checkpoint, photos, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    args = extract.get_args_parser().parse_args(
        ["--model-restore", str(checkpoint), "--input", str(photos), "--output",
         str(tmp_path / "out"), "--engine", "ray"]
    )  # fmt: skip
    with pytest.raises(SystemExit) as stop:
        extract.main(args)
    message = str(stop.value)
    assert "\n" not in message and ray_engine.REQUIREMENTS in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_ray_rejects_videos_with_one_line(checkpoint, tmp_path):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (48, 64))
    writer.write(np.zeros((64, 48, 3), np.uint8))
    writer.release()
    with pytest.raises(SystemExit, match="--engine torch"):
        _extract(checkpoint, video, tmp_path / "out", "--engine", "ray")
