"""``propose``: scan volumes with a trained LPG (or another detector) and write 3D proposals (tracklets), resumably.

While running, each finished volume's proposals are saved in ``OUT.partial/``; a rerun with the
same checkpoint and settings skips them, so a killed scan continues where it stopped. The final
pickle (the authors' detection format) and its CSV are published together (both new or both old),
then the partial folder is removed. The output is checked (a file, in a writable folder) before the
scan, and locked (``.OUT.lock`` beside it) while the command runs, so a second scan into the same
file refuses at once.

Under torchrun the volumes still to scan are shared out among the ranks (:mod:`lesion_harvester.distributed`),
each rank saving its finished volumes in the same partial folder; when all are done the main rank
merges them into the outputs. Each volume's proposals depend on that volume alone, so the result is
the one-process result; a rank that dies loses only the volumes it had not finished.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from lesion_harvester.config import PreprocessConfig, ScanConfig, StackConfig, fingerprint
from lesion_harvester.dataset.prepared_cache import PreparedCache
from lesion_harvester.detectors.base import DetectionModel
from lesion_harvester.device import resolve_device
from lesion_harvester.distributed import ALONE, Distributed
from lesion_harvester.errors import DataError
from lesion_harvester.io.annotations import write_tracklets, write_tracklets_csv
from lesion_harvester.io.loader import open_volumes
from lesion_harvester.io.partial import PartialResults, file_digest
from lesion_harvester.lpg.model import MSCN
from lesion_harvester.lpg.scan import scan_volumes, scanner_from_checkpoint
from lesion_harvester.paths import cache_dir_for, output_lock, partial_dir
from lesion_harvester.storage.atomic import atomic_files, check_output_file
from lesion_harvester.storage.locks import locked_output
from lesion_harvester.structures import Tracklet

log = logging.getLogger(__name__)


def propose(data: str | Path, checkpoint: str | Path, out: str | Path, split: str | None = None,
            stack: StackConfig | None = None, scan: ScanConfig | None = None, device: str = "auto",
            cache_dir: str | Path | None = None, progress: bool = True,
            keys: list[str] | None = None, score_threshold: float | None = None,
            dist: Distributed = ALONE, detector: type[DetectionModel] = MSCN) -> dict[str, list[Tracklet]]:
    """Scan every slice of the selected volumes (a split, or explicit ``keys``) with the ``detector`` of
    ``checkpoint`` (the LPG by default); returns and writes {volume key: tracklets}. ``stack`` defaults
    to the settings stored in the checkpoint; ``score_threshold`` replaces its t_G. ``dist``: this
    process's rank under torchrun (every rank returns the whole result)."""
    device = dist.device(resolve_device(device))
    check_request(out, score_threshold, dist)
    scan = scan or ScanConfig()
    scanner, pre, stored_stack = scanner_from_checkpoint(checkpoint, device, scan, detector)
    stack = stack or stored_stack
    if score_threshold is not None:
        stack = replace(stack, score_threshold=score_threshold)
    # what a resumed scan must share with the one it continues (batch size and workers change no result)
    settings = [replace(scan, batch_slices=ScanConfig().batch_slices, loader_workers=ScanConfig().loader_workers)]
    return scan_to_file(data, scanner, pre, stack, out, file_digest(checkpoint), settings, split, keys, cache_dir,
                        progress, dist, scan.loader_workers)


def scan_to_file(data: str | Path, scanner, pre: PreprocessConfig, stack: StackConfig, out: str | Path,
                 model_id: str, settings: list, split: str | None = None, keys: list[str] | None = None,
                 cache_dir: str | Path | None = None, progress: bool = True,
                 dist: Distributed = ALONE, workers: int = 0) -> dict[str, list[Tracklet]]:
    """Scan the selected volumes with ``scanner`` (anything with ``propose(prepared_volume, stack)``,
    e.g. :class:`Scanner` or a peer detector's), resumably; returns and writes {volume key: tracklets}.
    ``model_id`` (e.g. the checkpoint's digest) and ``settings`` name the scan, so that a rerun
    resumes only its own. ``dist``: this rank's share of the volumes (see the module); ``workers``:
    processes preparing the volumes ahead of the scan."""
    out = Path(out)
    if dist.is_main:
        check_outputs(out)
    # rank 0 holds the lock for every rank of the command (they share its partial folder)
    with locked_output(output_lock(out), out, take=dist.is_main):
        return _scan_to_file(data, scanner, pre, stack, out, model_id, settings, split, keys, cache_dir, progress,
                             dist, workers)


def check_request(out: str | Path, score_threshold: float | None = None, dist: Distributed = ALONE) -> None:
    """What :func:`propose` checks before the checkpoint is read: the outputs (:func:`check_outputs`)
    and the cut given, as the setting it replaces (a NaN would keep nothing, and succeed)."""
    if dist.is_main:
        check_outputs(out)
    if score_threshold is not None:
        StackConfig(score_threshold=score_threshold)


def check_outputs(out: str | Path) -> None:
    """Whether the pickle ``out`` and its CSV can be written, before the scan: files (not folders,
    not one and the same), in a folder that exists or can be made, and writable."""
    out = Path(out)
    if out.suffix.lower() == ".csv":
        raise DataError(out, "the proposals' CSV is written next to the pickle with the suffix .csv, so the "
                             "pickle cannot be named .csv", "give e.g. --out dets.pkl")
    check_output_file(out)
    check_output_file(csv_path(out))


def csv_path(out: str | Path) -> Path:
    """The CSV written beside the tracklet pickle ``out``."""
    return Path(out).with_suffix(".csv")


def _scan_to_file(data: str | Path, scanner, pre: PreprocessConfig, stack: StackConfig, out: Path, model_id: str,
                  settings: list, split: str | None, keys: list[str] | None, cache_dir: str | Path | None,
                  progress: bool, dist: Distributed, workers: int) -> dict[str, list[Tracklet]]:
    source = open_volumes(data, split=split)
    if keys is not None:
        unknown = [k for k in keys if k not in set(source.keys)]
        if unknown:
            raise DataError(data, f"{len(unknown)} volumes to scan are not in the dataset, e.g. {unknown[0]}")
        source.keys = list(keys)
    if not source.keys:  # "0 proposals of 0 volumes" would read as a finished scan
        raise DataError(data, "no volumes to scan" + (f" in split '{split}'" if split else ""))
    if source.format == "deeplesion":
        cache = PreparedCache(cache_dir_for(data, cache_dir), pre)
        total = sum(source.dataset.sub_volumes[k].num_slices for k in source.keys)
    else:
        cache = PreparedCache(None if cache_dir is None else cache_dir_for(data, cache_dir), pre)
        total = None

    def prepare(key: str):
        if source.format != "deeplesion":
            source.load(key).require_slices(2, "3D lesion proposals")
        return cache.get(source, key)

    identity = fingerprint(model_id, str(Path(data).resolve()), split, source.keys, stack, *settings)
    if dist.is_main:  # clears the partial folder of another job before any rank writes in it
        partial = PartialResults(partial_dir(out), identity)
    dist.barrier()
    if not dist.is_main:
        partial = PartialResults(partial_dir(out), identity)
    done = partial.finished_keys(source.keys)
    todo = dist.shard([k for k in source.keys if k not in done])
    if done:
        log.info("resuming: %d of %d volumes already scanned", len(done), len(source.keys))
    if total is not None and (done or dist.active):
        total = sum(source.dataset.sub_volumes[k].num_slices for k in todo)
    # results go to the partial folder only, so memory stays flat while scanning; every rank's
    # volumes are read back from it at the end
    scan_volumes(scanner, todo, prepare, stack, partial.save, progress and dist.is_main, total, workers)
    dist.barrier()
    done = partial.finished(source.keys)
    results = {key: done[key] for key in source.keys}
    if dist.is_main:
        write_outputs(out, results)
        partial.remove()  # only now: a run killed before this point publishes again from the partial folder
    dist.barrier()  # no rank returns before the outputs exist
    return results


def write_outputs(out: Path, results: dict[str, list[Tracklet]]) -> None:
    """The tracklet pickle and its CSV, published together: a failure leaves both old (or none)."""
    with atomic_files([out, csv_path(out)]) as (pickle_tmp, csv_tmp):
        write_tracklets(pickle_tmp, results)
        write_tracklets_csv(csv_tmp, results)
