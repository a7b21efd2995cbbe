"""The one CT volume type every reader returns.

Frame convention (for every reader): the array is indexed ``(z, y, x)``; ``x`` runs from the
patient's right to left (radiological display, patient right on the image's left), ``y`` from
anterior to posterior, ``z`` from superior to inferior (the usual order of axial slices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lesion_harvester.errors import DataError


@dataclass(frozen=True, eq=False)
class Volume:
    """A CT volume in Hounsfield units.

    Attributes:
        volume_id: stable id; for DeepLesion the sub-volume key ``PPPPPP_SS_RR_AAA-BBB``.
        hu_zyx: (Z, Y, X) int16 or float32 array of HU values.
        spacing_zyx_mm: (slice interval, row spacing, column spacing) in mm. The slice interval
            may be NaN when unknown (then the 2.5D context repeats the target slice).
        slice_numbers: DeepLesion PNG slice number of each z (1-based), where known.
        source: the file or folder it was read from, for messages.
    """

    volume_id: str
    hu_zyx: np.ndarray
    spacing_zyx_mm: tuple[float, float, float]
    slice_numbers: tuple[int, ...] | None = None
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = self.source or self.volume_id
        if self.hu_zyx.ndim != 3:
            raise DataError(where, f"expected a 3D (z, y, x) volume, got shape {self.hu_zyx.shape}")
        if min(self.hu_zyx.shape) == 0:
            raise DataError(where, f"empty volume (shape {self.hu_zyx.shape})")
        if len(self.spacing_zyx_mm) != 3:
            raise DataError(where, f"expected 3 spacings (z, y, x), got {self.spacing_zyx_mm}")
        dz, dy, dx = (float(s) for s in self.spacing_zyx_mm)
        for name, value in (("row", dy), ("column", dx)):
            if not math.isfinite(value) or value <= 0:
                raise DataError(where, f"invalid {name} spacing {value} mm; it must be a positive number")
        if not (math.isnan(dz) or (math.isfinite(dz) and dz > 0)):
            raise DataError(where, f"invalid slice interval {dz} mm; it must be positive (or NaN if unknown)")
        object.__setattr__(self, "spacing_zyx_mm", (dz, dy, dx))
        if self.slice_numbers is not None and len(self.slice_numbers) != self.hu_zyx.shape[0]:
            raise DataError(where, f"{len(self.slice_numbers)} slice numbers for {self.hu_zyx.shape[0]} slices")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.hu_zyx.shape)  # type: ignore[return-value]

    @property
    def num_slices(self) -> int:
        return int(self.hu_zyx.shape[0])

    def require_slices(self, min_slices: int, purpose: str) -> None:
        """Raise a DataError naming the source if the volume has fewer than ``min_slices`` slices."""
        if self.num_slices < min_slices:
            raise DataError(
                self.source or self.volume_id,
                f"{'single-slice' if self.num_slices == 1 else f'{self.num_slices}-slice'} volume; {purpose} needs "
                f"at least {min_slices} slices",
            )

    def summary(self) -> dict:
        """JSON-ready summary: id, shape (z, y, x), spacing_mm (z, y, x), HU range."""
        return {
            "id": self.volume_id,
            "shape": list(self.shape),
            "spacing_mm": [None if math.isnan(s) else round(s, 6) for s in self.spacing_zyx_mm],
            "hu_min": float(self.hu_zyx.min()),
            "hu_max": float(self.hu_zyx.max()),
        }


def to_int16_hu(hu: np.ndarray, where: str) -> np.ndarray:
    """Round HU to int16, refusing values that would not fit (a sign of a wrong rescale)."""
    if hu.dtype == np.int16:
        return hu
    if np.issubdtype(hu.dtype, np.floating) and not np.all(np.isfinite(hu)):
        raise DataError(where, "volume contains NaN or infinite values")
    lo, hi = float(hu.min()), float(hu.max())
    if lo < -32768 or hi > 32767:
        raise DataError(where, f"HU range [{lo}, {hi}] does not fit int16; is the rescale right?")
    return np.rint(hu).astype(np.int16) if np.issubdtype(hu.dtype, np.floating) else hu.astype(np.int16)
