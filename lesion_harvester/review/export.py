"""What reviewers verified, written in the authors' formats (``lesion-harvester export``).

Two files, because they mean different things to whoever trains on them:

- ``OUT.pkl``: V_M's complete labels, the given ones and those of the volumes a reviewer marked
  fully annotated (usable as ``harvest --fully-annotated``: every lesion of those volumes is in it);
- ``OUT.verified_lesions.pkl``: the lesions reviewers verified (accepted, adjusted, drawn) in volumes
  nobody marked fully annotated: true lesions, but not complete labels, so not in ``OUT.pkl``.

A lesion verified twice (two reviewers, or one lesion found in two rounds) is written once. The
rejected proposals are not exported: they stay in the ledger, and the next ``harvest`` round
trains on them as hard negatives.
"""

from __future__ import annotations

from pathlib import Path

from lesion_harvester.harvest.reviews import reviews_in_ledger, with_reviews
from lesion_harvester.harvest.verify import same_lesion
from lesion_harvester.io.annotations import write_slice_boxes, write_slice_boxes_csv
from lesion_harvester.review.service import ReviewService
from lesion_harvester.structures import SliceBox, Tracklet


def verified_lesions_path(out: str | Path) -> Path:
    """Where :func:`export_reviewed` writes the verified lesions of volumes not fully annotated."""
    out = Path(out)
    return out.with_name(f"{out.stem}.verified_lesions.pkl")


def once_each(boxes: list[SliceBox], keep: list[SliceBox] = ()) -> list[SliceBox]:
    """``keep`` and then ``boxes`` less each box that is a lesion already there (:func:`same_lesion`)."""
    out = list(keep)
    for box in boxes:
        t = Tracklet.single_slice(box.z_index, box.box_xyxy_px, 1.0)
        if not any(same_lesion(t, Tracklet.single_slice(b.z_index, b.box_xyxy_px, 1.0)) for b in out):
            out.append(box)
    return out


def export_reviewed(run_dir: str | Path, out: str | Path, data_dir: str | Path | None = None,
                    annot_suffix: bool = False) -> dict:
    """Write V_M's complete labels to ``out`` (Revised-Train744.pkl's 2D boxes) and ``out``.csv, and
    the verified lesions of the volumes not fully annotated to :func:`verified_lesions_path` (and
    its .csv), by every verdict so far. Returns the counts: ``volumes``, ``reviewed`` (of them, the
    volumes reviewers marked), ``lesions``; ``verified_volumes``, ``verified_lesions`` (the second
    file); ``rejected`` (proposals reviewers rejected, not exported)."""
    service = ReviewService(run_dir, data_dir)
    partition = service.partition
    reviewed = reviews_in_ledger(service.ledger, partition.dataset.marks)
    labels = dict(with_reviews(partition, reviewed).fully_annotated)
    marked = (set(reviewed.fully_annotated) & set(labels)) - set(partition.fully_annotated)
    marks = partition.dataset.marks(sorted(marked))
    for key in marked:  # its RECIST marks as given, then each reviewed lesion once
        given = [m.slice_box() for m in marks[key]]
        labels[key] = once_each([b for b in labels[key] if b not in given], given)
    open_volumes: dict[str, list[SliceBox]] = {}
    for key, t in reviewed.positives:
        if key not in labels and key not in service.closed_volumes:
            box = tuple(float(v) for v in t.boxes_xyxy_px[t.key_index])  # its key slice, as in V_M's labels
            open_volumes.setdefault(key, []).append(SliceBox(t.key_z, box))
    open_volumes = {key: once_each(boxes) for key, boxes in open_volumes.items()}
    out, verified = Path(out), verified_lesions_path(out)
    write_slice_boxes(out, labels, annot_suffix=annot_suffix)
    write_slice_boxes_csv(out.with_suffix(".csv"), labels)
    write_slice_boxes(verified, open_volumes, annot_suffix=annot_suffix)
    write_slice_boxes_csv(verified.with_suffix(".csv"), open_volumes)
    return {"volumes": len(labels), "reviewed": len(set(reviewed.fully_annotated) & set(labels)),
            "lesions": sum(len(v) for v in labels.values()), "verified_file": str(verified),
            "verified_volumes": len(open_volumes), "verified_lesions": sum(len(v) for v in open_volumes.values()),
            "rejected": len(reviewed.rejected)}
