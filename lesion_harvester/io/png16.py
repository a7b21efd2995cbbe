"""16-bit PNG slices as DeepLesion stores them: pixel = HU + 32768."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lesion_harvester.errors import DataError

HU_OFFSET = 32768


def read_png_hu(path: str | Path) -> np.ndarray:
    """Read one DeepLesion slice as a (Y, X) int16 HU array.

    Raises DataError for a missing, corrupt, non-grayscale or 8-bit file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "slice file is missing")
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode in ("L", "P", "1", "RGB", "RGBA", "LA"):
                raise DataError(
                    path, f"{mode} PNG with 8-bit samples; DeepLesion slices are 16-bit grayscale (HU + 32768)"
                )
            if mode not in ("I;16", "I;16B", "I;16L", "I"):
                raise DataError(path, f"unsupported PNG mode {mode}; expected 16-bit grayscale")
            pixels = np.asarray(image)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(path, f"corrupt or unreadable PNG ({exc})") from None
    if pixels.ndim != 2:
        raise DataError(path, f"expected a single-channel slice, got shape {pixels.shape}")
    if mode == "I" and (pixels.min() < 0 or pixels.max() > 65535):
        raise DataError(path, "pixel values outside the 16-bit range")
    return (pixels.astype(np.int32) - HU_OFFSET).astype(np.int16)


def write_png_hu(path: str | Path, hu_yx: np.ndarray, compress_level: int = 3) -> None:
    """Write a (Y, X) HU slice as a 16-bit PNG (pixel = HU + 32768, clipped to 0..65535)."""
    pixels = np.clip(np.rint(hu_yx).astype(np.int32) + HU_OFFSET, 0, 65535).astype(np.uint16)
    Image.fromarray(pixels).save(path, format="PNG", compress_level=compress_level)
