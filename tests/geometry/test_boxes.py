import numpy as np
import pytest

from lesion_harvester.geometry.boxes import boxes_inside_image, iou3d_voc, iou_voc, pairwise_iou


def test_iou_voc_plus_one_convention():
    # 10x10 pixel boxes (0..9) shifted by 5: intersection 5x10 = 50, union 150
    assert iou_voc([0, 0, 9, 9], [[5, 0, 14, 9]])[0] == pytest.approx(50 / 150)
    assert iou_voc([0, 0, 9, 9], [[0, 0, 9, 9], [20, 20, 30, 30]]).tolist() == [1.0, 0.0]
    # a single pixel box has area 1, not 0
    assert iou_voc([3, 3, 3, 3], [[3, 3, 3, 3]])[0] == 1.0


def test_pairwise_iou_continuous():
    m = pairwise_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [0, 0, 10, 10]]))
    assert m.shape == (1, 2)
    assert m[0].tolist() == pytest.approx([50 / 150, 1.0])


def test_iou3d_slices_and_half_slices():
    a = [0, 0, 9, 9, 2, 5]  # slices 2..5: 4 slices
    assert iou3d_voc(a, a) == pytest.approx(1.0)
    b = [0, 0, 9, 9, 4, 7]  # overlap slices 4,5 -> 2 of 6
    assert iou3d_voc(a, b) == pytest.approx(2 * 100 / (4 * 100 + 4 * 100 - 2 * 100))
    # 5.5-6.5 reads as slice 6 only, the released 3D-Box convention
    assert iou3d_voc([0, 0, 9, 9, 5.5, 6.5], [0, 0, 9, 9, 6, 6]) == pytest.approx(1.0)


def test_boxes_inside_image():
    inside = boxes_inside_image(np.array([[0, 0, 10, 10], [-3, 0, 10, 10], [0, 0, 520, 10]]), 512, 512, margin_px=5)
    assert inside.tolist() == [True, True, False]


def test_aligned_iou_is_the_diagonal_of_the_pairwise_matrix():
    from lesion_harvester.geometry.boxes import aligned_iou, pairwise_iou

    rng = np.random.default_rng(0)
    a = np.sort(rng.uniform(0, 50, (20, 2, 2)), axis=1).transpose(0, 2, 1).reshape(20, 4)[:, [0, 2, 1, 3]]
    b = a + rng.normal(0, 3, a.shape)
    assert np.array_equal(aligned_iou(a, b), np.diag(pairwise_iou(a, b)))
