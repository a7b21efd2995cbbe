"""Table III on the tiny preset: every row trains, scans and is scored; a rerun reuses them."""

import json
import sys
from pathlib import Path

import pytest

from lesion_harvester.config import load_preset
from lesion_harvester.peers.table3 import ROWS, parse_rows, run_table3
from lesion_harvester.report.table3 import render_table3
from tests.conftest import label_run

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import table3 as table3_script  # noqa: E402

SMALL = ["lpg_train.epochs=1", "lpg_train.iters_per_epoch=2", "lpg_train.batch_size=2",
         "lpg_train.mine_hard_background=false"]


def test_rows_parse():
    assert parse_rows("all") == list(ROWS) and parse_rows(None) == list(ROWS)
    assert parse_rows("MSCN:R+P+N, RetinaNet:R") == [("MSCN", "R+P+N"), ("RetinaNet", "R")]
    with pytest.raises(ValueError, match="unknown rows"):
        parse_rows("RetinaNet:R+P+N")  # an anchor-based detector has no HNSL


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
    # a rerun trains and scans nothing: every row is read back
    stamps = {p: p.stat().st_mtime_ns for p in layout.table3_dir.glob("*/result.json")}
    again = run_table3(layout.root, load_preset("tiny", SMALL), [0], progress=False)
    assert again["rows"] == table["rows"]
    assert {p: p.stat().st_mtime_ns for p in layout.table3_dir.glob("*/result.json")} == stamps


def test_the_markdown_shows_mean_and_range_beside_the_paper():
    stat = {"mean": 0.5, "min": 0.4, "max": 0.6}
    row = {"detector": "MSCN", "labels": "R", "seeds": [0, 1], "ap": stat,
           "froc": {r: stat for r in ("0.125", "0.25", "0.5", "1", "2", "4", "8")}}
    text = "\n".join(render_table3({"split": "detection_test", "volumes": 3, "lesions": 7, "rows": [row]}))
    assert "| MSCN | R | 2 | 0.500 (0.400-0.600)" in text
    assert "| MSCN | R+P+N | - | 19.9 | 27.1 | 36.2 | 46.8 | 56.9 | 66.8 | 74.7 | 51.9 |" in text
