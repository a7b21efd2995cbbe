"""``detect``'s files: a scan's ``findings.json`` and ``findings.csv``, and the output folder's index
(``index.json`` and ``index.csv``, written together), all written atomically."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from lesion_harvester.errors import DataError
from lesion_harvester.storage.atomic import atomic_files, atomic_write_text


def write_findings_json(path: str | Path, document: dict) -> None:
    atomic_write_text(path, json.dumps(document, indent=1) + "\n")


def _csv_text(columns: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def write_findings_csv(path: str | Path, columns: list[str], rows: list[list]) -> None:
    atomic_write_text(path, _csv_text(columns, rows))


def _read_json(path: Path, what: str, fix: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"unreadable {what} ({' '.join(str(exc).split())})", fix) from None


def read_findings_json(path: str | Path) -> dict:
    """A scan's ``findings.json`` as written by ``detect``, or a DataError naming it."""
    document = _read_json(Path(path), "findings.json", "delete its folder and run detect again")
    if not isinstance(document, dict) or not isinstance(document.get("findings"), list):
        raise DataError(path, "not a findings.json of lesion-harvester detect (no 'findings' list)",
                        "delete its folder and run detect again")
    return document


def read_detect_index(path: str | Path) -> list[dict]:
    """The rows of a ``detect`` output's ``index.json`` ([] where there is none yet)."""
    path = Path(path)
    if not path.is_file():
        return []
    index = _read_json(path, "detect index", "delete it: the next detect writes it again")
    rows = index.get("scans") if isinstance(index, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("folder"), str) for r in rows):
        raise DataError(path, "not an index of lesion-harvester detect (no 'scans' list of folders)",
                        "delete it: the next detect writes it again")
    return rows


def write_detect_index(json_path: str | Path, csv_path: str | Path, columns: list[str], rows: list[dict]) -> None:
    """The index of a ``detect`` output as JSON (``{"scans": rows}``) and CSV (``columns``), changed together."""
    with atomic_files([json_path, csv_path]) as (json_tmp, csv_tmp):
        json_tmp.write_text(json.dumps({"scans": rows}, indent=1) + "\n", encoding="utf-8")
        csv_tmp.write_text(_csv_text(columns, [[row.get(c, "") for c in columns] for row in rows]), encoding="utf-8")
