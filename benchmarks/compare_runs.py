"""Whether two harvest run folders hold the same results: deliverables byte for byte, every ledger row.

    python benchmarks/compare_runs.py RUN_A RUN_B [--json OUT.json]

For checking that a change meant to keep every result (a refactoring) does: run the same harvest
with the old and the new code (same data, same preset) and compare. SHA-1 of ``harvested.pkl``,
``hard_negatives.pkl``, ``completed_annotations.pkl``, ``harvested.csv`` and every
``round_N/*.pkl``; the ledger's proposals (tracklet, s_g, s_c, s, status) and finished steps (their
records without file paths); ``report.json`` without its elapsed time. Exit code 1 if anything differs.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
from pathlib import Path

from lesion_harvester.errors import DataError
from lesion_harvester.paths import RunLayout

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
import common

PROPOSALS = ("SELECT round, volume, idx, tracklet, objectness, lpc, score, status FROM proposals "
             "ORDER BY round, volume, idx")
STEPS = "SELECT round, name, info FROM steps ORDER BY round, name"


def _digest(path: Path) -> str | None:
    return hashlib.sha1(path.read_bytes()).hexdigest()[:12] if path.is_file() else None


def _rows(layout: RunLayout, query: str) -> list[tuple]:
    if not layout.ledger.is_file():
        raise DataError(layout.ledger, "missing", "give the --out folder of a harvest")
    db = sqlite3.connect(f"file:{layout.ledger}?mode=ro", uri=True)
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


def _steps(layout: RunLayout) -> list:
    # the records of some steps name files of their own run folder
    return [(r, name, {k: v for k, v in json.loads(info).items() if k not in ("checkpoint", "file")})
            for r, name, info in _rows(layout, STEPS)]


def _report(layout: RunLayout) -> dict | None:
    if not layout.report_json.is_file():
        return None
    report = json.loads(layout.report_json.read_text())
    report.pop("elapsed_s", None)
    return report


def compare(a: RunLayout, b: RunLayout) -> list[dict]:
    """One entry per thing compared: its name, what each run holds, and whether they are the same."""
    names = [a.harvested, a.hard_negatives, a.completed_annotations, a.harvested_csv]
    names = [p.relative_to(a.root) for p in names]
    names += sorted({p.relative_to(run.root) for run in (a, b) for p in run.root.glob("round_*/*.pkl")})
    entries = []
    for path in dict.fromkeys(names):
        x, y = _digest(a.root / path), _digest(b.root / path)
        entries.append({"what": str(path), "a": x, "b": y, "same": x == y})
    pa, pb = _rows(a, PROPOSALS), _rows(b, PROPOSALS)
    entries.append({"what": "ledger proposals", "a": len(pa), "b": len(pb), "same": pa == pb})
    sa, sb = _steps(a), _steps(b)
    entries.append({"what": "ledger steps", "a": len(sa), "b": len(sb), "same": sa == sb})
    entries.append({"what": "report.json without elapsed_s", "a": None, "b": None, "same": _report(a) == _report(b)})
    return entries


@common.guarded
def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    args = parser.parse_args(argv)
    entries = compare(RunLayout(args.run_a), RunLayout(args.run_b))
    different = [e["what"] for e in entries if not e["same"]]
    proposals = next(e for e in entries if e["what"] == "ledger proposals")
    line = (f"{args.run_a} vs {args.run_b}: {len(entries)} items compared ({proposals['a']} ledger proposals), "
            + ("all identical" if not different else f"DIFFERENT: {', '.join(different)}"))
    common.report({"run_a": args.run_a, "run_b": args.run_b, "items": entries}, args.json, line)
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
