"""Display windows: HU -> [0, 1] grey levels for montages and figures (pure functions)."""

from __future__ import annotations

import numpy as np

# (low, high) HU of the usual reading windows
DISPLAY_WINDOWS_HU = {"lung": (-1350.0, 150.0), "default": (-175.0, 275.0), "bone": (-450.0, 1050.0)}


def window_image(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """(..., H, W) HU -> float32 grey levels in [0, 1] for the window (low, high) in HU."""
    lo, hi = window
    return np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0, 1)
