"""The harvest's state: a SQLite ledger in the run folder (the only module that speaks SQL).

Tables: ``meta`` (settings fingerprint), ``volumes`` (role: fully_annotated or harvest; holdout
flag), ``steps`` (finished steps per round) and ``proposals`` (per round: the tracklet as JSON,
objectness, LPC probability, fused score and status). A step's rows and its ``steps`` entry are
written in one transaction, so a killed process leaves each step either done or not started:
rerunning the command continues after the last finished step, and no proposal is duplicated or
lost.

Proposal statuses: ``fa_lesion`` (P_M^R), ``fa_negative`` (P_M^-), ``recist`` (P_H^R),
``candidate`` (not yet mined), ``harvested`` (P_H^+), ``hard_negative`` (P_H^-), ``rejected``,
``marked_piece`` (a V_H proposal that missed its mark's slice but overlaps a P_H^R proposal: a piece of
a marked lesion, neither new nor negative).

``verdicts`` is the reviewers' audit trail (``lesion-harvester review``): one row per verdict, only
ever appended. A target (a proposal ``ROUND:INDEX``, a lesion a reviewer drew, or a whole volume)
has as its state its latest verdict; each row names the verdict it replaced and a copy of the state
it replaced (the proposal's status when it had none), so the history reads without joins.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lesion_harvester.structures import Tracklet

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS volumes (
    key TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('fully_annotated', 'harvest')),
    holdout INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS steps (
    round INTEGER NOT NULL, name TEXT NOT NULL, finished_at TEXT NOT NULL, info TEXT NOT NULL,
    PRIMARY KEY (round, name)
);
CREATE TABLE IF NOT EXISTS proposals (
    round INTEGER NOT NULL, volume TEXT NOT NULL REFERENCES volumes(key), idx INTEGER NOT NULL,
    tracklet TEXT NOT NULL, objectness REAL NOT NULL, lpc REAL, score REAL,
    status TEXT NOT NULL DEFAULT 'candidate',
    PRIMARY KEY (round, volume, idx)
);
CREATE TABLE IF NOT EXISTS verdicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, volume TEXT NOT NULL REFERENCES volumes(key),
    kind TEXT NOT NULL CHECK (kind IN ('proposal', 'drawn', 'volume')), ref TEXT NOT NULL,
    action TEXT NOT NULL, z_index INTEGER, box TEXT, recist TEXT,
    reviewer TEXT NOT NULL, at TEXT NOT NULL, replaces INTEGER REFERENCES verdicts(id), replaced TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS verdicts_target ON verdicts (volume, kind, ref);
"""
STATUSES = ("fa_lesion", "fa_negative", "recist", "candidate", "harvested", "hard_negative", "rejected",
            "marked_piece")


@dataclass
class ProposalRow:
    round: int
    volume: str
    idx: int
    tracklet: Tracklet
    objectness: float
    lpc: float | None
    score: float | None
    status: str


class VerdictConflict(Exception):
    """A verdict was given on a state that another verdict has replaced since (``current``: that one)."""

    def __init__(self, current: dict | None):
        super().__init__("the target has changed since it was read")
        self.current = current


VERDICT_COLUMNS = "id, volume, kind, ref, action, z_index, box, recist, reviewer, at, replaces, replaced"


def _verdict(row: tuple) -> dict:
    keys = [c.strip() for c in VERDICT_COLUMNS.split(",")]
    v = dict(zip(keys, row))
    box = v.pop("box")
    v["box_xyxy_px"] = None if box is None else json.loads(box)
    v["recist"] = None if v["recist"] is None else json.loads(v["recist"])
    v["replaced"] = json.loads(v["replaced"])
    return v


def tracklet_to_json(t: Tracklet) -> str:
    return json.dumps({"z": t.z_indices.tolist(), "boxes": np.round(t.boxes_xyxy_px, 3).tolist(),
                       "scores": np.round(t.scores, 6).tolist()})


def tracklet_from_json(text: str) -> Tracklet:
    d = json.loads(text)
    return Tracklet(np.array(d["z"], dtype=np.int64), np.array(d["boxes"], dtype=np.float64).reshape(-1, 4),
                    np.array(d["scores"], dtype=np.float64))


class Ledger:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # --- meta and volumes ----------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def set_volumes(self, fully_annotated: list[str], harvest: list[str], holdout: list[str]) -> None:
        held = set(holdout)
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO volumes (key, role, holdout) VALUES (?, ?, ?)",
                           [(k, "fully_annotated", 0) for k in fully_annotated]
                           + [(k, "harvest", int(k in held)) for k in harvest])

    def set_withheld(self, calibration: list[str], held_out_marks: list[str]) -> None:
        """Record what the harvest keeps out of training (:func:`~lesion_harvester.harvest.steps.withheld_volumes`),
        so that tools reading the run later need not draw it again from settings that may have changed
        (and from a V_M that reviews may have grown)."""
        with self.transaction() as db:
            for key, keys in (("calibration_volumes", calibration), ("held_out_mark_volumes", held_out_marks)):
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(list(keys))))

    def withheld(self) -> tuple[list[str], list[str]] | None:
        """(calibration volumes, held-out marks' volumes) as :meth:`set_withheld` recorded them; None for
        a run folder older than the record."""
        calibration, held = self.get_meta("calibration_volumes"), self.get_meta("held_out_mark_volumes")
        if calibration is None or held is None:
            return None
        return json.loads(calibration), json.loads(held)

    def roles(self) -> dict[str, str]:
        """Every volume's role now (fully_annotated or harvest)."""
        return dict(self.db.execute("SELECT key, role FROM volumes ORDER BY rowid").fetchall())

    def volumes(self, role: str | None = None, holdout: bool | None = None) -> list[str]:
        query, args = "SELECT key FROM volumes WHERE 1", []
        if role is not None:
            query += " AND role = ?"
            args.append(role)
        if holdout is not None:
            query += " AND holdout = ?"
            args.append(int(holdout))
        return [r[0] for r in self.db.execute(query + " ORDER BY rowid", args)]

    # --- steps -----------------------------------------------------------------------------------
    def step_info(self, round_: int, name: str) -> dict | None:
        row = self.db.execute("SELECT info FROM steps WHERE round = ? AND name = ?", (round_, name)).fetchone()
        return None if row is None else json.loads(row[0])

    def finish_step(self, db: sqlite3.Connection, round_: int, name: str, info: dict | None = None) -> None:
        """Record a finished step inside the caller's transaction."""
        db.execute("INSERT INTO steps (round, name, finished_at, info) VALUES (?, ?, ?, ?)",
                   (round_, name, datetime.datetime.now().isoformat(timespec="seconds"), json.dumps(info or {})))

    def finished_rounds(self, name: str = "mine") -> list[int]:
        return [r[0] for r in self.db.execute("SELECT round FROM steps WHERE name = ? ORDER BY round", (name,))]

    # --- proposals -------------------------------------------------------------------------------
    def add_proposals(self, db: sqlite3.Connection, round_: int, per_volume: dict[str, list[Tracklet]]) -> int:
        rows = [(round_, key, i, tracklet_to_json(t), t.score)
                for key, ts in per_volume.items() for i, t in enumerate(ts)]
        db.executemany("INSERT INTO proposals (round, volume, idx, tracklet, objectness) VALUES (?, ?, ?, ?, ?)", rows)
        return len(rows)

    def proposals(self, round_: int, volumes: list[str] | None = None, statuses: tuple[str, ...] | None = None,
                  ) -> list[ProposalRow]:
        query = "SELECT round, volume, idx, tracklet, objectness, lpc, score, status FROM proposals WHERE round = ?"
        args: list = [round_]
        if statuses is not None:
            query += f" AND status IN ({','.join('?' * len(statuses))})"
            args += list(statuses)
        rows = [ProposalRow(r[0], r[1], r[2], tracklet_from_json(r[3]), r[4], r[5], r[6], r[7])
                for r in self.db.execute(query + " ORDER BY volume, idx", args)]
        if volumes is not None:
            wanted = set(volumes)
            rows = [r for r in rows if r.volume in wanted]
        return rows

    def has_proposal(self, round_: int, volume: str, idx: int) -> bool:
        return self.db.execute("SELECT 1 FROM proposals WHERE round = ? AND volume = ? AND idx = ?",
                               (round_, volume, idx)).fetchone() is not None

    def proposal_counts(self, round_: int) -> dict[str, int]:
        """The number of proposals of each volume in round ``round_``."""
        return dict(self.db.execute("SELECT volume, COUNT(*) FROM proposals WHERE round = ? GROUP BY volume",
                                    (round_,)).fetchall())

    def set_statuses(self, db: sqlite3.Connection, round_: int, updates: list[tuple[str, int, str]]) -> None:
        bad = {s for _, _, s in updates} - set(STATUSES)
        if bad:
            raise ValueError(f"unknown proposal statuses {bad}")
        db.executemany("UPDATE proposals SET status = ? WHERE round = ? AND volume = ? AND idx = ?",
                       [(s, round_, v, i) for v, i, s in updates])

    def set_scores(self, db: sqlite3.Connection, round_: int, updates: list[tuple[str, int, float, float]]) -> None:
        db.executemany("UPDATE proposals SET lpc = ?, score = ? WHERE round = ? AND volume = ? AND idx = ?",
                       [(float(c), float(s), round_, v, i) for v, i, c, s in updates])

    def count(self, round_: int, status: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM proposals WHERE round = ? AND status = ?",
                               (round_, status)).fetchone()[0]

    # --- reviewers' verdicts (append-only) --------------------------------------------------------------
    def add_verdict(self, volume: str, kind: str, ref: str, action: str, reviewer: str, base: int,
                    z_index: int | None = None, box_xyxy_px: list[float] | None = None,
                    recist: dict | None = None) -> dict:
        """Append a verdict on the target (volume, kind, ref) if its current verdict is still ``base``
        (0: none); else raise :class:`VerdictConflict`. A new drawn lesion (kind "drawn", ref "") is
        named ``d<id>``. The check and the write are one transaction, so concurrent reviewers are
        serialized and none is lost unseen. Returns the stored verdict."""
        with self.transaction() as db:
            new_lesion = kind == "drawn" and not ref
            current = None if new_lesion else self._current_verdict(db, volume, kind, ref)
            if (current["id"] if current else 0) != base:
                raise VerdictConflict(current)
            if current is not None:
                replaced = {k: current[k] for k in ("id", "action", "z_index", "box_xyxy_px", "recist", "reviewer")}
            elif kind == "proposal":
                round_, idx = (int(v) for v in ref.split(":"))
                row = db.execute("SELECT status FROM proposals WHERE round = ? AND volume = ? AND idx = ?",
                                 (round_, volume, idx)).fetchone()
                replaced = {"status": None if row is None else row[0]}
            else:
                replaced = {}
            at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            cursor = db.execute(
                f"INSERT INTO verdicts ({VERDICT_COLUMNS.removeprefix('id, ')}) VALUES ({', '.join('?' * 11)})",
                (volume, kind, ref, action, z_index, None if box_xyxy_px is None else json.dumps(box_xyxy_px),
                 None if recist is None else json.dumps(recist), reviewer, at, current["id"] if current else None,
                 json.dumps(replaced)))
            new_id = cursor.lastrowid
            if new_lesion:
                db.execute("UPDATE verdicts SET ref = ? WHERE id = ?", (f"d{new_id}", new_id))
            return _verdict(db.execute(f"SELECT {VERDICT_COLUMNS} FROM verdicts WHERE id = ?", (new_id,)).fetchone())

    @staticmethod
    def _current_verdict(db: sqlite3.Connection, volume: str, kind: str, ref: str) -> dict | None:
        row = db.execute(f"SELECT {VERDICT_COLUMNS} FROM verdicts WHERE volume = ? AND kind = ? AND ref = ? "
                         "ORDER BY id DESC LIMIT 1", (volume, kind, ref)).fetchone()
        return None if row is None else _verdict(row)

    def verdicts(self, volume: str | None = None, up_to: int | None = None) -> list[dict]:
        """The audit trail, oldest first: every verdict (of ``volume``; with ids <= ``up_to``)."""
        query, args = f"SELECT {VERDICT_COLUMNS} FROM verdicts WHERE 1", []
        if volume is not None:
            query += " AND volume = ?"
            args.append(volume)
        if up_to is not None:
            query += " AND id <= ?"
            args.append(up_to)
        return [_verdict(r) for r in self.db.execute(query + " ORDER BY id", args)]

    def current_verdicts(self, volume: str | None = None, up_to: int | None = None) -> dict[tuple[str, str, str], dict]:
        """The state of every reviewed target: its latest verdict, by (volume, kind, ref)."""
        return {(v["volume"], v["kind"], v["ref"]): v for v in self.verdicts(volume, up_to)}

    def last_verdict_id(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(id), 0) FROM verdicts").fetchone()[0]

    def set_roles(self, db: sqlite3.Connection, keys: list[str], role: str) -> None:
        """Change the role of volumes (reviewed volumes join V_M), inside the caller's transaction."""
        db.executemany("UPDATE volumes SET role = ? WHERE key = ?", [(role, k) for k in keys])
