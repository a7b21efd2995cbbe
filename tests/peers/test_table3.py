"""Table III on the tiny preset: every row trains, scans and is scored; a rerun reuses them."""

import json
import sys
from pathlib import Path

import pytest

from lesion_harvester.config import load_preset
from lesion_harvester.errors import ConfigError
from lesion_harvester.geometry.boxes import z_reach_slices
from lesion_harvester.harvest.label_sets import label_set
from lesion_harvester.io.annotations import (
    read_slice_boxes,
    read_tracklets,
    write_boxes_3d,
    write_slice_boxes,
    write_tracklets,
)
from lesion_harvester.io.deeplesion import DeepLesionDataset
from lesion_harvester.lpg.sources import build_sources
from lesion_harvester.paths import ROW_LOCK_FILE
from lesion_harvester.peers import table3
from lesion_harvester.peers.table3 import DIAGNOSTIC, ROWS, adds_nothing, diagnostic_label_set, parse_rows, run_table3
from lesion_harvester.report.table3 import render_table3
from lesion_harvester.storage.locks import OutputLock
from lesion_harvester.structures import Box3D, SliceBox
from tests.conftest import label_run

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import table3 as table3_script  # noqa: E402

SMALL = ["lpg_train.epochs=1", "lpg_train.iters_per_epoch=2", "lpg_train.batch_size=2",
         "lpg_train.mine_hard_background=false"]


def test_a_rows_training_settings():
    centernet = table3._row_preset(load_preset("demo"), "CenterNet", 1)
    assert (centernet.lpg.num_slices, centernet.lpg_train.seed, centernet.lpg_train.epochs) == (3, 1, 2)
    bench = load_preset("bench")
    mscn = table3._row_preset(bench, "MSCN", 0)  # table3.epochs 0: the LPG's own epochs
    assert mscn.lpg == bench.lpg and mscn.lpg_train == bench.lpg_train


def test_rows_parse():
    assert parse_rows("all") == list(ROWS) and parse_rows(None) == list(ROWS)
    assert parse_rows("MSCN:R+P+N, RetinaNet:R") == [("MSCN", "R+P+N"), ("RetinaNet", "R")]
    with pytest.raises(ValueError, match="unknown rows"):
        parse_rows("RetinaNet:R+P+N")  # an anchor-based detector has no HNSL
    assert parse_rows("MSCN:R+Pclean+Nclean,RetinaNet:R+Pclean") == [("MSCN", "R+Pclean+Nclean"),
                                                                    ("RetinaNet", "R+Pclean")]
    with pytest.raises(ValueError, match="unknown rows"):
        parse_rows("RetinaNet:R+Pclean+Nclean")
    oracle = parse_rows("oracle,MSCN:R")
    assert oracle[:4] == [("MSCN", "Rpaper"), ("MSCN", "R+O"), ("MSCN", "R+N"), ("MSCN", "R+Nclean")]
    assert oracle[-1] == ("MSCN", "R") and len(oracle) == 9 and parse_rows("all,all") == list(ROWS)


def test_cleaned_label_sets_leave_out_the_harvests_mistakes(tiny_dataset, tmp_path):
    layout, key = label_run(tmp_path, tiny_dataset)
    on_the_mark, elsewhere = read_tracklets(layout.harvested)[key]
    (negative,) = read_tracklets(layout.hard_negatives)[key]
    truth_path = tmp_path / "truth" / "complete.pkl"

    def truth_of(*lesions, boxes_3d=None):  # complete labels: each lesion on the key slice of a tracklet
        write_slice_boxes(truth_path, {key: [SliceBox(t.key_z, tuple(t.boxes_xyxy_px[t.key_index]))
                                             for t in lesions]})
        if boxes_3d is not None:
            write_boxes_3d(truth_path.parent / "boxes_3d.pkl", {key: boxes_3d})
        return truth_path

    def kept(path):
        return [t.boxes_xyxy_px.tolist() for t in read_tracklets(path).get(key, [])]

    def clean(name, truth):
        return diagnostic_label_set(name, label_set(layout.root, DIAGNOSTIC[name]), truth, [key], layout)

    # the harvested lesion on the mark is a lesion, the one elsewhere is not; the hard negative is a lesion
    cleaned = clean("R+Pclean+Nclean", truth_of(on_the_mark, negative))
    assert cleaned.name == "R+Pclean+Nclean" and cleaned.data == tiny_dataset.resolve()
    assert kept(cleaned.extra_positives) == [on_the_mark.boxes_xyxy_px.tolist()]
    assert kept(cleaned.hard_negatives) == []
    # now the hard negative is no lesion: kept; R+P has no negatives to clean
    cleaned = clean("R+Pclean+Nclean", truth_of(elsewhere))
    assert kept(cleaned.extra_positives) == [elsewhere.boxes_xyxy_px.tolist()]
    assert kept(cleaned.hard_negatives) == [negative.boxes_xyxy_px.tolist()]
    cleaned = clean("R+Pclean", truth_of(elsewhere))
    assert cleaned.name == "R+Pclean" and cleaned.hard_negatives is None
    assert read_tracklets(layout.harvested)[key][1].boxes_xyxy_px.tolist() == elsewhere.boxes_xyxy_px.tolist()
    # a hard negative on part of a lesion (its slice inside the lesion's 3D box, P3D IoU < 0.5) is left out too
    x1, y1, x2, y2 = negative.boxes_xyxy_px[0]
    around = Box3D((x1 - 20, y1 - 20, x2 + 20, y2 + 20), (negative.key_z - 2.0, negative.key_z + 2.0))
    cleaned = clean("R+Nclean", truth_of(elsewhere, boxes_3d=[around]))
    assert cleaned.extra_positives is None and kept(cleaned.hard_negatives) == []


def test_oracle_label_sets(tiny_dataset, tmp_path):
    layout, _ = label_run(tmp_path, tiny_dataset)
    truth_path = tiny_dataset / "ground_truth" / "complete.pkl"
    complete = read_slice_boxes(truth_path)
    splits = json.loads((tiny_dataset / "splits.json").read_text())
    marks = DeepLesionDataset(tiny_dataset).marks(splits["harvest"])
    key = next(k for k in splits["harvest"] if len(complete.get(k, [])) > len(marks[k]))  # with unmarked lesions
    training = splits["fully_annotated"] + [key]
    oracle = diagnostic_label_set("R+O", label_set(layout.root, "R"), truth_path, training, layout)
    assert oracle.hard_negatives is None
    assert read_slice_boxes(oracle.extra_positives) == {k: complete[k] for k in training if k in complete}
    # R+O adds exactly the unmarked lesions of those volumes (the marked ones, V_M's labels, are R's already)
    r = build_sources(oracle.data, None, drop_known_positives=True)
    o = build_sources(oracle.data, None, oracle.extra_positives, drop_known_positives=True)
    added = [b for x in o.training.records[len(r.training.records):] for b in x.positives]
    assert len(added) == len(complete[key]) - len(marks[key])
    # each added lesion, given on its key slice alone, is kept out of background crops as far above
    # and below as a mark of its size: on its neighbours it would otherwise be taught as background
    dz, dy, _ = DeepLesionDataset(tiny_dataset).sub_volumes[key].spacing_zyx_mm
    extents = o.training.exclusions[key][len(r.training.exclusions[key]):]
    for record, (z_lo, z_hi, _) in zip(o.training.records[len(r.training.records):], extents):
        reach = z_reach_slices(record.positives[0], dy, dz)
        assert (z_lo, z_hi) == (record.z_index - reach, record.z_index + reach)
    assert any(z_hi > z_lo for z_lo, z_hi, _ in extents)
    # Rpaper: R's labels, its own row (no hard background mined), never reused as R's
    paper = diagnostic_label_set("Rpaper", label_set(layout.root, "R"), truth_path, training, layout)
    assert (paper.extra_positives, paper.hard_negatives) == (None, None) and not adds_nothing(paper)
    bench = load_preset("bench")
    assert bench.lpg_train.mine_hard_background
    assert not table3._row_preset(bench, "MSCN", 0, "Rpaper").lpg_train.mine_hard_background
    assert table3.row_settings(bench, "MSCN", "Rpaper", 0, "s") != table3.row_settings(bench, "MSCN", "R", 0, "s")


def test_the_oracle_rows_train_each_on_its_own_labels(tiny_dataset, tmp_path, trained):
    layout, _ = label_run(tmp_path, tiny_dataset)
    table = run_table3(layout.root, load_preset("tiny"), [0], parse_rows("oracle,MSCN:R"), progress=False)
    assert trained == [("MSCN", "Rpaper"), ("MSCN", "R+O"), ("MSCN", "R+N"), ("MSCN", "R+Nclean"),
                       ("CenterNet", "Rpaper"), ("CenterNet", "R+O"), ("CenterNet", "R+N"), ("CenterNet", "R+Nclean"),
                       ("MSCN", "R")]
    assert not any(row.get("same_labels_as") for row in table["rows"])
    assert "share of R+O - R" in layout.table3_md.read_text()


@pytest.fixture
def trained(monkeypatch):
    """The rows a table trains, (detector, label set) in order; each 'training' detects nothing."""
    rows = []

    def fake_train_and_scan(detector, labels, preset, folder, split, device, progress):
        rows.append((detector, labels.name))
        write_tracklets(folder / "detections.pkl", {})
        return folder / "detections.pkl"

    monkeypatch.setattr(table3, "_train_and_scan", fake_train_and_scan)
    return rows


def test_a_harvest_that_harvested_nothing_trains_r_plus_p_once_as_r(tiny_dataset, tmp_path, trained):
    layout, _ = label_run(tmp_path, tiny_dataset)
    write_tracklets(layout.harvested, {})  # every round harvested nothing; its hard negatives remain
    assert adds_nothing(label_set(layout.root, "R+P")) and not adds_nothing(label_set(layout.root, "R+P+N"))
    assert not adds_nothing(label_set(layout.root, "R"))
    rows = [("MSCN", "R+P"), ("MSCN", "R+P+N"), ("RetinaNet", "R+P"), ("MSCN", "R+Pclean")]
    table = run_table3(layout.root, load_preset("tiny"), [0, 1], rows, progress=False)
    # R+P and R+Pclean are R's rows: R is trained once per seed (not asked for, it is scored too)
    assert trained == [("MSCN", "R"), ("MSCN", "R"), ("MSCN", "R+P+N"), ("MSCN", "R+P+N"),
                       ("RetinaNet", "R"), ("RetinaNet", "R")]
    by_row = {(r["detector"], r["labels"]): r for r in table["rows"]}
    assert by_row[("MSCN", "R+P")]["same_labels_as"] == "R" and "same_labels_as" not in by_row[("MSCN", "R")]
    assert "same_labels_as" not in by_row[("MSCN", "R+P+N")]
    assert by_row[("MSCN", "R+Pclean")]["ap"] == by_row[("MSCN", "R")]["ap"]
    assert "| MSCN | R+P (= R: nothing harvested) | 2 |" in layout.table3_md.read_text()
    # the figure beside the table, linked from it
    assert layout.table3_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"]({layout.table3_png.name})" in layout.table3_md.read_text()
    # a rerun trains nothing
    run_table3(layout.root, load_preset("tiny"), [0, 1], rows, progress=False)
    assert len(trained) == 6


def test_a_row_another_table_works_on_is_skipped_and_done_by_a_later_call(tiny_dataset, tmp_path, trained):
    layout, _ = label_run(tmp_path, tiny_dataset)
    rows = [("MSCN", "R"), ("MSCN", "R+P"), ("CenterNet", "R")]
    busy = layout.table3_row("MSCN", "R", 0)
    with OutputLock(busy / ROW_LOCK_FILE, busy):  # as another process training MSCN on R would hold it
        table = run_table3(layout.root, load_preset("tiny"), [0], rows, progress=False)
    assert trained == [("MSCN", "R+P"), ("CenterNet", "R")]
    assert [(r["detector"], r["labels"]) for r in table["rows"]] == [("MSCN", "R+P"), ("CenterNet", "R")]
    assert not (busy / "result.json").exists() and not (busy / ROW_LOCK_FILE).exists()
    table = run_table3(layout.root, load_preset("tiny"), [0], rows, progress=False)
    assert trained[2:] == [("MSCN", "R")] and len(table["rows"]) == 3


def test_a_scored_row_is_reused_only_with_the_settings_it_was_scored_with(tiny_dataset, tmp_path, trained):
    layout, _ = label_run(tmp_path, tiny_dataset)
    rows = [("MSCN", "R"), ("CenterNet", "R+P")]
    run_table3(layout.root, load_preset("tiny"), [0], rows, progress=False)
    run_table3(layout.root, load_preset("tiny"), [0], rows, progress=False)  # the same settings: reused
    assert trained == rows
    for changed in (["lpg_train.lr=0.01"], ["stack.score_threshold=0.2"], ["table3.epochs=3"],
                    ["table3.score_threshold=0.01"]):
        with pytest.raises(ConfigError, match="other settings"):
            run_table3(layout.root, load_preset("tiny", changed), [0], rows, progress=False)
    with pytest.raises(ConfigError, match="other settings"):  # another split is another row
        run_table3(layout.root, load_preset("tiny"), [0], rows[:1], split="harvest_test", progress=False)
    # the RetinaNet peer's own settings are its rows' settings; the LPC's are no row's
    run_table3(layout.root, load_preset("tiny", ["retinanet.fpn_channels=16", "lpc.epochs=3"]), [0], rows,
               progress=False)
    assert trained == rows
    # the scan's cut at its default is no part of a row's settings (rows scored before it was a setting keep theirs)
    assert table3.row_settings(load_preset("tiny"), "MSCN", "R", 0, "s") == table3.row_settings(
        load_preset("tiny", ["table3.score_threshold=0.05"]), "MSCN", "R", 0, "s")
    # a row scored before the settings were recorded is reused as it is
    result = layout.table3_row("MSCN", "R", 0) / "result.json"
    result.write_text(json.dumps({k: v for k, v in json.loads(result.read_text()).items() if k != "settings"}))
    run_table3(layout.root, load_preset("tiny", ["lpg_train.lr=0.01"]), [0], rows[:1], progress=False)
    assert trained == rows


@pytest.mark.slow
def test_a_tiny_table3_end_to_end(tiny_dataset, tmp_path, capsys):
    layout, _ = label_run(tmp_path, tiny_dataset)
    layout.config.write_text((Path(__file__).resolve().parents[2] / "lesion_harvester" / "configs" /
                              "tiny.yaml").read_text())
    argv = [str(layout.root), "--seeds", "0", *[a for s in SMALL for a in ("--set", s)], "--device", "cpu", "-q"]
    assert table3_script.main(argv) == 0
    table = json.loads(layout.table3_json.read_text())
    splits = json.loads((tiny_dataset / "splits.json").read_text())
    assert table["volumes"] == len(splits["detection_test"])
    assert [(r["detector"], r["labels"]) for r in table["rows"]] == list(ROWS)
    for row in table["rows"]:
        assert 0.0 <= row["ap"]["mean"] <= 1.0 and set(row["froc"]) >= {"0.125", "4", "8"}
    # every (row, seed) has its own folder; the 3-slice CenterNet is a 3-slice model
    assert len(list(layout.table3_dir.glob("*_seed0/result.json"))) == len(ROWS)
    assert "num_slices: 3" in (layout.table3_dir / "CenterNet_R_seed0" / "config.yaml").read_text()
    assert "| RetinaNet | R+P | 1 |" in layout.table3_md.read_text()
    # a cleaned row on request, beside the others
    cleaned = run_table3(layout.root, load_preset("tiny", SMALL), [0], [("MSCN", "R+Pclean+Nclean")], progress=False)
    # the table keeps the rows of the earlier call, the new one after them
    assert [(r["detector"], r["labels"]) for r in cleaned["rows"]] == [*ROWS, ("MSCN", "R+Pclean+Nclean")]
    assert cleaned["rows"][: len(ROWS)] == table["rows"]
    assert "| MSCN | R+Pclean+Nclean | 1 |" in layout.table3_md.read_text()
    assert (layout.table3_dir / "MSCN_R+Pclean+Nclean_seed0" / "result.json").is_file()
    assert layout.table3_clean_positives.is_file() and layout.table3_clean_negatives.is_file()
    # a rerun trains and scans nothing: every row is read back
    stamps = {p: p.stat().st_mtime_ns for p in layout.table3_dir.glob("*/result.json")}
    again = run_table3(layout.root, load_preset("tiny", SMALL), [0], progress=False)
    assert again["rows"] == cleaned["rows"]
    assert {p: p.stat().st_mtime_ns for p in layout.table3_dir.glob("*/result.json")} == stamps


def test_the_markdown_shows_mean_and_range_beside_the_paper():
    stat = {"mean": 0.5, "min": 0.4, "max": 0.6}
    row = {"detector": "MSCN", "labels": "R", "seeds": [0, 1], "ap": stat,
           "froc": {r: stat for r in ("0.125", "0.25", "0.5", "1", "2", "4", "8")}}
    better = {**row, "labels": "R+P+N", "ap": {"mean": 0.58, "min": 0.55, "max": 0.61}}
    alone = {**row, "detector": "CenterNet", "labels": "R+P"}  # no CenterNet on R: no gain to show
    text = "\n".join(render_table3({"split": "detection_test", "volumes": 3, "lesions": 7,
                                    "rows": [row, better, alone]}))
    assert "| MSCN | R | 2 | 0.500 (0.400-0.600)" in text and "0.500 (0.400-0.600) | - |" in text
    assert "| 0.580 (0.550-0.610) | +0.080 |" in text
    assert text.count("0.500 (0.400-0.600) | - |") == 2  # R itself, and CenterNet R+P without its R
    assert "| MSCN | R+P+N | - | 19.9 | 27.1 | 36.2 | 46.8 | 56.9 | 66.8 | 74.7 | 51.9 | +8.9 |" in text
    assert "share of R+O - R" not in text
    # with the oracle: the ceiling, and each row's gain as a share of it
    oracle = {**row, "labels": "R+O", "ap": {"mean": 0.6, "min": 0.6, "max": 0.6}}
    text = "\n".join(render_table3({"split": "detection_test", "volumes": 3, "lesions": 7,
                                    "rows": [row, better, oracle]}))
    assert "(R+O - R: MSCN +0.100)" in text
    assert "| 0.580 (0.550-0.610) | +0.080 | +0.80 |" in text and "| 0.600 | +0.100 | - |" in text
    # no row scored yet (all busy in other tables): the paper's table alone, no figure
    text = "\n".join(render_table3({"split": "detection_test", "volumes": 3, "rows": []}))
    assert "| MSCN | R+P+N | - | 19.9" in text and "![" not in text
