"""One rule for V_M, V_H, validation and holdout, shared by LPG training and the harvest."""

import pytest

from lesion_harvester.dataset.roles import resolve_partition
from lesion_harvester.errors import DataError
from lesion_harvester.io.annotations import read_slice_boxes, write_slice_boxes
from lesion_harvester.io.splits import read_splits
from lesion_harvester.lpg.sources import build_sources


def test_synthetic_layout_reads_splits_and_complete_labels(tiny_dataset):
    splits = read_splits(tiny_dataset)
    complete = read_slice_boxes(tiny_dataset / "ground_truth" / "complete.pkl")
    part = resolve_partition(tiny_dataset, need_holdout=True)
    assert list(part.fully_annotated) == splits["fully_annotated"]
    assert part.fully_annotated == {k: complete[k] for k in splits["fully_annotated"]}
    assert part.harvest == splits["harvest"]
    assert set(part.holdout) == set(splits["harvest_test"]) and set(part.holdout) <= set(part.harvest)
    assert set(part.validation) == set(splits["validation"])
    assert set(part.marks) <= set(part.harvest)


def test_a_fully_annotated_file_replaces_the_synthetic_v_m_for_training_and_harvest(tiny_dataset, tmp_path):
    splits = read_splits(tiny_dataset)
    complete = read_slice_boxes(tiny_dataset / "ground_truth" / "complete.pkl")
    chosen = splits["harvest"][0]  # a harvest volume becomes the only fully annotated one
    path = tmp_path / "fa.pkl"
    write_slice_boxes(path, {chosen: complete[chosen]})

    part = resolve_partition(tiny_dataset, path, need_holdout=False)
    assert list(part.fully_annotated) == [chosen]
    assert chosen not in part.harvest
    assert set(splits["fully_annotated"]) <= set(part.harvest)  # the former V_M are harvest volumes now

    sources = build_sources(tiny_dataset, path)
    assert sources.fully_annotated_truth == part.fully_annotated
    assert sources.training.volume_keys == part.training_keys
    # the former V_M volumes train on their RECIST marks only, not on their complete labels
    former = splits["fully_annotated"][0]
    marked = {(m.slice_box().z_index, tuple(m.slice_box().box_xyxy_px)) for m in part.marks.get(former, [])}
    trained = {(r.z_index, tuple(r.positives[0])) for r in sources.training.records if r.key == former}
    assert marked and trained == marked


def test_files_naming_unknown_volumes_are_refused_with_the_file_named(tiny_dataset, tmp_path):
    path = tmp_path / "other.pkl"
    complete = read_slice_boxes(tiny_dataset / "ground_truth" / "complete.pkl")
    key = next(iter(complete))
    write_slice_boxes(path, {"999999_01_01_001-010": complete[key]})
    with pytest.raises(DataError, match="other.pkl"):
        resolve_partition(tiny_dataset, path)
    with pytest.raises(DataError, match="other.pkl"):
        build_sources(tiny_dataset, path)


def test_held_out_validation_is_a_stable_tenth():
    from lesion_harvester.dataset.roles import held_out_validation

    keys = [f"{i:06d}_01_01_001-030" for i in range(60)]
    chosen = held_out_validation(keys)
    assert len(chosen) == 6 and set(chosen) <= set(keys) and chosen == sorted(chosen)
    assert held_out_validation(list(reversed(keys))) == chosen  # the order of the keys does not matter
    assert len(set(held_out_validation(keys + ["999999_01_01_001-030"])) & set(chosen)) >= 5  # one key more moves one
    assert held_out_validation(keys[:2]) and len(held_out_validation(keys[:2])) == 1
    assert held_out_validation(keys[:1]) == [] and len(held_out_validation(keys, max_volumes=3)) == 3
