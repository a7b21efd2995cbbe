"""``detect``: find lesions in the user's scans and write what their tools open.

For each volume of each input (a NIfTI file, a DICOM folder with one or many series, a DeepLesion
folder): ``OUT/<volume id>/findings.json`` and ``findings.csv`` (boxes in the input's voxels and in
world mm, frame named), ``labels.nii.gz`` (one label per finding, on the input's own grid and
affine), ``montage.png`` and, if asked, ``findings_seg.dcm`` (a DICOM Segmentation referring to the
source series). A scan's folder is built beside ``OUT`` and renamed when complete, so
a killed run leaves no half-written scan, and a rerun skips the scans already written. Under
torchrun the scans are shared out among the ranks (every ``world_size``-th scan to each), each rank
writing its own folders.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from lesion_harvester import __version__
from lesion_harvester.detect.detector import Detector
from lesion_harvester.detect.findings import CSV_COLUMNS, findings_document, findings_rows, label_map_ijk
from lesion_harvester.distributed import ALONE, Distributed
from lesion_harvester.io.atomic import atomic_directory
from lesion_harvester.io.dicom import write_dicom_seg
from lesion_harvester.io.figures import save_figure
from lesion_harvester.io.findings import write_findings_csv, write_findings_json
from lesion_harvester.io.loader import open_volumes
from lesion_harvester.io.nifti import write_label_map
from lesion_harvester.paths import DetectLayout
from lesion_harvester.report.findings_montage import findings_montage
from lesion_harvester.structures import Findings


@dataclass(frozen=True)
class ScanResult:
    """One scan's outcome: its folder, the number of findings and the seconds it took (None when the
    scan was skipped or written before)."""

    input: str
    volume_id: str
    folder: Path | None
    findings: int | None
    runtime_s: float | None
    note: str = ""


def write_scan(findings: Findings, folder: Path, dicom_seg: bool = False) -> str:
    """Write one scan's findings into ``folder`` (which must not exist yet), all or nothing; with
    ``dicom_seg``, also a DICOM Segmentation of a DICOM input. Returns a note on what was left out."""
    document = findings_document(findings)
    labels = label_map_ijk(findings)
    note = ""
    with atomic_directory(folder) as tmp:
        write_findings_json(DetectLayout.findings_json(tmp), document)
        write_findings_csv(DetectLayout.findings_csv(tmp), CSV_COLUMNS, findings_rows(document))
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


def detect_files(inputs: list[str | Path], detector: Detector, out: str | Path, progress: bool = True,
                 dicom_seg: bool = False, dist: Distributed = ALONE) -> Iterator[ScanResult]:
    """Scan every volume of ``inputs`` (this rank's share of them) into ``out``; yields one
    :class:`ScanResult` per volume as it ends."""
    layout = DetectLayout(Path(out))
    sources = [(str(path), open_volumes(path)) for path in inputs]  # every input is checked before any scan
    total = len(dist.shard(range(sum(len(source.keys) for _, source in sources))))
    used: set[Path] = set()
    index = -1
    with tqdm(total=total, desc="detect", unit="scan", disable=not progress) as bar:
        for path, source in sources:
            for key in source.keys:
                folder = layout.scan_dir(key)
                while folder in used:  # two inputs with one volume id (every rank names all scans alike)
                    folder = folder.with_name(folder.name + "_")
                used.add(folder)
                index += 1
                if index % dist.world_size != dist.rank:  # another rank's scan
                    continue
                if DetectLayout.findings_json(folder).is_file():
                    bar.update(1)
                    yield ScanResult(path, key, folder, None, None, "already written")
                    continue
                volume = source.load(key)
                if volume.num_slices < 2:
                    bar.update(1)
                    yield ScanResult(path, key, None, None, None, f"skipped: {volume.num_slices} slice (a localizer "
                                                               "or a single image; detection needs a volume)")
                    continue
                findings = detector(volume)
                note = write_scan(findings, folder, dicom_seg)
                bar.update(1)
                yield ScanResult(path, key, folder, len(findings), findings.runtime_s, note)
