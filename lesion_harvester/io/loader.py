"""Open whatever the user points at: a DeepLesion folder, a NIfTI file, a DICOM file or folder."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lesion_harvester.errors import DataError
from lesion_harvester.io.lfs import check_not_lfs_pointer
from lesion_harvester.structures import Volume


@dataclass
class VolumeSource:
    """A lazily read collection of volumes: ``keys`` first, then ``load(key)`` one at a time.

    Reading one volume at a time keeps peak memory independent of the number of volumes.
    """

    format: str
    keys: list[str]
    _loader: object
    dataset: object | None = None

    def load(self, key: str) -> Volume:
        return self._loader(key)  # type: ignore[operator]

    def __iter__(self) -> Iterator[Volume]:
        for key in self.keys:
            yield self.load(key)


def detect_format(path: Path) -> str:
    if not path.exists():
        raise DataError(path, "file or folder not found")
    name = path.name.lower()
    if path.is_file():
        check_not_lfs_pointer(path)
        if name.endswith(".nii") or name.endswith(".nii.gz"):
            return "nifti"
        return "dicom"
    if (path / "Images_png").is_dir():
        return "deeplesion"
    niftis = sorted(list(path.glob("*.nii")) + list(path.glob("*.nii.gz")))
    if niftis:
        return "nifti-folder"
    return "dicom"


def open_volumes(path: str | Path, split: str | None = None) -> VolumeSource:
    """Open ``path`` and list its volumes without reading pixel data (except DICOM headers).

    Args:
        path: a DeepLesion folder (with Images_png/ and DL_info.csv), a .nii/.nii.gz file, a folder
            of NIfTI files, a DICOM file or a folder holding one or more DICOM series.
        split: for a DeepLesion folder, a split name: a key of ``splits.json`` if present
            (synthetic layout), else the official ``train``/``val``/``test`` of DL_info.csv.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "deeplesion":
        from lesion_harvester.io.deeplesion import DeepLesionDataset
        from lesion_harvester.io.splits import resolve_split

        dataset = DeepLesionDataset(path)
        keys = resolve_split(path, dataset, split)
        return VolumeSource("deeplesion", keys, dataset.load, dataset)
    if split is not None:
        raise DataError(path, f"--split applies to DeepLesion folders only, not to {fmt}")
    if fmt == "nifti":
        from lesion_harvester.io.nifti import nifti_id, read_nifti

        return VolumeSource("nifti", [nifti_id(path)], lambda _key: read_nifti(path))
    if fmt == "nifti-folder":
        from lesion_harvester.io.nifti import nifti_id, read_nifti

        files = {nifti_id(p): p for p in sorted(list(path.glob("*.nii")) + list(path.glob("*.nii.gz")))}
        return VolumeSource("nifti", list(files), lambda key: read_nifti(files[key]))
    from lesion_harvester.io.dicom import read_dicom_series, scan_dicom

    series = scan_dicom(path)  # headers only; a series' pixels are read when it is loaded
    return VolumeSource("dicom", list(series), lambda key: read_dicom_series(series[key], key, str(path)))


def load_volume(path: str | Path, key: str | None = None) -> Volume:
    """Read one volume: a NIfTI file, a DICOM file or series folder, or ``key`` of a DeepLesion folder or
    of a DICOM folder holding several series. The volume keeps its source geometry
    (``volume.geometry``: the input's voxels and world mm)."""
    source = open_volumes(path)
    if key is None:
        if len(source.keys) != 1:
            raise DataError(path, f"holds {len(source.keys)} volumes; name one with key=, e.g. {source.keys[0]!r}")
        key = source.keys[0]
    elif key not in source.keys:
        raise DataError(path, f"no volume {key!r} here; it holds {', '.join(source.keys[:5])}"
                              f"{' ...' if len(source.keys) > 5 else ''}")
    return source.load(key)
