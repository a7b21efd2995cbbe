"""The detectors by name: what ``train-lpg --detector``, ``propose`` and the rows of Table III can name.

Each is a :class:`~lesion_harvester.detectors.base.DetectionModel`; one line here registers one.
A checkpoint names its detector by its format (the MSCN and the CenterNet share the LPG's).
"""

from __future__ import annotations

from pathlib import Path

from lesion_harvester.detectors.base import DetectionModel
from lesion_harvester.io.torch_files import load_weights_only
from lesion_harvester.lpg.model import MSCN, CenterNet
from lesion_harvester.peers.retinanet import RetinaNetModel
from lesion_harvester.registry import Registry

DETECTORS: Registry[type[DetectionModel]] = Registry("detector")
DETECTORS.register("MSCN", MSCN)  # the LPG: the multi-slice CenterNet of the preset's lpg section
DETECTORS.register("CenterNet", CenterNet)  # the paper's plain CenterNet: the MSCN on 3 slices
DETECTORS.register("RetinaNet", RetinaNetModel)  # MONAI's, the peer of Table III


def detector_of_checkpoint(path: str | Path) -> type[DetectionModel]:
    """The registered detector whose format the checkpoint at ``path`` has (the first registered of
    that format); the LPG for any other file, whose reading then says what is wrong with it."""
    payload = load_weights_only(path, "checkpoint")
    found = payload.get("format") if isinstance(payload, dict) else None
    return next((detector for _, detector in DETECTORS.items() if detector.FORMAT == found), MSCN)
