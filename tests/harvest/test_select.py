"""Which volumes to annotate fully next (harvest/select.py), and the simulated annotator that delivers
their complete labels through the reviewers' verdicts into the next round's V_M."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lesion_harvester.cli.main import main
from lesion_harvester.dataset.roles import resolve_partition
from lesion_harvester.errors import DataError
from lesion_harvester.harvest.ledger import Ledger, ProposalRow
from lesion_harvester.harvest.reviews import annotate_fully
from lesion_harvester.harvest.rounds import harvest
from lesion_harvester.harvest.select import STRATEGIES, select_for_run, select_volumes
from lesion_harvester.io.annotations import read_slice_boxes
from lesion_harvester.paths import RunLayout
from lesion_harvester.structures import Tracklet
from tests.conftest import tiny_harvest_preset


def _rows(key: str, scored: list[tuple[float, float | None, float]]) -> list[ProposalRow]:
    """Proposals of one volume, (s_g, s_c, s) each, on distinct places."""
    return [ProposalRow(1, key, i, Tracklet.single_slice(0, [10.0 * i, 0, 10.0 * i + 5, 5], s_g), s_g, s_c, s,
                        "rejected") for i, (s_g, s_c, s) in enumerate(scored)]


ROWS = {
    "near": _rows("near", [(0.6, 0.9, 0.5), (0.55, 0.9, 0.48), (0.5, 0.9, 0.52)]),  # three at the threshold 0.5
    "split": _rows("split", [(0.9, 0.05, 0.9), (0.8, 0.1, 0.3)]),  # the LPG sure, the LPC not
    "rich": _rows("rich", [(0.95, 0.95, 0.95), (0.9, 0.95, 0.9), (0.92, 0.9, 0.85)]),  # lesions, surely
    "empty": [],
}


def test_each_strategy_ranks_what_it_names():
    keys = sorted(ROWS)
    marks = {"rich": 2, "near": 0, "split": 1, "empty": 0}
    assert [s.volume for s in select_volumes(keys, ROWS, marks, 0.5, 1, "uncertainty")] == ["near"]
    assert [s.volume for s in select_volumes(keys, ROWS, marks, 0.5, 1, "disagreement")] == ["split"]
    assert [s.volume for s in select_volumes(keys, ROWS, marks, 0.5, 2, "lesion_rich")] == ["rich", "split"]
    top = select_volumes(keys, ROWS, marks, 0.5, 4, "uncertainty")
    assert [s.rank for s in top] == [1, 2, 3, 4] and top[0].reason.startswith("3 proposals within")
    # coverage: the volume with the most proposals first (near; rich ties, later in order), then the one whose
    # scores are least like its (rich: all high), then the one farthest from both (empty: split shares a bin with
    # rich)
    assert [s.volume for s in select_volumes(keys, ROWS, marks, 0.5, 3, "coverage")] == ["near", "rich", "empty"]
    # random: a seeded draw, the same for the same seed, every candidate at most once
    drawn = [s.volume for s in select_volumes(keys, ROWS, marks, 0.5, 4, "random", seed=3)]
    assert sorted(drawn) == keys and drawn == [s.volume for s in select_volumes(keys, ROWS, marks, 0.5, 4,
                                                                                 "random", seed=3)]
    for strategy in STRATEGIES:  # never more than the candidates, never one outside them
        chosen = select_volumes(["near", "split"], ROWS, marks, 0.5, 5, strategy)
        assert sorted(s.volume for s in chosen) == ["near", "split"]
    with pytest.raises(ValueError, match="unknown strategy"):
        select_volumes(keys, ROWS, marks, 0.5, 1, "clever")


@pytest.mark.slow
def test_selected_volumes_join_v_m_through_the_simulated_annotators_verdicts(tiny_harvest_run, tiny_dataset,
                                                                              tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_harvest_run, run)
    assert main(["select", str(run), "--budget", "1", "--strategy", "uncertainty"]) == 0
    assert "wrote" in capsys.readouterr().out
    selection = json.loads(RunLayout(run).selection.read_text())
    (picked,) = [v["volume"] for v in selection["volumes"]]
    ledger = Ledger(RunLayout(run).ledger)
    closed = set(ledger.volumes(holdout=True)) | set(resolve_partition(tiny_dataset).validation)
    assert picked in ledger.volumes("harvest") and picked not in closed
    complete = read_slice_boxes(tiny_dataset / "ground_truth" / "complete.pkl")
    assert annotate_fully(ledger, {picked: complete[picked]}) == len(complete[picked]) + 1
    ledger.close()
    with pytest.raises(DataError, match="budget"):
        select_for_run(run, 0)

    harvest(tiny_dataset, run, tiny_harvest_preset(2), device="cpu", progress=False,
            cache_dir=tiny_harvest_run.parent / "cache")
    ledger, layout = Ledger(RunLayout(run).ledger), RunLayout(run)
    try:
        assert ledger.step_info(2, "reviews")["joined_v_m"] == [picked]
        assert picked in ledger.volumes(role="fully_annotated")
        # round 2 verified its proposals there against the delivered labels, and its LPG trained on them
        assert {row.status for row in ledger.proposals(2, volumes=[picked])} <= {"fa_lesion", "fa_negative"}
        labels = read_slice_boxes(layout.round_fully_annotated(2))[picked]
        key = lambda b: (b.z_index, tuple(np.round(b.box_xyxy_px, 3)))  # noqa: E731
        assert sorted(map(key, labels)) == sorted(map(key, complete[picked]))
    finally:
        ledger.close()
