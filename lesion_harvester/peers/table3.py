"""The paper's Table III for a harvest: detectors trained on its label sets, scored on held-out volumes.

Rows: the MSCN (9 slices) and the plain CenterNet (3 slices), each on R, R+P and R+P+N
(:mod:`lesion_harvester.harvest.label_sets`), and MONAI's RetinaNet (:mod:`.retinanet`) on R and
R+P (an anchor-based detector has no HNSL). Each row is trained once per training seed into
``RUN/table3/<detector>_<labels>_seed<k>/``, scans the test split and is scored with the P3D
evaluation against the complete labels (the synthetic ``ground_truth/complete.pkl``). A (row, seed)
already scored is reused, so a killed table continues; training and scanning resume inside too. A row
scored with other settings (another preset, ``--set``, another split) is an error, not reused: each
setting tried gets its own copy of the harvest folder.
Where the harvest added no label (it harvested nothing), R+P is R: that row is R's row, reused and
marked ``same_labels_as``, not trained a second time.
Several tables may run at once on one harvest (one per GPU, or per core): a row in the works
is locked (``.row.lock`` in its folder) and the others go on with the next row; run the table
again once they end for the rows they skipped.

Rows on request only (``--rows``), diagnostics that need the complete labels of a synthetic dataset:

- ``--rows oracle``: the MSCN and the CenterNet on ``R+O`` (R plus every lesion of the training
  volumes, from the complete labels: the ceiling of what completing the labels can add on this data),
  ``Rpaper`` (R as the paper trains it, without the preset's hard-background mining on V_M's false
  positives, which is a form of N), ``R+N`` (the hard negatives alone) and ``R+Nclean`` (N without
  the hard negatives on a lesion). The table then gives each row's gain over R as a share of R+O - R.
- ``R+Pclean`` and ``R+Pclean+Nclean``: the same label sets with the harvest's mistakes taken out by
  the ground truth (harvested lesions that are not lesions, hard negatives on a lesion). Against R+P
  and R+P+N they measure how much a harvest's wrong labels cost the detector.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from lesion_harvester.config import Preset, Table3Config, fingerprint
from lesion_harvester.errors import ConfigError, DataError
from lesion_harvester.evaluation.api import evaluate_files, load_truth
from lesion_harvester.evaluation.matching import covers_a_lesion
from lesion_harvester.harvest.label_sets import label_set
from lesion_harvester.harvest.verify import touches
from lesion_harvester.io.annotations import (
    read_any_boxes,
    read_boxes_3d,
    read_slice_boxes,
    read_tracklets,
    write_slice_boxes,
    write_tracklets,
)
from lesion_harvester.io.splits import read_splits
from lesion_harvester.lpg.propose import propose
from lesion_harvester.lpg.train import TrainingOptions, train_detector
from lesion_harvester.paths import ROW_LOCK_FILE, RunLayout, TrainLayout
from lesion_harvester.peers.detectors import DETECTORS
from lesion_harvester.report.plots import plot_table3
from lesion_harvester.report.table3 import FP_RATES, render_table3
from lesion_harvester.storage.atomic import atomic_write_text
from lesion_harvester.storage.locks import OutputLock, OutputLocked
from lesion_harvester.structures import LabelSet

log = logging.getLogger(__name__)

ROWS = (("MSCN", "R"), ("MSCN", "R+P"), ("MSCN", "R+P+N"),
        ("CenterNet", "R"), ("CenterNet", "R+P"), ("CenterNet", "R+P+N"),
        ("RetinaNet", "R"), ("RetinaNet", "R+P"))
ORACLE_ROWS = tuple((detector, labels) for detector in ("MSCN", "CenterNet")
                    for labels in ("Rpaper", "R+O", "R+N", "R+Nclean"))
CLEANED_ROWS = (("MSCN", "R+Pclean"), ("MSCN", "R+Pclean+Nclean"),
                ("CenterNet", "R+Pclean"), ("CenterNet", "R+Pclean+Nclean"), ("RetinaNet", "R+Pclean"))
# the label sets of the rows above that need the complete labels -> the harvest's label set each starts from
DIAGNOSTIC = {"Rpaper": "R", "R+O": "R", "R+Nclean": "R+N", "R+Pclean": "R+P", "R+Pclean+Nclean": "R+P+N"}
ROW_GROUPS = {"all": ROWS, "oracle": ORACLE_ROWS}
DEFAULT_SCORE_THRESHOLD = Table3Config().score_threshold  # rows scored before it was a setting used this


def parse_rows(text: str | None) -> list[tuple[str, str]]:
    """``"MSCN:R,RetinaNet:R+P"`` -> rows; a group name (``all``: the paper's table, ``oracle``:
    :data:`ORACLE_ROWS`) stands for its rows; None: every row of the paper's table."""
    rows: list[tuple[str, str]] = []
    for item in (text or "all").split(","):
        item = item.strip()
        rows += ROW_GROUPS[item] if item in ROW_GROUPS else [tuple(item.split(":", 1))]
    unknown = [":".join(r) for r in rows if r not in ROWS + ORACLE_ROWS + CLEANED_ROWS]
    if unknown:
        known = ", ".join(d + ":" + s for d, s in ROWS + ORACLE_ROWS + CLEANED_ROWS)
        raise ValueError(f"unknown rows {unknown}; known: {', '.join(ROW_GROUPS)}, {known}")
    return list(dict.fromkeys(rows))


def diagnostic_label_set(name: str, base: LabelSet, truth_path: Path, training_keys: list[str],
                         layout: RunLayout) -> LabelSet:
    """The label set ``name`` of :data:`DIAGNOSTIC`, from ``base`` (its harvest label set) and the
    complete labels ``truth_path`` (with ``boxes_3d.pkl`` beside it where the data has one):

    - ``Rpaper``: R itself (its rows train without hard-background mining, :func:`_row_preset`);
    - ``R+O``: R and every labelled lesion of ``training_keys`` (marked ones are dropped as duplicates
      when the row trains, so the oracle adds exactly the unmarked lesions);
    - ``...clean``: harvested lesions that are no lesion (P3D IoU < 0.5) left out, and hard negatives on a
      lesion (P3D IoU >= 0.5, or touching a lesion's 3D box: the hard-negative rule of
      :func:`~lesion_harvester.harvest.verify.touches`) left out.
    """
    if name == "Rpaper":
        return dataclasses.replace(base, name=name)
    if name == "R+O":
        wanted = set(training_keys)
        complete = {key: boxes for key, boxes in read_slice_boxes(truth_path).items() if key in wanted}
        write_slice_boxes(layout.table3_oracle_positives, complete)
        return dataclasses.replace(base, name=name, extra_positives=str(layout.table3_oracle_positives))
    truth = load_truth(truth_path, "p3d")
    boxes_path = truth_path.parent / "boxes_3d.pkl"
    lesions = read_boxes_3d(boxes_path) if boxes_path.is_file() else {}

    def keep(path: str | None, lesions_wanted: bool, out: Path) -> str | None:
        if path is None:
            return None
        kept = {}
        for key, tracklets in read_tracklets(path).items():
            hits = [covers_a_lesion(t, truth.get(key)) or (not lesions_wanted and touches(t, lesions.get(key, [])))
                    for t in tracklets]
            kept[key] = [t for t, hit in zip(tracklets, hits) if hit == lesions_wanted]
        write_tracklets(out, {key: tracklets for key, tracklets in kept.items() if tracklets})
        return str(out)

    return dataclasses.replace(base, name=name,
                               extra_positives=keep(base.extra_positives, True, layout.table3_clean_positives),
                               hard_negatives=keep(base.hard_negatives, False, layout.table3_clean_negatives))


def adds_nothing(labels: LabelSet) -> bool:
    """Whether a label set other than R holds no harvested lesion and no hard negative: a harvest that
    harvested nothing leaves R+P (and R+Pclean) the very labels of R, so their rows are R's row."""
    def empty(path: str | None) -> bool:
        return path is None or not any(read_any_boxes(path).values())

    # Rpaper holds R's labels too, but trains otherwise (no hard-background mining): a row of its own
    return labels.name not in ("R", "Rpaper") and empty(labels.extra_positives) and empty(labels.hard_negatives)


def _row_preset(preset: Preset, detector: str, seed: int, labels: str = "R") -> Preset:
    """The preset of a row: the detector's (:meth:`~lesion_harvester.detectors.base.DetectionModel.configure`),
    with the row's training seed and the table's epochs."""
    preset = DETECTORS.get(detector).configure(preset)
    train = dataclasses.replace(preset.lpg_train, seed=seed, epochs=preset.table3.epochs or preset.lpg_train.epochs)
    if labels == "Rpaper":  # the paper's R: the marks and V_M's labels, no hard background mined on V_M
        train = dataclasses.replace(train, mine_hard_background=False)
    return dataclasses.replace(preset, lpg_train=train)


def row_settings(preset: Preset, detector: str, labels: str, seed: int, split: str) -> str:
    """What a scored row must share with the table that reuses it: the settings that shape its
    training and scan (those of its own preset, :func:`_row_preset`), its label set and the split."""
    row = _row_preset(preset, detector, seed, labels)
    network = DETECTORS.get(detector).settings(row)
    # the default cut adds nothing, so that rows scored before it was a setting keep their fingerprint
    cut = () if row.table3.score_threshold == DEFAULT_SCORE_THRESHOLD else (row.table3.score_threshold,)
    return fingerprint(row.preprocess, network, row.lpg_train, row.scan, row.stack, detector, labels, seed, split,
                       *cut)


def _train_and_scan(detector: str, labels: LabelSet, preset: Preset, folder: Path, split: str, device: str,
                    progress: bool) -> Path:
    """Train one row into ``folder`` and scan ``split``; returns the detections file."""
    detections = folder / f"{split}.pkl"
    model = DETECTORS.get(detector)
    train_detector(model, labels, preset, folder, TrainingOptions(device, progress=progress, drop_known_positives=True))
    propose(labels.data, TrainLayout(folder).best, detections, split, device=device, progress=progress,
            score_threshold=preset.table3.score_threshold, detector=model)
    return detections


def _scored(layout: RunLayout, detector: str, labels: str, seed: int) -> Path:
    """The result of one (row, training seed); its folder holds the row's checkpoints and detections."""
    return layout.table3_row(detector, labels, seed) / "result.json"


def _stat(values: list[float]) -> dict:
    return {"mean": round(float(np.mean(values)), 4), "min": round(float(np.min(values)), 4),
            "max": round(float(np.max(values)), 4)}


@dataclasses.dataclass
class _Rows:
    """Trains, scans and scores (row, seed)s of one harvest's table; remembers those busy elsewhere."""

    layout: RunLayout
    sets: dict[str, LabelSet]  # label set name -> what its rows train on
    preset: Preset
    truth_path: Path  # the complete labels
    split: str
    volumes: list[str]  # the split's volumes
    device: str
    progress: bool
    skipped: list[str] = dataclasses.field(default_factory=list)
    same_as_r: set[str] = dataclasses.field(init=False)  # label sets that add nothing to R (read once)

    def __post_init__(self) -> None:
        self.same_as_r = {name for name, labels in self.sets.items() if adds_nothing(labels)}
        if self.same_as_r and "R" not in self.sets:  # their rows are R's
            self.sets["R"] = label_set(self.layout.root, "R")

    def score(self, detector: str, labels: str, seed: int) -> None:
        """Write the row's result.json unless it is there already or another table works on the row."""
        scored = _scored(self.layout, detector, labels, seed)
        if scored.is_file():
            self._check_settings(scored, detector, labels, seed)
            return
        try:
            with OutputLock(scored.parent / ROW_LOCK_FILE, scored.parent):
                if not scored.is_file():  # another table may have scored it since
                    self._train_and_score(detector, labels, seed, scored)
        except OutputLocked as busy:  # another table works on this row: go on with the next
            log.warning("Table III: %s on %s, training seed %d, skipped: %s", detector, labels, seed, busy)
            self.skipped.append(f"{detector}:{labels} seed {seed}")

    def _check_settings(self, scored: Path, detector: str, labels: str, seed: int) -> None:
        """A row scored with other settings (``--set``, another preset) is not this table's row."""
        recorded = json.loads(scored.read_text()).get("settings")
        # rows scored before the settings were recorded (2026-12-02) carry none: reused as they are
        if recorded is not None and recorded != row_settings(self.preset, detector, labels, seed, self.split):
            raise ConfigError(f"{scored}: this row was trained or scored with other settings than this table's "
                              f"(preset, --set or --split); table3.py reuses a scored row, so give the other "
                              f"settings their own copy of the harvest folder, or delete {scored.parent}")

    def _train_and_score(self, detector: str, labels: str, seed: int, scored: Path) -> None:
        if labels in self.same_as_r:  # the same training as R's row (CPU training is seeded): reuse it
            self.score(detector, "R", seed)
            r_scored = _scored(self.layout, detector, "R", seed)
            if not r_scored.is_file():  # R's row is busy in another table
                self.skipped.append(f"{detector}:{labels} seed {seed} (R's row)")
                return
            result = {**json.loads(r_scored.read_text()), "same_labels_as": "R"}
            log.info("Table III: %s on %s is %s on R (the harvest added no label), training seed %d",
                     detector, labels, detector, seed)
        else:
            log.info("Table III: %s on %s, training seed %d", detector, labels, seed)
            detections = _train_and_scan(detector, self.sets[labels], _row_preset(self.preset, detector, seed, labels),
                                         scored.parent, self.split, self.device, self.progress)
            result = evaluate_files(self.truth_path, detections, volumes=self.volumes).to_json()
        result["settings"] = row_settings(self.preset, detector, labels, seed, self.split)
        atomic_write_text(scored, json.dumps(result, indent=1))


def _write_table(layout: RunLayout, seeds: list[int], split: str, volumes: int, preset_name: str) -> dict:
    """table3.json, table3.md and the figure of every row scored for ``seeds``: those asked for now and
    those of earlier calls, in the paper's order and the cleaned rows after it."""
    table = {"split": split, "volumes": volumes, "preset": preset_name, "seeds": seeds, "rows": []}
    for detector, labels in ROWS + ORACLE_ROWS + CLEANED_ROWS:
        files = [_scored(layout, detector, labels, seed) for seed in seeds]
        if not all(f.is_file() for f in files):
            continue
        per_seed = [json.loads(f.read_text()) for f in files]
        table["lesions"] = per_seed[0]["n_gt"]
        table["rows"].append({
            "detector": detector, "labels": labels, "seeds": seeds,
            "froc": {r: _stat([s["froc"][r] for s in per_seed]) for r in FP_RATES},
            "ap": _stat([s["ap"] for s in per_seed]),
            "per_seed": [{"seed": seed, "ap": s["ap"], "froc": s["froc"]} for seed, s in zip(seeds, per_seed)],
            **({"same_labels_as": "R"} if per_seed[0].get("same_labels_as") else {}),
        })
    atomic_write_text(layout.table3_json, json.dumps(table, indent=1))
    if table["rows"]:
        plot_table3(table, FP_RATES, layout.table3_png)
    atomic_write_text(layout.table3_md, "\n".join(["# Table III", *render_table3(table)[1:]]) + "\n")
    return table


def run_table3(run_dir: str | Path, preset: Preset, seeds: list[int], rows: list[tuple[str, str]] | None = None,
               split: str = "detection_test", device: str = "cpu", progress: bool = True) -> dict:
    """Train, scan and score every (row, seed) of ``rows`` not yet scored; writes and returns the table
    (``RUN/table3.json``, ``RUN/table3.md``, ``RUN/table3_froc.png``) of every row scored for ``seeds``."""
    layout = RunLayout(Path(run_dir))
    rows = list(ROWS) if rows is None else rows
    names = list(dict.fromkeys(labels for _, labels in rows))
    sets = {name: label_set(layout.root, DIAGNOSTIC.get(name, name)) for name in names}
    data = next(iter(sets.values())).data
    truth_path = data / "ground_truth" / "complete.pkl"
    splits = read_splits(data) or {}
    if not truth_path.is_file() or split not in splits:
        raise DataError(data, f"Table III needs complete labels of a held-out split: ground_truth/complete.pkl "
                              f"and a '{split}' split in splits.json (the synthetic layout)")
    if any(name in DIAGNOSTIC for name in names):
        layout.table3_dir.mkdir(parents=True, exist_ok=True)
        training = splits.get("fully_annotated", []) + splits.get("harvest", [])
        sets.update({name: diagnostic_label_set(name, sets[name], truth_path, training, layout)
                     for name in names if name in DIAGNOSTIC})
    work = _Rows(layout, sets, preset, truth_path, split, splits[split], device, progress)
    for detector, labels in rows:
        for seed in seeds:
            work.score(detector, labels, seed)
    if work.skipped:
        log.warning("Table III: %d rows were busy in another table (%s); run this again when it ends",
                    len(work.skipped), ", ".join(work.skipped))
    return _write_table(layout, seeds, split, len(splits[split]), preset.name)
