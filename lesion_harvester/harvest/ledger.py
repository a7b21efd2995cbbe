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
