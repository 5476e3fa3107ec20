"""Tests of datasets/transforms.py: SCHP's affine, warps, flip, normalisation, edges, inverse."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datasets.label_set import IGNORE_INDEX, LabelSet
from datasets.transforms import (
    _edge_map,
    box_to_center_scale,
    flip_lut,
    generate_edge,
    get_affine_transform,
    inverse_warp_label,
    logits_to_original,
    mirror_affine,
    mirror_center,
    normalize,
    sample_augmentation,
    warp_image,
    warp_label,
)
from networks.contracts import IMAGENET_RGB, SCHP_BGR, InputSpec

CROP = (128, 96)  # (H, W)
X = IGNORE_INDEX


def schp_affine(center, scale, rot, output_size):
    """SCHP's utils/transforms.get_affine_transform, written out literally (float32, cv2)."""
    rot_rad = np.pi * rot / 180
    sn, cs = np.sin(rot_rad), np.cos(rot_rad)
    src_dir = np.array([0 * cs - (scale[0] * -0.5) * sn, 0 * sn + (scale[0] * -0.5) * cs])
    dst_w, dst_h = output_size[1], output_size[0]
    dst_dir = np.array([0, (dst_w - 1) * -0.5])

    def third(a, b):
        direct = a - b
        return b + np.array([-direct[1], direct[0]], dtype=np.float32)

    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0], src[1] = center, center + src_dir
    dst[0] = [(dst_w - 1) * 0.5, (dst_h - 1) * 0.5]
    dst[1] = dst[0] + dst_dir
    src[2], dst[2] = third(src[0], src[1]), third(dst[0], dst[1])
    return cv2.getAffineTransform(src, dst)


def apply(matrix, xy):
    return matrix[:, :2] @ np.asarray(xy, np.float64) + matrix[:, 2]


@pytest.fixture
def pairs_set() -> LabelSet:
    return LabelSet("toy", ("bg", "left", "right", "torso"), flip_pairs=((1, 2),))


def test_box_to_center_scale_letterboxes_to_crop_aspect():
    center, scale = box_to_center_scale(154, 220, 0.75)  # portrait: width grows
    np.testing.assert_allclose(center, [76.5, 109.5])
    np.testing.assert_allclose(scale, [219 * 0.75, 219])
    center, scale = box_to_center_scale(300, 200, 0.75)  # landscape: height grows
    np.testing.assert_allclose(center, [149.5, 99.5])
    np.testing.assert_allclose(scale, [299, 299 / 0.75], rtol=1e-6)
    assert center.dtype == scale.dtype == np.float32


@pytest.mark.parametrize("rotation", [0.0, 17.5, -42.0])
def test_affine_matches_schp_three_point_construction(rotation):
    center, scale = np.array([100.3, 200.7], np.float32), np.array([300.0, 400.0], np.float32)
    ours = get_affine_transform(center, scale, rotation, (512, 384))
    np.testing.assert_allclose(ours, schp_affine(center, scale, rotation, (512, 384)), atol=1e-4)
    np.testing.assert_allclose(apply(ours, center), [191.5, 255.5], atol=1e-9)
    zoom = np.hypot(*ours[:, 0])
    assert zoom == pytest.approx(383 / 300.0)
    inverse = get_affine_transform(center, scale, rotation, (512, 384), inverse=True)
    np.testing.assert_allclose(apply(inverse, apply(ours, [10.0, 20.0])), [10, 20], atol=1e-9)


def test_letterbox_affine_keeps_the_whole_image_inside_the_crop():
    height, width = 220, 154
    center, scale = box_to_center_scale(width, height, CROP[1] / CROP[0])
    matrix = get_affine_transform(center, scale, 0.0, CROP)
    corners = np.array([apply(matrix, xy) for xy in [(0, 0), (width - 1, height - 1)]])
    assert (corners >= -1e-9).all() and (corners <= np.array(CROP[::-1]) - 1 + 1e-9).all()
    # the limiting side spans the crop up to SCHP's aspect quirk (ratio W/H, zoom (W-1)/scale)
    assert CROP[0] - 2 < corners[1, 1] - corners[0, 1] <= CROP[0] - 1


def test_warps_use_schp_borders_and_interpolation():
    image = np.full((20, 10, 3), 200, np.uint8)
    label = np.zeros((20, 10), np.uint8)
    label[:, 5:] = 7
    center, scale = box_to_center_scale(10, 20, 1.0)
    matrix = get_affine_transform(center, scale * 1.5, 0.0, (40, 40))  # zoom out: borders show
    warped_image = warp_image(image, matrix, (40, 40))
    warped_label = warp_label(label, matrix, (40, 40))
    assert warped_image.shape == (40, 40, 3) and warped_label.shape == (40, 40)
    assert warped_image[0, 0].tolist() == [0, 0, 0]
    assert warped_label[0, 0] == IGNORE_INDEX
    assert set(np.unique(warped_label).tolist()) == {0, 7, IGNORE_INDEX}  # nearest: no blends


def test_sample_augmentation_stays_in_schp_ranges():
    rng = np.random.default_rng(0)
    draws = [sample_augmentation(rng) for _ in range(2000)]
    scales = np.array([d.scale for d in draws])
    rotations = np.array([d.rotation for d in draws])
    assert scales.min() >= 0.75 and scales.max() <= 1.25 and (scales == 1.25).any()
    assert np.abs(rotations).max() <= 60 and (np.abs(rotations) == 60).any()
    assert 0.55 < (rotations != 0).mean() < 0.65
    assert 0.45 < np.mean([d.flip for d in draws]) < 0.55


@pytest.mark.parametrize("rotation, aug_scale", [(0.0, 1.0), (17.0, 1.13)])
def test_mirror_affine_warps_like_flipping_the_photo_first(pairs_set, rotation, aug_scale):
    """SCHP's flip (mirror photo and label, swap pairs, centre x -> W - x - 1, then warp) against
    the folded one (warp the photo with `mirror_affine`, swap pairs on the crop)."""
    rng = np.random.default_rng(0)
    height, width = 150, 110
    image = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (5, 5), 0)
    label = np.kron(rng.integers(0, 4, (15, 11)), np.ones((10, 10))).astype(np.uint8)
    lut = flip_lut(pairs_set)
    center, scale = box_to_center_scale(width, height, CROP[1] / CROP[0])
    scale = scale * aug_scale
    flipped_center = mirror_center(center, width)
    np.testing.assert_allclose(flipped_center, [width - center[0] - 1, center[1]])

    reference_matrix = get_affine_transform(flipped_center, scale, rotation, CROP)
    reference_image = warp_image(cv2.flip(image, 1), reference_matrix, CROP)
    reference_label = warp_label(cv2.LUT(cv2.flip(label, 1), lut), reference_matrix, CROP)

    matrix = mirror_affine(reference_matrix, width)
    folded_image = warp_image(image, matrix, CROP)
    folded_label = cv2.LUT(warp_label(label, matrix, CROP), lut)

    image_error = np.abs(folded_image.astype(int) - reference_image)
    assert image_error.max() <= 1  # the warp's fixed-point coordinate rounding only
    assert (folded_label == reference_label).mean() > 0.995  # nearest: rare rounding ties
    assert set(np.unique(folded_label)) <= set(np.unique(reference_label))


def test_normalize_matches_formula_and_colour_orders():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    out = normalize(rgb, IMAGENET_RGB)
    mean, std = np.array(IMAGENET_RGB.mean), np.array(IMAGENET_RGB.std)
    expected = ((rgb / 255.0 - mean) / std).transpose(2, 0, 1)
    assert out.dtype == torch.float32 and out.shape == (3, 5, 4)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    # SCHP_BGR holds the same statistics in BGR order: the channels come out reversed
    np.testing.assert_allclose(normalize(rgb, SCHP_BGR).numpy(), expected[::-1], atol=1e-5)
    plain = InputSpec((0.5,) * 3, (0.25,) * 3, "BGR")
    np.testing.assert_allclose(
        normalize(rgb, plain).numpy(),
        normalize(rgb, InputSpec((0.5,) * 3, (0.25,) * 3, "RGB")).numpy()[::-1],
    )
    # a BGR image (cv2.imread) gives the same tensor as its RGB conversion
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    np.testing.assert_array_equal(
        normalize(bgr, IMAGENET_RGB, image_colour="BGR").numpy(), out.numpy()
    )


def test_normalize_rejects_unknown_colour_order():
    with pytest.raises(ValueError, match="RGB"):
        normalize(np.zeros((2, 2, 3), np.uint8), InputSpec((0,) * 3, (1,) * 3, "rgb"))


EDGE_LABEL = [
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 1, 1, 0, 0, 0, 0, 0],
    [0, 0, 0, 1, 1, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, X, X, X],
    [0, 0, 0, 0, 0, 0, 0, X, X, X],
    [0, 0, 0, 0, 0, 2, 2, X, X, X],
    [0, 0, 0, 0, 0, 2, 2, X, X, X],
]
# width 1 = the raw marks: lower pixel (vertical), left (horizontal), top-left (diagonal),
# top-right (anti-diagonal); nothing between a class and 255
EDGE_MARKS = [
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 1, 1, 1, 1, 0, 0, 0, 0],
    [0, 0, 1, 1, 1, 1, 0, 0, 0, 0],
    [0, 0, 1, 1, 1, 0, 0, 0, 0, 0],
    [0, 0, 0, 1, 1, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 1, 1, 1, 0, 0, 0],
    [0, 0, 0, 0, 1, 1, 1, 0, 0, 0],
    [0, 0, 0, 0, 1, 0, 0, 0, 0, 0],
]
# width 3: marks dilated by a 3x3 box; the 255 pixels stay 0
EDGE_WIDTH_3 = [
    [0, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    [0, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    [0, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    [0, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    [0, 1, 1, 1, 1, 1, 0, 0, 0, 0],
    [0, 0, 1, 1, 1, 1, 1, 0, 0, 0],
    [0, 0, 0, 1, 1, 1, 1, 0, 0, 0],
    [0, 0, 0, 1, 1, 1, 1, 0, 0, 0],
    [0, 0, 0, 1, 1, 1, 1, 0, 0, 0],
]


@pytest.mark.parametrize(("width", "expected"), [(1, EDGE_MARKS), (3, EDGE_WIDTH_3)])
def test_generate_edge_hand_made_label(width, expected):
    label = torch.tensor(EDGE_LABEL)
    edge = generate_edge(label, width)
    assert edge.dtype == torch.int64 and edge.shape == label.shape
    assert edge.tolist() == expected


def test_generate_edge_shapes_dtypes_and_torch_path():
    label = torch.tensor(EDGE_LABEL)
    batch = torch.stack([label, label.flip(-1)])
    edges = generate_edge(batch)
    assert edges.shape == (2, 9, 10)
    assert edges[0].tolist() == EDGE_WIDTH_3
    single = generate_edge(batch[:1])
    assert single.shape == (1, 9, 10)  # a batch of one keeps its dim (SCHP squeezed it)
    assert generate_edge(label.to(torch.uint8)).dtype == torch.uint8
    # the tensor code path (used off-CPU) gives the numpy path's result
    assert torch.equal(_edge_map(batch, 3).long(), edges)
    with pytest.raises(ValueError, match="odd"):
        generate_edge(label, 2)


def test_logits_to_original_geometry_on_a_ramp():
    """Bilinear sampling is exact on linear logits: the output is each pixel's crop coords."""
    out_hw, crop = (37, 23), (64, 48)
    center, scale = box_to_center_scale(out_hw[1], out_hw[0], crop[1] / crop[0])
    matrix = get_affine_transform(center, scale, 0.0, crop)
    ys, xs = np.mgrid[0 : out_hw[0], 0 : out_hw[1]]
    expected_x = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
    for size in (crop, (16, 12)):  # full crop and stride-4 logits
        cy, cx = torch.meshgrid(
            torch.linspace(0, crop[0] - 1, size[0]),
            torch.linspace(0, crop[1] - 1, size[1]),
            indexing="ij",
        )
        logits = torch.stack([cx, cy])[None]
        back = logits_to_original(logits, center, scale, out_hw, crop_hw=crop)
        assert back.shape == (1, 2, *out_hw)
        np.testing.assert_allclose(back[0, 0].numpy(), expected_x, atol=2e-3)


def test_logits_to_original_inverts_an_upscaling_warp_exactly():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 5, (33, 33), dtype=np.uint8)
    center, scale = box_to_center_scale(33, 33, 1.0)
    matrix = get_affine_transform(center, scale, 0.0, (65, 65))  # zoom exactly 2
    crop_label = torch.from_numpy(warp_label(label, matrix, (65, 65))).long()
    one_hot = F.one_hot(crop_label, 5).permute(2, 0, 1)[None].float()
    back = logits_to_original(one_hot, center, scale, label.shape)
    np.testing.assert_array_equal(back[0].argmax(0).numpy(), label)
    np.testing.assert_array_equal(
        inverse_warp_label(crop_label.numpy().astype(np.uint8), center, scale, label.shape), label
    )


def test_logits_to_original_batches_per_image_centres():
    rng = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 32, 24, generator=rng)
    centers = np.array([[10.0, 20.0], [12.5, 18.0]], np.float32)
    scales = np.array([[30.0, 40.0], [25.0, 33.3]], np.float32)
    both = logits_to_original(logits, centers, scales, (41, 21))
    for i in range(2):
        one = logits_to_original(logits[i : i + 1], centers[i], scales[i], (41, 21))
        torch.testing.assert_close(both[i : i + 1], one)
    with pytest.raises(ValueError, match="centres"):
        logits_to_original(logits, np.zeros((3, 2)), scales, (41, 21))


@pytest.mark.parametrize("size", [(1, 1), (1, 40), (40, 1), (0, 0)])
def test_degenerate_photo_sizes_raise_a_value_error_naming_the_size(size):
    width, height = size
    with pytest.raises(ValueError, match=f"image is {width}x{height} px"):
        box_to_center_scale(width, height, 0.75)
    assert box_to_center_scale(2, 2, 0.75)[1][0] > 0  # the smallest photo that crops


def test_a_singular_crop_affine_is_a_value_error_not_a_linalg_error():
    for scale in ([0.0, 0.0], [float("nan"), 1.0]):
        with pytest.raises(ValueError, match="no crop affine"):
            get_affine_transform([0.0, 0.0], scale, 0.0, (64, 48))
    with pytest.raises(ValueError, match="no crop affine"):
        get_affine_transform([5.0, 5.0], [10.0, 10.0], 0.0, (1, 1), inverse=True)
    get_affine_transform([5.0, 5.0], [10.0, 10.0], 0.0, (1, 1))  # into one pixel: fine
