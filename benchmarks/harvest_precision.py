"""How precise a finished harvest really was, round by round, on a dataset with complete labels.

    python benchmarks/harvest_precision.py DATA RUN [--preset P] [--montage PNG] [--json OUT.json]

DATA must hold ``ground_truth/complete.pkl`` (the synthetic layout). Per round: the threshold,
the V_M proposals above it that the threshold rests on (new lesions / false positives, without
those covering V_M's own RECIST marks) with a one-sided 95% Clopper-Pearson lower bound on the
precision, and how many of the harvested P_H^+ of all of V_H are lesions (P3D IoU >= 0.5 against
the complete labels), beside what the harvest estimated of that precision (each rule it could use,
harvest/precision.py); and the false positives per volume among the new proposals above a few
scores, on V_M (its complete labels) and on V_H (the complete labels the harvest never saw): where
V_M has markedly fewer, a threshold set on V_M is too low for V_H; and the share of lesions among
the top 10, 25, 50, 100 and 200 new V_H proposals by the round's score, the best precision any
threshold could have given a harvest of that size (the ranking's ceiling); what each threshold rule that
needs no calibration marks (``vm``, ``fp_rate``, ``vm_and_fp_rate``) would have harvested at its own threshold,
and how much of it was real (recomputed from the ledger: later rounds are the run's own), and the same with
V_H^test's proposals, labelled by the truth, standing in for a larger V_M whose complete labels no model
learned; and how well any estimate that counts false positives on V_M's few volumes could know the
harvest's precision at all (a Poisson floor: :func:`count_estimate_floor`). Last, how many of the hard
negatives are lesions after all (``round_N/hard_negatives.pkl`` and the pooled ``hard_negatives.pkl``
that Table III's R+P+N trains on, by V_H and V_M): the HNSL suppresses whatever they cover. Where
DATA also holds the lesions' 3D boxes (``ground_truth/boxes_3d.pkl``), each round's and the pooled harvested
lesions and hard negatives are sorted by what they sit on: a lesion, part of one (a box off the
lesion's key slice or too loose for P3D, still inside it in 3D: the harvest's own rule for keeping
hard negatives off lesions, harvest/verify.py ``touches``), or no lesion at all, with the share on a
lesion or part of one by size (long side of the key-slice box less DeepLesion's padding, in
lpg_errors.py's sensitivity bins), beside V_H's lesions' sizes: hard negatives mostly smaller than
the lesions teach the HNSL to suppress small lesions too. On a dataset made by ``lesion-harvester synth``
(its ``synth_config.yaml`` and seed), the labels on no lesion are counted by the phantom's structure
under them (a normal lymph node, the gallbladder, a vessel seen end-on: synth/anatomy.py), each volume's
anatomy drawn again from the seed: which mimics the harvest takes for lesions; ``--montage PNG`` draws each
round's best-scoring of them on their key slice and in a coronal cut. The run folder is only read.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from scipy.stats import poisson

from lesion_harvester.config import SynthConfig, from_dict, load_preset
from lesion_harvester.errors import DataError
from lesion_harvester.evaluation.api import load_truth
from lesion_harvester.evaluation.matching import VolumeTruth, covers_a_lesion
from lesion_harvester.geometry.display import DISPLAY_WINDOWS_HU, window_image
from lesion_harvester.harvest.ledger import Ledger
from lesion_harvester.harvest.precision import (
    choose_threshold,
    estimated_precision,
    evidence_from_rows,
    precision_interval,
    precision_lower_bound,
)
from lesion_harvester.harvest.steps import calibration_volumes
from lesion_harvester.harvest.verify import covers_marks, touches
from lesion_harvester.io.annotations import read_boxes_3d, read_tracklets
from lesion_harvester.io.deeplesion import DeepLesionDataset
from lesion_harvester.io.figures import save_figure
from lesion_harvester.io.synth_record import read_generator_record
from lesion_harvester.paths import RunLayout
from lesion_harvester.structures import Box3D, Tracklet
from lesion_harvester.synth.anatomy import structures_at
from lesion_harvester.synth.dataset import scene_of_volume

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
import common
from lpg_errors import BOX_PADDING_PX, SENSITIVITY_BINS_MM

FP_SCORES = (0.3, 0.4, 0.5, 0.6, 0.7)
TOP_K = (10, 25, 50, 100, 200)
MONTAGE_PER_ROUND = 6  # false harvests drawn per round by --montage


def false_positives_per_volume(scores: np.ndarray, is_false: np.ndarray, n_volumes: int,
                               at: tuple[float, ...] = FP_SCORES) -> list[float]:
    """False positives (``is_false``) per volume with a score >= each of ``at``; (N,) inputs."""
    scores, is_false = np.asarray(scores, dtype=np.float64), np.asarray(is_false, dtype=bool)
    return [round(float((is_false & (scores >= t)).sum()) / max(n_volumes, 1), 3) for t in at]


def top_k_precision(scores: np.ndarray, is_lesion: np.ndarray, ks: tuple[int, ...] = TOP_K) -> list[dict]:
    """The share of lesions among the ``k`` highest ``scores`` for each k (ties: the earlier given),
    with the k-th score: the best precision any threshold could give a harvest of k; (N,) inputs.
    A k beyond N is left out."""
    scores, is_lesion = np.asarray(scores, dtype=np.float64), np.asarray(is_lesion, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    return [{"k": k, "lesions": round(float(is_lesion[order[:k]].mean()), 3),
             "score": round(float(scores[order[k - 1]]), 4)} for k in ks if k <= len(scores)]


def count_estimate_floor(n_harvested: int, n_false: int, vh_volumes: int, vm_volumes: int,
                         tolerance: float = 0.05) -> dict | None:
    """How well any estimate that counts false positives on V_M could know a harvest's precision.

    If V_M's volumes hold false positives above the threshold at V_H's true rate, their count is
    Poisson with mean ``n_false * vm_volumes / vh_volumes``, and the estimate of V_H's false harvests
    (the count times ``vh_volumes / vm_volumes``) misses by that Poisson's spread, scaled: the
    precision's standard deviation ``sqrt(n_false * vh_volumes / vm_volumes) / n_harvested``. Returns
    it, the chance that such an estimate lands within ``tolerance`` of the truth, and how many V_M
    volumes would make the standard deviation half the tolerance. None without a harvest."""
    if n_harvested <= 0 or vm_volumes <= 0 or vh_volumes <= 0:
        return None
    mean = n_false * vm_volumes / vh_volumes
    scale = vh_volumes / vm_volumes  # V_H's estimated false harvests per false positive counted on V_M
    sd = float(np.sqrt(n_false * scale) / n_harvested)
    lo, hi = (n_false - tolerance * n_harvested) / scale, (n_false + tolerance * n_harvested) / scale
    within = float(poisson.cdf(np.floor(hi), mean) - (poisson.cdf(np.ceil(lo) - 1, mean) if lo > 0 else 0.0))
    needed = int(np.ceil(n_false * vh_volumes / (tolerance / 2 * n_harvested) ** 2))
    return {"sd": round(sd, 4), "p_within": round(within, 3), "tolerance": tolerance,
            "vm_volumes": vm_volumes, "vm_volumes_for_sd_half_tolerance": needed}


def kind_of(volume: str, tracklet: Tracklet, truth: dict[str, VolumeTruth], boxes_3d: dict[str, list[Box3D]]) -> str:
    """"lesion", "part_of_lesion" or "no_lesion": what one label sits on (:func:`label_kinds`)."""
    if covers_a_lesion(tracklet, truth.get(volume)):
        return "lesion"
    return "part_of_lesion" if touches(tracklet, boxes_3d.get(volume, [])) else "no_lesion"


def draw_false_harvests(by_round: dict[int, list[tuple[str, Tracklet, str]]], dataset: DeepLesionDataset,
                        out: Path) -> None:
    """A montage, one row per round, of harvested lesions on no lesion ((volume, tracklet, what lies
    under it) each, best-scoring first): each on its key slice and in a coronal cut through its box
    centre (z down, at the slice spacing), where a vessel continues as a tube and a node stays an oval."""
    per_row = max((len(items) for items in by_round.values()), default=0)
    if per_row == 0:
        return
    fig = Figure(figsize=(2.2 * per_row, 1.25 * len(by_round)), layout="constrained")
    axes = fig.subplots(len(by_round), 2 * per_row, squeeze=False)
    for row_axes, (r, items) in zip(axes, sorted(by_round.items())):
        for j, (key, t, structure) in enumerate(items):
            hu = dataset.load(key).hu_zyx  # (Z, H, W)
            slice_mm, pixel_mm = dataset.sub_volumes[key].spacing_zyx_mm[:2]
            x1, y1, x2, y2 = t.boxes_xyxy_px[t.key_index]
            half = max(24.0, 1.5 * max(x2 - x1, y2 - y1))
            cx, cy, z = (x1 + x2) / 2, (y1 + y2) / 2, int(t.z_indices[t.key_index])
            cols = slice(max(0, int(cx - half)), min(hu.shape[2], int(cx + half)))
            rows = slice(max(0, int(cy - half)), min(hu.shape[1], int(cy + half)))
            axial, coronal = row_axes[2 * j], row_axes[2 * j + 1]
            axial.imshow(window_image(hu[z, rows, cols], DISPLAY_WINDOWS_HU["default"]), cmap="gray", vmin=0, vmax=1)
            axial.add_patch(Rectangle((x1 - cols.start, y1 - rows.start), x2 - x1, y2 - y1, fill=False,
                                      edgecolor="red", lw=0.8))
            axial.set_title(f"round {r} s_g={t.score:.2f}: {structure}", fontsize=6, loc="left")
            coronal.imshow(window_image(hu[:, int(cy), cols], DISPLAY_WINDOWS_HU["default"]), cmap="gray",
                           vmin=0, vmax=1, aspect=slice_mm / pixel_mm)
            coronal.axhline(z, color="red", lw=0.5)
        for ax in row_axes:
            ax.axis("off")
    fig.suptitle("harvested lesions on no lesion (red box: key slice; coronal: the key slice's line)", fontsize=7)
    save_figure(fig, out, dpi=100)


def label_kinds(items: dict[str, list], truth: dict[str, VolumeTruth], boxes_3d: dict[str, list[Box3D]],
                pixel_mm: dict[str, float], edges=SENSITIVITY_BINS_MM,
                structure_of: Callable[[str, Tracklet], str] | None = None) -> dict:
    """What ``items`` ({volume: [Tracklet]}) sit on: ``lesion`` (P3D IoU >= 0.5 against ``truth``),
    ``part_of_lesion`` (not that, but a slice of it overlaps a lesion's 3D box in ``boxes_3d``: the
    rule by which the harvest keeps hard negatives off its known lesions) or ``no_lesion``; the share
    on a lesion or part of one, in all and by the long side of the key-slice box (less DeepLesion's
    padding, mm) in the bins ``edges``. With ``structure_of`` (volume, tracklet) -> the anatomy under
    it, ``no_lesion_on`` counts the no-lesion items by what they sit on instead, most first."""
    kinds, sides, on = {"lesion": 0, "part_of_lesion": 0, "no_lesion": 0}, [], []
    structures: Counter[str] = Counter()
    for volume, tracklets in items.items():
        for tracklet in tracklets:
            kind = kind_of(volume, tracklet, truth, boxes_3d)
            if kind == "no_lesion" and structure_of is not None:
                structures[structure_of(volume, tracklet)] += 1
            kinds[kind] += 1
            b = tracklet.boxes_xyxy_px[tracklet.key_index]
            sides.append((max(b[2] - b[0], b[3] - b[1]) - BOX_PADDING_PX) * pixel_mm[volume])
            on.append(kind != "no_lesion")
    sides, on = np.array(sides), np.array(on, dtype=bool)

    def share(mask):
        return round(float(on[mask].mean()), 3) if mask.any() else None

    by_size = [{"from": float(lo), "to": float(hi), "n": int(((sides >= lo) & (sides < hi)).sum()),
                "on_lesion": share((sides >= lo) & (sides < hi))} for lo, hi in zip(edges[:-1], edges[1:])]
    return {**kinds, "n": len(on), "on_lesion": share(np.ones(len(on), dtype=bool)), "by_size": by_size,
            **({"no_lesion_on": dict(structures.most_common())} if structure_of is not None else {})}


def anatomy_reader(data: Path) -> Callable[[str, Tracklet], str]:
    """(volume, tracklet) -> the phantom's structure under the centre of the tracklet's key-slice box
    (synth/anatomy.py's names: "node", "gallbladder", "lung_vessel", ...; "outside the body"), and the
    one it lies in where that is not the body wall's fat and muscle ("node in liver": a normal node
    painted inside an organ, which a reader would take for a lesion there), for a dataset made by
    ``lesion-harvester synth``: each volume's scene is drawn again from the seed."""
    settings, seed, path = read_generator_record(data)
    cfg = from_dict(SynthConfig, settings, str(path))
    scene = functools.lru_cache(maxsize=8)(lambda key: scene_of_volume(key, seed, cfg))

    def structure_of(volume: str, tracklet: Tracklet) -> str:
        x1, y1, x2, y2 = tracklet.boxes_xyxy_px[tracklet.key_index]
        s = scene(volume)
        names = structures_at(s.patient, s.grid, int(tracklet.z_indices[tracklet.key_index]),
                              int(round((y1 + y2) / 2)), int(round((x1 + x2) / 2)))
        if not names:
            return "outside the body"
        under = [name for name in names[:-1] if name != names[-1]]
        return names[-1] + (f" in {under[-1]}" if under and under[-1] != "body_wall" else "")

    return structure_of


def size_shares(boxes: list[tuple], edges=SENSITIVITY_BINS_MM) -> list[float]:
    """Shares of ``boxes`` ((box_xyxy_px, pixel_mm) pairs) by long side in mm, less DeepLesion's
    padding, in the bins ``edges``."""
    sides = [(max(b[2] - b[0], b[3] - b[1]) - BOX_PADDING_PX) * mm for b, mm in boxes]
    counts, _ = np.histogram(sides, edges)
    return [round(float(c) / max(len(sides), 1), 3) for c in counts]


def lesion_shares(items: dict[str, list], is_lesion, groups: dict[str, set[str]]) -> dict[str, dict]:
    """Per group of volumes: how many of ``items`` ({volume: [Tracklet]}) there are and the share
    ``is_lesion(volume, tracklet)`` holds for (None where the group has none)."""
    shares = {}
    for name, volumes in groups.items():
        hits = [is_lesion(v, t) for v, tracklets in items.items() if v in volumes for t in tracklets]
        shares[name] = {"n": len(hits), "lesions": round(float(np.mean(hits)), 4) if hits else None}
    return shares


def fp_rate_estimate(vm_rows: list, candidate_rows: list, vh_volumes: int, threshold: float | None) -> dict | None:
    """The rule ``fp_rate`` (harvest/precision.py) at a round's ``threshold``, recomputed from the ledger
    for runs that did not record it: V_M's new proposals (``vm_rows``, those on V_M's marks left out)
    and V_H's new proposals (``candidate_rows``: harvested, hard negatives, rejected)."""
    if threshold is None or not vm_rows or not candidate_rows:
        return None
    ev = evidence_from_rows(vm_rows, candidate_rows, vh_volumes)
    point, interval = estimated_precision(threshold, ev, "fp_rate"), precision_interval(threshold, ev, "fp_rate")
    return {"precision": None if point is None else round(point, 4),
            "interval": None if interval is None else [round(v, 4) for v in interval], "recomputed": True}


WHAT_IF_RULES = ("vm", "fp_rate", "vm_and_fp_rate")  # the rules that need only V_M's and V_H's scores


def rule_what_ifs(vm_rows: list, candidate_rows: list, vh_volumes: int, candidate_lesion: list[bool],
                  precision: float) -> dict[str, dict]:
    """What each threshold rule that needs no calibration marks would have harvested in a round: its own
    threshold for ``precision``, recomputed from the ledger (V_M's new proposals ``vm_rows``, V_H's
    ``candidate_rows``), how many of V_H's new proposals lie at or above it and the share of those that
    are lesions (``candidate_lesion``, one per candidate). The round's later rounds are those of the
    rule it ran with."""
    ev = evidence_from_rows(vm_rows, candidate_rows, vh_volumes)
    lesion = np.asarray(candidate_lesion, dtype=bool)
    out = {}
    for rule in WHAT_IF_RULES:
        t = choose_threshold(ev, rule, precision)
        above = ev.vh_scores >= t
        out[rule] = {"threshold": round(t, 4) if np.isfinite(t) else None, "n_harvested": int(above.sum()),
                     "precision": round(float(lesion[above].mean()), 4) if above.any() else None}
    return out


def holdout_as_vm_what_ifs(new_vh: list, new_vh_lesion: list[bool], holdout: set[str], vh_volumes: int,
                           precision: float) -> dict[str, dict] | None:
    """:func:`rule_what_ifs` with V_H^test's new proposals (``holdout`` volumes: the models learned their
    marks, as V_M's, but neither their complete labels nor hard background on them) standing in for V_M,
    labelled by the truth (``new_vh_lesion``), for what the other V_H volumes would harvest: what a larger
    V_M that no model trained on would give the rules. None without V_H^test."""
    test = [(row, lesion) for row, lesion in zip(new_vh, new_vh_lesion) if row.volume in holdout]
    rest = [(row, lesion) for row, lesion in zip(new_vh, new_vh_lesion) if row.volume not in holdout]
    if not test or not rest:
        return None
    as_vm = [dataclasses.replace(row, status="fa_lesion" if lesion else "fa_negative") for row, lesion in test]
    return rule_what_ifs(as_vm, [row for row, _ in rest], vh_volumes - len(holdout), [lesion for _, lesion in rest],
                         precision)


@common.guarded
def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("data")
    parser.add_argument("run")
    parser.add_argument("--preset", default=None,
                        help="the run's preset, name or YAML (default: RUN/config.yaml; give it for a run whose "
                             "config.yaml predates a setting; the calibration volumes are the ledger's, where it "
                             "records them)")
    parser.add_argument("--montage", type=Path, default=None, metavar="PNG",
                        help="draw each round's best-scoring harvested lesions on no lesion (synthetic layout)")
    args = parser.parse_args(argv)
    truth = load_truth(Path(args.data) / "ground_truth" / "complete.pkl", "p3d")
    if not (Path(args.run) / "ledger.sqlite").is_file():  # Ledger() would create an empty one
        raise DataError(Path(args.run) / "ledger.sqlite", "missing", "give the --out folder of a harvest")
    ledger = Ledger(Path(args.run) / "ledger.sqlite")
    v_m = ledger.volumes("fully_annotated")
    v_h = ledger.volumes("harvest")
    holdout = set(ledger.volumes(holdout=True))
    marks = DeepLesionDataset(args.data).marks(v_m)

    def covers_lesion(volume: str, tracklet) -> bool:
        return covers_a_lesion(tracklet, truth.get(volume))

    def is_lesion(row) -> bool:
        return covers_lesion(row.volume, row.tracklet)

    layout, groups = RunLayout(Path(args.run)), {"v_h": set(v_h), "v_m": set(v_m)}
    preset = load_preset(args.preset or layout.config) if args.preset or layout.config.is_file() else None
    target = preset.harvest.precision if preset else 0.95
    # the V_M volumes the run's threshold rests on: its calibration volumes, where it kept some out of the
    # LPG, as its ledger records them (drawn again from the settings for a run folder older than the record)
    recorded = ledger.withheld()
    if recorded is not None:
        calibration = set(recorded[0])
    else:
        calibration = set(calibration_volumes(v_m, preset.harvest.calibration_volumes, preset.lpg_train.seed)
                          if preset else ())

    def hard_negative_shares(path: Path) -> dict | None:
        return lesion_shares(read_tracklets(path), covers_lesion, groups) if path.is_file() else None

    boxes_3d_path = Path(args.data) / "ground_truth" / "boxes_3d.pkl"
    lesions_3d, pixel_mm, structure_of = None, {}, None
    if boxes_3d_path.is_file():  # the synthetic layout: the lesions' 3D boxes and each volume's pixel size
        lesions_3d = read_boxes_3d(boxes_3d_path)
        volumes = json.loads((Path(args.data) / "ground_truth" / "volumes.json").read_text())
        pixel_mm = {v["key"]: v["pixel_mm"] for v in volumes}
        if (Path(args.data) / "synth_config.yaml").is_file():  # what the false ones are: the phantom's anatomy
            structure_of = anatomy_reader(Path(args.data))

    def kinds_of(paths: dict[str, Path]) -> dict:
        """Where each file's labels sit (needs the lesions' 3D boxes), by name."""
        if lesions_3d is None:
            return {}
        return {name: label_kinds(read_tracklets(path), truth, lesions_3d, pixel_mm, structure_of=structure_of)
                for name, path in paths.items() if path.is_file()}

    if args.montage is not None and lesions_3d is None:
        raise DataError(boxes_3d_path, "missing", "--montage needs the lesions' 3D boxes of the synthetic layout")
    rounds, montage = [], {}
    for r in ledger.finished_rounds("mine"):
        info = ledger.step_info(r, "mine")
        threshold = info["threshold"]
        if "vm_new_lesions_above" in info:  # recorded by the harvest (on its calibration volumes, if any)
            tp, fp = info["vm_new_lesions_above"], info["vm_false_positives_above"]
        else:  # older runs: recomputed on all of V_M
            vm = ledger.proposals(r, statuses=("fa_lesion", "fa_negative"))
            new = ~covers_marks([(row.volume, row.tracklet) for row in vm], marks)
            score = np.array([row.score or 0.0 for row in vm])
            above = new & (score >= (threshold if threshold is not None else np.inf))
            lesion = np.array([row.status == "fa_lesion" for row in vm], dtype=bool)
            tp, fp = int((above & lesion).sum()), int((above & ~lesion).sum())
        harvested = ledger.proposals(r, statuses=("harvested",))
        real = [is_lesion(row) for row in harvested]
        # new proposals only: those covering a mark are never harvested (V_H) nor counted (V_M)
        vm = ledger.proposals(r, statuses=("fa_lesion", "fa_negative"))
        vm = [row for row, covers in zip(vm, covers_marks([(row.volume, row.tracklet) for row in vm], marks))
              if not covers]
        rows_vh = ledger.proposals(r, volumes=v_h)
        vh = [row for row in rows_vh if row.status not in ("recist", "marked_piece")
              and (row.score or 0.0) >= min(FP_SCORES)]
        new_vh = [row for row in rows_vh if row.status in ("harvested", "hard_negative", "rejected")]
        threshold_vm = [row for row in vm if not calibration or row.volume in calibration]
        estimates = dict(info.get("estimates", {}))
        if "fp_rate" not in estimates:  # runs before the rule: recomputed from what the ledger holds
            estimates["fp_rate"] = fp_rate_estimate(vm, new_vh, len(v_h), threshold)
        # how precise the round's ranking allows a harvest to be at all, whatever the threshold
        new_vh_lesion = [is_lesion(row) for row in new_vh]  # matched once: the ranking's ceiling and the rules
        top_k = top_k_precision([row.score or 0.0 for row in new_vh], new_vh_lesion)
        fp_vm = false_positives_per_volume([row.score or 0.0 for row in vm],
                                           [row.status == "fa_negative" for row in vm], len(v_m))
        fp_vh = false_positives_per_volume([row.score for row in vh], [not is_lesion(row) for row in vh], len(v_h))
        rounds.append({"round": r, "threshold": threshold, "vm_new_lesions_above": tp, "vm_false_positives_above": fp,
                       "vm_precision_lower_bound": round(precision_lower_bound(tp, fp), 4),
                       "n_harvested": len(harvested),
                       "harvested_precision": round(float(np.mean(real)), 4) if real else None,
                       # the spread any count on V_M's few volumes would give that precision's estimate
                       "vm_count_floor": count_estimate_floor(len(harvested), len(real) - sum(real), len(v_h),
                                                              len(v_m)),
                       # what the harvest estimated of that precision, by each rule it could use
                       "threshold_rule": info.get("threshold_rule", "vm"), "estimates": estimates,
                       "false_positives_per_volume": {"scores": list(FP_SCORES), "v_m": fp_vm, "v_h": fp_vh},
                       "top_k_new_v_h": top_k,
                       # what the rules that need no calibration marks would have harvested in this round
                       "rule_what_ifs": rule_what_ifs(threshold_vm, new_vh, len(v_h), new_vh_lesion, target),
                       # the same with V_H^test as a larger V_M that no model learned from
                       "holdout_as_vm_what_ifs": holdout_as_vm_what_ifs(new_vh, new_vh_lesion, holdout, len(v_h),
                                                                        target),
                       "hard_negatives": hard_negative_shares(layout.round_hard_negatives(r)),
                       "label_kinds": kinds_of({"harvested": layout.round_harvested(r),
                                                "hard_negatives": layout.round_hard_negatives(r)})})
        if args.montage is not None:  # the round's best-scoring harvests on no lesion
            false = [row for row in sorted(harvested, key=lambda row: -(row.score or 0.0))
                     if kind_of(row.volume, row.tracklet, truth, lesions_3d) == "no_lesion"][:MONTAGE_PER_ROUND]
            montage[r] = [(row.volume, row.tracklet, structure_of(row.volume, row.tracklet) if structure_of else "")
                          for row in false]
    pooled = hard_negative_shares(layout.hard_negatives)
    ledger.close()
    kinds = kinds_of({"harvested": layout.harvested, "hard_negatives": layout.hard_negatives})
    if kinds:  # beside Table III's P and N, the sizes of V_H's lesions
        pairs = [(box, pixel_mm[v]) for v in v_h if v in truth for box in truth[v].boxes]
        kinds["v_h_lesions"] = {"size_shares": size_shares(pairs)}
    lines = []
    for e in rounds:
        t = "none" if e["threshold"] is None else f"{e['threshold']:.3f}"
        p = "-" if e["harvested_precision"] is None else f"{e['harvested_precision']:.3f}"
        estimates = ", ".join(f"{rule} {v['precision']:.3f}" + (f" [{v['interval'][0]:.2f}, {v['interval'][1]:.2f}]"
                                                                 if v.get("interval") else "")
                              for rule, v in e["estimates"].items() if v and v.get("precision") is not None)
        lines.append(f"round {e['round']}: threshold {t} ({e['threshold_rule']}), V_M above it "
                     f"{e['vm_new_lesions_above']} new lesions / {e['vm_false_positives_above']} FP (precision >= "
                     f"{e['vm_precision_lower_bound']:.2f}); harvested {e['n_harvested']}, of which lesions {p}"
                     + (f"; estimated {estimates}" if estimates else ""))
        if e["vm_count_floor"]:
            f = e["vm_count_floor"]
            lines.append(f"  any estimate counting V_M's false positives: sd {f['sd']:.3f}, within {f['tolerance']} of "
                         f"the truth with chance {f['p_within']:.2f}; sd {f['tolerance'] / 2} needs "
                         f"{f['vm_volumes_for_sd_half_tolerance']} V_M volumes (has {f['vm_volumes']})")
        fp = e["false_positives_per_volume"]
        lines.append(f"  new false positives per volume at s >= {', '.join(map(str, fp['scores']))}: "
                     f"V_M {' '.join(f'{v:.2f}' for v in fp['v_m'])}; V_H {' '.join(f'{v:.2f}' for v in fp['v_h'])}")
        if e["top_k_new_v_h"]:
            lines.append("  lesions among the top new V_H proposals (the best any threshold gives): " + ", ".join(
                f"{t['k']} {t['lesions']:.2f} (s >= {t['score']:.3f})" for t in e["top_k_new_v_h"]))
        lines.append(f"  each rule's own {target:.0%} threshold in this round (harvested, of which lesions): "
                     + ", ".join(f"{rule} {_what_if(w)}" for rule, w in e["rule_what_ifs"].items()))
        if e["holdout_as_vm_what_ifs"]:
            lines.append("  the same with V_H^test as V_M (no model learned its complete labels), on the rest of V_H: "
                         + ", ".join(f"{rule} {_what_if(w)}" for rule, w in e["holdout_as_vm_what_ifs"].items()))
        if e["hard_negatives"]:
            lines.append(f"  hard negatives that are lesions: {_shares(e['hard_negatives'])}")
        for name, k in e["label_kinds"].items():
            lines.append(f"  {name} on a lesion or part of one: {_on_lesion(k)}{_no_lesion_on(k)}")
    if pooled:
        lines.append(f"hard_negatives.pkl (Table III's N), lesions among them: {_shares(pooled)}")
    bins = "/".join(f"{lo:g}" for lo in SENSITIVITY_BINS_MM[:-1])
    for name, k in kinds.items():
        if name == "v_h_lesions":
            sizes = f"long side from {bins} mm: {' / '.join(f'{v:.2f}' for v in k['size_shares'])}"
            lines.append(f"V_H's lesions (complete labels), {sizes}")
        else:
            lines.append(f"{name}.pkl sits on: a lesion {k['lesion']}, part of one {k['part_of_lesion']}, "
                         f"no lesion {k['no_lesion']}; on a lesion or part of one: {_on_lesion(k)}{_no_lesion_on(k)}")
    if args.montage is not None:
        draw_false_harvests(montage, DeepLesionDataset(args.data), args.montage)
        lines.append(f"montage of the false harvests: {args.montage}" if any(montage.values())
                     else "no harvested lesion lies on no lesion: no montage")
    common.report({"run": args.run, "rounds": rounds, "hard_negatives": pooled, "label_kinds": kinds},
                  args.json, *lines)
    return 0


def _what_if(w: dict) -> str:
    """'0.712 (40, 0.925)' for one rule of :func:`rule_what_ifs`; 'none' without a threshold."""
    if w["threshold"] is None:
        return "none"
    real = "-" if w["precision"] is None else f"{w['precision']:.3f}"
    return f"{w['threshold']:.3f} ({w['n_harvested']}, {real})"


def _on_lesion(kinds: dict) -> str:
    """'0.120 of 50 (by long side from 0/5/10/20 mm: 0.30 of 10, ...)' for :func:`label_kinds`."""
    def share(value, n):
        return "-" if value is None else f"{value:.2f} of {n}"

    sizes = ", ".join(f"{b['from']:g}: {share(b['on_lesion'], b['n'])}" for b in kinds["by_size"])
    return f"{share(kinds['on_lesion'], kinds['n'])} (by long side from, mm: {sizes})"


def _no_lesion_on(kinds: dict) -> str:
    """'; on no lesion: node 30, gallbladder 2' where :func:`label_kinds` named the anatomy, else ''."""
    on = kinds.get("no_lesion_on")
    return "; on no lesion: " + ", ".join(f"{name} {n}" for name, n in on.items()) if on else ""


def _shares(shares: dict[str, dict]) -> str:
    return "; ".join(f"{name.upper()} " + ("none" if s["lesions"] is None else f"{s['lesions']:.3f} of {s['n']}")
                     for name, s in shares.items())


if __name__ == "__main__":
    sys.exit(main())
