import math

import numpy as np
import pytest
import torch

from lesion_harvester.lpg.decode import decode
from lesion_harvester.lpg.losses import focal_loss, reg_l1_loss, soft_negatives
from lesion_harvester.lpg.targets import build_targets, draw_gaussian, gaussian_radius, to_output


def test_gaussian_radius_matches_centernet_rule():
    # the smallest of three quadratic roots; for a 10 x 10 box at overlap 0.7 it is about 2.7
    r = gaussian_radius(10, 10, 0.7)
    assert 2.5 < r < 3.0
    assert gaussian_radius(20, 20) > gaussian_radius(10, 10)


def test_draw_gaussian_peak_sigma_and_clipping():
    hm = np.zeros((9, 9), np.float32)
    draw_gaussian(hm, (4, 4), 2)
    assert hm[4, 4] == 1.0
    sigma = 5 / 6
    assert hm[4, 5] == pytest.approx(math.exp(-1 / (2 * sigma**2)), rel=1e-5)
    edge = np.zeros((5, 5), np.float32)
    draw_gaussian(edge, (0, 0), 3)  # partly outside: no error, peak kept
    assert edge[0, 0] == 1.0
    draw_gaussian(hm, (4, 4), 1)  # element-wise max keeps the larger values
    assert hm[4, 6] > 0


def test_targets_centre_size_offset():
    t = build_targets(np.array([[10.0, 20.0, 29.0, 31.0]]), (16, 16), stride=4, max_objects=4)
    cx, cy = to_output(19.5, 4), to_output(25.5, 4)
    ix, iy = int(np.floor(cx + 0.5)), int(np.floor(cy + 0.5))
    assert t["hm"][0, iy, ix] == 1.0 and t["hm"].max() == 1.0
    assert t["ind"][0] == iy * 16 + ix and t["mask"].tolist() == [1, 0, 0, 0]
    assert t["wh"][0].tolist() == pytest.approx([20 / 4, 12 / 4])
    assert t["reg"][0].tolist() == pytest.approx([cx - ix, cy - iy])


def test_hard_negatives_overwrite_positives():
    pos = np.array([[10.0, 10.0, 29.0, 29.0]])
    t = build_targets(pos, (16, 16), hard_negatives_xyxy=pos + 2)
    assert t["hm"].min() == -1.0  # a hard-negative centre
    assert t["hm"].max() < 1.0  # the overlapping positive was overwritten
    assert np.all(t["hm"] >= -1) and np.all(t["hm"] <= 1)


def test_an_erased_positive_is_no_object_while_a_positive_elsewhere_keeps_its_peak():
    erased, kept = [10.0, 10.0, 29.0, 29.0], [40.0, 40.0, 55.0, 55.0]
    t = build_targets(np.array([erased, kept]), (24, 24), hard_negatives_xyxy=np.array([erased]))
    centre = int(t["ind"][0])
    assert t["hm"].flat[centre] == 1.0 and t["hm"].max() == 1.0 and t["hm"].min() == -1.0
    # one object left, the one elsewhere: its size and offset are trained, the erased one's are not
    assert t["mask"].tolist()[:2] == [1.0, 0.0]
    plain = build_targets(np.array([kept]), (24, 24))
    assert centre == int(plain["ind"][0]) and np.allclose(t["wh"][0], plain["wh"][0])
    assert np.array_equal(t["hm"][t["hm"] > 0.5], plain["hm"][plain["hm"] > 0.5])  # its Gaussian untouched


def test_hnsl_weighs_a_hard_negative_centre_sixteen_times_background():
    pred = torch.full((1, 1, 1, 2), 0.3)
    target = torch.tensor([[[[0.0, -1.0]]]])  # plain background, hard-negative centre
    pred.requires_grad_(True)
    loss_each = []
    for i in range(2):
        p = pred.detach().clone().requires_grad_(True)
        mask = torch.zeros_like(target)
        mask[..., i] = 1
        focal_loss(p, target * mask + (1 - mask) * 0.999999).backward()  # other pixel ~ weightless
        loss_each.append(float(p.grad[..., i]))
    assert loss_each[1] / loss_each[0] == pytest.approx(16.0, rel=1e-3)


def test_focal_loss_values():
    target = torch.zeros(1, 1, 2, 2)
    target[0, 0, 0, 0] = 1.0
    pred = torch.full((1, 1, 2, 2), 0.1)
    pred[0, 0, 0, 0] = 0.9
    expected_pos = math.log(0.9) * 0.1**2
    expected_neg = 3 * math.log(0.9) * 0.1**2
    assert float(focal_loss(pred, target)) == pytest.approx(-(expected_pos + expected_neg))
    # no object: only the negative term, not divided by zero
    uniform = torch.full((1, 1, 2, 2), 0.1)
    assert float(focal_loss(uniform, torch.zeros_like(target))) == pytest.approx(-4 * math.log(0.9) * 0.01, rel=1e-5)


def test_soft_negatives_spare_confident_background_of_partially_labelled_crops_only():
    # two crops alike: the first from a partially labelled volume, the second from a complete one
    target = torch.zeros(2, 1, 1, 4)
    target[:, 0, 0, 1] = 1.0  # a marked lesion
    target[:, 0, 0, 3] = -0.5  # a hard negative (HNSL)
    pred = torch.tensor([0.9, 0.9, 0.3, 0.8]).view(1, 1, 1, 4).repeat(2, 1, 1, 1)  # pixel 0: confident background
    mask = soft_negatives(pred, target, torch.tensor([0.0, 1.0]), above=0.5)
    assert mask[0, 0, 0].tolist() == [True, False, False, False]  # neither the lesion nor the hard negative
    assert not mask[1].any()  # complete labels: all background is background
    low = torch.tensor([0.3, 0.9, 0.3, 0.8]).view(1, 1, 1, 4)
    assert not soft_negatives(low, target[:1], torch.tensor([0.0]), above=0.5).any()
    # the focal loss drops exactly the ignored negative terms
    full = float(focal_loss(pred[:1], target[:1]))
    spared = float(focal_loss(pred[:1], target[:1], ignore=mask[:1]))
    assert full - spared == pytest.approx(-math.log(0.1) * 0.9**2, rel=1e-4)


def test_reg_l1_at_centres_only():
    out = torch.zeros(1, 2, 4, 4)
    out[0, :, 1, 2] = torch.tensor([3.0, 5.0])
    ind = torch.tensor([[1 * 4 + 2, 0]])
    mask = torch.tensor([[1.0, 0.0]])
    target = torch.tensor([[[2.0, 5.0], [9.0, 9.0]]])
    assert float(reg_l1_loss(out, ind, mask, target)) == pytest.approx(1.0 / 2, rel=1e-3)


@pytest.mark.parametrize("stride", [4, 2])
def test_decode_inverts_the_targets(stride):
    box = np.array([[40.0, 24.0, 71.0, 47.0], [9.0, 10.0, 13.0, 14.0]])  # and a 5 px lesion
    n = 128 // stride
    t = build_targets(box, (n, n), stride=stride)
    hm = torch.from_numpy(t["hm"])[None] * 20 - 10  # logits: a clear peak
    wh = torch.zeros(1, 2, n, n)
    reg = torch.zeros(1, 2, n, n)
    for j in range(2):
        iy, ix = divmod(int(t["ind"][j]), n)
        wh[0, :, iy, ix] = torch.from_numpy(t["wh"][j])
        reg[0, :, iy, ix] = torch.from_numpy(t["reg"][j])
    boxes, scores = decode(hm, wh, reg, k=3, stride=stride)
    assert scores[0, 1] > 0.99
    found = boxes[0, :2].numpy()
    found = found[np.argsort(found[:, 0])]
    assert found == pytest.approx(box[np.argsort(box[:, 0])], abs=1e-4)
    # one peak per lesion: the Gaussian's shoulders (wider in cells at stride 2) are suppressed
    assert scores[0, 2] < 0.5
    tiny = decode(hm, torch.zeros_like(wh), reg, k=1, stride=stride)[0][0, 0]
    assert tiny[2] >= tiny[0] and tiny[3] >= tiny[1]  # never an inverted box
