"""Prepared volumes on disk: ``ROOT/<preprocessing fingerprint>/<key>.npy`` (float16) + ``<key>.json``.

A volume is prepared (:func:`lesion_harvester.preprocessing.prepare_volume`) the first time it is
asked for and read back memory-mapped afterwards. Both files are written atomically, the array
first, so a reader that finds the ``.json`` finds a whole array beside it. The folder is named by
the settings that shape a prepared volume, so a change of spacing never reads a stale one.
Several processes may share one cache (ranks under torchrun, a harvest beside a training): two that
prepare the same volume at once each write a whole file under a temporary name and rename it, so a
reader sees one of two identical files, never a part of one.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from lesion_harvester.config import PreprocessConfig
from lesion_harvester.errors import DataError
from lesion_harvester.io.atomic import atomic_write, atomic_write_text
from lesion_harvester.io.loader import VolumeSource
from lesion_harvester.preprocessing import PreparedVolume, prepare_volume

log = logging.getLogger(__name__)


class PreparedCache:
    """Prepared volumes of one preprocessing setting, under ``root`` (``root=None`` keeps nothing on disk)."""

    def __init__(self, root: str | Path | None, cfg: PreprocessConfig):
        self.cfg = cfg
        self.dir = None if root is None else Path(root) / cfg.fingerprint()
        if self.dir is not None:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                log.warning("cannot create cache folder %s (%s); preparing volumes in memory only, again for every "
                            "command (give --cache-dir or set LESION_HARVESTER_CACHE_DIR to keep them)", self.dir, exc)
                self.dir = None

    def get(self, source: VolumeSource, key: str) -> PreparedVolume:
        """The prepared volume ``key`` of ``source``, from the cache or prepared now (and cached)."""
        if self.dir is not None:
            npy, meta = self.dir / f"{key}.npy", self.dir / f"{key}.json"
            if npy.is_file() and meta.is_file():
                return self._read(key, npy, meta)
        prepared = prepare_volume(source.load(key), self.cfg)
        if self.dir is not None:
            with atomic_write(self.dir / f"{key}.npy", "wb") as handle:
                np.save(handle, prepared.image)
            info = {"crop_yx": list(prepared.crop_yx), "scale": prepared.scale,
                    "spacing_zyx_mm": [s if not math.isnan(s) else "nan" for s in prepared.spacing_zyx_mm],
                    "original_shape": list(prepared.original_shape)}
            atomic_write_text(self.dir / f"{key}.json", json.dumps(info))
        return prepared

    @staticmethod
    def _read(key: str, npy: Path, meta: Path) -> PreparedVolume:
        try:
            info = json.loads(meta.read_text())
            spacing = tuple(float(s) for s in info["spacing_zyx_mm"])
            crop_yx, scale, shape = tuple(info["crop_yx"]), info["scale"], tuple(info["original_shape"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(meta, f"unreadable prepared-volume record ({type(exc).__name__}: {exc})",
                            "delete it and its .npy to prepare the volume again") from None
        try:
            image = np.load(npy, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(npy, f"unreadable prepared volume ({exc})",
                            "delete it and its .json to prepare the volume again") from None
        return PreparedVolume(key, image, crop_yx, scale, spacing, shape)  # type: ignore[arg-type]
