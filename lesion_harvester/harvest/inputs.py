"""What a harvest works on: the fully annotated volumes V_M, the harvest volumes V_H, the holdout.

- Synthetic layout (``splits.json``): V_M = ``fully_annotated`` with its complete labels from
  ``ground_truth/complete.pkl``, V_H = ``harvest``, holdout = ``harvest_test`` (complete labels,
  for the report only).
- A real DeepLesion folder: V_M = the volumes of ``--fully-annotated FILE`` (e.g. the released
  Revised-Train744.pkl) with its labels; V_H = every training-split sub-volume of DL_info.csv
  outside V_M; holdout = the volumes of ``--holdout FILE`` (e.g. Revised-Train100.pkl).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lesion_harvester.errors import DataError
from lesion_harvester.io.annotations import RecistMark, SliceBox, read_slice_boxes
from lesion_harvester.io.deeplesion import DeepLesionDataset
from lesion_harvester.io.loader import open_volumes
from lesion_harvester.io.splits import read_splits


@dataclass
class HarvestInputs:
    source: object
    dataset: DeepLesionDataset
    fully_annotated: dict[str, list[SliceBox]]  # V_M with complete labels
    harvest: list[str]  # V_H
    marks: dict[str, list[RecistMark]]  # RECIST marks of V_H
    holdout: dict[str, list[SliceBox]]  # V_H^test with complete labels (report only)
    fully_annotated_file: str | None  # what train-lpg needs to find V_M on a real layout
    holdout_file: str


def resolve_inputs(data: str | Path, fully_annotated: str | Path | None = None,
                   holdout: str | Path | None = None, need_holdout: bool = True) -> HarvestInputs:
    data = Path(data)
    source = open_volumes(data)
    if source.format != "deeplesion":
        raise DataError(data, "harvesting needs the DeepLesion layout (Images_png/ and DL_info.csv)")
    dataset = source.dataset
    splits = read_splits(data)
    synthetic = splits is not None and "harvest" in splits
    complete = read_slice_boxes(data / "ground_truth" / "complete.pkl") if synthetic else {}
    if fully_annotated is not None:
        fa = {k: v for k, v in read_slice_boxes(fully_annotated).items()}
        missing = [k for k in fa if k not in dataset.sub_volumes]
        if missing:
            raise DataError(fully_annotated, f"{len(missing)} volumes are not in {data}/DL_info.csv, e.g. {missing[0]}")
        fa_file = str(fully_annotated)
    elif synthetic:
        fa = {k: complete[k] for k in splits.get("fully_annotated", [])}
        fa_file = None
    else:
        raise DataError(data, "no fully annotated volumes: give --fully-annotated FILE (e.g. Revised-Train744.pkl)")
    if synthetic and fully_annotated is None:
        harvest = [k for k in splits["harvest"] if k not in fa]
    else:
        harvest = [k for k in dataset.keys("train") if k not in fa]
    if holdout is not None:
        held = read_slice_boxes(holdout)
        holdout_file = str(holdout)
    elif synthetic:
        held = {k: complete[k] for k in splits.get("harvest_test", [])}
        holdout_file = str(data / "ground_truth" / "complete.pkl")
    elif need_holdout:
        raise DataError(data, "no holdout volumes for the report: give --holdout FILE (e.g. Revised-Train100.pkl)")
    else:
        held, holdout_file = {}, ""
    outside = [k for k in held if k not in set(harvest)]
    if outside:
        raise DataError(holdout_file, f"{len(outside)} holdout volumes are not harvest volumes, e.g. {outside[0]}")
    if not fa:
        raise DataError(data, "the fully annotated set V_M is empty")
    return HarvestInputs(source, dataset, fa, harvest, dataset.marks(harvest), held, fa_file, holdout_file)
