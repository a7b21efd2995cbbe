"""Which volumes play which part: the fully annotated set V_M, the harvest volumes V_H, the
validation volumes and the holdout V_H^test. One resolver serves LPG training, the LPC and the
harvest, so that they all agree.

- Synthetic layout (``splits.json`` with a ``harvest`` list): V_M = ``fully_annotated`` with its
  labels from ``ground_truth/complete.pkl``; V_H = ``harvest``; validation = ``validation``
  and holdout = ``harvest_test`` (a part of V_H), both with complete labels.
- A real DeepLesion folder: V_M = the volumes of ``--fully-annotated FILE`` (e.g. the released
  Revised-Train744.pkl) with its labels; V_H = every training-split sub-volume of DL_info.csv
  outside V_M; validation = DL_info's val split with its RECIST marks; holdout = the volumes of
  ``--holdout FILE`` (e.g. Revised-Train100.pkl). A DL_info.csv without validation rows (many PACS
  exports) gets a validation set held out of V_H: its marks then validate the LPG instead of
  training it (the volumes are still harvested), so that no checkpoint is chosen on an empty set.
- ``--fully-annotated FILE`` on the synthetic layout replaces ``fully_annotated``: the volumes
  it no longer names are harvest volumes like the others (their RECIST marks are all that is used).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from lesion_harvester.errors import DataError
from lesion_harvester.io.annotations import read_slice_boxes
from lesion_harvester.io.deeplesion import DeepLesionDataset
from lesion_harvester.io.loader import VolumeSource, open_volumes
from lesion_harvester.io.splits import check_split_keys, read_splits
from lesion_harvester.structures import RecistMark, SliceBox

HELD_OUT_VALIDATION_FRACTION = 0.1  # of V_H, when the dataset names no validation volumes
HELD_OUT_VALIDATION_MAX = 100  # volumes; MULAN validates on a few hundred slices


@dataclass
class Partition:
    source: VolumeSource
    dataset: DeepLesionDataset
    fully_annotated: dict[str, list[SliceBox]]  # V_M with complete labels
    harvest: list[str]  # V_H
    validation: dict[str, list[SliceBox]]  # LPG validation volumes and their labels
    holdout: dict[str, list[SliceBox]]  # V_H^test with complete labels (report only; {} when not asked for)
    fully_annotated_file: str | None  # the --fully-annotated FILE, if one was given
    holdout_file: str  # where the holdout labels were read ("" when none)
    validation_source: str = ""  # where the validation volumes come from, for messages and reports
    validation_held_out: bool = False  # the dataset named none: they are held out of V_H
    validation_complete: bool = False  # the validation labels are complete (not RECIST marks alone)

    @property
    def training_keys(self) -> list[str]:
        """V_M then V_H, without validation volumes: every volume the LPG may train on."""
        keys = list(self.fully_annotated) + [k for k in self.harvest if k not in self.fully_annotated]
        return [k for k in keys if k not in self.validation]

    def operating_point_truth(self) -> tuple[dict[str, list[SliceBox]], str]:
        """The volumes on which a harvest round's LPG's operating point is measured, with their labels,
        and a description: every volume with complete labels whose complete labels no LPG learns
        (V_H^test, and the validation volumes where their labels are complete, not RECIST marks
        alone), so that an unmarked lesion never counts as a false positive. ({}, "") when none."""
        truth = dict(self.holdout)
        parts = [f"V_H^test ({len(truth)} volumes)"] if truth else []
        if self.validation_complete and self.validation:
            truth.update(self.validation)
            parts.append(f"the validation volumes ({len(self.validation)})")
        if not any(truth.values()):
            return {}, ""
        return truth, " and ".join(parts) + " with their complete labels, scanned as the harvest scans"

    @cached_property
    def marks(self) -> dict[str, list[RecistMark]]:
        """The RECIST marks of V_H."""
        return self.dataset.marks(self.harvest)


def resolve_partition(data: str | Path, fully_annotated: str | Path | None = None,
                      holdout: str | Path | None = None, *, need_fully_annotated: bool = True,
                      need_holdout: bool = False, purpose: str = "harvesting") -> Partition:
    """Read the dataset folder and the optional annotation files into a :class:`Partition`.

    Raises DataError naming the folder or file when the layout is not DeepLesion's, when V_M is
    needed but not given, or when a file names volumes the dataset lacks.
    """
    data = Path(data)
    source = open_volumes(data)
    if source.format != "deeplesion":
        raise DataError(data, f"{purpose} needs the DeepLesion layout (Images_png/ and DL_info.csv)")
    dataset = source.dataset
    splits = read_splits(data)
    synthetic = splits is not None and "harvest" in splits
    complete = {}
    if synthetic:
        check_split_keys(data / "splits.json", splits, dataset)
        complete = read_slice_boxes(data / "ground_truth" / "complete.pkl")
        _check_labelled(complete, splits, data / "ground_truth" / "complete.pkl")

    if fully_annotated is not None:
        fa = read_slice_boxes(fully_annotated)
        _check_known(fa, dataset, fully_annotated, data)
    elif synthetic:
        fa = {k: complete[k] for k in splits.get("fully_annotated", [])}
    elif need_fully_annotated:
        raise DataError(data, "no fully annotated volumes: give --fully-annotated FILE (e.g. Revised-Train744.pkl)")
    else:
        fa = {}
    if need_fully_annotated and not fa:
        raise DataError(fully_annotated or data, "the fully annotated set V_M is empty")

    if synthetic:
        candidates = list(splits.get("fully_annotated", [])) + list(splits["harvest"])
        validation = {k: complete[k] for k in splits.get("validation", [])}
        validation_source = "splits.json 'validation' with their complete labels"
    else:
        candidates = dataset.keys("train")
        validation = {k: [m.slice_box() for m in marks] for k, marks in dataset.marks(dataset.keys("val")).items()}
        validation_source = "DL_info.csv's validation split (Train_Val_Test 2) with its RECIST marks"
    harvest = [k for k in dict.fromkeys(candidates) if k not in fa]

    if holdout is not None:
        held, holdout_file = read_slice_boxes(holdout), str(holdout)
    elif synthetic and need_holdout:
        held = {k: complete[k] for k in splits.get("harvest_test", [])}
        holdout_file = str(data / "ground_truth" / "complete.pkl")
    elif need_holdout:
        raise DataError(data, "no holdout volumes for the report: give --holdout FILE (e.g. Revised-Train100.pkl)")
    else:
        held, holdout_file = {}, ""
    in_harvest = set(harvest)
    outside = [k for k in held if k not in in_harvest]
    if outside:
        raise DataError(holdout_file, f"{len(outside)} holdout volumes are not harvest volumes, e.g. {outside[0]}")
    held_out = not any(validation.values())
    if held_out:  # chosen from all of V_H, whatever was asked for, so that every caller agrees
        chosen = held_out_validation(harvest)
        validation = {k: [m.slice_box() for m in marks] for k, marks in dataset.marks(chosen).items()}
        validation_source = (f"{len(chosen)} of the {len(harvest)} harvest volumes, held out of LPG training "
                             f"({data} names no validation volumes with lesions; they are still harvested)")
    return Partition(source, dataset, fa, harvest, validation, held,
                     None if fully_annotated is None else str(fully_annotated), holdout_file, validation_source,
                     held_out, validation_complete=synthetic and not held_out)


def held_out_validation(keys: list[str], fraction: float = HELD_OUT_VALIDATION_FRACTION,
                        max_volumes: int = HELD_OUT_VALIDATION_MAX) -> list[str]:
    """About ``fraction`` of ``keys`` (at least one of two or more, at most ``max_volumes``), chosen by a
    hash of each key, so that the choice depends neither on the order of the keys nor on a seed."""
    if len(keys) < 2:
        return []
    n = min(max_volumes, max(1, round(fraction * len(keys))))
    return sorted(sorted(keys, key=lambda k: hashlib.sha1(k.encode()).hexdigest())[:n])


def _check_labelled(complete: dict, splits: dict[str, list[str]], path: Path) -> None:
    """The complete labels of the synthetic layout cover every volume whose labels are used."""
    for split in ("fully_annotated", "validation", "harvest_test"):
        missing = [k for k in splits.get(split, []) if k not in complete]
        if missing:
            raise DataError(path, f"no labels for {len(missing)} volumes of splits.json's '{split}', e.g. {missing[0]}")


def _check_known(boxes: dict, dataset: DeepLesionDataset, path: str | Path, data: Path) -> None:
    missing = [k for k in boxes if k not in dataset.sub_volumes]
    if missing:
        raise DataError(path, f"{len(missing)} volumes are not in {data}/DL_info.csv, e.g. {missing[0]}")
