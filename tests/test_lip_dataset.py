"""Tests of datasets/lip.py on the real samples (CCP, LIP, CIHP) and on bad inputs in tmp_path."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from datasets.label_set import IGNORE_INDEX, LabelSet
from datasets.lip import LIPDataset, check_samples, collate_samples, data_error_line
from datasets.transforms import logits_to_original
from networks.contracts import IMAGENET_RGB, SCHP_BGR

CROP = (128, 96)  # (H, W): small crops keep the tests fast
LIP_NAMES = (
    "Background",
    "Hat",
    "Hair",
    "Glove",
    "Sunglasses",
    "UpperClothes",
    "Dress",
    "Coat",
    "Socks",
    "Pants",
    "Jumpsuits",
    "Scarf",
    "Skirt",
    "Face",
    "Left-arm",
    "Right-arm",
    "Left-leg",
    "Right-leg",
    "Left-shoe",
    "Right-shoe",
)
LEFT_ARM, RIGHT_ARM = 14, 15
GREYSCALE_ID = "86_185913"
SMALL_ID = "77_471474"  # 104x120: the 512x384 crop zooms it 3.7x
CCP_CLASSES = 59


@pytest.fixture
def lip_labels() -> LabelSet:
    return LabelSet("lip", LIP_NAMES, flip_pairs=((14, 15), (16, 17), (18, 19)))


@pytest.fixture
def ccp_labels() -> LabelSet:
    return LabelSet("ccp", tuple(f"class{i}" for i in range(CCP_CLASSES)))


def make_dataset(
    root: Path,
    ids: list[str],
    *,
    label_mode: str = "L",
    value: int = 1,
    image_ids: list[str] | None = None,
) -> Path:
    """A tiny LIP-layout split `val` in `root` (8x6 images)."""
    (root / "val_images").mkdir(parents=True)
    (root / "val_segmentations").mkdir()
    (root / "val_id.txt").write_text("\n".join(ids) + "\n")
    for name in ids if image_ids is None else image_ids:
        Image.new("RGB", (6, 8), (90, 120, 150)).save(root / "val_images" / f"{name}.jpg")
    for name in ids:
        label = Image.fromarray(np.full((8, 6), value, np.uint8), mode="L")
        if label_mode == "P":
            label = label.convert("P")
            label.putpalette([255, 255, 255] * 256)  # luminance would read every id as 255
        label.save(root / "val_segmentations" / f"{name}.png")
    return root


def check_sample(sample: dict, num_classes: int) -> None:
    image, label, edge, meta = sample["image"], sample["label"], sample["edge"], sample["meta"]
    assert image.shape == (3, *CROP) and image.dtype == torch.float32
    assert label.shape == CROP and label.dtype == torch.int64
    assert edge.shape == CROP and edge.dtype == torch.int64
    assert set(edge.unique().tolist()) <= {0, 1}
    ids = label.unique()
    assert ((ids < num_classes) | (ids == IGNORE_INDEX)).all()
    assert (edge[label == IGNORE_INDEX] == 0).all()
    low = (0 - max(IMAGENET_RGB.mean)) / min(IMAGENET_RGB.std)
    high = (1 - min(IMAGENET_RGB.mean)) / min(IMAGENET_RGB.std)
    assert low - 1e-4 <= image.min() and image.max() <= high + 1e-4
    inside = image[:, label != IGNORE_INDEX]
    assert -2.0 < inside.mean() < 2.0 and inside.std() > 0.1  # a photo, not a constant
    assert meta["center"].dtype == meta["scale"].dtype == np.float32
    assert isinstance(meta["name"], str) and meta["height"] > 0 and meta["width"] > 0


@pytest.mark.parametrize("split", ["train", "val"])
def test_ccp_samples_have_contract_shapes_and_ranges(ccp_root, ccp_labels, split):
    dataset = LIPDataset(
        ccp_root, split, CROP, label_set=ccp_labels, augment=split == "train", num_samples=2
    )
    assert len(dataset) == 2
    for index in range(len(dataset)):
        check_sample(dataset[index], CCP_CLASSES)
        assert dataset.read_label(index).shape == (
            dataset[index]["meta"]["height"],
            dataset[index]["meta"]["width"],
        )


def test_lip_and_cihp_samples_load(lip_sample_root, cihp_sample_root, lip_labels):
    for root in (lip_sample_root, cihp_sample_root):
        dataset = LIPDataset(root, "val", CROP, label_set=lip_labels, augment=True)
        for index in range(len(dataset)):
            check_sample(dataset[index], len(LIP_NAMES))


def test_greyscale_lip_image_becomes_three_equal_channels(lip_sample_root):
    dataset = LIPDataset(lip_sample_root, "val", CROP)
    index = dataset.ids.index(GREYSCALE_ID)
    image = dataset[index]["image"]
    mean = torch.tensor(IMAGENET_RGB.mean)[:, None, None]
    std = torch.tensor(IMAGENET_RGB.std)[:, None, None]
    pixels = image * std + mean
    torch.testing.assert_close(pixels[0], pixels[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(pixels[0], pixels[2], atol=1e-5, rtol=0)
    assert dataset.read_image(index).shape == (377, 130, 3)


def test_bgr_spec_reverses_channels(lip_sample_root):
    rgb = LIPDataset(lip_sample_root, "val", CROP, input_spec=IMAGENET_RGB)[0]["image"]
    bgr = LIPDataset(lip_sample_root, "val", CROP, input_spec=SCHP_BGR)[0]["image"]
    torch.testing.assert_close(bgr, rgb.flip(0))


def test_flip_swaps_left_and_right_arm_at_mirrored_positions(lip_sample_root, lip_labels):
    plain = LIPDataset(lip_sample_root, "val", CROP, label_set=lip_labels)
    flipped = LIPDataset(
        lip_sample_root,
        "val",
        CROP,
        label_set=lip_labels,
        augment=True,
        scale_factor=0.0,
        rotation_factor=0.0,
        flip_prob=1.0,
    )
    index = plain.ids.index(SMALL_ID)
    before, after = plain[index]["label"], flipped[index]
    image_error = (after["image"].flip(-1) - plain[index]["image"]).abs()
    assert image_error.max() < 2 / 255 / min(IMAGENET_RGB.std)  # bilinear rounding only
    assert after["meta"]["flipped"] and after["meta"]["rotation"] == 0
    mirrored = after["label"].flip(-1)
    for side, other in ((LEFT_ARM, RIGHT_ARM), (RIGHT_ARM, LEFT_ARM)):
        # pixels deep inside the arm (3x3 neighbourhood all the same class): no rounding ties
        inside = F.max_pool2d(-(before == side).float()[None], 3, 1, 1)[0] == -1
        assert inside.sum() > 10
        assert (mirrored[inside] == other).all()
    swap = torch.arange(256)
    swap[: len(LIP_NAMES)] = torch.from_numpy(lip_labels.flip_permutation())  # shoes swap too
    assert (swap[before] == mirrored).float().mean() > 0.999


def test_label_lut_applies_before_flip_and_read_label(lip_sample_root, lip_labels):
    lut = np.arange(256, dtype=np.uint8)
    lut[2] = IGNORE_INDEX  # hair -> ignore
    raw = LIPDataset(lip_sample_root, "val", CROP)
    mapped = LIPDataset(lip_sample_root, "val", CROP, label_set=lip_labels, label_lut=lut)
    np.testing.assert_array_equal(mapped.read_label(0), lut[raw.read_label(0)])
    assert 2 not in mapped[0]["label"] and (raw.read_label(0) == 2).any()


def test_inverse_affine_recovers_the_original_label_exactly(lip_sample_root, lip_labels):
    dataset = LIPDataset(lip_sample_root, "val", (512, 384), label_set=lip_labels, with_edge=False)
    index = dataset.ids.index(SMALL_ID)
    sample, original = dataset[index], dataset.read_label(index)
    crop_label = sample["label"]
    one_hot = F.one_hot(crop_label.clamp(max=len(LIP_NAMES)), len(LIP_NAMES) + 1)
    logits = one_hot[..., : len(LIP_NAMES)].permute(2, 0, 1)[None].float()  # 255 -> all zero
    back = logits_to_original(
        logits, sample["meta"]["center"], sample["meta"]["scale"], original.shape
    )
    np.testing.assert_array_equal(back[0].argmax(0).numpy(), original)


def test_augmentation_is_a_function_of_seed_epoch_and_index(ccp_root, ccp_labels):
    def make(seed: int = 3) -> LIPDataset:
        return LIPDataset(
            ccp_root,
            "val",
            CROP,
            label_set=ccp_labels,
            augment=True,
            seed=seed,
            num_samples=3,
            with_edge=False,
        )

    first, second = make(), make()
    late = second[2]  # read in another order: no hidden RNG state
    torch.testing.assert_close(first[2]["image"], late["image"])
    assert first[2]["meta"]["scale"].tolist() == late["meta"]["scale"].tolist()
    draws = {(epoch, first.set_epoch(epoch))[0]: first.augmentation(2) for epoch in range(4)}
    assert len(set(draws.values())) == 4  # a new draw every epoch
    first.set_epoch(0)
    assert first.augmentation(2) == draws[0]
    assert make(seed=4).augmentation(2) != draws[0]
    assert not torch.equal(first[0]["image"], first[1]["image"])


def test_num_samples_is_a_seeded_random_subset_in_file_order(ccp_root):
    full = LIPDataset(ccp_root, "train", CROP)
    subset = LIPDataset(ccp_root, "train", CROP, num_samples=20, seed=1)
    assert subset.ids == LIPDataset(ccp_root, "train", CROP, num_samples=20, seed=1).ids
    assert subset.ids != full.ids[:20]  # not "first N" (seed bug 19)
    assert subset.ids != LIPDataset(ccp_root, "train", CROP, num_samples=20, seed=2).ids
    positions = [full.ids.index(name) for name in subset.ids]
    assert positions == sorted(positions)
    with pytest.raises(ValueError, match="num_samples"):
        LIPDataset(ccp_root, "train", CROP, num_samples=0)


def test_missing_folder_names_path_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected LIP layout") as err:
        LIPDataset(tmp_path / "nowhere", "val")
    assert "nowhere" in str(err.value)
    make_dataset(tmp_path / "data", ["a"])
    with pytest.raises(FileNotFoundError, match="train_id.txt"):
        LIPDataset(tmp_path / "data", "train")


def test_id_without_image_names_id_and_path(tmp_path):
    root = make_dataset(tmp_path, ["present", "ghost"], image_ids=["present"])
    dataset = LIPDataset(root, "val", CROP)
    dataset[0]
    with pytest.raises(FileNotFoundError, match="ghost") as err:
        dataset[1]
    assert str(root / "val_images" / "ghost.jpg") in str(err.value)
    (root / "val_images" / "ghost.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot be decoded"):
        dataset[1]


def test_palette_label_reads_indices_and_rejects_unknown_ids(tmp_path, lip_labels):
    good = LIPDataset(
        make_dataset(tmp_path / "good", ["a"], label_mode="P", value=3),
        "val",
        CROP,
        label_set=lip_labels,
    )
    assert set(np.unique(good.read_label(0)).tolist()) == {3}  # the index, not luminance 255
    bad = LIPDataset(
        make_dataset(tmp_path / "bad", ["b"], label_mode="P", value=200),
        "val",
        CROP,
        label_set=lip_labels,
    )
    with pytest.raises(ValueError, match="200") as err:
        bad[0]
    assert "b.png" in str(err.value)


def test_segm_suffix_and_non_index_labels(tmp_path):
    root = make_dataset(tmp_path, ["a"])
    (root / "val_segmentations" / "a.png").rename(root / "val_segmentations" / "a_segm.png")
    assert LIPDataset(root, "val", CROP)[0]["label"].shape == CROP
    Image.new("RGB", (6, 8)).save(root / "val_segmentations" / "a_segm.png")
    with pytest.raises(ValueError, match="mode RGB"):
        LIPDataset(root, "val", CROP).read_label(0)


def test_image_and_label_sizes_must_match(tmp_path):
    root = make_dataset(tmp_path, ["a"])
    Image.new("RGB", (7, 8)).save(root / "val_images" / "a.jpg")
    with pytest.raises(ValueError, match="must match"):
        LIPDataset(root, "val", CROP)[0]


@pytest.mark.parametrize("bad_id", ["../escape", "/etc/passwd", "a/../../b"])
def test_ids_escaping_the_root_are_rejected(tmp_path, bad_id):
    root = make_dataset(tmp_path, ["a"])
    (root / "val_id.txt").write_text(f"a\n\n{bad_id}\n")
    with pytest.raises(ValueError, match="leaves the image folder") as err:
        LIPDataset(root, "val", CROP)
    assert "val_id.txt:3" in str(err.value)


def test_empty_lines_are_skipped_and_flip_needs_a_label_set(tmp_path):
    root = make_dataset(tmp_path, ["a", "b"])
    (root / "val_id.txt").write_text("a\n\n  \nb\n")
    assert LIPDataset(root, "val", CROP).ids == ["a", "b"]
    with pytest.raises(ValueError, match="label_set"):
        LIPDataset(root, "val", CROP, augment=True)
    assert len(LIPDataset(root, "val", CROP, augment=True, flip_prob=0.0)) == 2


def test_uint8_targets_hold_the_same_values(lip_sample_root, lip_labels):
    wide = LIPDataset(lip_sample_root, "val", CROP, label_set=lip_labels)[0]
    compact = LIPDataset(
        lip_sample_root, "val", CROP, label_set=lip_labels, target_dtype=torch.uint8
    )[0]
    assert compact["label"].dtype == compact["edge"].dtype == torch.uint8
    assert torch.equal(compact["label"].long(), wide["label"])
    assert torch.equal(compact["edge"].long(), wide["edge"])
    with pytest.raises(ValueError, match="target_dtype"):
        LIPDataset(lip_sample_root, "val", CROP, target_dtype=torch.float32)


@pytest.mark.parametrize("image_dtype", [torch.uint8, torch.float32])
def test_collate_samples_stacks_tensors_and_keeps_meta_dicts(lip_sample_root, image_dtype):
    dataset = LIPDataset(lip_sample_root, "val", CROP, image_dtype=image_dtype, augment=False)
    samples = [dataset[i] for i in range(len(dataset))]
    batch = collate_samples(samples)
    assert batch["image"].shape == (len(samples), 3, *CROP)
    assert torch.equal(batch["image"], torch.stack([s["image"] for s in samples]))
    assert torch.equal(batch["label"], torch.stack([s["label"] for s in samples]))
    assert all(m is s["meta"] for m, s in zip(batch["meta"], samples, strict=True))
    if image_dtype == torch.uint8:  # stacked in the crops' HWC memory order: no transposing copy
        assert batch["image"].is_contiguous(memory_format=torch.channels_last)


def test_a_1x1_photo_is_refused_naming_the_file(tmp_path):
    root = make_dataset(tmp_path, ["a", "dot"])
    Image.new("RGB", (1, 1)).save(root / "val_images" / "dot.jpg")
    Image.new("L", (1, 1)).save(root / "val_segmentations" / "dot.png")
    dataset = LIPDataset(root, "val", CROP)
    dataset[0]
    with pytest.raises(ValueError, match="image is 1x1 px") as err:
        dataset[1]
    assert str(root / "val_images" / "dot.jpg") in str(err.value)


@pytest.mark.parametrize("workers", [0, 1])
def test_check_samples_meets_every_bad_sample_before_training(tmp_path, workers):
    root = make_dataset(tmp_path, ["a", "b", "c"])
    dataset = LIPDataset(root, "val", CROP)
    check_samples(dataset, workers)  # all good: silent
    Image.new("RGB", (7, 8)).save(root / "val_images" / "c.jpg")
    with pytest.raises(ValueError) as err:
        check_samples(dataset, workers)
    assert "c.jpg: image is 7x8 but its label" in data_error_line(err.value)
    with pytest.raises(ValueError):
        check_samples(dataset, workers, shard=(0, 2))  # a and c: the first of two processes
    check_samples(dataset, workers, shard=(1, 2))  # b only
