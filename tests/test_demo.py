"""`make demo` in its short mode (DEMO_FAST=1): every step runs and leaves its outputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_fast_runs_every_step_and_prints_where_outputs_are(tmp_path):
    out = tmp_path / "demo"
    env = {
        **os.environ,
        "DEMO_FAST": "1",
        "DEMO_OUT": str(out),
        "PY": sys.executable,
        "OMP_NUM_THREADS": "1",
    }
    run = subprocess.run(
        ["bash", "recipes/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Demo finished" in run.stdout and str(out / "eval" / "results.md") in run.stdout

    for name in ("curves.png", "loss_per_epoch.txt", "log.jsonl", "schp_1_checkpoint.pth.tar"):
        assert (out / "train" / name).is_file(), name
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["images"] == 4 and 0 <= results["miou"] <= 100
    assert (out / "eval" / "confusion.png").is_file()
    photos = sorted((out / "photos").glob("*.jpg"))
    assert len(photos) == 4
    for photo in photos:
        size = Image.open(photo).size
        parsing = Image.open(out / "extract" / "parsing" / f"{photo.stem}.png")
        assert parsing.mode == "P" and parsing.size == size
        assert (out / "extract" / "overlay" / f"{photo.stem}.jpg").is_file()
        for kind in ("upper", "lower", "overall"):
            mask = np.asarray(Image.open(out / "extract" / "masks" / kind / f"{photo.stem}.png"))
            assert mask.shape == size[::-1] and set(np.unique(mask)) <= {0, 255}
