"""The measuring tools in benchmarks/: a dataset with more marked volumes, and where an LPG errs."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from lesion_harvester.errors import DataError
from lesion_harvester.io.deeplesion import DeepLesionDataset
from lesion_harvester.lpg.sources import build_sources
from lesion_harvester.structures import Tracklet

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_add_marked_volumes_grows_only_the_harvest_split(tiny_dataset, tmp_path):
    tool = _load("add_marked_volumes")
    out = tmp_path / "more"
    # the same dataset serves as EXTRA: its renumbered copies must not collide with the originals
    counts = tool.add_marked_volumes(tiny_dataset, tiny_dataset, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["more"]  # built aside, then renamed
    base_splits = json.loads((tiny_dataset / "splits.json").read_text())
    splits = json.loads((out / "splits.json").read_text())
    added = splits["harvest"][len(base_splits["harvest"]):]
    assert counts["added_volumes"] == len(added) == len(base_splits["harvest"])
    assert splits["harvest"][: len(base_splits["harvest"])] == base_splits["harvest"]
    for name in ("fully_annotated", "validation", "detection_test", "harvest_test"):
        assert splits[name] == base_splits[name]

    base, merged = DeepLesionDataset(tiny_dataset), DeepLesionDataset(out)
    assert set(merged.sub_volumes) == set(base.sub_volumes) | set(added)
    original, copy = base_splits["harvest"][0], added[0]
    assert copy[6:] == original[6:] and copy[:6] != original[:6]
    assert np.array_equal(merged.load(copy).hu_zyx, base.load(original).hu_zyx)
    assert len(merged.marks([copy])[copy]) == len(base.marks([original])[original])

    base_records = build_sources(tiny_dataset).training.records
    merged_records = build_sources(out).training.records
    harvest_marks = sum(len(v) for v in base.marks(base_splits["harvest"]).values())
    assert len(merged_records) == len(base_records) + harvest_marks

    with pytest.raises(DataError, match="exists already"):
        tool.add_marked_volumes(tiny_dataset, tiny_dataset, out)


def test_lesions_found_counts_hits_at_and_below_the_operating_score(tiny_dataset):
    tool = _load("lpg_errors")
    keys = json.loads((tiny_dataset / "splits.json").read_text())["detection_test"]
    with open(tiny_dataset / "ground_truth" / "lesions.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["volume_key"] in keys]
    assert rows, "the tiny dataset's detection_test should hold lesions"
    # one exact proposal (score 0.6) per lesion, except the first lesion, which gets none
    detections: dict[str, list[Tracklet]] = {}
    for row in rows[1:]:
        box = np.array([[float(row[c]) for c in ("x1", "y1", "x2", "y2")]])
        detections.setdefault(row["volume_key"], []).append(
            Tracklet(np.array([int(row["key_z"])]), box, np.array([0.6])))

    found = tool.lesions_found(tiny_dataset, keys, detections, score_at=0.5)
    assert [x["found"] for x in found] == [False] + [True] * (len(rows) - 1)
    assert found[0]["best_score"] == 0.0 and all(x["best_score"] == pytest.approx(0.6) for x in found[1:])
    strict = tool.lesions_found(tiny_dataset, keys, detections, score_at=0.7)
    assert not any(x["found"] for x in strict)

    shares = tool.found_shares(found, "long_mm", (0, 10, 1e9))
    assert sum(s["lesions"] for s in shares) == len(rows)
    by_kind = tool.found_shares(strict, "kind")
    assert all(s["found"] == 0.0 for s in by_kind)
    assert sum(s["hit_at_any_score"] * s["lesions"] for s in by_kind) == pytest.approx(len(rows) - 1)
