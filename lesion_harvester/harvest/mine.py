"""Mining (paper Sec. III-D): the fused score, the 95%-precision threshold, positives and hard negatives.

- lesion score ``s = s_g * s_c`` (LPG objectness times LPC probability), or ``s_g * s_c**w`` with
  the exponent w chosen on V_M among configured ones (``choose_fusion_exponent``);
- the threshold is the lowest score at which every operating point at or above it keeps a
  precision >= 95% on the fully annotated volumes V_M (on the V_M proposals that a harvest would
  count as new: those covering an original RECIST mark are left out, as they are in V_H);
- ``precision_lower_bound``: how far the few V_M proposals above the threshold support that claim;
- harvested positives P_H^+: proposals of V_H (not matching a mark) with s >= threshold;
- hard negatives P_H^- (Sec. III-D): of the rest, those with s_g >= 0.5, at most five per volume (the
  highest s_g), and never one that touches a known or harvested lesion
  (:func:`~lesion_harvester.harvest.verify.touches`); P_M^-'s hard part by the same rule; optionally
  only those the LPC rejects and the stacker found on few slices (:func:`select_hard_negatives`).

:func:`mine_round` is the harvest's mining step: all of the above for one round's proposals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lesion_harvester.config import HarvestConfig
from lesion_harvester.harvest.ledger import ProposalRow
from lesion_harvester.harvest.precision import (
    RULES,
    Evidence,
    MarksEvidence,
    best_estimate,
    choose_threshold,
    estimated_precision,
    evidence_from_rows,
    precision_interval,
    precision_lower_bound,
    precision_threshold,
)
from lesion_harvester.harvest.verify import covers_marks, dedupe, duplicates_of, known_extents, on_lesions
from lesion_harvester.structures import Box3D, RecistMark, Tracklet, group_by_volume


def fused_score(objectness: np.ndarray, probability: np.ndarray, exponent: float = 1.0) -> np.ndarray:
    """s_g * s_c**exponent; exponent 1 is the paper's Eq. 2, 0 ranks by the LPG alone."""
    # x**0 is 1 for every x (0 included), so exponent 0 needs no special case
    return np.asarray(objectness, dtype=np.float64) * np.asarray(probability, dtype=np.float64) ** exponent


def average_precision(scores: np.ndarray, is_lesion: np.ndarray) -> float:
    """Non-interpolated AP of a ranking of proposals (mean precision at each positive)."""
    y = np.asarray(is_lesion, dtype=bool)[np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")]
    if not y.any():
        return 0.0
    precision = np.cumsum(y) / np.arange(1, len(y) + 1)
    return float(precision[y].mean())


def choose_fusion_exponent(objectness: np.ndarray, probability: np.ndarray, is_lesion: np.ndarray,
                           exponents: tuple[float, ...], precision: float = 0.95,
                           by: str = "admitted") -> tuple[float, list[dict]]:
    """The exponent w of ``s_g * s_c**w`` that ranks V_M's proposals (scored out of fold) best.

    ``by="admitted"``: the w under which the ``precision`` threshold on V_M admits the most V_M
    lesions, i.e. the one that would harvest most at the required precision (ties: the higher AP,
    then the earlier listed). ``by="ap"``: the w with the highest AP on V_M (ties: the earlier
    listed) among those whose threshold admits at least one V_M lesion (all of them when none does),
    which rests on the whole ranking rather than on its few top proposals, so it varies less on a
    small V_M; a w that ranks well but puts a false positive first harvests nothing, and its AP does
    not make up for that (demo seed 0 after 9690011: w = 0, a normal node first). Returns (w, one
    summary per exponent).

    Why: the paper multiplies the scores assuming that the LPG and the LPC err independently. After
    a round of hard-negative fine-tuning the LPG has learnt from the LPC's own verdicts and the
    product counts them twice; and an LPC trained from scratch on about a hundred positives ranks
    far worse than the LPG by out-of-fold AP on V_M (benchmarks/RESULTS.md, 'Harvest (demo)'), so the
    product drags the LPG's ranking down.
    """
    is_lesion = np.asarray(is_lesion, dtype=bool)
    table = []
    for w in exponents:
        s = fused_score(objectness, probability, w)
        t = precision_threshold(s, is_lesion, precision)
        table.append({"exponent": float(w), "threshold": t if np.isfinite(t) else None,
                      "admitted_lesions": int((is_lesion & (s >= t)).sum()), "ap": average_precision(s, is_lesion)})
    if by == "ap":
        usable = [i for i, row in enumerate(table) if row["admitted_lesions"] > 0] or range(len(table))
        best = max(usable, key=lambda i: (table[i]["ap"], -i))
    else:
        best = max(range(len(table)), key=lambda i: (table[i]["admitted_lesions"], table[i]["ap"], -i))
    return table[best]["exponent"], table


def select_hard_negatives(items: list[tuple[str, Tracklet]], objectness: np.ndarray, eligible: np.ndarray,
                          lesions: dict[str, list[Box3D]], min_objectness: float = 0.5,
                          top_per_volume: int = 5, probability: np.ndarray | None = None,
                          max_probability: float = 1.0, max_slices: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The hard negatives among proposals (paper Sec. III-D): of the ``eligible`` ones (below the
    threshold), those with s_g >= ``min_objectness``, at most ``top_per_volume`` per volume by s_g
    (ties: the earlier given). A proposal touching one of its volume's ``lesions`` (known, harvested,
    verified: :func:`~lesion_harvester.harvest.verify.touches`) is never one, and does not take a place.

    Two vetoes beyond the paper (off at their defaults; ``harvest.hard_max_lpc`` and
    ``harvest.hard_max_slices``): the LPC's ``probability`` s_c (N,) must be at most
    ``max_probability``, and the tracklet may span at most ``max_slices`` slices (0: any). Why: the
    s_g >= 0.5 leftovers are often unmarked lesions; the ones the LPC rejects and that the stacker
    found on a single slice (a mimic that its neighbouring slices do not confirm) are rarely
    (benchmarks/RESULTS.md, 'The harvest as the paper defines it'). A vetoed proposal takes no place.

    Args:
        items: (volume, tracklet) of each proposal; objectness (N,) its s_g; eligible (N,) bool.
    Returns: (hard, on_lesion), (N,) bool each; on_lesion is only evaluated where s_g qualifies.
    """
    objectness = np.asarray(objectness, dtype=np.float64)
    pool = np.asarray(eligible, dtype=bool) & (objectness >= min_objectness)
    if probability is not None and max_probability < 1.0:
        pool &= np.asarray(probability, dtype=np.float64) <= max_probability
    if max_slices > 0:
        pool &= np.array([len(t.z_indices) <= max_slices for _, t in items], dtype=bool)
    on_lesion = np.zeros(len(items), dtype=bool)
    index = np.flatnonzero(pool)
    on_lesion[index] = on_lesions([items[i] for i in index], lesions)
    hard = np.zeros(len(items), dtype=bool)
    by_volume = group_by_volume((items[i][0], int(i)) for i in index if not on_lesion[i])
    for members in by_volume.values():
        hard[sorted(members, key=lambda i: (-objectness[i], i))[:top_per_volume]] = True
    return hard, on_lesion


def hard_rule(rows: list[ProposalRow], cfg: HarvestConfig) -> dict:
    """The settings of :func:`select_hard_negatives` for ``rows``: the harvest's, and each row's s_c
    (0 where the LPC scored none, as :func:`~lesion_harvester.harvest.steps.fuse` counts it; a round
    ranked by the LPG alone has s_c = 1 everywhere, so with ``hard_max_lpc`` below 1 it mines none)."""
    return {"min_objectness": cfg.hard_min_objectness, "top_per_volume": cfg.hard_top_per_volume,
            "probability": np.array([row.lpc or 0.0 for row in rows]), "max_probability": cfg.hard_max_lpc,
            "max_slices": cfg.hard_max_slices}


def hard_negatives_of(hard_negative_rows: list[ProposalRow], fa_negative_rows: list[ProposalRow],
                      cfg: HarvestConfig, lesions: dict[str, list[Box3D]]) -> list[tuple[str, Tracklet]]:
    """A round's hard negatives: its P_H^- and the hard part of its P_M^- (the P_H^- rule applied to V_M).

    P_M^- is every V_M proposal down to t_G that matches no complete label, hundreds per volume; only
    its hard ones feed the HNSL (:func:`select_hard_negatives`, ``lesions``: V_M's, so that a fragment
    of a labelled lesion, which verification leaves in P_M^-, is none).
    """
    items = [(row.volume, row.tracklet) for row in fa_negative_rows]
    hard, _ = select_hard_negatives(items, np.array([row.objectness for row in fa_negative_rows]),
                                    np.ones(len(items), dtype=bool), lesions, **hard_rule(fa_negative_rows, cfg))
    return [(row.volume, row.tracklet) for row in hard_negative_rows] + [item for item, h in zip(items, hard) if h]


@dataclass
class MineResult:
    """What mining decided for one round: a status per candidate, and what the decision rested on."""

    updates: list[tuple[str, int, str]]  # (volume, proposal index, status)
    info: dict


def mine_round(vm_rows: list[ProposalRow], vm_marks: dict[str, list[RecistMark]], candidates: list[ProposalRow],
               marked: list[tuple[str, Tracklet]], earlier_harvested: list[tuple[str, Tracklet]],
               cfg: HarvestConfig, marks: MarksEvidence | None = None,
               reviewer_rejected: list[tuple[str, Tracklet]] | None = None,
               lesions: dict[str, list[Box3D]] | None = None, vh_volumes: int | None = None) -> MineResult:
    """The mining step of one round.

    Args:
        vm_rows: the V_M proposals that set the threshold (P_M^R and P_M^-, with fused scores).
        vm_marks: the original RECIST marks of those volumes; proposals covering them are left out
            of the threshold (:func:`~lesion_harvester.harvest.verify.covers_marks`).
        candidates: the unverified V_H proposals, with fused scores.
        marked: the V_H proposals covering a mark (P_H^R); candidates that are pieces of them become
            ``marked_piece``, neither new lesions nor negatives.
        earlier_harvested: the lesions harvested in earlier rounds, to count the new ones.
        marks: the proposals of the calibration volumes of V_H (``harvest.calibration_marks``); with
            them the precision above the threshold is also estimated from the marks, and
            ``harvest.threshold`` may rest on that estimate (:mod:`lesion_harvester.harvest.precision`).
        reviewer_rejected: proposals reviewers rejected (``lesion-harvester review``); a candidate that is
            the same lesion (as :func:`~lesion_harvester.harvest.verify.dedupe` defines it) is a hard
            negative whatever its score, so that a rejection is not undone by the next round's scan.
        lesions: where V_H's other known lesions lie (its RECIST marks, reviewers' verified lesions:
            :func:`~lesion_harvester.harvest.verify.known_extents`). With ``marked``, the earlier
            rounds' and this round's harvested lesions, no hard negative may touch them
            (:func:`select_hard_negatives`); the candidates that would have been are ``rejected``.
        vh_volumes: the number of V_H volumes (default: those with a candidate), for the estimate
            ``fp_rate`` (:mod:`lesion_harvester.harvest.precision`).
    """
    # a piece of a marked lesion (it missed the mark's slice, so verification left it a candidate)
    # is neither a new lesion nor a negative
    known = duplicates_of([(row.volume, row.tracklet) for row in candidates], marked)
    pieces = [(row.volume, row.idx, "marked_piece") for row, k in zip(candidates, known) if k]
    candidates = [row for row, k in zip(candidates, known) if not k]
    refused = (duplicates_of([(row.volume, row.tracklet) for row in candidates], reviewer_rejected)
               if reviewer_rejected and candidates else np.zeros(len(candidates), dtype=bool))
    pieces += [(row.volume, row.idx, "hard_negative") for row, r in zip(candidates, refused) if r]
    candidates = [row for row, r in zip(candidates, refused) if not r]
    new_in_vm = ~covers_marks([(row.volume, row.tracklet) for row in vm_rows], vm_marks, cfg.verify_iou)
    evidence = evidence_from_rows([row for row, new in zip(vm_rows, new_in_vm) if new], candidates,
                                  len({row.volume for row in candidates}) if vh_volumes is None else vh_volumes,
                                  marks)
    threshold = choose_threshold(evidence, cfg.threshold, cfg.precision)
    above = evidence.vm_scores >= threshold
    vm_tp, vm_fp = int((above & evidence.vm_lesion).sum()), int((above & ~evidence.vm_lesion).sum())
    items = [(row.volume, row.tracklet) for row in candidates]
    harvested = np.array([row.score or 0.0 for row in candidates]) >= threshold
    extents = known_extents(marked + earlier_harvested + [item for item, hv in zip(items, harvested) if hv],
                            known=lesions)
    hard, on_lesion = select_hard_negatives(items, np.array([row.objectness for row in candidates]), ~harvested,
                                            extents, **hard_rule(candidates, cfg))
    updates = pieces + [(row.volume, row.idx, "harvested" if hv else "hard_negative" if hn else "rejected")
                        for row, hv, hn in zip(candidates, harvested, hard)]
    new = [item for item, hv in zip(items, harvested) if hv]
    n_new = len(dedupe(earlier_harvested + dedupe(new))) - len(dedupe(earlier_harvested))
    reason = None
    estimated = cfg.threshold != "vm" and evidence.supports(cfg.threshold)
    if not harvested.any() and not np.isfinite(threshold) and estimated:
        best = best_estimate(evidence, cfg.threshold)
        reason = (f"no threshold reaches {cfg.precision:.0%} precision as the '{cfg.threshold}' rule estimates it"
                  + (f" (at most {best[1]:.2f}, at s = {best[0]:.3f})" if best else "") + ": the LPG and the LPC "
                  "rank too few lesions above their false positives. A stronger LPG or LPC (a larger preset, more "
                  "rounds), or a lower harvest.precision, would change that.")
    elif not harvested.any():
        reason = why_nothing(evidence.vm_scores, evidence.vm_lesion, len(vm_rows),
                             np.array([row.score or 0.0 for row in candidates]), threshold, cfg.precision)
    info = {"threshold": threshold if np.isfinite(threshold) else None, "n_harvested": int(harvested.sum()),
            "n_hard_negatives": int(hard.sum() + refused.sum()), "n_new": int(n_new),
            "n_marked_pieces": len(pieces) - int(refused.sum()), "n_rejected_by_reviewers": int(refused.sum()),
            # below the threshold with s_g high enough for a hard negative, but on a known or harvested lesion
            "n_hard_on_lesions": int(on_lesion.sum()),
            # the V_M evidence behind the threshold: new lesions and false positives above it
            "vm_new_lesions_above": vm_tp, "vm_false_positives_above": vm_fp,
            "vm_volumes": len({row.volume for row in vm_rows}),
            "precision_lower_bound": round(precision_lower_bound(vm_tp, vm_fp, 0.95), 4),
            "nothing_harvested_because": reason, "threshold_rule": cfg.threshold,
            # the precision of the new proposals at or above the threshold, by each rule that can tell
            "estimates": precision_estimates(evidence, threshold, cfg.precision)}
    return MineResult(updates, info)


def precision_estimates(evidence: Evidence, threshold: float, precision: float) -> dict:
    """By each rule that can tell (V_M's count; with calibration marks also the marks' estimate and
    the pooled one): the estimated precision of the new proposals at or above the round's
    ``threshold``, with a 95% interval (``precision_interval``), and the threshold that rule would
    have set for ``precision`` (so that the rules can be compared in every run)."""
    def rounded(value):
        return None if value is None or not np.isfinite(value) else round(float(value), 4)

    rules = [rule for rule in RULES if evidence.supports(rule)]
    out = {}
    for rule in rules:
        point = estimated_precision(threshold, evidence, rule) if np.isfinite(threshold) else None
        interval = precision_interval(threshold, evidence, rule)
        own = choose_threshold(evidence, rule, precision)
        out[rule] = {"precision": rounded(point),
                     "interval": None if interval is None else [rounded(v) for v in interval],
                     "own_threshold": rounded(own),
                     "precision_at_own_threshold": rounded(estimated_precision(own, evidence, rule))
                     if np.isfinite(own) else None}
    return out


def why_nothing(vm_scores: np.ndarray, vm_lesion: np.ndarray, n_vm_proposals: int, candidate_scores: np.ndarray,
                threshold: float, precision: float) -> str:
    """Why a round harvested nothing, and what the user can change, in a sentence or two.

    ``vm_scores``/``vm_lesion``: the V_M proposals the threshold was measured on (new lesions and
    false positives, those covering V_M's own marks left out); ``n_vm_proposals``: all V_M proposals.
    """
    more = ("More fully annotated volumes (--fully-annotated) give the threshold more to rest on; "
            "a lower harvest.precision accepts less certainty.")
    if len(vm_scores) == 0:
        return (f"V_M gave no proposal to set the threshold on ({n_vm_proposals} V_M proposals, all on V_M's own "
                f"RECIST marks). {more}")
    if not np.isfinite(threshold):
        order = np.argsort(-vm_scores, kind="stable")
        first_fp = int(np.argmax(~vm_lesion[order]))
        return (f"no score threshold keeps {precision:.0%} precision on V_M: its highest-scored new proposals are "
                f"{first_fp} lesion(s), then a false positive at s = {vm_scores[order][first_fp]:.3f} "
                f"({int(vm_lesion.sum())} V_M lesions and {int((~vm_lesion).sum())} false positives in all). {more}")
    top = f"the highest is {candidate_scores.max():.3f}" if len(candidate_scores) else "there are none"
    return (f"no V_H candidate scored at or above the threshold {threshold:.3f} ({top}). A stronger LPG or LPC "
            f"(a larger preset, more rounds) ranks more lesions high.")
