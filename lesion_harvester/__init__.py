"""Lesion Harvester: complete the missing lesion annotations of large CT datasets.

An implementation of Cai et al., "Lesion Harvester: Iteratively Mining Unlabeled Lesions and
Hard-Negative Examples at Scale", IEEE TMI 2020. The Python API at the top of the package::

    from lesion_harvester import load_volume, Detector, harvest, evaluate

    volume = load_volume("scan.nii.gz")                      # NIfTI, DICOM series, DeepLesion sub-volume
    detector = Detector.from_checkpoint("best.pt", device="auto")
    findings = detector(volume)                              # in memory; boxes in the volume's array frame
    findings_document(findings)                              # in input voxels and world mm (RAS/LPS named)
    layout = harvest("data/", "runs/h", load_preset("demo"))  # the whole harvest, resumable
    result = evaluate("complete.pkl", "detections.pkl")      # P3D FROC, AP, recall at precision

The package folders follow the pipeline:

- ``io``: every reader and writer (DeepLesion PNG + DL_info.csv, NIfTI, DICOM, annotation pickles)
- ``geometry``: pure box, frame and preprocessing functions (no I/O, no config)
- ``synth``: a synthetic CT benchmark with complete ground truth
- ``stacking``, ``lpg``, ``lpc``, ``harvest``: the harvest's stages
- ``evaluation``: pseudo-3D (P3D) matching, FROC, AP and recall at precision
- ``report``: plots and image montages; ``peers``: other detectors for Table III
- ``detect``: lesions in a user's scans; ``cli``: the ``lesion-harvester`` command
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module: imported on first use, so that `import lesion_harvester` stays light (no torch)
_API = {
    "load_volume": "lesion_harvester.io.loader",
    "Detector": "lesion_harvester.detect.detector",
    "findings_document": "lesion_harvester.detect.findings",
    "harvest": "lesion_harvester.harvest.rounds",
    "load_preset": "lesion_harvester.config",
    "evaluate": "lesion_harvester.evaluation.api",
    "Volume": "lesion_harvester.structures",
    "Findings": "lesion_harvester.structures",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'lesion_harvester' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
