"""The label sets of the paper's Table III, read from a finished harvest run folder.

A detector trained on the completed labels is the harvest's downstream test (paper Sec. IV-D):

- ``R``: the RECIST marks of the training volumes and V_M's complete labels (what round 1 trains on);
- ``R+P``: R and the harvested lesions P_H^+ of all rounds (``harvested.pkl``);
- ``R+N``: R and the hard negatives alone (what N adds without P);
- ``R+P+N``: R+P and the hard negatives P^- of all rounds (``hard_negatives.pkl``), through the HNSL.

The run's outputs are read as they are, never re-derived; the dataset and V_M's labels are the
ones the harvest was given (its ledger records them). A harvested lesion that is a marked lesion
already is left out by the LPG's training sources (``drop_known_positives``), so no lesion counts twice.
"""

from __future__ import annotations

from pathlib import Path

from lesion_harvester.errors import DataError
from lesion_harvester.harvest.ledger import Ledger
from lesion_harvester.paths import RunLayout
from lesion_harvester.structures import LabelSet

LABEL_SETS = ("R", "R+P", "R+N", "R+P+N")


def label_set(run_dir: str | Path, name: str) -> LabelSet:
    """Label set ``name`` (one of :data:`LABEL_SETS`) of the harvest in ``run_dir``."""
    if name not in LABEL_SETS:
        raise ValueError(f"unknown label set {name!r}; choose one of {', '.join(LABEL_SETS)}")
    layout = RunLayout(Path(run_dir))
    if not layout.ledger.is_file():
        raise DataError(layout.root, f"no harvest ledger ({layout.ledger.name}) in this folder")
    ledger = Ledger(layout.ledger)
    try:
        data = ledger.get_meta("data")
        fully_annotated = ledger.get_meta("fully_annotated_file")
    finally:
        ledger.close()
    if not data:
        raise DataError(layout.ledger, "the ledger does not name the harvested dataset")
    if fully_annotated is None and not (Path(data) / "splits.json").is_file():
        raise DataError(layout.ledger, "this run was written before the ledger recorded its --fully-annotated "
                                       "file; train with train-lpg DATA --fully-annotated FILE instead")
    positives, negatives = "P" in name, name.endswith("N")
    needed = [path for path, wanted in ((layout.harvested, positives), (layout.hard_negatives, negatives)) if wanted]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise DataError(layout.root, f"no {', '.join(missing)}: the harvest has not finished a round yet")
    return LabelSet(name, Path(data), fully_annotated or None, str(layout.harvested) if positives else None,
                    str(layout.hard_negatives) if negatives else None)
