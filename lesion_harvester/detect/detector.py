"""The trained LPG as a detector of lesions in volumes held in memory (no files written).

    >>> from lesion_harvester import Detector, load_volume
    >>> detector = Detector.from_checkpoint("runs/harvest/round_3/lpg/best.pt", device="auto", fp_per_volume=1)
    >>> findings = detector(load_volume("scan.nii.gz"))
    >>> findings          # e.g. Findings('scan': 3 findings, top scores 0.91 0.62 0.44, score >= 0.412)
    >>> findings.rows()   # one dict per finding: centre and box in world mm, sides, slices, input

Which findings are reported: those scoring at least a threshold, given as a score (``min_score``) or
as an operating point the checkpoint carries (``fp_per_volume``: the score that made that many false
positives per validation volume when it was trained, :func:`lesion_harvester.lpg.train.operating_point`).
Scores mean different things per checkpoint (the hard negative suppression loss compresses them), so
by default the checkpoint's operating point at :data:`DEFAULT_FP_PER_VOLUME` is used, and
:data:`DEFAULT_MIN_SCORE` only for a checkpoint without one; ``found_with["rule"]`` says which.

:mod:`lesion_harvester.detect.findings` turns the result into records in the input's voxels and in
world millimetres; :mod:`lesion_harvester.detect.run` writes them for the ``detect`` command.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from lesion_harvester.config import PreprocessConfig, ScanConfig, StackConfig
from lesion_harvester.detect.findings import detection_request
from lesion_harvester.device import resolve_device
from lesion_harvester.errors import ConfigError, DataError
from lesion_harvester.lpg.checkpoint import checkpoint_operating_point, describe_rate, rate_key
from lesion_harvester.lpg.scan import Scanner, scanner_from_checkpoint
from lesion_harvester.preprocessing import prepare_volume
from lesion_harvester.structures import Findings, Volume

DEFAULT_MIN_SCORE = 0.3  # a finding's objectness (its best 2D score), for checkpoints without an operating point
DEFAULT_FP_PER_VOLUME = 1.0  # the operating point used by default where the checkpoint carries one
MEASURE_HINT = "measure one with: lesion-harvester info CKPT --measure-operating-point DATA"


@dataclass(frozen=True)
class Threshold:
    """The score a finding needs, and why.

    score: the lowest reported objectness; stack_score_threshold: the lowest 2D score stacked into
    tracklets (an operating point's, as measured; else min(t_G, score)); rule: one line for people;
    operating_point: the checkpoint's entry at the chosen rate (None for a plain score).
    """

    score: float
    stack_score_threshold: float
    rule: str
    operating_point: dict | None = None


def choose_threshold(path: str | Path, operating_point: dict | None, t_g: float, min_score: float | None = None,
                     fp_per_volume: float | None = None) -> Threshold:
    """The threshold of a detector of the checkpoint at ``path`` (its ``operating_point``, t_G ``t_g``):
    ``min_score`` as given, the operating point at ``fp_per_volume``, or by default the one at
    :data:`DEFAULT_FP_PER_VOLUME` (:data:`DEFAULT_MIN_SCORE` where the checkpoint carries none)."""
    if min_score is not None and fp_per_volume is not None:
        raise ConfigError("give a score threshold or a number of false positives per volume, not both")
    if min_score is not None:
        return Threshold(float(min_score), min(t_g, float(min_score)), f"score >= {min_score:g}, as asked")
    if operating_point is None:
        if fp_per_volume is not None:
            raise DataError(path, f"no operating point to give {fp_per_volume:g} false positives per volume: the "
                                  "checkpoint was trained before training measured one",
                            f"{MEASURE_HINT}, or give a score threshold")
        return Threshold(DEFAULT_MIN_SCORE, min(t_g, DEFAULT_MIN_SCORE),
                         f"score >= {DEFAULT_MIN_SCORE:g}: the default, as the checkpoint carries no operating point "
                         f"({MEASURE_HINT})")
    rate = DEFAULT_FP_PER_VOLUME if fp_per_volume is None else float(fp_per_volume)
    entry = operating_point["rates"].get(rate_key(rate))
    if entry is None:
        raise ConfigError(f"{fp_per_volume:g} false positives per volume: {path} carries operating points at "
                          f"{', '.join(operating_point['rates'])} per volume")
    volumes = operating_point.get("volumes", "?")
    rule = (f"{'by default, ' if fp_per_volume is None else ''}the checkpoint's operating point at "
            f"{describe_rate(rate_key(rate), entry)} on {volumes} validation volume{'' if volumes == 1 else 's'}")
    stacked = float(operating_point.get("stack_score_threshold", min(t_g, entry["score"])))
    return Threshold(float(entry["score"]), stacked, rule, {"rate_fp_per_volume": rate, **entry})


class Detector:
    """Finds lesions in a CT volume: every slice scanned by the LPG, 2D boxes stacked into 3D.

    Args:
        scanner: the LPG and its scan settings (:class:`~lesion_harvester.lpg.scan.Scanner`).
        pre: the preprocessing the LPG was trained with.
        stack: 2D -> 3D stacking settings (the checkpoint's, with the threshold's lowest 2D score).
        min_score: findings whose score is below it are dropped.
        found_with: what the findings record of how they were found (checkpoint, threshold, rule).
    """

    def __init__(self, scanner: Scanner, pre: PreprocessConfig, stack: StackConfig,
                 min_score: float = DEFAULT_MIN_SCORE, found_with: dict | None = None):
        self.scanner, self.pre, self.stack, self.min_score = scanner, pre, stack, float(min_score)
        self.found_with = found_with or {"score_threshold": self.min_score}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", min_score: float | None = None,
                        scan: ScanConfig | None = None, fp_per_volume: float | None = None) -> Detector:
        """Load an LPG checkpoint (``best.pt`` of ``train-lpg`` or of a harvest round) with a score
        threshold (``min_score``) or the operating point it carries at ``fp_per_volume`` (0.5, 1, 2 or
        4 false positives per volume); neither: see :func:`choose_threshold`."""
        scanner, pre, stack = scanner_from_checkpoint(path, resolve_device(device), scan)
        threshold = choose_threshold(path, checkpoint_operating_point(path), stack.score_threshold, min_score,
                                     fp_per_volume)
        # 2D boxes down to this are linked, so that a lesion's weaker slices stay in its box
        stack = replace(stack, score_threshold=threshold.stack_score_threshold)
        found_with = {"checkpoint": str(Path(path).resolve()), "score_threshold": threshold.score,
                      "rule": threshold.rule, "stack_score_threshold": stack.score_threshold,
                      "operating_point": threshold.operating_point,
                      "request": detection_request(path, min_score, fp_per_volume)}
        return cls(scanner, pre, stack, threshold.score, found_with)

    def __call__(self, volume: Volume) -> Findings:
        """The findings of one volume (at least 2 slices), by descending score."""
        volume.require_slices(2, "3D lesion detection")
        start = time.perf_counter()
        tracklets = self.scanner.propose(prepare_volume(volume, self.pre), self.stack)
        kept = tuple(t for t in tracklets if t.score >= self.min_score)
        return Findings(volume, kept, runtime_s=time.perf_counter() - start, found_with=self.found_with)
