"""HU arrays as the readers hand them to :class:`~lesion_harvester.structures.Volume`."""

from __future__ import annotations

import numpy as np

from lesion_harvester.errors import DataError


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
