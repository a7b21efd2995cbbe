"""``findings.json`` and ``findings.csv`` of a scan, written atomically."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from lesion_harvester.io.atomic import atomic_write_text


def write_findings_json(path: str | Path, document: dict) -> None:
    atomic_write_text(path, json.dumps(document, indent=1) + "\n")


def write_findings_csv(path: str | Path, columns: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
