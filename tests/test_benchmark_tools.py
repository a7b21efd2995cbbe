"""The measuring tools in benchmarks/: their shared shape (benchmarks/common.py), a dataset with more
marked volumes, and where an LPG errs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lesion_harvester.errors import DataError
from lesion_harvester.evaluation.api import load_truth
from lesion_harvester.evaluation.matching import covers_a_lesion
from lesion_harvester.harvest.ledger import Ledger
from lesion_harvester.io.annotations import read_slice_boxes
from lesion_harvester.io.deeplesion import DeepLesionDataset
from lesion_harvester.lpg.sources import build_sources
from lesion_harvester.structures import Tracklet
from tests.conftest import load_benchmark

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem != "common")


_load = load_benchmark


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


def _printed(out: str) -> tuple[str, list[str]]:
    """What ``common.report`` printed: the JSON text and the lines to quote."""
    lines = out.splitlines()
    quoted = [line for line in lines if line.startswith("> ")]
    return "\n".join(line for line in lines if not line.startswith("> ")), [line[2:] for line in quoted]


def test_report_prints_and_atomically_writes_the_same_plain_json(tmp_path, monkeypatch, capsys):
    common = _load("common")
    written = []
    real_write = common.atomic_write_text
    monkeypatch.setattr(common, "atomic_write_text", lambda path, text: (written.append(path), real_write(path, text)))
    results = {"ap": np.float32(0.25), "n": np.int64(3), "ok": np.bool_(True), "curve": np.array([0.5, np.nan]),
               "none_reached": float("nan"), "bins": [{"to": np.inf}], "name": "bench", np.int64(7): (1, 2)}
    out = tmp_path / "new" / "results.json"
    common.report(results, str(out), "ap 0.250", "second line")

    text, quoted = _printed(capsys.readouterr().out)
    assert quoted == ["ap 0.250", "second line"]
    assert written == [str(out)] and out.read_text() == text + "\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["results.json"]  # no temporary file left
    assert json.loads(text) == {"ap": 0.25, "n": 3, "ok": True, "curve": [0.5, None], "none_reached": None,
                                "bins": [{"to": None}], "name": "bench", "7": [1, 2]}
    assert "NaN" not in text and "Infinity" not in text
    assert text.startswith('{\n "ap"')  # indent 1

    common.report([np.float64(1.5)], None)  # no file, no line to quote
    assert capsys.readouterr().out == "[\n 1.5\n]\n" and written == [str(out)]


def test_guarded_turns_a_user_error_into_one_stderr_line_and_exit_code_2(capsys):
    common = _load("common")

    @common.guarded
    def main(argv=None) -> int:
        if argv:
            raise DataError("DATA/splits.json", "no split 'x'", "the synthetic layout is needed")
        return 0

    assert main() == 0
    assert main(["x"]) == 2
    err = capsys.readouterr().err
    assert err == ("test_benchmark_tools.py: error: DATA/splits.json: no split 'x' "
                   "(the synthetic layout is needed)\n")

    @common.guarded
    def buggy(argv=None) -> int:
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError):
        buggy()


def test_parser_takes_its_description_and_usage_from_the_docstring(capsys):
    common = _load("common")
    parser = common.parser("First line.\n\n    python benchmarks/x.py DATA\n\nMore text.\n")
    assert parser.parse_args([]).json is None
    assert parser.parse_args(["--json", "out.json"]).json == "out.json"
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "First line." in out and "\n    python benchmarks/x.py DATA\n" in out  # kept verbatim
    assert "--json OUT" in out and "also write the results here" in out


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_parses_and_describes_itself(name, capsys):
    tool = _load(name)
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert tool.__doc__.splitlines()[0] in out and "--json OUT" in out


def test_add_marked_volumes_command_reports_and_refuses_an_existing_out(tiny_dataset, tmp_path, capsys):
    tool = _load("add_marked_volumes")
    out, report = tmp_path / "more", tmp_path / "counts.json"
    assert tool.main([str(tiny_dataset), str(tiny_dataset), str(out), "--max-volumes", "1", "--json", str(report)]) == 0
    text, quoted = _printed(capsys.readouterr().out)
    counts = json.loads(text)
    assert report.read_text() == text + "\n" and counts["added_volumes"] == 1
    assert quoted == [f"{out}: {counts['harvest_volumes']} harvest volumes (1 added), "
                      f"{counts['marks']} marks ({counts['added_marks']} added)"]

    assert tool.main([str(tiny_dataset), str(tiny_dataset), str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"add_marked_volumes.py: error: {out}: exists already; give a new folder\n"


def test_lpg_errors_command_refuses_a_missing_split(tiny_dataset, capsys):
    tool = _load("lpg_errors")
    assert tool.main([str(tiny_dataset), "no_detections.pkl", "--split", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "splits.json: no split 'nope' (the synthetic layout is needed)" in err


def test_compare_runs_finds_any_difference(tmp_path, capsys):
    from lesion_harvester.harvest.ledger import Ledger

    tool = _load("compare_runs")
    t = Tracklet(np.array([1]), np.array([[1.0, 2, 3, 4]]), np.array([0.5]))
    for name in ("a", "b"):
        ledger = Ledger(tmp_path / name / "ledger.sqlite")
        ledger.set_volumes(["v"], [], [])
        with ledger.transaction() as db:
            ledger.add_proposals(db, 1, {"v": [t]})
            ledger.finish_step(db, 1, "lpg", {"checkpoint": str(tmp_path / name / "best.pt")})  # paths differ
        ledger.close()
        (tmp_path / name / "round_1").mkdir()
        (tmp_path / name / "round_1" / "harvested.pkl").write_bytes(b"same")
    assert tool.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "all identical" in capsys.readouterr().out
    (tmp_path / "b" / "round_1" / "harvested.pkl").write_bytes(b"other")
    ledger = Ledger(tmp_path / "b" / "ledger.sqlite")
    with ledger.transaction() as db:
        ledger.set_scores(db, 1, [("v", 0, 0.3, 0.15)])
    ledger.close()
    assert tool.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    assert "DIFFERENT: round_1/harvested.pkl, ledger proposals" in capsys.readouterr().out
    assert tool.main([str(tmp_path / "a"), str(tmp_path / "nothing")]) == 2


def test_lpg_errors_reports_sensitivity_by_lesion_size(tiny_dataset, tmp_path, capsys):
    from lesion_harvester.cli.main import main as cli

    assert cli(["marks", str(tiny_dataset), "--split", "detection_test", "--out", str(tmp_path / "marks.pkl")]) == 0
    capsys.readouterr()
    tool = _load("lpg_errors")
    assert tool.main([str(tiny_dataset), str(tmp_path / "marks.pkl"), "--json", str(tmp_path / "e.json")]) == 0
    assert "> sensitivity by long side: " in capsys.readouterr().out
    bins = json.loads((tmp_path / "e.json").read_text())["lesions_found"]["sensitivity_by_size_mm"]
    rows = list(csv.DictReader(open(tiny_dataset / "ground_truth" / "lesions.csv")))
    test = json.loads((tiny_dataset / "splits.json").read_text())["detection_test"]
    assert sum(b["lesions"] for b in bins) == sum(row["volume_key"] in test for row in rows)
    for b in bins:  # the marks are the found lesions: each bin's share found is its marked share
        lo, hi = (float(v) for v in b["bin"].split("-"))
        group = [row for row in rows if row["volume_key"] in test and lo <= float(row["long_mm"]) < hi]
        assert b["found"] == pytest.approx(np.mean([row["marked"] == "1" for row in group]))


def test_false_positives_per_volume_counts_at_each_score():
    tool = _load("harvest_precision")
    scores = [0.9, 0.65, 0.45, 0.35, 0.2]
    is_false = [False, True, True, True, True]
    assert tool.false_positives_per_volume(scores, is_false, 2, (0.3, 0.5, 0.7)) == [1.5, 0.5, 0.0]
    assert tool.false_positives_per_volume([], [], 0, (0.3,)) == [0.0]


def test_count_estimate_floor_is_the_poisson_spread_of_v_ms_count():
    tool = _load("harvest_precision")
    # the bench: 100 harvested, 30 of them false, over 190 V_H volumes; V_M has 10
    bench = tool.count_estimate_floor(100, 30, 190, 10)
    assert bench["sd"] == pytest.approx(np.sqrt(30 * 19) / 100, abs=1e-4)
    # each false positive V_M counts stands for 19 of V_H's, 0.19 of the precision: nothing lands within 0.05
    assert bench["p_within"] == 0.0 and bench["vm_volumes_for_sd_half_tolerance"] == int(np.ceil(30 * 190 / 2.5**2))
    # the paper's scale: 9,805 harvested at 90%, about 13,000 V_H volumes, 744 in V_M
    paper = tool.count_estimate_floor(9805, 980, 13000, 744)
    assert paper["sd"] < 0.015 and paper["p_within"] > 0.99 and paper["vm_volumes_for_sd_half_tolerance"] < 744
    # the chance agrees with drawing V_M's count
    rng = np.random.default_rng(0)
    mid = tool.count_estimate_floor(200, 40, 120, 30)
    counts = rng.poisson(40 * 30 / 120, 20000)
    hits = np.abs(counts * 120 / 30 - 40) <= 0.05 * 200 + 1e-9
    assert mid["p_within"] == pytest.approx(hits.mean(), abs=0.01)
    assert tool.count_estimate_floor(0, 0, 190, 10) is None


def test_top_k_precision_is_the_lesion_share_of_the_k_best_scores():
    tool = _load("harvest_precision")
    scores = [0.2, 0.9, 0.5, 0.8, 0.5, 0.1]
    is_lesion = [True, True, False, False, True, True]
    # ranked: 0.9 lesion, 0.8 not, 0.5 not (given first), 0.5 lesion, 0.2 lesion, 0.1 lesion
    assert tool.top_k_precision(scores, is_lesion, (1, 2, 3, 4, 6, 7)) == [
        {"k": 1, "lesions": 1.0, "score": 0.9}, {"k": 2, "lesions": 0.5, "score": 0.8},
        {"k": 3, "lesions": 0.333, "score": 0.5}, {"k": 4, "lesions": 0.5, "score": 0.5},
        {"k": 6, "lesions": 0.667, "score": 0.1}]
    assert tool.top_k_precision([], [], (1,)) == []


def _phantom_names() -> set[str]:
    """The names synth/anatomy.py gives its structures (ten patients hold every kind)."""
    from lesion_harvester.synth.anatomy import sample_patient

    return {name for i in range(10) for name in sample_patient(np.random.default_rng(i)).names}


def _calibration_what_ifs(tool, tiny_dataset: Path, run: Path, held: set[str], precision: float) -> tuple:
    """harvest_precision's rule what-ifs of ``run``'s round 1 recomputed on V_M's volumes ``held``
    alone, and on all of V_M."""
    from lesion_harvester.harvest.verify import covers_marks

    ledger = Ledger(run / "ledger.sqlite")
    v_m, v_h = ledger.volumes("fully_annotated"), ledger.volumes("harvest")
    vm = ledger.proposals(1, statuses=("fa_lesion", "fa_negative"))
    new_vh = ledger.proposals(1, volumes=v_h, statuses=("harvested", "hard_negative", "rejected"))
    ledger.close()
    vm = [row for row, covers in zip(vm, covers_marks([(r.volume, r.tracklet) for r in vm],
                                                       DeepLesionDataset(tiny_dataset).marks(v_m))) if not covers]
    truth = load_truth(tiny_dataset / "ground_truth" / "complete.pkl", "p3d")
    lesion = [covers_a_lesion(row.tracklet, truth.get(row.volume)) for row in new_vh]
    return (tool.rule_what_ifs([row for row in vm if row.volume in held], new_vh, len(v_h), lesion, precision),
            tool.rule_what_ifs(vm, new_vh, len(v_h), lesion, precision))


def _rule_what_ifs_under(tool, tiny_dataset: Path, run: Path, preset_yaml: str, tmp_path: Path) -> dict:
    """harvest_precision's rule what-ifs of ``run``'s round 1, run with ``--preset`` a file of ``preset_yaml``."""
    preset_file = tmp_path / "preset.yaml"
    preset_file.write_text(preset_yaml)
    out = tmp_path / "precision.json"
    assert tool.main([str(tiny_dataset), str(run), "--preset", str(preset_file), "--json", str(out)]) == 0
    (entry,) = json.loads(out.read_text())["rounds"]
    return entry["rule_what_ifs"]


def test_harvest_precision_sets_the_rules_what_if_on_the_calibration_volumes_the_ledger_records(
        tiny_dataset, tiny_harvest_run, tmp_path):
    """The rules' own thresholds rest on the V_M volumes the run kept out of its LPG, as its ledger
    records them (here one volume, written into a copy of a run that kept none)."""
    tool = _load("harvest_precision")
    run = tmp_path / "run"
    shutil.copytree(tiny_harvest_run, run)
    ledger = Ledger(run / "ledger.sqlite")
    assert ledger.withheld() == ([], [])  # recorded by the harvest: it kept nothing out
    held = ledger.volumes("fully_annotated")[-1:]
    ledger.set_withheld(held, [])
    ledger.close()
    # a low precision, so that the rules find thresholds on the tiny run's few V_M proposals
    what_ifs = _rule_what_ifs_under(tool, tiny_dataset, run, "base: tiny\nharvest:\n  precision: 0.3\n", tmp_path)
    expected, all_of_vm = _calibration_what_ifs(tool, tiny_dataset, run, set(held), 0.3)
    assert what_ifs == json.loads(json.dumps(expected))
    assert expected != all_of_vm  # all of V_M would differ


def test_harvest_precision_draws_the_calibration_volumes_of_an_older_run_from_the_preset_given(
        tiny_dataset, tiny_harvest_run, tmp_path):
    """For a run folder older than the ledger's record, --preset stands for the run's config.yaml;
    with harvest.calibration_volumes the rules' own thresholds rest on the volumes it draws."""
    from lesion_harvester.config import load_preset
    from lesion_harvester.harvest.steps import calibration_volumes

    tool = _load("harvest_precision")
    run = tmp_path / "run"
    shutil.copytree(tiny_harvest_run, run)
    ledger = Ledger(run / "ledger.sqlite")
    with ledger.transaction() as db:  # as before the record
        db.execute("DELETE FROM meta WHERE key IN ('calibration_volumes', 'held_out_mark_volumes')")
    assert ledger.withheld() is None
    v_m = ledger.volumes("fully_annotated")
    ledger.close()
    preset_yaml = "base: tiny\nharvest:\n  calibration_volumes: 1\n  precision: 0.3\n"
    what_ifs = _rule_what_ifs_under(tool, tiny_dataset, run, preset_yaml, tmp_path)
    held = set(calibration_volumes(v_m, 1, load_preset(tmp_path / "preset.yaml").lpg_train.seed))
    expected, all_of_vm = _calibration_what_ifs(tool, tiny_dataset, run, held, 0.3)
    assert what_ifs == json.loads(json.dumps(expected))
    assert expected != all_of_vm


def test_harvest_precision_reports_each_round_of_a_tiny_harvest(tiny_dataset, tiny_harvest_run, tmp_path):
    tool = _load("harvest_precision")
    out = tmp_path / "precision.json"
    montage = tmp_path / "false.png"
    assert tool.main([str(tiny_dataset), str(tiny_harvest_run), "--json", str(out), "--montage", str(montage)]) == 0
    (entry,) = json.loads(out.read_text())["rounds"]
    # drawn where the round harvested a lesion on no lesion
    assert montage.is_file() == (entry["label_kinds"]["harvested"]["no_lesion"] > 0)
    ledger = Ledger(tiny_harvest_run / "ledger.sqlite")
    new = ledger.proposals(1, volumes=ledger.volumes("harvest"), statuses=("harvested", "hard_negative", "rejected"))
    ledger.close()
    assert entry["n_harvested"] == sum(row.status == "harvested" for row in new)
    # recomputed from the ledger, the rule the run used gives its threshold and its harvest again
    what_if = entry["rule_what_ifs"][entry["threshold_rule"]]
    assert what_if["n_harvested"] == entry["n_harvested"]
    assert (what_if["threshold"] is None) == (entry["threshold"] is None)
    if entry["threshold"] is not None:
        assert what_if["threshold"] == pytest.approx(entry["threshold"], abs=1e-4)
    top = entry["top_k_new_v_h"]
    assert [t["k"] for t in top] == [k for k in tool.TOP_K if k <= len(new)] and top
    assert all(0.0 <= t["lesions"] <= 1.0 for t in top)
    assert [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
    # the tiny dataset is the generator's: what lies under each label on no lesion is named, for all of them
    assert entry["label_kinds"]
    for kinds in entry["label_kinds"].values():
        assert sum(kinds["no_lesion_on"].values()) == kinds["no_lesion"]
        parts = {part for name in kinds["no_lesion_on"] for part in name.split(" in ")}  # "node in liver"
        assert parts <= _phantom_names() | {"outside the body"}


def test_the_false_harvest_montage_draws_each_round_as_a_row(tiny_dataset, tmp_path):
    tool = _load("harvest_precision")
    dataset = DeepLesionDataset(tiny_dataset)
    key = sorted(dataset.sub_volumes)[0]
    t = Tracklet(np.array([1, 2]), np.array([[20.0, 20.0, 30.0, 28.0], [21.0, 20.0, 31.0, 29.0]]), np.array([0.6, 0.8]))
    out = tmp_path / "false.png"
    tool.draw_false_harvests({2: [(key, t, "node")], 1: [(key, t, "gallbladder"), (key, t, "node")]}, dataset, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5_000
    tool.draw_false_harvests({1: []}, dataset, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()  # nothing to draw, no file


def test_rate_estimate_recomputes_the_rule_from_ledger_rows():
    from lesion_harvester.harvest.ledger import ProposalRow

    tool = _load("harvest_precision")

    def row(volume, score, status):
        return ProposalRow(1, volume, 0, Tracklet.single_slice(0, [0, 0, 9, 9], score), score, 1.0, score, status)

    # V_M: one false positive per volume above 0.4 (two volumes); V_H: two volumes, five new proposals
    vm = [row("m1", 0.9, "fa_lesion"), row("m1", 0.5, "fa_negative"), row("m2", 0.45, "fa_negative")]
    vh = [row(v, s, "rejected") for v, s in (("h1", 0.95), ("h1", 0.8), ("h1", 0.6), ("h2", 0.5), ("h2", 0.42))]
    estimate = tool.fp_rate_estimate(vm, vh, 2, 0.4)
    assert estimate["precision"] == pytest.approx(1 - 2 / 5) and estimate["recomputed"]
    assert estimate["interval"][0] <= 0.6 <= estimate["interval"][1]
    assert tool.fp_rate_estimate(vm, vh, 2, None) is None and tool.fp_rate_estimate([], vh, 2, 0.4) is None
    # each rule's own 95% threshold: V_M's count stops at its false positive under 0.9; the rate (one
    # false positive per V_M volume above 0.45, none above 0.5) expects none above 0.6 in V_H; both: 0.9
    what_ifs = tool.rule_what_ifs(vm, vh, 2, [r.score >= 0.8 for r in vh], 0.95)
    assert what_ifs == {"vm": {"threshold": 0.9, "n_harvested": 1, "precision": 1.0},
                        "fp_rate": {"threshold": 0.6, "n_harvested": 3, "precision": pytest.approx(2 / 3, abs=1e-4)},
                        "vm_and_fp_rate": {"threshold": 0.9, "n_harvested": 1, "precision": 1.0}}
    # V_H^test standing in for V_M: the same proposals in t1 and t2, labelled by the truth, set the
    # thresholds on the rest of V_H (h1, h2): the same answers as V_M's above, whatever their statuses
    test = [row(v, s, "rejected") for v, s in (("t1", 0.9), ("t1", 0.5), ("t2", 0.45))]
    pool = test + vh
    lesion = [(r.volume == "t1" and r.score == 0.9) or (r.volume.startswith("h") and r.score >= 0.8) for r in pool]
    assert tool.holdout_as_vm_what_ifs(pool, lesion, {"t1", "t2"}, 4, 0.95) == what_ifs
    assert tool.holdout_as_vm_what_ifs(vh, lesion[3:], {"t1", "t2"}, 4, 0.95) is None  # no V_H^test proposal


def test_lesion_shares_splits_hard_negatives_by_volume_group():
    tool = _load("harvest_precision")
    t = Tracklet.single_slice(3, [10, 10, 20, 20], 0.5)
    far = Tracklet.single_slice(3, [60, 60, 70, 70], 0.5)
    truth = {"a": [t], "b": [t]}

    def is_lesion(volume, tracklet):
        return any(tracklet is g for g in truth.get(volume, []))

    items = {"a": [t, far, far], "b": [far], "c": [t]}  # c belongs to neither group: not counted
    shares = tool.lesion_shares(items, is_lesion, {"v_h": {"a", "b"}, "v_m": {"m"}})
    assert shares == {"v_h": {"n": 4, "lesions": 0.25}, "v_m": {"n": 0, "lesions": None}}


def test_label_kinds_tells_a_lesion_from_part_of_one_and_from_nothing():
    from lesion_harvester.evaluation.matching import VolumeTruth
    from lesion_harvester.structures import Box3D, SliceBox

    tool = _load("harvest_precision")
    truth = {"a": VolumeTruth.from_slice_boxes([SliceBox(5, (10.0, 10.0, 30.0, 30.0))])}
    boxes_3d = {"a": [Box3D((10.0, 10.0, 30.0, 30.0), (3.0, 7.0))]}
    on_key_slice = Tracklet.single_slice(5, [10, 10, 30, 30], 0.9)
    off_key_slice = Tracklet.single_slice(3, [10, 10, 30, 30], 0.9)  # inside the lesion, not on its key slice
    beside = Tracklet.single_slice(5, [60, 60, 70, 70], 0.9)  # 10 px less the 10 px of padding: under 5 mm
    elsewhere = Tracklet.single_slice(5, [10, 10, 30, 30], 0.9)  # a volume without lesions
    kinds = tool.label_kinds({"a": [on_key_slice, off_key_slice, beside], "b": [elsewhere]}, truth, boxes_3d,
                             {"a": 1.0, "b": 1.0}, (0, 5, 10, 20, np.inf))
    assert {k: kinds[k] for k in ("lesion", "part_of_lesion", "no_lesion", "n")} == {
        "lesion": 1, "part_of_lesion": 1, "no_lesion": 2, "n": 4}
    assert kinds["on_lesion"] == 0.5
    assert [(b["n"], b["on_lesion"]) for b in kinds["by_size"]] == [(1, 0.0), (0, None), (3, 0.667), (0, None)]
    assert "no_lesion_on" not in kinds
    # with the anatomy named, only the two on no lesion are counted, by what they sit on
    named = tool.label_kinds({"a": [on_key_slice, off_key_slice, beside], "b": [elsewhere]}, truth, boxes_3d,
                             {"a": 1.0, "b": 1.0}, (0, 5, 10, 20, np.inf),
                             structure_of=lambda volume, t: "node" if volume == "a" else "gallbladder")
    assert named["no_lesion_on"] == {"node": 1, "gallbladder": 1}


def test_size_shares_bin_long_sides_in_mm_without_the_padding():
    tool = _load("harvest_precision")
    # long sides 14 px and 30 px less 10 px of padding: 4 px at 1 mm, 20 px at 0.5 mm and 1.0 mm
    boxes = [((0, 0, 14, 8), 1.0), ((0, 0, 20, 30), 0.5), ((0, 0, 20, 30), 1.0), ((0, 0, 30, 12), 1.0)]
    assert tool.size_shares(boxes, (0, 5, 10, 20, np.inf)) == [0.25, 0.0, 0.25, 0.5]
    assert tool.size_shares([], (0, 5, np.inf)) == [0.0, 0.0]


@pytest.mark.slow
def test_bench_scale_runs_one_and_two_processes_and_samples_memory(tiny_checkpoint, tmp_path, capsys):
    tool = _load("bench_scale")
    out = tmp_path / "scale.json"
    assert tool.main([str(tiny_checkpoint), "--preset", "tiny", "--volumes", "2", "--processes", "1,2",
                      "--flat-volumes", "6", "--project-slices", "2", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results["end_to_end"]) == {"1", "2"}
    assert all(r["slices_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in results["end_to_end"].values())
    assert set(results["parts"]["seconds_per_slice"]) == {"prepare", "lpg", "stack", "write"}
    assert results["memory_over_volumes"]["rss_mb_after"]["100%"] > 0
    assert results["projection_paper_512"]["deeplesion_hours"] > 0
    assert "end to end on" in capsys.readouterr().out


@pytest.mark.slow
def test_labor_budget_runs_each_budget_and_strategy_from_one_start(tiny_dataset, tmp_path):
    tool = _load("labor_budget")
    out = tmp_path / "budget"
    assert tool.main([str(tiny_dataset), "--out", str(out), "--budgets", "25", "--strategies", "random,lesion_rich",
                      "--preset", "tiny", "--set", "harvest.lpc_variants=false", "--set", "lpc.epochs=1", "-q"]) == 0
    results = json.loads((out / "labor_budget.json").read_text())
    runs = {(r["strategy"], r["budget_percent"]): r for r in results["runs"]}
    assert set(runs) == {("none", 0.0), ("random", 25.0), ("lesion_rich", 25.0)}
    assert runs[("none", 0.0)]["annotated_volumes"] == 0
    for key in (("random", 25.0), ("lesion_rich", 25.0)):
        run = runs[key]
        assert run["round"] == 2 and run["annotated_volumes"] == run["budget_volumes"] == 1
        assert run["annotated_lesions"] >= run["annotated_new_lesions"] >= 0
        folder = out / tiny_dataset.name / f"{key[0]}_25"
        ledger = Ledger(folder / "ledger.sqlite")
        try:  # the selected volume joined V_M through the simulated annotator's verdicts
            assert ledger.step_info(2, "reviews")["joined_v_m"] == [json.loads(
                (folder / "selection.json").read_text())["volumes"][0]["volume"]]
        finally:
            ledger.close()
    assert (out / "labor_budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a rerun reads every run back (nothing selected or annotated twice)
    assert tool.main([str(tiny_dataset), "--out", str(out), "--budgets", "25", "--strategies", "random,lesion_rich",
                      "--preset", "tiny", "--set", "harvest.lpc_variants=false", "--set", "lpc.epochs=1", "-q"]) == 0
    folder = out / tiny_dataset.name / "random_25"
    picked = json.loads((folder / "selection.json").read_text())["volumes"][0]["volume"]
    labels = read_slice_boxes(tiny_dataset / "ground_truth" / "complete.pkl").get(picked, [])
    ledger = Ledger(folder / "ledger.sqlite")
    try:
        assert len(ledger.verdicts()) == len(labels) + 1  # each lesion drawn once, the volume marked once
    finally:
        ledger.close()


def test_operating_point_check_reproduces_the_stored_point_on_its_own_volumes(tiny_checkpoint, tiny_dataset, tmp_path):
    from lesion_harvester.lpg.checkpoint import checkpoint_operating_point

    point = checkpoint_operating_point(tiny_checkpoint)
    if point is None:
        pytest.skip("the tiny checkpoint's validation volumes hold no lesion: no operating point to check")
    tool = _load("operating_point_check")
    out = tmp_path / "check.json"
    # on the validation volumes the point was measured on, the scan gives what the checkpoint promised
    # a cache of its own: the dataset's shared one holds whatever earlier tests prepared there
    # a second checkpoint (a copy elsewhere) gets a scan of its own in --out, never the first one's
    copy = tmp_path / "round_3" / "lpg" / "best.pt"
    copy.parent.mkdir(parents=True)
    shutil.copy(tiny_checkpoint, copy)
    scans = tmp_path / "scans"
    assert tool.main([str(tiny_dataset), str(tiny_checkpoint), str(copy), "--split", "validation", "--fp-per-volume",
                      "1", "--out", str(scans), "--cache-dir", str(tmp_path / "cache"), "--json", str(out), "-q"]) == 0
    assert len(list(scans.glob("*operating_point_validation_stack*.pkl"))) == 2
    entry, second = json.loads(out.read_text())["checkpoints"]
    same = {k: v for k, v in entry.items() if k != "checkpoint"}
    assert {k: v for k, v in second.items() if k != "checkpoint"} == same
    assert entry["fp_per_volume"] == pytest.approx(entry["promised_fp_per_volume"], abs=1e-3)
    assert entry["sensitivity"] == pytest.approx(entry["promised_sensitivity"], abs=1e-3)
    assert entry["fp_per_volume"] <= 1.0 + 1e-9


def test_crop_labels_counts_the_lesions_a_crop_shows_without_their_label():
    tool = _load("crop_labels")
    lesions = np.array([[10.0, 10.0, 20.0, 20.0], [100.0, 100.0, 110.0, 110.0]])
    labelled = np.array([[11.0, 11.0, 21.0, 21.0]])
    assert not tool.shows_unlabelled_lesion(lesions, labelled, 0, 0, 64)  # the one inside is labelled
    assert tool.shows_unlabelled_lesion(lesions, np.zeros((0, 4)), 0, 0, 64)  # ... unless it is not
    assert tool.shows_unlabelled_lesion(lesions, labelled, 64, 64, 64)  # the second, with no label
    assert not tool.shows_unlabelled_lesion(lesions, labelled, 200, 200, 64)  # nothing in this crop


def test_crop_labels_with_every_lesion_labelled_keeps_background_crops_clean(tiny_dataset, tmp_path):
    tool = _load("crop_labels")
    complete = tmp_path / "complete.pkl"  # R+O's positives: every lesion, on its key slice
    shutil.copy(tiny_dataset / "ground_truth" / "complete.pkl", complete)
    out = tmp_path / "crops.json"
    assert tool.main([str(tiny_dataset), "--extra-positives", str(complete), "--preset", "tiny", "--crops", "200",
                      "--json", str(out)]) == 0
    crops = json.loads(out.read_text())["crops"]
    assert crops["background"]["n"] + crops["around_object"]["n"] == 200
    # each lesion is kept out of background crops as far as a mark of its size reaches
    assert crops["background"]["n"] > 0 and crops["background"]["unlabelled_lesion_share"] == 0.0


def test_larger_vm_adds_harvest_volumes_outside_v_h_test_and_counts_the_mimics_painted(tiny_dataset, tmp_path):
    from lesion_harvester.io.splits import read_splits

    tool = _load("larger_vm")
    out, report = tmp_path / "vm.pkl", tmp_path / "vm.json"
    assert tool.main([str(tiny_dataset), "--extra", "1", "--out", str(out), "--json", str(report)]) == 0
    splits = read_splits(tiny_dataset)
    results = json.loads(report.read_text())
    (extra,) = results["extra"]
    assert extra in splits["harvest"] and extra not in splits.get("harvest_test", [])
    labels = read_slice_boxes(out)
    complete = read_slice_boxes(tiny_dataset / "ground_truth" / "complete.pkl")
    assert set(labels) == set(splits["fully_annotated"]) | {extra}
    assert {k: len(v) for k, v in labels.items()} == {k: len(complete[k]) for k in labels}
    # the larger V_M's mean is that of its volumes' own counts
    from lesion_harvester.config import SynthConfig, from_dict
    from lesion_harvester.io.synth_record import read_generator_record

    settings, seed, path = read_generator_record(tiny_dataset)
    cfg = from_dict(SynthConfig, settings, str(path))
    counts = [tool.mimics_of_volume(k, seed, cfg) for k in labels]
    assert results["splits"]["fully_annotated_plus_1"]["normal_nodes_per_volume"] == pytest.approx(
        np.mean([c["normal_nodes"] for c in counts]), abs=1e-3)
    larger = results["splits"]["fully_annotated_plus_1"]
    assert larger["volumes"] == len(splits["fully_annotated"]) + 1
    assert results["splits"]["harvest"]["volumes"] == len(splits["harvest"])
    for summary in results["splits"].values():
        if summary["volumes"]:
            assert summary["mimics_per_volume"] == pytest.approx(
                summary["bowel_loops_per_volume"] + summary["normal_nodes_per_volume"], abs=2e-3)
    assert tool.main([str(tiny_dataset), "--extra", "100000"]) == 2  # more than V_H holds: a clear error
