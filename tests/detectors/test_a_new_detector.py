"""Adding a detector is one class and one registry line: a toy detector defined in this file trains,
scans and is scored on the tiny preset through the commands the MSCN goes through (``train-lpg``,
``propose``, ``evaluate``), with nothing else of the project changed."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from lesion_harvester.cli.main import main
from lesion_harvester.config import LPGTrainConfig, PreprocessConfig, Preset, ScanConfig, StackConfig, from_dict
from lesion_harvester.dataset.prepared_cache import PreparedCache
from lesion_harvester.detectors.base import Crop, DetectionModel, SliceDetections
from lesion_harvester.errors import ConfigError
from lesion_harvester.geometry.preprocess import gather_slices
from lesion_harvester.io.annotations import read_tracklets
from lesion_harvester.io.loader import open_volumes
from lesion_harvester.lpg.checkpoint import model_payload
from lesion_harvester.lpg.decode import decode
from lesion_harvester.lpg.losses import centernet_loss, loss_counts
from lesion_harvester.lpg.scan import Scanner
from lesion_harvester.lpg.targets import batch_targets
from lesion_harvester.paths import cache_dir_for
from lesion_harvester.peers.detectors import DETECTORS

STRIDE = 4


@dataclass(frozen=True)
class ToySettings:
    channels: int = 8


class ToyDetector(DetectionModel):
    """A single-triplet CenterNet of two strided convolutions: the LPG's targets, loss and decoding on
    a network of its own, in checkpoints of its own format."""

    FORMAT = "toy-detector/1"
    WHAT = "toy detector"
    num_slices = 3
    size_divisible = STRIDE

    def __init__(self, settings: ToySettings):
        super().__init__()
        self.config = settings
        c = settings.channels
        self.body = nn.Sequential(nn.Conv2d(3, c, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, stride=2, padding=1), nn.ReLU())
        self.heads = nn.Conv2d(c, 5, 1)

    def forward(self, x: torch.Tensor):
        y = self.heads(self.body(x))
        return y[:, :1], y[:, 1:3], y[:, 3:]

    @classmethod
    def settings(cls, preset: Preset) -> ToySettings:
        return ToySettings()

    @classmethod
    def load(cls, path, device="cpu", payload=None):
        payload = payload if payload is not None else cls.read_checkpoint(path)
        model = cls(from_dict(ToySettings, payload["config"], f"{path} config"))
        model.load_weights(payload, path)
        return (model.to(device).eval(), from_dict(PreprocessConfig, payload["preprocess"], f"{path} preprocess"),
                from_dict(StackConfig, payload["stack"], f"{path} stack"))

    def payload(self, pre: PreprocessConfig, stack: StackConfig, **extra) -> dict:
        return model_payload(self, self.config, pre, stack, **extra)

    def load_weights(self, payload: dict, path) -> None:
        self.load_state_dict(payload["state_dict"])

    def build_targets(self, crops: list[Crop], train: LPGTrainConfig):
        return batch_targets(crops, STRIDE, train.max_objects)

    def loss(self, outputs, targets, train: LPGTrainConfig, totals=None):
        return centernet_loss(outputs, targets, counts=totals)

    def loss_totals(self, targets):
        return loss_counts(targets)

    def detect_slices(self, volume: torch.Tensor, positions: np.ndarray, targets: list[int],
                      scan: ScanConfig) -> Iterator[SliceDetections]:
        for start in range(0, len(targets), scan.batch_slices):
            chunk = targets[start:start + scan.batch_slices]
            boxes, scores = decode(*self(torch.stack([gather_slices(volume, positions[z]) for z in chunk])),
                                   scan.top_k, STRIDE)
            yield chunk, boxes.numpy(), scores.numpy()


@pytest.fixture
def toy():
    with DETECTORS.registered("Toy", ToyDetector):  # the one registration line a new detector needs
        yield
    assert "Toy" not in DETECTORS


def test_a_detector_defined_here_trains_scans_and_is_scored_through_the_commands(tiny_dataset, tmp_path, toy,
                                                                                 capsys):
    options = ["--preset", "tiny", "--set", "lpg_train.iters_per_epoch=4", "--device", "cpu",
               "--cache-dir", str(tmp_path / "cache"), "-q"]
    out = tmp_path / "toy"
    assert main(["train-lpg", str(tiny_dataset), "--out", str(out), "--detector", "Toy", *options]) == 0
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["format"] == "toy-detector/1" and best["config"] == {"channels": 8}
    assert set(best["state_dict"]) == set(ToyDetector(ToySettings()).state_dict())
    # the loop's validation chose best.pt and measured the toy's operating point on it
    summary = json.loads((out / "train_log.json").read_text())
    assert summary["epochs"] == 2 and all(e["score"] is not None for e in summary["history"])
    assert best["epoch"] + 1 == summary["kept_epoch"]
    assert set(best["operating_point"]["rates"]) == {"0.5", "1", "2", "4"}
    # a rerun finds the finished training (the loop's resume) and trains nothing more
    assert main(["train-lpg", str(tiny_dataset), "--out", str(out), "--detector", "Toy", *options]) == 0
    assert json.loads((out / "train_log.json").read_text())["history"] == summary["history"]

    dets = tmp_path / "dets.pkl"
    assert main(["propose", str(tiny_dataset), "--checkpoint", str(out / "best.pt"), "--split", "detection_test",
                 "--out", str(dets), "--score-threshold", "0.05", *options[4:]]) == 0
    found = read_tracklets(dets)
    splits = json.loads((tiny_dataset / "splits.json").read_text())
    assert list(found) == splits["detection_test"] and any(found.values())
    # what propose wrote is the toy's own scan of the volume, stacked
    model, pre, stack = ToyDetector.load(out / "best.pt")
    source = open_volumes(tiny_dataset, split="detection_test")
    key = splits["detection_test"][0]
    pv = PreparedCache(cache_dir_for(tiny_dataset, tmp_path / "cache"), pre).get(source, key)
    alone = Scanner(model, pre, ScanConfig()).propose(pv, dataclasses.replace(stack, score_threshold=0.05))
    assert len(alone) == len(found[key])
    for a, b in zip(alone, found[key]):
        assert list(a.z_indices) == list(b.z_indices) and np.allclose(a.boxes_xyxy_px, b.boxes_xyxy_px)
        assert np.allclose(a.scores, b.scores)

    result = tmp_path / "r.json"
    assert main(["evaluate", "--gt", str(tiny_dataset / "ground_truth" / "complete.pkl"), "--detections", str(dets),
                 "--split", "detection_test", "--json", str(result)]) == 0
    scored = json.loads(result.read_text())
    assert scored["n_gt"] > 0 and 0.0 <= scored["ap"] <= 1.0 and scored["n_detections"] == sum(map(len, found.values()))


def test_an_unknown_detector_is_named_with_the_known_ones(tiny_dataset, tmp_path, capsys):
    assert main(["train-lpg", str(tiny_dataset), "--out", str(tmp_path / "x"), "--detector", "YOLO",
                 "--preset", "tiny"]) == 2
    assert "unknown detector 'YOLO'; known: MSCN, CenterNet, RetinaNet" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="unknown detector"):
        DETECTORS.get("Toy")
    with pytest.raises(ValueError, match="registered already"):
        DETECTORS.register("MSCN", ToyDetector)


def test_a_checkpoint_names_its_detector_by_its_format(tiny_checkpoint, tmp_path, toy):
    from lesion_harvester.lpg.model import MSCN
    from lesion_harvester.peers.detectors import detector_of_checkpoint
    from lesion_harvester.peers.retinanet import RetinaNetModel

    assert detector_of_checkpoint(tiny_checkpoint) is MSCN
    torch.save({"format": RetinaNetModel.FORMAT}, tmp_path / "rn.pt")
    torch.save({"format": ToyDetector.FORMAT}, tmp_path / "toy.pt")
    torch.save({"format": "something-else/1"}, tmp_path / "other.pt")
    assert detector_of_checkpoint(tmp_path / "rn.pt") is RetinaNetModel
    assert detector_of_checkpoint(tmp_path / "toy.pt") is ToyDetector
    assert detector_of_checkpoint(tmp_path / "other.pt") is MSCN  # whose reading then says what is wrong
