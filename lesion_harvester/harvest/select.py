"""Which volumes of V_H a radiologist should annotate fully next (``lesion-harvester select``).

The paper annotated 744 volumes chosen at random and names the choice of volumes as future work.
Every strategy here reads only what a harvest run already holds: the last finished round's
proposals with their scores (s_g, s_c, the fused s) and threshold t, and each volume's marks.

- ``random``: a seeded random draw, the baseline every other strategy must beat (in 3D segmentation
  published active-learning methods rarely beat a random draw);
- ``uncertainty``: the volumes with the most proposals near the threshold (a triangular weight,
  1 at s = t, 0 at s = t/2 and 3t/2), whose verdicts move the threshold most;
- ``disagreement``: the volumes whose proposals the LPG and the LPC judge most differently
  (the sum of |s_g - s_c| over the classified proposals with s_g >= t/2);
- ``lesion_rich``: the volumes expected to hold the most lesions (their marks and the sum of s over
  proposals with s >= t/2), so that the threshold rests on more lesions;
- ``coverage``: a greedy k-centre over each volume's histogram of proposal scores (a spread of
  kinds of volumes rather than many alike), starting from the volume with the most proposals.

:func:`select_volumes` is pure; :func:`select_for_run` reads a run folder and writes its
``selection.json``, which ``review``'s "Annotate fully" list shows in that order.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lesion_harvester.dataset.roles import resolve_partition
from lesion_harvester.errors import DataError
from lesion_harvester.harvest.ledger import Ledger, ProposalRow
from lesion_harvester.paths import RunLayout
from lesion_harvester.storage.atomic import atomic_write_text
from lesion_harvester.structures import group_by_volume

STRATEGIES = ("random", "uncertainty", "disagreement", "lesion_rich", "coverage")
SCORE_BINS = np.linspace(0.0, 1.0, 11)  # the coverage strategy's per-volume histogram of fused scores


@dataclass(frozen=True)
class Selected:
    """One volume to annotate fully, in the order chosen, and why."""

    rank: int
    volume: str
    strategy: str
    value: float  # what the strategy ranked by (its meaning in ``reason``)
    reason: str


def _near_threshold(scores: np.ndarray, threshold: float) -> np.ndarray:
    """A triangular weight: 1 at the threshold, 0 at half and at one and a half times it."""
    return np.clip(1.0 - np.abs(scores - threshold) / (0.5 * threshold), 0.0, None)


def select_volumes(candidates: list[str], rows: dict[str, list[ProposalRow]], marks: dict[str, int],
                   threshold: float, budget: int, strategy: str = "random", seed: int = 0) -> list[Selected]:
    """The ``budget`` volumes of ``candidates`` to annotate next, best first.

    Args:
        candidates: the volumes that may be chosen (V_H less V_H^test, validation and V_M).
        rows: each volume's proposals of one round, with their s_g, s_c and s.
        marks: each volume's number of RECIST marks.
        threshold: that round's threshold t on s (a round with none: 1, as if nothing were harvested).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    budget = min(budget, len(candidates))
    keys = sorted(candidates)
    t = threshold

    def arrays(key):
        members = rows.get(key, [])
        return (np.array([r.objectness for r in members]), np.array([r.lpc if r.lpc is not None else np.nan
                                                                     for r in members]),
                np.array([r.score or 0.0 for r in members]))

    if strategy == "random":
        order = np.random.default_rng(seed).permutation(len(keys))[:budget]
        return [Selected(i + 1, keys[j], strategy, 0.0, f"drawn at random (seed {seed})") for i, j in enumerate(order)]
    if strategy == "coverage":
        return _coverage(keys, arrays, budget)
    values, reasons = [], []
    for key in keys:
        s_g, s_c, s = arrays(key)
        if strategy == "uncertainty":
            weight = _near_threshold(s, t)
            values.append(float(weight.sum()))
            reasons.append(f"{int((weight > 0).sum())} proposals within half the threshold of it (t = {t:.3f})")
        elif strategy == "disagreement":
            judged = (s >= 0.5 * t) & np.isfinite(s_c)
            values.append(float(np.abs(s_g[judged] - s_c[judged]).sum()))
            reasons.append(f"LPG and LPC disagree by {values[-1]:.2f} over {int(judged.sum())} proposals")
        else:  # lesion_rich
            likely = s >= 0.5 * t
            values.append(marks.get(key, 0) + float(s[likely].sum()))
            reasons.append(f"{marks.get(key, 0)} marks and {float(s[likely].sum()):.1f} expected lesions among "
                           f"{int(likely.sum())} proposals with s >= t/2")
    order = sorted(range(len(keys)), key=lambda i: (-values[i], keys[i]))[:budget]
    return [Selected(rank + 1, keys[i], strategy, round(values[i], 4), reasons[i]) for rank, i in enumerate(order)]


def _coverage(keys: list[str], arrays, budget: int) -> list[Selected]:
    """Greedy k-centre on the volumes' normalised histograms of fused scores (proposals per bin)."""
    if budget <= 0:
        return []
    features = np.array([np.histogram(arrays(k)[2], SCORE_BINS)[0] for k in keys], dtype=np.float64)
    features = np.log1p(features)  # a few hundred weak proposals should not outweigh the strong ones
    chosen = [int(np.argmax(features.sum(axis=1)))]
    distance = np.linalg.norm(features - features[chosen[0]], axis=1)
    out = [Selected(1, keys[chosen[0]], "coverage", 0.0, "the most proposals: the first centre")]
    while len(chosen) < budget:
        distance[chosen] = -1.0
        j = int(np.argmax(distance))
        out.append(Selected(len(chosen) + 1, keys[j], "coverage", round(float(distance[j]), 4),
                            f"the farthest ({distance[j]:.2f}) from the volumes chosen before, by its proposals' "
                            "scores"))
        chosen.append(j)
        distance = np.minimum(distance, np.linalg.norm(features - features[j], axis=1))
    return out


def select_for_run(run_dir: str | Path, budget: int, strategy: str = "random", seed: int = 0,
                   round_: int | None = None) -> list[Selected]:
    """Choose ``budget`` volumes of a harvest run's V_H to annotate fully (see the module), from round
    ``round_``'s proposals (default: the last finished round), and write them to the run's
    ``selection.json``. Never a holdout (V_H^test), validation or V_M volume."""
    layout = RunLayout(Path(run_dir))
    if not layout.ledger.is_file():
        raise DataError(layout.root, f"no harvest ledger ({layout.ledger.name}) in this folder")
    if budget < 1:
        raise DataError(None, f"--budget must be at least 1, not {budget}")
    ledger = Ledger(layout.ledger)
    try:
        rounds = ledger.finished_rounds("mine")
        if not rounds:
            raise DataError(layout.root, "no finished harvest round yet: select reads a round's proposals")
        r = rounds[-1] if round_ is None else round_
        if r not in rounds:
            raise DataError(layout.root, f"round {r} is not finished (finished: {rounds})")
        part = resolve_partition(ledger.get_meta("data"), ledger.get_meta("fully_annotated_file") or None,
                                 purpose="selecting volumes")
        closed = set(ledger.volumes(holdout=True)) | set(part.validation)
        candidates = [k for k in ledger.volumes("harvest") if k not in closed]
        rows = group_by_volume((row.volume, row) for row in ledger.proposals(r, volumes=candidates))
        threshold = ledger.step_info(r, "mine")["threshold"]
    finally:
        ledger.close()
    marks = {k: len(v) for k, v in part.dataset.marks(candidates).items()}
    chosen = select_volumes(candidates, rows, marks, threshold if threshold is not None else 1.0, budget, strategy,
                            seed)
    atomic_write_text(layout.selection, json.dumps({"round": r, "strategy": strategy, "seed": seed, "budget": budget,
                                                    "volumes": [asdict(c) for c in chosen]}, indent=1))
    return chosen


def read_selection(run_dir: str | Path) -> dict[str, dict]:
    """The run's ``selection.json`` by volume ({volume: {"rank", "reason", ...}}; {} when none was made)."""
    path = RunLayout(Path(run_dir)).selection
    if not path.is_file():
        return {}
    try:
        chosen = json.loads(path.read_text())["volumes"]
        return {c["volume"]: c for c in chosen}
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(path, f"not a selection written by 'lesion-harvester select' ({exc})") from None
