"""``detect``: find lesions in the user's scans and write what their tools open.

For each volume of each input (a NIfTI file, a DICOM folder with one or many series, a DeepLesion
folder): ``OUT/<name>/findings.json`` and ``findings.csv`` (boxes in the input's voxels and in world
mm, frame named, each finding naming its input: path, and the DICOM patient, study and series or the
file name), ``labels.nii.gz`` (one label per finding, on the input's own grid and affine),
``montage.png`` and, if asked, ``findings_seg.dcm`` (a DICOM Segmentation referring to the source
series). ``<name>`` is the volume id: a NIfTI file's name, a DICOM series' description and number
(:func:`lesion_harvester.io.dicom.series_names`), a DeepLesion sub-volume's key; two scans of one name
get ``_2``, ``_3``. ``OUT/index.json`` and ``index.csv`` list every scan of OUT with its input and
series. A scan's folder is built beside ``OUT`` and renamed when complete, so a killed run leaves no
half-written scan, and a rerun skips the scans already written without loading the checkpoint. Under
torchrun the scans are shared out among the ranks (every ``world_size``-th scan to each), each rank
writing its own folders and rank 0 the index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from lesion_harvester import __version__
from lesion_harvester.detect.findings import CSV_COLUMNS, findings_document, input_record, label_map_ijk
from lesion_harvester.distributed import ALONE, Distributed
from lesion_harvester.io.dicom import write_dicom_seg
from lesion_harvester.io.findings import (
    read_detect_index,
    read_findings_json,
    write_detect_index,
    write_findings_csv,
    write_findings_json,
)
from lesion_harvester.io.loader import VolumeSource, open_volumes
from lesion_harvester.io.nifti import write_label_map
from lesion_harvester.paths import DetectLayout
from lesion_harvester.storage.atomic import atomic_directory
from lesion_harvester.structures import Findings

if TYPE_CHECKING:  # the detector's module loads the LPG's libraries, which a rerun with nothing to do skips
    from lesion_harvester.detect.detector import Detector

INDEX_COLUMNS = ["folder", "status", "findings", "score_threshold", "input", "volume_id", "file_name", "patient_id",
                 "study_instance_uid", "series_instance_uid", "series_description", "series_number", "note"]
WRITTEN, ALREADY_WRITTEN, SKIPPED = "written", "already written", "skipped"


@dataclass(frozen=True)
class ScanResult:
    """One scan's outcome: its folder, the number of findings (None when skipped) and the seconds it
    took (None when the scan was skipped or written before), its ``status`` (written, already written,
    skipped), the input it belongs to (``ids``: path, volume id, DICOM patient, study and series or
    file name) and the score threshold its findings were kept at."""

    input: str
    volume_id: str
    folder: Path | None
    findings: int | None
    runtime_s: float | None
    note: str = ""
    status: str = WRITTEN
    ids: dict = field(default_factory=dict)
    score_threshold: float | None = None

    def index_row(self) -> dict:
        """Its row of the output's index (:data:`INDEX_COLUMNS`)."""
        row = {c: "" for c in INDEX_COLUMNS}
        row.update({k: v for k, v in self.ids.items() if k in row})
        row.update(folder=self.folder.name if self.folder is not None else "", status=self.status,
                   findings=self.findings, score_threshold=self.score_threshold, note=self.note,
                   input=self.ids.get("input") or self.input, volume_id=self.volume_id)
        return row


def write_scan(findings: Findings, folder: Path, dicom_seg: bool = False) -> str:
    """Write one scan's findings into ``folder`` (which must not exist yet), all or nothing; with
    ``dicom_seg``, also a DICOM Segmentation of a DICOM input. Returns a note on what was left out."""
    # matplotlib only when drawing: a rerun with nothing to do imports none of it
    from lesion_harvester.io.figures import save_figure
    from lesion_harvester.report.findings_montage import findings_montage

    document = findings_document(findings)
    labels = label_map_ijk(findings)
    note = ""
    with atomic_directory(folder) as tmp:
        write_findings_json(DetectLayout.findings_json(tmp), document)
        write_findings_csv(DetectLayout.findings_csv(tmp), CSV_COLUMNS,
                           [[row[c] for c in CSV_COLUMNS] for row in findings.rows()])
        write_label_map(DetectLayout.label_map(tmp), labels, findings.volume.geometry.input_to_ras)
        figure = findings_montage(findings)
        if figure is not None:
            save_figure(figure, DetectLayout.montage(tmp), dpi=90)
        if dicom_seg:
            source = findings.volume.extra.get("dicom")
            if source is None:
                note = "no DICOM Segmentation: the input is not a DICOM series"
            elif not len(findings):
                note = "no DICOM Segmentation: no findings"
            else:
                write_dicom_seg(DetectLayout.dicom_seg(tmp), labels, source["files"],
                                [t.score for t in findings.tracklets], __version__)
    return note


def _plan(sources: list[tuple[str, VolumeSource]], layout: DetectLayout) -> list[tuple[str, VolumeSource, str, Path]]:
    """(input, its source, volume id, folder) of every scan, in input order; two scans of one name get
    ``_2``, ``_3`` (the same names on every rank and in every rerun of the same inputs)."""
    used: set[Path] = set()
    plan = []
    for path, source in sources:
        for key in source.keys:
            folder, n = layout.scan_dir(key), 2
            while folder in used:
                folder, n = layout.scan_dir(f"{key}_{n}"), n + 1
            used.add(folder)
            plan.append((path, source, key, folder))
    return plan


def _written_before(path: str, key: str, folder: Path, request: dict | None) -> ScanResult:
    """A scan whose folder a run before wrote: what its findings.json says of it, and whether it was
    asked for what this run asks (checkpoint and threshold)."""
    document = read_findings_json(DetectLayout.findings_json(folder))
    detection = document.get("detection") or {}
    note = ALREADY_WRITTEN
    asked = detection.get("request")
    if request is not None and asked is not None and asked != request:
        note += (f" with another checkpoint or threshold ({detection.get('rule', '?')}); delete {folder} to detect "
                 "it again with this run's")
    ids = document.get("input") or {"input": path, "volume_id": key}  # written before findings named their input
    return ScanResult(path, key, folder, len(document["findings"]), None, note, ALREADY_WRITTEN, ids,
                      detection.get("score_threshold"))


def detect_files(inputs: list[str | Path], detector: Detector | None, out: str | Path, progress: bool = True,
                 dicom_seg: bool = False, dist: Distributed = ALONE,
                 make_detector: Callable[[], Detector] | None = None,
                 request: dict | None = None) -> Iterator[ScanResult]:
    """Scan every volume of ``inputs`` (this rank's share of them) into ``out``; yields one
    :class:`ScanResult` per volume as it ends, then writes ``out``'s index (rank 0).

    ``detector``, or where it is None ``make_detector()``, called before the first scan if any scan is
    still to write (a rerun whose scans are all written loads no checkpoint). ``request``: what this run asks for
    (:func:`~lesion_harvester.detect.findings.detection_request`; by default the detector's), to tell
    a rerun that asks for something else which scans were written otherwise.
    """
    layout = DetectLayout(Path(out))
    sources = [(str(path), open_volumes(path)) for path in inputs]  # every input is checked before any scan
    previous = read_detect_index(layout.index_json) if dist.is_main else []  # a damaged index: before any scan too
    if request is None and detector is not None:
        request = detector.found_with.get("request")
    plan = _plan(sources, layout)
    mine = dist.shard(plan)
    if detector is None and any(not DetectLayout.findings_json(folder).is_file() for *_, folder in mine):
        detector = make_detector()  # type: ignore[misc]  # a checkpoint's problem before any scan starts
    results: list[ScanResult] = []
    with tqdm(total=len(mine), desc="detect", unit="scan", disable=not progress) as bar:
        for path, source, key, folder in mine:
            if DetectLayout.findings_json(folder).is_file():
                result = _written_before(path, key, folder, request)
            else:
                volume = source.load(key)
                if volume.num_slices < 2:
                    result = ScanResult(path, key, None, None, None,
                                        f"skipped: {volume.num_slices} slice (a localizer or a single image; detection "
                                        "needs a volume)", SKIPPED, input_record(Findings(volume, ())))
                else:
                    findings = detector(volume)  # type: ignore[misc]
                    note = write_scan(findings, folder, dicom_seg)
                    result = ScanResult(path, key, folder, len(findings), findings.runtime_s, note, WRITTEN,
                                        input_record(findings), findings.found_with.get("score_threshold"))
            results.append(result)
            bar.update(1)
            yield result
    everything = [r for share in dist.gather(results) for r in share] if dist.active else results
    if dist.is_main:
        _write_index(layout, previous, everything, [(path, key) for path, _, key, _ in plan])


def _write_index(layout: DetectLayout, previous: list[dict], results: list[ScanResult],
                 plan: list[tuple[str, str]]) -> None:
    """The index of ``layout``: this run's scans in input order (``plan``: input, volume id), after the
    scans of earlier runs into the same folder that this run did not name (those still there)."""
    order = {scan: i for i, scan in enumerate(plan)}
    ranked = sorted(results, key=lambda r: order.get((r.input, r.volume_id), len(order)))
    rows = [r.index_row() for r in ranked]
    named = {row["folder"] for row in rows if row["folder"]}
    kept = [row for row in previous if row["folder"] not in named and layout.scan_dir(row["folder"]).is_dir()]
    write_detect_index(layout.index_json, layout.index_csv, INDEX_COLUMNS, kept + rows)
