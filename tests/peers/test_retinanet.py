"""The MONAI RetinaNet peer: box conversion, the same losses as MONAI's shipped detector, a tiny run
through the LPG's training loop and scanner."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from lesion_harvester.config import RetinaNetConfig, fingerprint, load_preset
from lesion_harvester.errors import ConfigError, DataError
from lesion_harvester.io.annotations import read_tracklets
from lesion_harvester.lpg.propose import propose
from lesion_harvester.lpg.train import TrainingOptions, train_detector
from lesion_harvester.paths import TrainLayout
from lesion_harvester.peers.retinanet import (
    RetinaNetModel,
    build_detector,
    from_monai_boxes,
    monai_targets,
    to_monai_boxes,
)
from lesion_harvester.structures import LabelSet
from tests.conftest import label_run


def test_boxes_survive_the_round_trip_to_monai_exactly():
    rng = np.random.default_rng(0)
    boxes = np.sort(rng.uniform(0, 500, (50, 2, 2)), axis=1).reshape(50, 4)
    boxes = np.round(boxes * 4) / 4  # pixel and sub-pixel values, as decoded boxes have
    monai = to_monai_boxes(boxes)
    # x is the column; MONAI orders a (C, H, W) image's box coordinates as its axes, rows first, and
    # a one-pixel box (x1 == x2) is one pixel wide in its continuous corners
    assert to_monai_boxes(np.array([[3.0, 4.0, 3.0, 4.0]])).tolist() == [[4.0, 3.0, 5.0, 4.0]]
    assert to_monai_boxes(np.array([[10.0, 20.0, 29.0, 25.0]])).tolist() == [[20.0, 10.0, 26.0, 30.0]]
    assert np.array_equal(from_monai_boxes(monai), boxes.astype(np.float32).astype(np.float64))
    assert from_monai_boxes(to_monai_boxes(np.zeros((0, 4)))).shape == (0, 4)


def _batch():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    targets = monai_targets([np.array([[10.0, 12.0, 29.0, 25.0], [40.0, 40.0, 45.0, 47.0]]), np.zeros((0, 4))])
    return images, targets


def test_the_same_losses_as_monais_shipped_detector(monkeypatch):
    """Where torchvision imports, MONAI's RetinaNetDetector computes these losses itself; here its one
    torchvision reference (isinstance against Matcher) is replaced by a class nothing is an instance of."""
    from monai.apps.detection.networks import retinanet_detector

    monkeypatch.setattr(retinanet_detector, "Matcher", type("NoMatcher", (), {}))
    cfg = RetinaNetConfig()
    ours = build_detector(cfg).train()
    shipped = retinanet_detector.RetinaNetDetector(ours.network, ours.anchor_generator, spatial_dims=2)
    shipped.set_atss_matcher(num_candidates=cfg.atss_candidates, center_in_gt=False)
    shipped.set_hard_negative_sampler(batch_size_per_image=cfg.sampler_anchors_per_image,
                                      positive_fraction=cfg.sampler_positive_fraction, pool_size=20, min_neg=16)
    shipped.set_target_keys(box_key="boxes", label_key="labels")
    shipped.train()
    images, targets = _batch()
    torch.manual_seed(1)  # the hard-negative sampler draws at random
    got = ours(images, targets)
    torch.manual_seed(1)
    expected = shipped(images, targets)
    assert set(got) == set(expected) == {ours.cls_key, ours.box_reg_key}
    for key in got:
        assert torch.equal(got[key], expected[key]), key
    assert float(got[ours.box_reg_key].detach()) > 0  # the lesions were matched to anchors


def test_detections_come_back_as_inclusive_boxes_inside_the_image():
    detector = build_detector(RetinaNetConfig(score_threshold=0.0)).eval()  # untrained: scores near the 0.01 prior
    with torch.no_grad():
        found = detector(torch.randn(1, 3, 64, 96))[0]
    boxes = from_monai_boxes(found["boxes"])
    assert len(boxes) > 0 and boxes[:, 0].min() >= 0 and boxes[:, 2].max() <= 95 and boxes[:, 3].max() <= 63


def test_the_split_forward_loss_and_decode_equal_monais_own_forward():
    """RetinaNetModel runs MONAI's training and evaluation forward in parts (network outputs, then
    loss or box selection): the same losses and detections as calling the detector."""
    model = RetinaNetModel(RetinaNetConfig(score_threshold=0.0)).train()
    images, targets = _batch()
    train = load_preset("tiny").lpg_train
    torch.manual_seed(1)  # the hard-negative sampler draws at random
    expected = model.detector(images, [dict(t) for t in targets])
    torch.manual_seed(1)
    loss, parts = model.loss(model(images), [dict(t) for t in targets], train)
    assert torch.equal(loss, expected[model.detector.cls_key] + expected[model.detector.box_reg_key])
    assert parts == {"cls": float(expected[model.detector.cls_key].detach()),
                     "box": float(expected[model.detector.box_reg_key].detach())}
    model.eval()
    with torch.no_grad():
        shipped = model.detector(images[:, :, :48, :40])  # padded to 64 x 64 on the way, as a scan's slices
        ours = model.decode(model(images[:, :, :48, :40]))
    assert len(shipped[0]["boxes"]) > 0
    for a, b in zip(shipped, ours):
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_tiny_training_and_scan(tiny_dataset, tmp_path):
    preset = load_preset("tiny")
    preset = dataclasses.replace(preset, lpg_train=dataclasses.replace(preset.lpg_train, epochs=1,
                                                                       iters_per_epoch=2, batch_size=2))
    labels = LabelSet("R", tiny_dataset)
    options = TrainingOptions("cpu", progress=False, drop_known_positives=True)
    summary = train_detector(RetinaNetModel, labels, preset, tmp_path / "rn", options)
    assert summary["epochs"] == 1 and summary["history"][0]["loss"] > 0
    assert summary["kept_epoch"] == 1 and summary["operating_point"] is None  # no validation: the last epoch
    # a rerun finds the finished run and trains nothing more
    assert train_detector(RetinaNetModel, labels, preset, tmp_path / "rn", options)["epochs"] == 1
    out = tmp_path / "dt.pkl"
    results = propose(tiny_dataset, tmp_path / "rn" / "best.pt", out, split="detection_test", device="cpu",
                      progress=False, detector=RetinaNetModel)
    splits = json.loads((tiny_dataset / "splits.json").read_text())
    assert set(results) == set(splits["detection_test"]) and set(read_tracklets(out)) == set(results)
    torch.save({"format": "lesion-harvester-lpg/1"}, tmp_path / "lpg.pt")
    with pytest.raises(DataError, match="not a Lesion Harvester RetinaNet checkpoint"):
        propose(tiny_dataset, tmp_path / "lpg.pt", tmp_path / "x.pkl", split="detection_test", device="cpu",
                detector=RetinaNetModel)
    # an anchor-based detector has no hard negative loss: a label set with hard negatives is refused
    with pytest.raises(ConfigError, match="RetinaNet has no hard negative loss"):
        train_detector(RetinaNetModel, dataclasses.replace(labels, hard_negatives="n.pkl"), preset,
                       tmp_path / "rn_n", options)


def test_a_killed_training_resumes_to_the_same_weights(tiny_dataset, tmp_path, monkeypatch):
    from lesion_harvester.lpg import train

    preset = load_preset("tiny")
    preset = dataclasses.replace(preset, lpg_train=dataclasses.replace(preset.lpg_train, epochs=2,
                                                                       iters_per_epoch=2, batch_size=2))
    labels = LabelSet("R", tiny_dataset)
    options = TrainingOptions("cpu", progress=False, drop_known_positives=True)
    train_detector(RetinaNetModel, labels, preset, tmp_path / "whole", options)
    real_loader = train.epoch_loader

    def killed_in_epoch_2(make_sampler, build_targets, seed, epoch, *args, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt  # as if the process died after epoch 1 was saved
        return real_loader(make_sampler, build_targets, seed, epoch, *args, **kwargs)

    monkeypatch.setattr(train, "epoch_loader", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_detector(RetinaNetModel, labels, preset, tmp_path / "resumed", options)
    monkeypatch.setattr(train, "epoch_loader", real_loader)
    summary = train_detector(RetinaNetModel, labels, preset, tmp_path / "resumed", options)
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    whole = torch.load(tmp_path / "whole" / "best.pt", weights_only=True)["state_dict"]
    resumed = torch.load(tmp_path / "resumed" / "best.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    # another preset's run in the same folder is refused
    other = dataclasses.replace(preset, retinanet=RetinaNetConfig(fpn_channels=32))
    with pytest.raises(ConfigError, match="other settings"):
        train_detector(RetinaNetModel, labels, other, tmp_path / "resumed", options)


def test_a_last_checkpoint_of_the_peers_own_loop_still_resumes(tiny_dataset, tmp_path):
    """last.pt of the loop the peer had before it shared the LPG's named its fingerprint "identity"
    and recorded no "drop_known_positives": such a run continues where it stopped."""
    preset = load_preset("tiny")
    preset = dataclasses.replace(preset, lpg_train=dataclasses.replace(preset.lpg_train, epochs=2,
                                                                       iters_per_epoch=1, batch_size=2))
    run, _ = label_run(tmp_path, tiny_dataset)
    labels = LabelSet("R+P", tiny_dataset, extra_positives=str(run.harvested))
    options = TrainingOptions("cpu", progress=False, drop_known_positives=True)
    layout = TrainLayout(tmp_path / "old")
    train_detector(RetinaNetModel, labels, dataclasses.replace(
        preset, lpg_train=dataclasses.replace(preset.lpg_train, epochs=1)), layout.root, options)
    state = torch.load(layout.last, weights_only=True)
    # as train_retinanet wrote it
    state["identity"] = fingerprint(preset.retinanet, preset.lpg_train, preset.preprocess,
                                    str(tiny_dataset.resolve()), None, str(run.harvested))
    del state["fingerprint"]
    torch.save(state, layout.last)
    summary = train_detector(RetinaNetModel, labels, preset, layout.root, options)
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
