"""masks.py: COCO RLE round trips, IoU and boxes, checked as properties."""
import json

import numpy as np
import pytest

from conceptgen.masks import (decode_rle, encode_rle, iou_matrix, mask_area, mask_box, mask_iou, resize_mask,
                              scale_box, union_box)


def random_masks(n, h=37, w=53, seed=0):
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(n):
        m = np.zeros((h, w), bool)
        x0, y0 = rng.integers(0, w - 5), rng.integers(0, h - 5)
        m[y0:y0 + rng.integers(1, 20), x0:x0 + rng.integers(1, 25)] = True
        m &= rng.random((h, w)) > 0.2  # ragged, with holes
        masks.append(m)
    return masks


def test_rle_round_trip_is_exact_and_json_safe():
    for mask in random_masks(10) + [np.zeros((7, 9), bool), np.ones((7, 9), bool)]:
        rle = encode_rle(mask)
        assert isinstance(rle["counts"], str)
        restored = decode_rle(json.loads(json.dumps(rle)))
        assert restored.dtype == bool and restored.shape == mask.shape
        assert np.array_equal(restored, mask)


def test_encode_rejects_non_2d():
    with pytest.raises(ValueError):
        encode_rle(np.zeros((2, 3, 4), bool))


def test_iou_of_overlapping_rectangles():
    a = np.zeros((20, 20), bool)
    b = np.zeros((20, 20), bool)
    a[0:10, 0:10] = True
    b[0:10, 5:15] = True  # 50 shared pixels, 150 in the union
    assert mask_iou(a, b) == pytest.approx(50 / 150)
    assert mask_iou(a, a) == 1.0
    assert mask_iou(a, ~a) == 0.0
    assert mask_iou(np.zeros_like(a), np.zeros_like(a)) == 0.0


def test_iou_matrix_agrees_with_pairwise_iou():
    ma, mb = random_masks(6, seed=1), random_masks(4, seed=2) + [np.zeros((37, 53), bool)]
    matrix = iou_matrix(ma, mb)
    assert matrix.shape == (6, 5)
    expected = np.array([[mask_iou(a, b) for b in mb] for a in ma])
    np.testing.assert_allclose(matrix, expected, atol=1e-12)
    assert iou_matrix([], mb).shape == (0, 5)


def test_boxes_are_tight_and_exclusive():
    m = np.zeros((30, 40), bool)
    m[5:12, 7:20] = True
    assert mask_box(m) == [7.0, 5.0, 20.0, 12.0]
    assert mask_box(np.zeros((3, 3), bool)) == [0.0, 0.0, 0.0, 0.0]
    assert mask_area(m) == 7 * 13
    assert union_box([[1, 2, 5, 6], [0, 0, 0, 0], [3, 1, 9, 4]]) == [1.0, 1.0, 9.0, 6.0]
    assert scale_box([1, 2, 3, 4], 2.0, 0.5) == [2.0, 1.0, 6.0, 2.0]


def test_resize_mask_keeps_region_in_place():
    m = np.zeros((20, 20), bool)
    m[4:8, 10:16] = True
    big = resize_mask(m, 40, 40)
    assert big.shape == (40, 40) and big.dtype == bool
    assert mask_box(big) == [20.0, 8.0, 32.0, 16.0]


def test_shift_mask_moves_pixels_and_cuts_what_leaves_the_frame():
    from conceptgen.masks import shift_mask

    m = np.zeros((6, 8), bool)
    m[2:4, 3:5] = True
    for dx, dy in [(2, 1), (-3, -2), (0, 0), (1, -2)]:
        np.testing.assert_array_equal(shift_mask(m, dx, dy), np.roll(np.roll(m, dy, axis=0), dx, axis=1))
    edge = shift_mask(m, 4, 0)                       # half of it leaves on the right
    assert edge.sum() == 2 and edge[2:4, 7].all()
    assert not shift_mask(m, -8, 0).any() and not shift_mask(m, 0, 6).any()
