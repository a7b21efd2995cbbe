import math

import numpy as np
import pytest
import torch

from lesion_harvester.geometry.preprocess import (
    blend_positions,
    body_crop_box,
    boxes_to_original,
    boxes_to_resampled,
    context_offsets,
    gather_slices,
    inplane_scale,
    normalize_hu,
    pad_to_multiple,
    resample_inplane,
    rewindow,
    stored_to_hu,
)


def test_normalize_window_and_mean():
    out = normalize_hu(np.array([-2000.0, -1024.0, 3071.0, 5000.0]))
    assert out.tolist() == pytest.approx([-50.0, -50.0, 205.0, 205.0])
    t = normalize_hu(torch.tensor([1023.5]))
    assert float(t) == pytest.approx(127.5 - 50, abs=1e-3)


def test_rewindow_gives_the_input_window_from_the_stored_encoding():
    hu = torch.tensor([-1024.0, -500.0, -160.0, 0.0, 40.0, 240.0, 1000.0])
    stored = normalize_hu(hu)
    assert stored_to_hu(stored).tolist() == pytest.approx(hu.tolist(), abs=1e-3)
    assert rewindow(stored, (-1024.0, 3071.0), 50.0) is stored  # MULAN's own window: untouched
    soft = rewindow(stored, (-160.0, 240.0), 50.0)
    assert soft.tolist() == pytest.approx(normalize_hu(hu, (-160.0, 240.0), 50.0).tolist(), abs=1e-3)
    # 40 HU of contrast is about 25 input units in the soft-tissue window, under 3 in MULAN's
    assert float(soft[4] - soft[3]) == pytest.approx(25.5, abs=0.01)
    assert float(stored[4] - stored[3]) < 3


def test_the_input_window_does_not_change_the_prepared_cache():
    from lesion_harvester.config import PreprocessConfig

    assert PreprocessConfig().fingerprint() == PreprocessConfig(window_hu=(-160.0, 240.0)).fingerprint()
    assert PreprocessConfig().fingerprint() != PreprocessConfig(spacing_mm=1.5).fingerprint()


def test_body_crop_drops_thin_table():
    hu = np.full((3, 64, 64), -1000.0)
    hu[:, 10:40, 15:50] = 40.0  # body
    hu[:, 55:57, 2:62] = 200.0  # a 2-pixel table line, removed by the 7x7 opening
    assert body_crop_box(hu) == (10, 40, 15, 50)
    assert body_crop_box(np.full((8, 8), -1000.0)) == (0, 8, 0, 8)


def test_context_offsets_exact_and_shared():
    assert context_offsets(2.0).tolist() == [-4, -3, -2, -1, 0, 1, 2, 3, 4]
    assert context_offsets(1.0).tolist() == [-8, -6, -4, -2, 0, 2, 4, 6, 8]
    five = context_offsets(5.0)
    assert five[5] == pytest.approx(0.4) and five[0] == pytest.approx(-1.6)
    assert context_offsets(math.nan).tolist() == [0.0] * 9
    # shared: triplet centres 3 steps apart fall on whole slices (5 mm: 1.2 -> 1 slice)
    shared = context_offsets(5.0, mode="shared")
    assert shared[7] - shared[4] == pytest.approx(1.0)
    assert context_offsets(1.25, mode="shared")[7] == pytest.approx(5.0)
    assert context_offsets(2.0, num_slices=3).tolist() == [-1, 0, 1]


def test_per_offset_interpolation_weights():
    """At 5 mm slices, offset k * 0.4: each offset has its own weight (MULAN's bug would reuse one)."""
    positions = 10 + context_offsets(5.0)
    blend = blend_positions(positions, 40)
    assert blend.lo.tolist() == [8, 8, 9, 9, 10, 10, 10, 11, 11]
    assert blend.w_hi.tolist() == pytest.approx([0.4, 0.8, 0.2, 0.6, 0.0, 0.4, 0.8, 0.2, 0.6], abs=1e-6)


def test_edges_reuse_nearest_slice():
    volume = torch.arange(5, dtype=torch.float32)[:, None, None].expand(5, 2, 2)
    out = gather_slices(volume, np.array([-3.0, -0.5, 0.5, 3.7, 9.0]))
    assert out[:, 0, 0].tolist() == pytest.approx([0.0, 0.0, 0.5, 3.7, 4.0])


def test_resampling_box_mapping_round_trip():
    scale = inplane_scale((0.7, 0.7), 0.8, (300, 400), 512)
    assert scale == pytest.approx(0.875)
    capped = inplane_scale((0.5, 0.5), 0.5, (1000, 800), 512)
    assert capped == pytest.approx(512 / 1000)
    boxes = np.array([[10.0, 20.0, 50.0, 80.0]])
    there = boxes_to_resampled(boxes, (5, 7), scale)
    assert np.allclose(boxes_to_original(there, (5, 7), scale), boxes)
    # a point feature stays on its mapped pixel
    image = torch.zeros(1, 64, 64)
    image[0, 32, 16] = 1.0
    out = resample_inplane(image, 0.5)
    assert out.shape == (1, 32, 32)
    mapped = boxes_to_resampled(np.array([[16, 32, 16, 32]]), (0, 0), 0.5)[0]
    peak = np.unravel_index(int(out[0].argmax()), out.shape[1:])
    assert abs(peak[0] - mapped[1]) <= 0.5 and abs(peak[1] - mapped[0]) <= 0.5


def test_pad_to_multiple():
    assert pad_to_multiple(torch.ones(3, 30, 33), 16).shape == (3, 32, 48)
