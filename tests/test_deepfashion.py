"""DeepFashion preprocessing: the seed's mapping rule pixel for pixel, the split, resume, stats,
bad inputs and the CLI, on small synthetic DeepFashion-MultiModal triples."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import preprocess_deepfashion as prep
from datasets.deepfashion import expand_labels, read_densepose, read_segm
from datasets.labels import load_label_config
from datasets.synthetic import make_deepfashion_dataset
from utils import fileio

REPO = Path(__file__).resolve().parents[1]
SCHEMES = ["df_map_sans_torso", "df_map_with_torso", "df_map_sep"]
SMALL = (160, 108)  # big enough for skin both near and far (> 10 px) from DensePose
NUM_IDS = 15  # every 5th id has no segm file: 12 usable
RADIUS = 10


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("DeepFashion_Multi")
    make_deepfashion_dataset(root, NUM_IDS, seed=0, size=SMALL)
    return root


def run(src: Path, dest: Path, *extra: str, scheme: str = "df_map_sep") -> None:
    argv = ["--mapping_cfg", str(REPO / "mappings" / f"{scheme}.yaml"), "--src-dir", str(src)]
    argv += ["--dest_data_dir", str(dest), "--num_train_samples", "5", "--workers", "1", *extra]
    prep.main(prep.get_args_parser().parse_args(argv))


def ids_of(dest: Path, split: str) -> list[str]:
    return (dest / f"{split}_id.txt").read_text().split()


def files_of(dest: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(dest)): p.read_bytes() for p in sorted(dest.rglob("*")) if p.is_file()
    }


# ---- the slow, obvious reference (the seed's preprocess_deepfashion.py) ----------------------


def nearest_label(dense: list[list[int]], y: int, x: int) -> int:
    """Label of the nearest non-zero pixel within RADIUS (Euclidean); ties: smallest label."""
    best = None
    for yy in range(y - RADIUS, y + RADIUS + 1):
        for xx in range(x - RADIUS, x + RADIUS + 1):
            if 0 <= yy < len(dense) and 0 <= xx < len(dense[0]) and dense[yy][xx] != 0:
                squared = (yy - y) ** 2 + (xx - x) ** 2
                if squared <= RADIUS**2 and (best is None or (squared, dense[yy][xx]) < best):
                    best = (squared, dense[yy][xx])
    return 0 if best is None else best[1]


def reference_label(segm, parts, segm_map: dict, dense_map: dict, skin: int) -> np.ndarray:
    height, width = len(segm), len(segm[0])
    dense = [[dense_map[parts[y][x]] for x in range(width)] for y in range(height)]
    out = np.zeros((height, width), np.uint8)
    for y in range(height):
        for x in range(width):
            mapped = segm_map[segm[y][x]]
            if mapped != skin:
                out[y, x] = mapped
            elif segm[y][x] == 15:  # Skin: the DensePose class, expanded by 10 px
                out[y, x] = dense[y][x] if dense[y][x] else nearest_label(dense, y, x)
    return out


def test_expand_labels_matches_brute_force_and_breaks_ties_to_the_smallest_label() -> None:
    rng = np.random.default_rng(0)
    for _ in range(10):
        labels = np.zeros((30, 24), np.uint8)
        for _ in range(4):
            y, x = rng.integers(0, 30), rng.integers(0, 24)
            labels[y : y + rng.integers(1, 4), x : x + rng.integers(1, 4)] = rng.integers(1, 6)
        expected = labels.copy()
        rows = labels.tolist()
        for y, x in zip(*np.nonzero(labels == 0), strict=True):
            expected[y, x] = nearest_label(rows, y, x)
        assert np.array_equal(expand_labels(labels, RADIUS), expected)
    tie = np.zeros((1, 5), np.uint8)
    tie[0, 0], tie[0, 4] = 3, 2
    assert expand_labels(tie, 2).tolist() == [[3, 3, 2, 2, 2]]
    assert expand_labels(tie, 1).tolist() == [[3, 3, 0, 2, 2]]  # distance is inclusive


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_output_pixel_equals_the_seed_rule(src: Path, tmp_path: Path, scheme: str) -> None:
    run(src, tmp_path, scheme=scheme)
    config = load_label_config(REPO / "mappings" / f"{scheme}.yaml")
    segm_map, dense_map = config.maps[("segm", "merged")], config.maps[("densepose", "merged")]
    near = far = 0
    names = ids_of(tmp_path, "train") + ids_of(tmp_path, "val")
    assert len(names) == NUM_IDS - NUM_IDS // 5
    for name in names:
        split = "train" if name in ids_of(tmp_path, "train") else "val"
        segm = np.array(Image.open(src / "segm" / f"{name}_segm.png"))
        parts = np.array(Image.open(src / "densepose" / f"{name}_densepose.png").convert("RGB"))
        parts = parts[:, :, 2]
        expected = reference_label(
            segm.tolist(), parts.tolist(), segm_map, dense_map, config.skin_placeholder
        )
        label = Image.open(tmp_path / f"{split}_segmentations" / f"{name}_segm.png")
        assert label.mode == "L"
        assert np.array_equal(np.array(label), expected), name
        uncovered = (segm == 15) & (np.vectorize(dense_map.get)(parts) == 0)
        near += int((uncovered & (expected > 0)).sum())
        far += int((uncovered & (expected == 0)).sum())
        image = np.array(Image.open(tmp_path / f"{split}_images" / f"{name}.jpg"))
        source = np.array(Image.open(src / "images" / f"{name}.jpg"))
        assert image.shape == source.shape  # RGB JPEG, same size, re-encoded at quality 95
        assert np.abs(image.astype(int) - source).mean() < 3
    assert near > 0 and far > 0  # both sides of the 10 px rule are exercised


def test_split_is_disjoint_seeded_and_independent_of_listing_order() -> None:
    ids = [f"id_{i:03d}" for i in range(50)]
    split = prep.split_ids(ids, 20, None, seed=0)
    assert len(split["train"]) == 20 and len(split["val"]) == 30
    assert not set(split["train"]) & set(split["val"])
    assert set(split["train"]) | set(split["val"]) == set(ids)
    assert prep.split_ids(ids[::-1], 20, None, seed=0) == split
    assert prep.split_ids(ids, 20, None, seed=1)["train"] != split["train"]
    assert len(prep.split_ids(ids, 20, 7, seed=0)["val"]) == 7
    with pytest.raises(SystemExit, match="exceed the 50 ids"):
        prep.split_ids(ids, 40, 20, seed=0)


def test_cli_split_reuses_lists_and_refuses_other_settings(src: Path, tmp_path: Path) -> None:
    run(src, tmp_path / "a")
    run(src, tmp_path / "b")
    train, val = ids_of(tmp_path / "a", "train"), ids_of(tmp_path / "a", "val")
    assert len(train) == 5 and len(val) == 7 and not set(train) & set(val)
    assert ids_of(tmp_path / "b", "train") == train
    without_segm = {p.stem for p in (src / "images").iterdir()} - set(train + val)
    assert len(without_segm) == NUM_IDS // 5  # ids without a segm file are not used
    run(src, tmp_path / "c", "--seed", "1")
    assert ids_of(tmp_path / "c", "train") != train
    run(src, tmp_path / "a")  # same flags: the lists are reused
    assert ids_of(tmp_path / "a", "train") == train
    for flags in (["--seed", "1"], ["--num_train_samples", "6"]):
        with pytest.raises(SystemExit, match="delete train_id.txt and val_id.txt"):
            run(src, tmp_path / "a", *flags)
    with pytest.raises(SystemExit, match="label_set.yaml: differs"):
        run(src, tmp_path / "a", scheme="df_map_with_torso")


def test_resume_after_a_kill_gives_the_same_files(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(src, tmp_path / "whole")
    replace, calls = os.replace, []

    def killed_midway(temp, final):
        calls.append(final)
        if len(calls) == 9:  # the temp file is written, the rename never happens
            raise KeyboardInterrupt
        replace(temp, final)

    monkeypatch.setattr(os, "replace", killed_midway)
    monkeypatch.setattr(fileio.shutil, "rmtree", lambda *a, **k: None)  # a kill runs no cleanup
    with pytest.raises(KeyboardInterrupt):
        run(src, tmp_path / "resumed")
    monkeypatch.undo()
    partial = tmp_path / "resumed"
    assert list(partial.rglob(f".*{fileio.TEMP_SUFFIX}"))  # a stray temp file is left
    for path in partial.rglob("*_segm.png"):  # nothing half-written under a final name
        assert Image.open(path).size == SMALL[::-1]
    run(src, partial)
    assert files_of(partial) == files_of(tmp_path / "whole")
    for path in sorted((partial / "val_images").iterdir())[::2]:  # lost outputs are redone
        path.unlink()
    run(src, partial)
    assert files_of(partial) == files_of(tmp_path / "whole")


def test_stats_count_the_label_pixels(src: Path, tmp_path: Path) -> None:
    run(src, tmp_path)
    stats = json.loads((tmp_path / "stats.json").read_text())
    names = load_label_config(REPO / "mappings" / "df_map_sep.yaml").target.names
    assert stats["classes"] == list(names)
    for split in prep.SPLITS:
        counts = np.zeros(256, np.int64)
        for name in ids_of(tmp_path, split):
            label = np.array(Image.open(tmp_path / f"{split}_segmentations" / f"{name}_segm.png"))
            counts += np.bincount(label.ravel(), minlength=256)
        assert stats["splits"][split]["images"] == len(ids_of(tmp_path, split))
        assert stats["splits"][split]["pixels"] == {n: int(counts[i]) for i, n in enumerate(names)}
        assert stats["splits"][split]["ignored_pixels"] == counts[255] == 0
    assert stats["skipped"] == []


def test_bad_inputs_are_listed_skipped_and_counted(src: Path, tmp_path: Path) -> None:
    bad_src = tmp_path / "src"
    shutil.copytree(src, bad_src)
    names = sorted(p.name[: -len("_segm.png")] for p in (bad_src / "segm").iterdir())
    no_densepose, bad_id, wrong_size, truncated = names[:4]
    (bad_src / "densepose" / f"{no_densepose}_densepose.png").unlink()
    segm = Image.open(bad_src / "segm" / f"{bad_id}_segm.png")
    segm.putpixel((3, 3), 30)
    segm.save(bad_src / "segm" / f"{bad_id}_segm.png")
    image = Image.open(bad_src / "images" / f"{wrong_size}.jpg")
    image.resize((SMALL[1] + 2, SMALL[0])).save(bad_src / "images" / f"{wrong_size}.jpg")
    jpeg = bad_src / "images" / f"{truncated}.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:600])
    run(bad_src, tmp_path / "out")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    reasons = {s["id"]: s["reason"] for s in stats["skipped"]}
    assert set(reasons) == {no_densepose, bad_id, wrong_size, truncated}
    assert "densepose" in reasons[no_densepose] and "not found" in reasons[no_densepose]
    assert f"{bad_id}_segm.png" in reasons[bad_id] and "label id 30" in reasons[bad_id]
    assert "sizes differ" in reasons[wrong_size] and wrong_size in reasons[wrong_size]
    assert "truncated" in reasons[truncated]
    listed = ids_of(tmp_path / "out", "train") + ids_of(tmp_path / "out", "val")
    assert len(listed) == len(names) - 4 and not set(listed) & set(reasons)
    assert not list((tmp_path / "out").rglob(f"{no_densepose}*"))


def test_readers_give_indices_not_luminance(tmp_path: Path) -> None:
    segm = np.arange(24, dtype=np.uint8).reshape(4, 6)
    image = Image.fromarray(segm, mode="P")
    image.putpalette([255 - (i % 256) for i in range(768)])
    image.save(tmp_path / "x_segm.png")
    assert np.array_equal(read_segm(tmp_path / "x_segm.png"), segm)
    Image.fromarray(np.dstack([segm] * 3)).save(tmp_path / "rgb_segm.png")
    with pytest.raises(ValueError, match="rgb_segm.png: segm PNG has mode RGB"):
        read_segm(tmp_path / "rgb_segm.png")
    iuv = np.zeros((4, 6, 3), np.uint8)
    iuv[:, :, 0], iuv[:, :, 1], iuv[:, :, 2] = 200, 100, segm
    Image.fromarray(iuv).save(tmp_path / "x_densepose.png")
    assert np.array_equal(read_densepose(tmp_path / "x_densepose.png"), segm)


def test_user_errors_are_one_line(src: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="folder not found; --src-dir"):
        run(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(SystemExit, match="mapping YAML not found"):
        run(src, tmp_path / "out", scheme="no_such_scheme")
    with pytest.raises(SystemExit, match="no segm_to_merged map"):
        run(src, tmp_path / "out", scheme="lip_map")
    command = [sys.executable, "-m", "preprocess_deepfashion", "--mapping_cfg", "x.yaml"]
    done = subprocess.run(
        [*command, "--dest_data_dir", str(tmp_path / "o"), "--src-dir", str(tmp_path / "no")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_cli_subprocess_with_workers_matches_in_process_run(src: Path, tmp_path: Path) -> None:
    run(src, tmp_path / "inline")
    command = [sys.executable, "-m", "preprocess_deepfashion"]
    command += ["--mapping-cfg", str(REPO / "mappings" / "df_map_sep.yaml"), "--src-dir", str(src)]
    command += ["--dest-data-dir", str(tmp_path / "cli"), "--num-train-samples", "5"]
    command += ["--workers", "2", "--visualize", "2"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "cli" / "visualize").glob("*.png"))) == 2
    outputs = {k: v for k, v in files_of(tmp_path / "cli").items() if "visualize" not in k}
    assert outputs == files_of(tmp_path / "inline")


@pytest.mark.parametrize(("value", "accepted"), [("500", False), ("0", False), ("1", True)])
def test_jpeg_quality_must_be_1_to_100(value: str, accepted: bool, capsys) -> None:
    argv = ["--mapping_cfg", "m.yaml", "--dest_data_dir", "d", "--jpeg-quality", value]
    if accepted:
        assert prep.get_args_parser().parse_args(argv).jpeg_quality == int(value)
        return
    with pytest.raises(SystemExit):
        prep.get_args_parser().parse_args(argv)
    assert "argument --jpeg-quality: must be 1..100" in capsys.readouterr().err


def test_a_rerun_removes_every_stale_temporary_and_nothing_else(src: Path, tmp_path: Path) -> None:
    run(src, tmp_path)
    want = files_of(tmp_path)
    stale = [tmp_path / ".stats.json.4242.tmp", tmp_path / "val_images" / ".x.jpg.4242.tmp"]
    for path in stale:
        path.write_bytes(b"partial")
    killed_write = tmp_path / "train_images" / ".y.jpg.k2j3h4l5.tmp"  # utils.fileio's folders
    killed_write.mkdir()
    (killed_write / "y.jpg").write_bytes(b"partial")
    kept = [tmp_path / "notes.tmp", tmp_path / ".keep"]
    for path in kept:
        path.write_text("the user's\n")
    run(src, tmp_path)
    assert not any(p.exists() for p in [*stale, killed_write])
    assert files_of(tmp_path) == want | {p.name: b"the user's\n" for p in kept}
