"""The reviewer's back end, without HTTP: what the app shows and every check on what it writes.

:class:`ReviewService` opens a harvest run folder (its ledger and its dataset) and answers the
requests of :mod:`lesion_harvester.review.app` (documented in docs/review-api.md): the work list,
a volume's marks, proposals and verdicts, windowed slices as PNG, and verdicts appended to the
ledger after validation. Volume keys from a request are looked up among the run's volumes, never
joined into a path; slices are read through the dataset's own loader.

What is reviewed: every proposal of the last scanned round (the reviewed round), and of every
mined round the harvested lesions and the hard negatives, each lesion once (the work list's
"Verify lesions"). Holdout (V_H^test) and validation volumes are shown read-only and never listed.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from lesion_harvester.dataset.roles import Partition, resolve_partition
from lesion_harvester.errors import DataError
from lesion_harvester.harvest.ledger import Ledger, ProposalRow
from lesion_harvester.harvest.reviews import ACTIONS, parse_proposal_ref
from lesion_harvester.harvest.select import read_selection
from lesion_harvester.harvest.verify import dedupe, duplicates_of, same_lesion
from lesion_harvester.paths import RunLayout
from lesion_harvester.structures import Tracklet, Volume

WINDOWS_HU = {"soft tissue": (40.0, 400.0), "lung": (-600.0, 1500.0), "bone": (400.0, 1800.0)}  # level, width
KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TARGET_REF = re.compile(r"^(d[0-9]{1,12}|[0-9]{1,6}:[0-9]{1,9})$")  # a drawn lesion or a proposal
MAX_REVIEWER_CHARS = 64
MAX_DISTINCT = 64
SCORE_FORMULA = "s = s_g * s_c^w"  # the fused score the harvest ranks by (steps.fuse); w per round
# the proposal tables change only in these steps, so their finished rounds date a cached read
PROPOSAL_STEPS = ("scan", "verify", "classify", "mine")


class ReviewError(Exception):
    """A request the service refuses: ``status`` is the HTTP status (400 invalid, 404 unknown, 409 a
    lesion verified already); ``extra`` joins the JSON answer."""

    def __init__(self, status: int, detail: str, **extra):
        super().__init__(detail)
        self.status, self.detail, self.extra = status, detail, extra


class _LRU:
    """A small thread-safe least-recently-used cache."""

    def __init__(self, size: int):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key, make):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = make()  # outside the lock: two threads may both make it, which is harmless
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value


def window_to_uint8(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """(H, W) HU -> (H, W) uint8, [level - width/2, level + width/2] mapped onto 0..255."""
    low = level - width / 2.0
    scaled = (hu.astype(np.float32) - low) * (255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def png_bytes(image_u8: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image_u8, mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def sample_order(key: str) -> str:
    """A fixed pseudo-random order of volumes (by a hash of the key), so that the first ones of the
    work list are a fair sample of V_H for V_M."""
    return hashlib.sha1(key.encode()).hexdigest()


def proposal_ref(row: ProposalRow) -> str:
    return f"{row.round}:{row.idx}"


def one_per_lesion(rows: list[ProposalRow]) -> list[ProposalRow]:
    """``rows`` less those that are a lesion of an earlier row (:func:`~lesion_harvester.harvest.verify.dedupe`)."""
    kept = {id(t) for _, t in dedupe([(row.volume, row.tracklet) for row in rows])}
    return [row for row in rows if id(row.tracklet) in kept]


class ReviewService:
    """A harvest run folder opened for review.

    Args:
        run_dir: the harvest's ``--out`` folder (with ledger.sqlite).
        data_dir: the dataset; default: the one the harvest recorded.
    """

    def __init__(self, run_dir: str | Path, data_dir: str | Path | None = None):
        self.layout = RunLayout(Path(run_dir))
        if not self.layout.ledger.is_file():
            raise DataError(self.layout.root, "no harvest here (no ledger.sqlite): give a harvest's --out folder")
        self._local = threading.local()
        meta = self.ledger.get_meta
        data = data_dir if data_dir is not None else meta("data")
        if not data:
            raise DataError(self.layout.ledger, "records no dataset: give --data DATA")
        self.data = Path(data)
        # the holdout is read from the ledger (its file may hold labels of every volume, as complete.pkl does)
        self.partition: Partition = resolve_partition(self.data, meta("fully_annotated_file") or None,
                                                      need_fully_annotated=False, purpose="reviewing")
        self.keys = set(self.roles)
        self.holdout = set(self.ledger.volumes(holdout=True))
        self.closed_volumes = self.holdout | set(self.partition.validation)
        self._volumes = _LRU(4)
        self._slices = _LRU(1024)
        self._rows = _LRU(64)

    # --- the ledger: one connection per thread (sqlite3 connections are not shared between threads) ---
    @property
    def ledger(self) -> Ledger:
        if getattr(self._local, "ledger", None) is None:
            self._local.ledger = Ledger(self.layout.ledger)
        return self._local.ledger

    @property
    def roles(self) -> dict[str, str]:
        """Each volume's role now (a harvest round moves reviewed volumes into V_M)."""
        return self.ledger.roles()

    @property
    def round(self) -> int | None:
        """The round whose proposals are reviewed: the last that has them."""
        rounds = self.ledger.finished_rounds("scan")
        return rounds[-1] if rounds else None

    def rounds(self) -> list[dict]:
        """Per scanned round: its threshold on s (null before mining) and its fusion exponent w (null
        before classification)."""
        out = []
        for q in self.ledger.finished_rounds("scan"):
            mined, classified = self.ledger.step_info(q, "mine") or {}, self.ledger.step_info(q, "classify") or {}
            out.append({"round": q, "threshold": mined.get("threshold"),
                        "fusion_exponent": classified.get("fusion_exponent")})
        return out

    def session(self) -> dict:
        rounds = self.rounds()
        return {"run": str(self.layout.root.resolve()), "data": str(self.data.resolve()), "round": self.round,
                "threshold": rounds[-1]["threshold"] if rounds else None, "rounds": rounds,
                "score_formula": SCORE_FORMULA, "windows": {name: list(w) for name, w in WINDOWS_HU.items()}}

    # --- reading ---------------------------------------------------------------------------------------
    def check_key(self, key: str) -> str:
        if not KEY_PATTERN.match(key):
            raise ReviewError(400, f"not a volume key: {key[:80]!r}")
        if key not in self.keys:
            raise ReviewError(404, f"no volume {key!r} in this harvest")
        return key

    def volume(self, key: str) -> Volume:
        key = self.check_key(key)
        return self._volumes.get(key, lambda: self.partition.source.load(key))

    def slice_png(self, key: str, z_index: int, level: float = 40.0, width: float = 400.0) -> bytes:
        volume = self.volume(key)
        if not 0 <= z_index < volume.num_slices:
            raise ReviewError(400, f"{key} has slices 0..{volume.num_slices - 1}, not {z_index}")
        if not (math.isfinite(level) and math.isfinite(width) and width > 0):
            raise ReviewError(400, "the window needs a finite level and a positive width")
        return self._slices.get((key, z_index, level, width),
                                lambda: png_bytes(window_to_uint8(volume.hu_zyx[z_index], level, width)))

    def proposals_of(self, round_: int, key: str) -> list[ProposalRow]:
        """The proposals of one volume in one round (read once per state of the proposal tables:
        the ledger reads a whole round to find one volume's)."""
        version = tuple(tuple(self.ledger.finished_rounds(step)) for step in PROPOSAL_STEPS)
        return self._rows.get((round_, key, version), lambda: self.ledger.proposals(round_, volumes=[key]))

    def proposal(self, key: str, ref: str) -> ProposalRow | None:
        """The proposal ``ref`` ("ROUND:INDEX") of volume ``key``; None if there is none (ValueError if
        ``ref`` is malformed)."""
        round_, idx = parse_proposal_ref(ref)
        return next((row for row in self.proposals_of(round_, key) if row.idx == idx), None)

    def listed(self) -> tuple[list[ProposalRow], list[ProposalRow]]:
        """The work list's lesions to verify: every mined round's harvested lesions, and its hard
        negatives that are no listed harvested lesion, outside the holdout and validation volumes.
        Each lesion once (:func:`one_per_lesion`): the proposal a reviewer judged (a verdict other
        than clear), else the latest round's, as harvested.pkl keeps it."""
        reviewed = {(v, ref) for (v, kind, ref), verdict in self.ledger.current_verdicts().items()
                    if kind == "proposal" and verdict["action"] != "clear"}
        latest_first = list(reversed(self.ledger.finished_rounds("mine")))

        def rows(status: str) -> list[ProposalRow]:
            found = [row for q in latest_first for row in self.ledger.proposals(q, statuses=(status,))
                     if row.volume not in self.closed_volumes]
            return sorted(found, key=lambda row: (row.volume, proposal_ref(row)) not in reviewed)  # stable

        harvested, negatives = one_per_lesion(rows("harvested")), rows("hard_negative")
        if harvested and negatives:
            found = duplicates_of([(row.volume, row.tracklet) for row in negatives],
                                  [(row.volume, row.tracklet) for row in harvested])
            negatives = [row for row, known in zip(negatives, found) if not known]
        return harvested, one_per_lesion(negatives)

    def _proposal_json(self, row: ProposalRow, verdict: dict | None) -> dict:
        t = row.tracklet
        return {"kind": "proposal", "ref": proposal_ref(row), "round": row.round, "status": row.status,
                "s_g": round(row.objectness, 4), "s_c": None if row.lpc is None else round(row.lpc, 4),
                "s": None if row.score is None else round(row.score, 4), "key_z": t.key_z,
                "box_xyxy_px": [round(float(v), 1) for v in t.boxes_xyxy_px[t.key_index]],
                "slices": [{"z_index": int(z), "box_xyxy_px": [round(float(v), 1) for v in box]}
                           for z, box in zip(t.z_indices, t.boxes_xyxy_px)],
                "verdict": verdict}

    def _volume_rows(self, key: str, current: dict) -> list[ProposalRow]:
        """What the viewer shows of a volume: the reviewed round's proposals, the volume's listed
        lesions of other rounds, and any other proposal that carries a verdict (so it can be cleared)."""
        r = self.round
        rows = [] if r is None else list(self.proposals_of(r, key))
        seen = {proposal_ref(row) for row in rows}
        for row in (row for listed in self.listed() for row in listed if row.volume == key):
            if proposal_ref(row) not in seen:
                rows.append(row)
                seen.add(proposal_ref(row))
        for (_, kind, ref) in current:
            if kind == "proposal" and ref not in seen:
                row = self.proposal(key, ref)
                if row is not None:
                    rows.append(row)
                    seen.add(ref)
        return rows

    def volume_info(self, key: str) -> dict:
        volume = self.volume(key)
        current = self.ledger.current_verdicts(volume=key)
        marks = self.partition.dataset.marks([key])[key]
        dz = volume.spacing_zyx_mm[0]
        return {
            "key": key, "shape_zyx": list(volume.shape), "spacing_zyx_mm": [float(v) for v in volume.spacing_zyx_mm],
            "z_mm": [None if math.isnan(dz) else round(z * dz, 3) for z in range(volume.num_slices)],
            "holdout": key in self.holdout, "role": self.roles[key], "closed": key in self.closed_volumes,
            "marks": [{"z_index": m.z_index, "box_xyxy_px": list(m.box_xyxy_px), "long_axis_px": list(m.long_axis_px),
                       "short_axis_px": list(m.short_axis_px)} for m in marks],
            "proposals": [self._proposal_json(row, current.get((key, "proposal", proposal_ref(row))))
                          for row in self._volume_rows(key, current)],
            "drawn": [{"kind": "drawn", "ref": ref, "verdict": v} for (_, kind, ref), v in current.items()
                      if kind == "drawn"],
            "fully_annotated": {"kind": "volume", "ref": "", "verdict": current.get((key, "volume", ""))},
        }

    def worklist(self, order: str = "score") -> dict:
        if order not in ("score", "threshold"):
            raise ReviewError(400, f"order is 'score' or 'threshold', not {order!r}")
        ledger, r = self.ledger, self.round
        current, roles = ledger.current_verdicts(), self.roles
        counts = {} if r is None else ledger.proposal_counts(r)
        marks = self.partition.dataset.marks()
        subs = self.partition.dataset.sub_volumes
        volumes = []
        selected = read_selection(self.layout.root)  # 'lesion-harvester select': those first, in its order
        for key in sorted((k for k, role in roles.items() if role == "harvest" or (k, "volume", "") in current),
                          key=lambda k: (selected[k]["rank"], "") if k in selected else (len(selected) + 1,
                                                                                         sample_order(k))):
            if key in self.closed_volumes:
                continue
            done = current.get((key, "volume", ""))
            done = done if done is not None and done["action"] == "fully_annotated" else None
            volumes.append({"key": key, "slices": len(subs[key].slice_numbers), "marks": len(marks.get(key, [])),
                            "proposals": counts.get(key, 0), "fully_annotated": done is not None,
                            "reviewed_by": None if done is None else done["reviewer"],
                            "selected": {k: selected[key][k] for k in ("rank", "strategy", "reason")}
                            if key in selected else None})

        def listing(row: ProposalRow) -> dict:
            out = self._proposal_json(row, current.get((row.volume, "proposal", proposal_ref(row))))
            del out["slices"]
            return out | {"volume": row.volume}

        harvested, negatives = self.listed()
        lesions = [listing(row) for row in harvested]
        thresholds = {info["round"]: info["threshold"] for info in self.rounds()}
        if order == "threshold":  # each lesion against its own round's threshold; rounds without one last
            lesions.sort(key=lambda d: (thresholds.get(d["round"]) is None,
                                        abs((d["s"] or 0.0) - (thresholds.get(d["round"]) or 0.0))))
        else:
            lesions.sort(key=lambda d: -(d["s"] if d["s"] is not None else d["s_g"]))
        hard = sorted((listing(row) for row in negatives), key=lambda d: -d["s_g"])
        return {"volumes": volumes, "lesions": lesions, "hard_negatives": hard, "progress": self.progress()}

    def progress(self) -> dict:
        out: dict[str, dict[str, int]] = {}
        for v in self.ledger.verdicts():
            mine = out.setdefault(v["reviewer"], {a: 0 for kind in ACTIONS.values() for a in kind} | {"total": 0})
            mine[v["action"]] += 1
            mine["total"] += 1
        return out

    def trail(self, key: str) -> list[dict]:
        return self.ledger.verdicts(volume=self.check_key(key))

    # --- writing ---------------------------------------------------------------------------------------
    def submit(self, body: dict) -> dict:
        """Validate one verdict (docs/review-api.md) and append it; raises ReviewError (400, 404, 409 on
        a lesion verified already) or the ledger's VerdictConflict (409)."""
        key = self.check_key(_text(body.get("volume", ""), "volume"))
        kind, action = body.get("kind"), body.get("action")
        ref = _text(body.get("ref") or "", "ref")
        if kind not in ACTIONS:
            raise ReviewError(400, f"kind is one of {', '.join(ACTIONS)}, not {kind!r}")
        if action not in ACTIONS[kind]:
            raise ReviewError(400, f"a {kind} verdict is one of {', '.join(ACTIONS[kind])}, not {action!r}")
        reviewer = _text(body.get("reviewer") or "", "reviewer").strip()
        if not reviewer or len(reviewer) > MAX_REVIEWER_CHARS or not reviewer.isprintable():
            raise ReviewError(400, f"a reviewer name of 1 to {MAX_REVIEWER_CHARS} printable characters is needed")
        if key in self.closed_volumes:
            raise ReviewError(400, f"{key} is a {'holdout' if key in self.holdout else 'validation'} volume: "
                                   "its labels measure the harvest, so it is not reviewed here")
        base = body.get("base", 0)
        if not isinstance(base, int) or isinstance(base, bool) or base < 0:
            raise ReviewError(400, "base is the id of the verdict last seen on the target (0 for none)")
        distinct = body.get("distinct_from") or []
        if (not isinstance(distinct, list) or len(distinct) > MAX_DISTINCT
                or not all(isinstance(r, str) and TARGET_REF.match(r) for r in distinct)):
            raise ReviewError(400, f"distinct_from: up to {MAX_DISTINCT} names of lesions ('d12', '2:7')")
        volume = self.volume(key)
        row = self._check_ref(key, kind, ref, action)
        z_index, box, recist, lesion = None, None, None, None
        if action == "adjust" or action == "draw":
            z_index = body.get("z_index")
            if not isinstance(z_index, int) or isinstance(z_index, bool) or not 0 <= z_index < volume.num_slices:
                raise ReviewError(400, f"z_index: a slice of {key}, 0..{volume.num_slices - 1}")
            shape = volume.hu_zyx.shape[1:]
            if action == "draw" and body.get("recist") is not None:
                recist = {axis: _segment(body["recist"], axis, shape) for axis in ("long_axis_px", "short_axis_px")}
                xs = recist["long_axis_px"][0::2] + recist["short_axis_px"][0::2]
                ys = recist["long_axis_px"][1::2] + recist["short_axis_px"][1::2]
                box = [min(xs), min(ys), max(xs), max(ys)]
            else:
                box = _box(body.get("box_xyxy_px"), shape)
            lesion = Tracklet.single_slice(z_index, box, 1.0)
        elif action == "accept":
            lesion = row.tracklet
        if lesion is not None:
            self._check_new_lesion(key, kind, ref, lesion, set(distinct))
        return self.ledger.add_verdict(key, kind, ref, action, reviewer, base, z_index, box, recist)

    def _check_ref(self, key: str, kind: str, ref: str, action: str) -> ProposalRow | None:
        """Refuses a target the reviewer cannot see; returns the proposal a proposal verdict is on."""
        if kind == "proposal":
            try:
                row = self.proposal(key, ref)
            except ValueError as exc:
                raise ReviewError(400, str(exc)) from None
            if row is None:
                raise ReviewError(400, f"{key} has no proposal {ref}")
            listed = any(proposal_ref(r) == ref and r.volume == key for rows in self.listed() for r in rows)
            # a verdict given before this check existed can still be withdrawn
            withdrawing = action == "clear" and (key, "proposal", ref) in self.ledger.current_verdicts(volume=key)
            if row.round != self.round and not listed and not withdrawing:
                raise ReviewError(400, f"{ref} is a proposal of round {row.round}: reviewed are round {self.round}'s "
                                       "proposals and the harvested lesions and hard negatives of the work list")
            return row
        if kind == "drawn":
            if ref and self.ledger.current_verdicts(volume=key).get((key, "drawn", ref)) is None:
                raise ReviewError(400, f"{key} has no drawn lesion {ref!r}")
            if not ref and action != "draw":
                raise ReviewError(400, "a new lesion is drawn first (action draw)")
        elif ref:
            raise ReviewError(400, "a volume verdict has ref ''")
        return None

    def _check_new_lesion(self, key: str, kind: str, ref: str, lesion: Tracklet, distinct: set[str]) -> None:
        """Refuses (409) a lesion that a reviewer has verified already (accepted, adjusted or drawn),
        as the harvest tells one lesion (:func:`~lesion_harvester.harvest.verify.duplicates_of`),
        unless the client names that one in ``distinct`` (:func:`same_lesion`): two reviewers never
        mark one lesion twice unseen, and a lesion found in two rounds is exported once."""
        for (_, their_kind, their_ref), v in self.ledger.current_verdicts(volume=key).items():
            if (their_kind, their_ref) == (kind, ref) or their_ref in distinct:
                continue
            verified = self._verified_tracklet(key, their_kind, their_ref, v)
            if verified is not None and same_lesion(lesion, verified):
                what = f"{'proposal' if their_kind == 'proposal' else 'drawn lesion'} {their_ref}"
                raise ReviewError(409, f"not saved: {key}'s {what} ({v['action']} by {v['reviewer']}) is this lesion "
                                       f"already. If it is another lesion, send it again with distinct_from "
                                       f"['{their_ref}']", duplicate_of=v)

    def _verified_tracklet(self, key: str, kind: str, ref: str, verdict: dict) -> Tracklet | None:
        """Where a verified lesion lies (as the harvest reads verdicts: harvest.reviews); None for a
        target that is no verified lesion."""
        action = verdict["action"]
        if action in ("adjust", "draw"):
            return Tracklet.single_slice(verdict["z_index"], verdict["box_xyxy_px"], 1.0)
        if kind == "proposal" and action == "accept":
            row = self.proposal(key, ref)
            return None if row is None else row.tracklet
        return None


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise ReviewError(400, f"{what}: a string")
    return value


def _numbers(values, count: int, what: str) -> list[float]:
    # JSON numbers only: "5" or true are refused, not read as 5 or 1
    if (not isinstance(values, list) or len(values) != count
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        raise ReviewError(400, f"{what}: {count} numbers")
    out = [float(v) for v in values]
    if not all(math.isfinite(v) for v in out):
        raise ReviewError(400, f"{what}: finite numbers")
    return [round(v, 1) for v in out]


def _inside(xs: list[float], ys: list[float], shape_yx: tuple[int, int], what: str) -> None:
    if min(xs) < 0 or min(ys) < 0 or max(xs) > shape_yx[1] - 1 or max(ys) > shape_yx[0] - 1:
        raise ReviewError(400, f"{what} lies outside the {shape_yx[1]} x {shape_yx[0]} slice")


def _box(values, shape_yx: tuple[int, int]) -> list[float]:
    box = _numbers(values, 4, "box_xyxy_px")
    if box[0] > box[2] or box[1] > box[3]:
        raise ReviewError(400, "box_xyxy_px: x1 <= x2 and y1 <= y2")
    _inside(box[0::2], box[1::2], shape_yx, "box_xyxy_px")
    return box


def _segment(recist, axis: str, shape_yx: tuple[int, int]) -> list[float]:
    if not isinstance(recist, dict):
        raise ReviewError(400, "recist: {long_axis_px: [x1, y1, x2, y2], short_axis_px: [...]}")
    segment = _numbers(recist.get(axis), 4, f"recist.{axis}")
    _inside(segment[0::2], segment[1::2], shape_yx, f"recist.{axis}")
    return segment
