"""Per-volume results of a resumable job, kept in a partial folder until the whole output is written.

``OUT.partial/`` (:func:`lesion_harvester.paths.partial_dir`) holds ``fingerprint.json`` (what the
job's settings were) and one ``<volume key>.pkl`` per finished volume (tracklets in the authors'
detection format), each written atomically. A job started again with the same fingerprint reads the
finished volumes back and does only the rest; with another fingerprint the folder is cleared.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import shutil
from pathlib import Path

from lesion_harvester.io.safe_pickle import safe_load_pickle
from lesion_harvester.storage.atomic import atomic_write_bytes, atomic_write_text, ensure_folder
from lesion_harvester.structures import Tracklet

log = logging.getLogger(__name__)

PICKLE_PROTOCOL = 2


def file_digest(path: str | Path) -> str:
    """SHA-1 of a file's bytes (e.g. to tell one checkpoint from another)."""
    h = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class PartialResults:
    """The partial folder of one job, identified by ``fingerprint``."""

    def __init__(self, folder: str | Path, fingerprint: str):
        self.folder = Path(folder)
        meta = self.folder / "fingerprint.json"
        if self.folder.is_dir() and self._stored(meta) != fingerprint:
            log.warning("%s holds a job with other settings; starting over", self.folder)
            shutil.rmtree(self.folder)
        ensure_folder(self.folder)  # a file in the way, or an unwritable place, is a one-line error
        atomic_write_text(meta, json.dumps({"fingerprint": fingerprint}))

    @staticmethod
    def _stored(meta: Path) -> str | None:
        try:
            return json.loads(meta.read_text()).get("fingerprint")
        except (OSError, ValueError, AttributeError):  # missing, unreadable or not ours
            return None

    def finished_keys(self, keys: list[str]) -> set[str]:
        """The volumes among ``keys`` already finished (nothing is read)."""
        return {key for key in keys if (self.folder / f"{key}.pkl").is_file()}

    def finished(self, keys: list[str]) -> dict[str, list[Tracklet]]:
        """The results of the volumes among ``keys`` already finished."""
        done = {}
        for key in keys:
            path = self.folder / f"{key}.pkl"
            if path.is_file():
                done[key] = [Tracklet.from_pairs(p) for p in safe_load_pickle(path)]
        return done

    def save(self, key: str, tracklets: list[Tracklet]) -> None:
        """Record one finished volume."""
        atomic_write_bytes(self.folder / f"{key}.pkl",
                           pickle.dumps([t.to_pairs() for t in tracklets], protocol=PICKLE_PROTOCOL))

    def remove(self) -> None:
        """Drop the folder once the whole output is written."""
        shutil.rmtree(self.folder)
