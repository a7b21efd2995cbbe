"""The trained LPG as a detector of lesions in volumes held in memory (no files written).

    >>> from lesion_harvester import Detector, load_volume
    >>> detector = Detector.from_checkpoint("runs/harvest/round_3/lpg/best.pt", device="auto")
    >>> findings = detector(load_volume("scan.nii.gz"))
    >>> findings.tracklets[0].score, findings.volume.geometry.native_frame

:mod:`lesion_harvester.detect.findings` turns the result into records in the input's voxels and in
world millimetres; :mod:`lesion_harvester.detect.run` writes them for the ``detect`` command.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from lesion_harvester.config import PreprocessConfig, ScanConfig, StackConfig
from lesion_harvester.device import resolve_device
from lesion_harvester.lpg.scan import Scanner, scanner_from_checkpoint
from lesion_harvester.preprocessing import prepare_volume
from lesion_harvester.structures import Findings, Volume

DEFAULT_MIN_SCORE = 0.3  # a finding's objectness (its best 2D score) to be reported


class Detector:
    """Finds lesions in a CT volume: every slice scanned by the LPG, 2D boxes stacked into 3D.

    Args:
        scanner: the LPG and its scan settings (:class:`~lesion_harvester.lpg.scan.Scanner`).
        pre: the preprocessing the LPG was trained with.
        stack: 2D -> 3D stacking settings (the checkpoint's).
        min_score: findings whose score is below it are dropped.
    """

    def __init__(self, scanner: Scanner, pre: PreprocessConfig, stack: StackConfig,
                 min_score: float = DEFAULT_MIN_SCORE):
        self.scanner, self.pre, self.stack, self.min_score = scanner, pre, stack, float(min_score)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", min_score: float = DEFAULT_MIN_SCORE,
                        scan: ScanConfig | None = None) -> Detector:
        """Load an LPG checkpoint (``best.pt`` of ``train-lpg`` or of a harvest round)."""
        scanner, pre, stack = scanner_from_checkpoint(path, resolve_device(device), scan)
        # 2D boxes down to t_G are linked, so that a lesion's weaker slices stay in its box
        stack = replace(stack, score_threshold=min(stack.score_threshold, min_score))
        return cls(scanner, pre, stack, min_score)

    def __call__(self, volume: Volume) -> Findings:
        """The findings of one volume (at least 2 slices), by descending score."""
        volume.require_slices(2, "3D lesion detection")
        start = time.perf_counter()
        tracklets = self.scanner.propose(prepare_volume(volume, self.pre), self.stack)
        kept = tuple(t for t in tracklets if t.score >= self.min_score)
        return Findings(volume, kept, runtime_s=time.perf_counter() - start)
