"""What reviewers verified, written in the authors' formats (``lesion-harvester export``)."""

from __future__ import annotations

from pathlib import Path

from lesion_harvester.harvest.reviews import reviews_in_ledger, with_reviews
from lesion_harvester.io.annotations import write_slice_boxes, write_slice_boxes_csv
from lesion_harvester.review.service import ReviewService


def export_reviewed(run_dir: str | Path, out: str | Path, data_dir: str | Path | None = None,
                    annot_suffix: bool = False) -> dict:
    """Write V_M's complete labels (the given V_M and the volumes reviewed as fully annotated, by
    every verdict so far) to ``out`` as 2D boxes (Revised-Train744.pkl's format) and ``out``.csv;
    returns the counts of volumes, reviewed volumes and lesions."""
    service = ReviewService(run_dir, data_dir)
    partition = service.partition
    reviewed = reviews_in_ledger(service.ledger, partition.dataset.marks)
    labels = with_reviews(partition, reviewed).fully_annotated
    out = Path(out)
    write_slice_boxes(out, labels, annot_suffix=annot_suffix)
    write_slice_boxes_csv(out.with_suffix(".csv"), labels)
    return {"volumes": len(labels), "reviewed": len(set(reviewed.fully_annotated) & set(labels)),
            "lesions": sum(len(v) for v in labels.values())}
