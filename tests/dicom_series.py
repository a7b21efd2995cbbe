"""A test helper: write a voxel grid as a DICOM CT series with a given voxel -> LPS affine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def write_dicom_series(folder: Path, hu_ijk: np.ndarray, affine_lps: np.ndarray, skip: tuple[int, ...] = (),
                       shuffle_seed: int | None = 0, intercept: int = 0, tags: dict | None = None) -> list[Path]:
    """One file per slice k of ``hu_ijk`` (I columns, J rows, K slices), uncompressed signed 16-bit,
    stored as HU - ``intercept`` (RescaleIntercept).

    ``affine_lps`` maps (i, j, k, 1) to LPS mm; its first two columns must be orthogonal. Slices in
    ``skip`` are left out (a series with missing slices); files are named in a shuffled order so
    that a reader cannot rely on names. ``tags``: DICOM keywords set on every slice (a
    SeriesDescription, a PixelPaddingValue in stored units, ...).
    """
    folder.mkdir(parents=True, exist_ok=True)
    columns_mm = np.linalg.norm(affine_lps[:3, :3], axis=0)
    row_dir, col_dir = affine_lps[:3, 0] / columns_mm[0], affine_lps[:3, 1] / columns_mm[1]
    series, study, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    ks = [k for k in range(hu_ijk.shape[2]) if k not in skip]
    names = np.random.default_rng(shuffle_seed).permutation(len(ks)) if shuffle_seed is not None else range(len(ks))
    paths = []
    for k, name in zip(ks, names):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"slice{int(name):04d}"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "CT", study, series
        ds.FrameOfReferenceUID, ds.PatientID, ds.PatientName = frame_of_reference, "TEST0001", "Test^Patient"
        ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "19700101", "O", "20260101", "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName, ds.SeriesNumber = "1", "A1", "", 1
        ds.Manufacturer, ds.ImageType = "test", ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [float(v) for v in list(row_dir) + list(col_dir)]
        ds.ImagePositionPatient = [float(v) for v in affine_lps[:3, :3] @ [0, 0, k] + affine_lps[:3, 3]]
        ds.PixelSpacing = [float(columns_mm[1]), float(columns_mm[0])]  # between rows, between columns
        ds.SliceThickness = float(columns_mm[2])
        ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
        pixels = np.asarray(hu_ijk[:, :, k]).T - intercept  # (rows j, columns i), stored values
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation, ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, 1, "MONOCHROME2"
        ds.PixelData = pixels.astype(np.int16).tobytes()
        for keyword, value in (tags or {}).items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
