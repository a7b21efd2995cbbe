"""Where things live on disk: the one module that names files and folders of runs and caches.

- the prepared-volume cache: ``DATA/.lesion_harvester_cache/<preprocessing fingerprint>/`` by
  default, so that training, scanning and harvesting one dataset share it, or
  ``CACHE_DIR/<dataset name>-<path digest>/<preprocessing fingerprint>/`` with ``--cache-dir``;
- an LPG training folder (:class:`TrainLayout`): ``best.pt``, ``last.pt``, ``train_log.json``,
  ``config.yaml``, ``train.log``;
- a resumable scan's partial folder beside its output: ``OUT.partial/``;
- the lock of an output (:mod:`lesion_harvester.storage.locks`): ``.lock`` inside a run or training folder,
  ``.NAME.lock`` beside a file output (``.dets.pkl.lock``), removed when that command ends (a killed one's is
  taken over by the next);
- a harvest run folder (:class:`RunLayout`): the ledger, one folder per round, the deliverables,
  the report and, once ``benchmarks/table3.py`` has run for it, Table III;
- ``detect``'s output (:class:`DetectLayout`): one folder per scan.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

CACHE_FOLDER = ".lesion_harvester_cache"
LOCK_FILE = ".lock"  # in a run or training folder: held by the command that writes it
TABLE3_FIGURE = "table3_froc.png"  # in a run folder, beside table3.md and report.md that link to it
ROW_LOCK_FILE = ".row.lock"  # in a Table III row's folder: held while a table trains, scans and scores it


CACHE_ENV = "LESION_HARVESTER_CACHE_DIR"  # the default of every command's --cache-dir


def cache_dir_for(data_root: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where the prepared volumes of ``data_root`` are cached, shared by training, scanning and harvesting.

    By default next to the data (``DATA/.lesion_harvester_cache``). Under a chosen ``cache_dir``
    (``--cache-dir`` or ``$LESION_HARVESTER_CACHE_DIR``, e.g. when DATA is read-only) each dataset gets
    a folder named by its resolved path, because two datasets may hold different volumes of the same
    name (synthetic datasets of two seeds do).
    """
    if cache_dir is None:
        return Path(data_root) / CACHE_FOLDER
    resolved = Path(data_root).resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    return Path(cache_dir) / f"{resolved.name}-{digest}"


def partial_dir(out: str | Path) -> Path:
    """The folder in which a resumable command keeps finished pieces of ``out`` until it is written."""
    out = Path(out)
    return out.parent / f"{out.name}.partial"


def output_lock(out: str | Path) -> Path:
    """The lock file of a file output ``out`` (e.g. ``propose --out``): ``.NAME.lock`` beside it."""
    out = Path(out)
    return out.parent / f".{out.name}.lock"


@dataclass(frozen=True)
class TrainLayout:
    """An LPG training folder (``train-lpg --out``)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # a str is welcome too

    @property
    def best(self) -> Path:
        return self.root / "best.pt"

    @property
    def last(self) -> Path:
        return self.root / "last.pt"

    @property
    def train_log(self) -> Path:
        return self.root / "train_log.json"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def lock(self) -> Path:
        """Held while a training writes this folder (:mod:`lesion_harvester.storage.locks`)."""
        return self.root / LOCK_FILE


@dataclass(frozen=True)
class RunLayout:
    """A harvest run folder (``harvest --out``)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # a str is welcome too

    # --- the run as a whole --------------------------------------------------------------------------
    @property
    def ledger(self) -> Path:
        return self.root / "ledger.sqlite"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        return self.root / "harvest.log"

    @property
    def lock(self) -> Path:
        """Held while a harvest writes this run folder (:mod:`lesion_harvester.storage.locks`)."""
        return self.root / LOCK_FILE

    @property
    def lpg_fully_annotated(self) -> Path:
        """V_M's labels without the calibration volumes, which the LPG must not see."""
        return self.root / "lpg_fully_annotated.pkl"

    # --- one round ---------------------------------------------------------------------------------------
    def round_dir(self, round_: int) -> Path:
        return self.root / f"round_{round_}"

    def lpg(self, round_: int) -> TrainLayout:
        return TrainLayout(self.round_dir(round_) / "lpg")

    def round_fully_annotated(self, round_: int) -> Path:
        """V_M's labels with the volumes reviewers marked fully annotated, for round ``round_``'s LPG."""
        return self.round_dir(round_) / "lpg_fully_annotated.pkl"

    def finetune_positives(self, round_: int) -> Path:
        return self.round_dir(round_) / "lpg_positives.pkl"

    def finetune_negatives(self, round_: int) -> Path:
        return self.round_dir(round_) / "lpg_hard_negatives.pkl"

    def proposals(self, round_: int) -> Path:
        return self.round_dir(round_) / "proposals.pkl"

    def validation_proposals(self, round_: int) -> Path:
        """The round's LPG's scan of the validation volumes, for its operating point."""
        return self.round_dir(round_) / "validation_proposals.pkl"

    def lpc_fold(self, round_: int, fold: int) -> Path:
        return self.round_dir(round_) / "lpc" / f"fold{fold}.pt"

    def lpc_variants(self, round_: int) -> Path:
        return self.round_dir(round_) / "lpc_variants.json"

    def round_harvested(self, round_: int) -> Path:
        return self.round_dir(round_) / "harvested.pkl"

    def round_hard_negatives(self, round_: int) -> Path:
        return self.round_dir(round_) / "hard_negatives.pkl"

    # --- deliverables and report ---------------------------------------------------------------------------
    @property
    def harvested(self) -> Path:
        return self.root / "harvested.pkl"

    @property
    def harvested_csv(self) -> Path:
        return self.root / "harvested.csv"

    @property
    def hard_negatives(self) -> Path:
        return self.root / "hard_negatives.pkl"

    @property
    def completed_annotations(self) -> Path:
        return self.root / "completed_annotations.pkl"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def fig5a(self) -> Path:
        return self.root / "fig5a_pr.png"

    @property
    def fig5b(self) -> Path:
        return self.root / "fig5b_lpc_variants.png"

    @property
    def fig6(self) -> Path:
        return self.root / "fig6_harvested.png"

    @property
    def selection(self) -> Path:
        """The volumes to annotate fully next (``lesion-harvester select``), in order, with reasons."""
        return self.root / "selection.json"

    # --- Table III: detectors trained on the run's label sets (peers/table3.py) ------------------------------
    @property
    def table3_dir(self) -> Path:
        """One folder per detector, label set and training seed: checkpoints, detections, results."""
        return self.root / "table3"

    def table3_row(self, detector: str, labels: str, seed: int) -> Path:
        """The folder of one row and training seed (``MSCN_R+P_seed0``): its checkpoints, detections,
        ``result.json``, and ``.row.lock`` while a table works on it."""
        return self.table3_dir / f"{detector}_{labels}_seed{seed}"

    @property
    def table3_clean_positives(self) -> Path:
        """harvested.pkl without its harvested false positives (a diagnostic on synthetic data)."""
        return self.table3_dir / "clean_harvested.pkl"

    @property
    def table3_oracle_positives(self) -> Path:
        """Every lesion of the training volumes, from the complete labels (the oracle row R+O)."""
        return self.table3_dir / "oracle_positives.pkl"

    @property
    def table3_clean_negatives(self) -> Path:
        """hard_negatives.pkl without the hard negatives that are lesions (a diagnostic on synthetic data)."""
        return self.table3_dir / "clean_hard_negatives.pkl"

    @property
    def table3_json(self) -> Path:
        return self.root / "table3.json"

    @property
    def table3_md(self) -> Path:
        return self.root / "table3.md"

    @property
    def table3_png(self) -> Path:
        """The table's FROC points as a figure (linked from table3.md and the report)."""
        return self.root / TABLE3_FIGURE


UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(text: str, limit: int = 120) -> str:
    """``text`` as a plain file name: anything but letters, digits, '.', '_' and '-' becomes '_', at
    most ``limit`` characters, no leading dot ("" where nothing is left), so that a name read from a
    file never escapes its folder."""
    return UNSAFE_CHARACTERS.sub("_", text)[:limit].lstrip(".")


@dataclass(frozen=True)
class DetectLayout:
    """``detect``'s output: one folder per scan, ``OUT/<volume id>/``, with its findings, label map and
    montage, and an index of the scans (``index.json``, ``index.csv``)."""

    root: Path

    @property
    def index_json(self) -> Path:
        return Path(self.root) / "index.json"

    @property
    def index_csv(self) -> Path:
        return Path(self.root) / "index.csv"

    def scan_dir(self, volume_id: str) -> Path:
        """The scan's folder: the volume id made a plain file name (anything but letters, digits, '.',
        '_' and '-' becomes '_', no leading dot), so an id read from a file never escapes ``root``."""
        name = safe_name(volume_id) or "scan"
        return Path(self.root) / name

    @staticmethod
    def findings_json(scan_dir: Path) -> Path:
        return scan_dir / "findings.json"

    @staticmethod
    def findings_csv(scan_dir: Path) -> Path:
        return scan_dir / "findings.csv"

    @staticmethod
    def label_map(scan_dir: Path) -> Path:
        return scan_dir / "labels.nii.gz"

    @staticmethod
    def montage(scan_dir: Path) -> Path:
        return scan_dir / "montage.png"

    @staticmethod
    def dicom_seg(scan_dir: Path) -> Path:
        return scan_dir / "findings_seg.dcm"
