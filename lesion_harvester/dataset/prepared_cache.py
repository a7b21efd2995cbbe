"""Prepared volumes on disk: ``ROOT/<preprocessing fingerprint>/<key>.npy`` (float16) + ``<key>.json``.

A volume is prepared (:func:`lesion_harvester.preprocessing.prepare_volume`) the first time it is
asked for and read back memory-mapped afterwards. The folder is named by the settings that shape a
prepared volume, so a change of spacing never reads a stale one.

An entry is trusted only while it matches what it was made from. Its ``.json`` records each source
file (the slice PNGs of a DeepLesion sub-volume, a NIfTI file, the files of a DICOM series) with its
size, modification time (ns) and SHA-256, and the ``.npy`` beside it by size, time, shape and dtype.
Reading an entry costs a ``stat`` per file: a source whose size or time changed has the volume
prepared again; one with the same size and time is trusted without reading it, unless
``verify=True`` (or ``$LESION_HARVESTER_CACHE_VERIFY=1``) also compares the hashes. A damaged entry
(an unreadable ``.json``, a truncated ``.npy`` or one of another shape or dtype) is prepared again
with a warning naming it.

Both files are written atomically, the array first, so a reader that finds the ``.json`` finds a
whole array beside it, and the ``.json`` names that very array. Several processes may share one
cache (ranks under torchrun, a harvest beside a training): two that prepare the same volume at once
each write a whole file under a temporary name and rename it, so a reader sees one of two whole
files, never a part of one, and an array the record does not describe is prepared again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from lesion_harvester.config import PreprocessConfig
from lesion_harvester.errors import DataError
from lesion_harvester.io.loader import VolumeSource
from lesion_harvester.preprocessing import PreparedVolume, prepare_volume
from lesion_harvester.storage.atomic import atomic_write, atomic_write_text
from lesion_harvester.structures import Volume

log = logging.getLogger(__name__)

ENTRY_FORMAT = 2  # entries without a record of their sources (format 1) are prepared again
VERIFY_ENV = "LESION_HARVESTER_CACHE_VERIFY"
STORED_DTYPE = np.dtype(np.float16)
HASH_CHUNK = 2**20
RECORD_FIELDS = ("key", "crop_yx", "scale", "spacing_zyx_mm", "original_shape", "image", "sources", "folders")


class PreparedCache:
    """Prepared volumes of one preprocessing setting, under ``root`` (``root=None`` keeps nothing on disk).

    ``verify``: also compare the content hash of sources whose size and modification time are
    unchanged (reads every source file; default ``$LESION_HARVESTER_CACHE_VERIFY``, else off).
    """

    def __init__(self, root: str | Path | None, cfg: PreprocessConfig, verify: bool | None = None):
        self.cfg = cfg
        self.verify = _verify_by_default() if verify is None else verify
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
        if self.dir is None:
            return prepare_volume(source.load(key), self.cfg)
        npy, meta = self.dir / f"{key}.npy", self.dir / f"{key}.json"
        cached = self._cached(source, key, npy, meta)
        return cached if cached is not None else self._prepare_and_store(source, key, npy, meta)

    def _cached(self, source: VolumeSource, key: str, npy: Path, meta: Path) -> PreparedVolume | None:
        """The entry of ``key`` if it is whole and its sources are unchanged, else None."""
        if not meta.is_file():
            return None
        record = _read_record(meta)
        if record is None:
            return None
        changed = _changed_source(record, _known_files(source, key), self.verify)
        if changed is not None:
            log.info("%s: %s since the volume was prepared; preparing it again", meta, changed)
            return None
        image = _read_image(npy, record["image"])
        if image is None:
            return None
        return PreparedVolume(key, image, tuple(record["crop_yx"]), float(record["scale"]),  # type: ignore[arg-type]
                              tuple(record["spacing_zyx_mm"]), tuple(record["original_shape"]))  # type: ignore[arg-type]

    def _prepare_and_store(self, source: VolumeSource, key: str, npy: Path, meta: Path) -> PreparedVolume:
        known = _known_files(source, key)
        stats_before = [_stat_or_none(path) for path in known] if known is not None else None
        volume = source.load(key)
        prepared = prepare_volume(volume, self.cfg)
        try:
            sources = [_fingerprint(path) for path in _volume_files(source, key, volume)]
        except OSError as exc:
            log.warning("%s: cannot fingerprint its source files (%s); not caching it", key, exc)
            return prepared
        if stats_before is not None and stats_before != [(s["size"], s["mtime_ns"]) for s in sources]:
            # a source changed while it was read: the volume may mix old and new content
            log.warning("%s: its source files changed while it was prepared; not caching it", key)
            return prepared
        try:
            with atomic_write(npy, "wb") as handle:
                np.save(handle, np.ascontiguousarray(prepared.image, dtype=STORED_DTYPE))
            array_stat = npy.stat()
            record = {
                "format": ENTRY_FORMAT, "key": key, "crop_yx": list(prepared.crop_yx), "scale": prepared.scale,
                "spacing_zyx_mm": [s if not math.isnan(s) else "nan" for s in prepared.spacing_zyx_mm],
                "original_shape": list(prepared.original_shape),
                "image": {"shape": list(prepared.image.shape), "dtype": STORED_DTYPE.name,
                          "size": array_stat.st_size, "mtime_ns": array_stat.st_mtime_ns},
                "sources": sources,
                "folders": [_folder_stamp(p) for p in _series_folders(source, sources)],
            }
            atomic_write_text(meta, json.dumps(record))
        except (OSError, DataError) as exc:  # atomic_write reports a full disk or a read-only folder as a DataError
            log.warning("%s: cannot write the prepared volume to the cache (%s); using it from memory", npy, exc)
        return prepared


def _read_record(meta: Path) -> dict | None:
    """The entry's record, or None (with a warning naming it) if it is damaged or of an older format."""
    try:
        record = json.loads(meta.read_text())
        if not isinstance(record, dict):
            raise TypeError(f"a JSON {type(record).__name__}, not an object")
        if record.get("format") != ENTRY_FORMAT:
            log.info("%s: a cache entry without a record of its sources; preparing the volume again", meta)
            return None
        _require(record, RECORD_FIELDS, "record")
        _require(record["image"], ("shape", "dtype", "size", "mtime_ns"), "image")
        for entry in record["sources"]:
            _require(entry, ("path", "size", "mtime_ns", "sha256"), "source")
        for entry in record["folders"]:
            _require(entry, ("path", "mtime_ns"), "folder")
        record["spacing_zyx_mm"] = [float(s) for s in record["spacing_zyx_mm"]]  # "nan" -> NaN
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: damaged prepared-volume record (%s: %s); preparing the volume again", meta,
                    type(exc).__name__, " ".join(str(exc).split()))
        return None
    return record


def _require(mapping: dict, fields: tuple[str, ...], what: str) -> None:
    missing = [f for f in fields if f not in mapping]
    if missing:
        raise KeyError(f"{what} without {', '.join(missing)}")


def _read_image(npy: Path, expected: dict) -> np.ndarray | None:
    """The entry's array, memory-mapped, or None (with a warning naming it) if it is not the whole
    array the record describes."""
    try:
        stat = npy.stat()
        if (stat.st_size, stat.st_mtime_ns) != (expected["size"], expected["mtime_ns"]):
            # damaged, or replaced since the record was written (by another process preparing it too)
            log.warning("%s: damaged prepared volume (%d bytes, modified at %d ns: not the array its record "
                        "describes); preparing it again", npy, stat.st_size, stat.st_mtime_ns)
            return None
        image = np.load(npy, mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:  # missing, truncated (mmap longer than the file), bad header
        log.warning("%s: damaged prepared volume (%s); preparing it again", npy, " ".join(str(exc).split()))
        return None
    if image.dtype != STORED_DTYPE or list(image.shape) != list(expected["shape"]) or image.ndim != 3:
        log.warning("%s: damaged prepared volume (%s %s, expected %s %s); preparing it again", npy,
                    image.dtype, tuple(image.shape), STORED_DTYPE.name, tuple(expected["shape"]))
        return None
    return image


def _known_files(source: VolumeSource, key: str) -> list[Path] | None:
    """The files volume ``key`` is read from, where the source tells without reading them (a
    DeepLesion sub-volume: its slice PNGs); None otherwise (the entry's record names them)."""
    sub_volumes = getattr(source.dataset, "sub_volumes", None) if source.format == "deeplesion" else None
    if sub_volumes is None:
        return None
    sv = sub_volumes.get(key.removesuffix(".annot"))
    if sv is None:
        return None
    # DeepLesionDataset.load reads slice n of a sub-volume from FOLDER/NNN.png
    return [_absolute(sv.folder / f"{n:03d}.png") for n in sv.slice_numbers]


def _volume_files(source: VolumeSource, key: str, volume: Volume) -> list[Path]:
    """The files a loaded volume was read from: PNG slices, the files of a DICOM series, or a NIfTI file."""
    known = _known_files(source, key)
    if known is not None:
        return known
    dicom = volume.extra.get("dicom")
    if dicom is not None:
        return [_absolute(Path(f)) for f in dicom["files"] if f is not None]
    origin = Path(volume.source) if volume.source else None
    return [_absolute(origin)] if origin is not None and origin.is_file() else []


def _series_folders(source: VolumeSource, sources: list[dict]) -> list[Path]:
    """The folders whose listing decides a volume's files: a DICOM series' (a slice added to or removed
    from it changes the folder's modification time). A DeepLesion sub-volume's files follow from its
    key, and a NIfTI volume is one file."""
    if source.format != "dicom":
        return []
    return sorted({Path(s["path"]).parent for s in sources})


def _changed_source(record: dict, current_files: list[Path] | None, verify: bool) -> str | None:
    """What changed among the entry's sources (a phrase for the log), or None if nothing did."""
    recorded = record["sources"]
    if current_files is not None and [str(p) for p in current_files] != [s["path"] for s in recorded]:
        return "its list of source files changed"
    for entry in recorded:
        path = Path(entry["path"])
        try:
            stat = path.stat()
        except OSError:
            return f"{path} is gone"
        if (stat.st_size, stat.st_mtime_ns) != (entry["size"], entry["mtime_ns"]):
            return f"{path} changed (size or modification time)"
        if verify and _sha256(path) != entry["sha256"]:
            return f"{path} changed (content)"
    for folder in record["folders"]:
        try:
            if Path(folder["path"]).stat().st_mtime_ns != folder["mtime_ns"]:
                return f"the files of folder {folder['path']} changed"
        except OSError:
            return f"{folder['path']} is gone"
    return None


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))  # not resolve(): no symlink walk, the same string every time


def _stat(path: Path) -> tuple[int, int]:
    """(size in bytes, modification time in ns)."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _stat_or_none(path: Path) -> tuple[int, int] | None:
    try:
        return _stat(path)
    except OSError:
        return None  # the loader names a missing file


def _verify_by_default() -> bool:
    return os.environ.get(VERIFY_ENV, "").strip().lower() in ("1", "true", "yes")


def _fingerprint(path: Path) -> dict:
    """A source file's record: path, size (bytes), modification time (ns) and SHA-256 of its content."""
    size, mtime_ns = _stat(path)
    return {"path": str(path), "size": size, "mtime_ns": mtime_ns, "sha256": _sha256(path)}


def _folder_stamp(folder: Path) -> dict:
    return {"path": str(folder), "mtime_ns": folder.stat().st_mtime_ns}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
