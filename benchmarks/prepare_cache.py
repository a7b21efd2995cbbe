"""Fill a dataset's prepared-volume cache with several processes.

``train-lpg`` and ``propose`` prepare (body-crop, resample, window) each volume once and keep it in
``DATA/.lesion_harvester_cache``; they do it one volume at a time. On a many-core machine this
script does it up front for every volume that training, validation and ``detection_test`` read:

    python benchmarks/prepare_cache.py DATA --preset bench --workers 16
"""

from __future__ import annotations

import argparse
import json
import time
from multiprocessing import Pool
from pathlib import Path

from lesion_harvester.config import load_preset
from lesion_harvester.io.prepared_cache import PreparedCache
from lesion_harvester.lpg.sources import build_sources
from lesion_harvester.paths import default_cache_dir

_WORKER: dict = {}  # per worker process: the dataset source and the cache, opened once


def _open(data: str, preset_name: str) -> None:
    _WORKER["source"] = build_sources(data).source
    _WORKER["cache"] = PreparedCache(default_cache_dir(data), load_preset(preset_name).preprocess)


def _prepare(key: str) -> str:
    _WORKER["cache"].get(_WORKER["source"], key)
    return key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    sources = build_sources(args.data)
    keys = set(sources.training.volume_keys) | set(sources.validation)
    splits = Path(args.data) / "splits.json"
    if splits.is_file():
        keys |= set(json.loads(splits.read_text()).get("detection_test", []))
    start = time.time()
    with Pool(args.workers, initializer=_open, initargs=(args.data, args.preset)) as pool:
        done = sum(1 for _ in pool.imap_unordered(_prepare, sorted(keys)))
    print(json.dumps({"volumes": done, "workers": args.workers, "seconds": round(time.time() - start, 1)}))
    print(f"prepared {done} volumes with {args.workers} processes in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
