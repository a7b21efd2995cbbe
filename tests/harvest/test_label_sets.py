"""The label sets of Table III, read from a harvest run folder (R, R+P, R+N, R+P+N)."""

import pytest

from lesion_harvester.cli.main import main
from lesion_harvester.errors import DataError
from lesion_harvester.harvest.label_sets import LABEL_SETS, label_set
from lesion_harvester.lpg.sources import build_sources
from tests.conftest import label_run


def _counts(sources):
    records = sources.training.records
    return (sum(len(r.positives) for r in records), sum(len(r.negatives) for r in records))


def test_each_label_set_adds_what_it_names_and_no_lesion_twice(tiny_dataset, tmp_path):
    layout, key = label_run(tmp_path, tiny_dataset)
    sets = {name: label_set(layout.root, name) for name in LABEL_SETS}
    assert sets["R"].extra_positives is None and sets["R"].hard_negatives is None
    assert sets["R+P"].extra_positives == str(layout.harvested) and sets["R+P"].hard_negatives is None
    assert sets["R+P+N"].hard_negatives == str(layout.hard_negatives)
    assert sets["R+N"].extra_positives is None and sets["R+N"].hard_negatives == str(layout.hard_negatives)
    assert all(s.data == tiny_dataset.resolve() and s.fully_annotated is None for s in sets.values())

    def sources(s, drop=True):
        return build_sources(s.data, s.fully_annotated, s.extra_positives, s.hard_negatives,
                             drop_known_positives=drop)

    r_pos, r_neg = _counts(sources(sets["R"]))
    assert r_pos > 0 and r_neg == 0
    # the harvested lesion on the mark is that mark: only the other one is added
    assert _counts(sources(sets["R+P"])) == (r_pos + 1, 0)
    assert _counts(sources(sets["R+P+N"])) == (r_pos + 1, 1)
    assert _counts(sources(sets["R+N"])) == (r_pos, 1)
    # the harvest's own fine-tuning keeps its proposals on known lesions (paper III-E)
    assert _counts(sources(sets["R+P"], drop=False)) == (r_pos + 2, 0)


def test_a_label_set_needs_a_finished_harvest(tiny_dataset, tmp_path):
    layout, _ = label_run(tmp_path, tiny_dataset, with_outputs=False)
    assert label_set(layout.root, "R").extra_positives is None  # R needs no harvest output
    with pytest.raises(DataError, match="harvested.pkl"):
        label_set(layout.root, "R+P")
    with pytest.raises(DataError, match="no harvest ledger"):
        label_set(tmp_path / "elsewhere", "R")
    with pytest.raises(DataError, match="hard_negatives.pkl"):
        label_set(layout.root, "R+N")
    with pytest.raises(ValueError, match="unknown label set"):
        label_set(layout.root, "R+Q")


def test_train_lpg_from_a_harvest(tiny_dataset, tmp_path, capsys):
    layout, _ = label_run(tmp_path, tiny_dataset)
    out = tmp_path / "lpg"
    small = ["--preset", "tiny", "--set", "lpg_train.epochs=1", "--set", "lpg_train.iters_per_epoch=2"]
    assert main(["train-lpg", "--from-harvest", str(layout.root), "--labels", "R+P+N", "--out", str(out),
                 *small]) == 0
    assert (out / "best.pt").is_file()
    log = (out / "train.log").read_text()
    assert "1 positives are marked or labelled lesions already" in log
    capsys.readouterr()
    # the label set comes from the run alone
    assert main(["train-lpg", "--from-harvest", str(layout.root), "--labels", "R", "--out", str(tmp_path / "x"),
                 "--extra-positives", str(layout.harvested), *small]) == 2
    assert "drop --extra-positives" in capsys.readouterr().err
    assert main(["train-lpg", str(tiny_dataset), "--labels", "R", "--out", str(tmp_path / "y"), *small]) == 2
    assert "--labels needs --from-harvest" in capsys.readouterr().err
    assert main(["train-lpg", "--out", str(tmp_path / "z"), *small]) == 2
    assert "give DATA" in capsys.readouterr().err
