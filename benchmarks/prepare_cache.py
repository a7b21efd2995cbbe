"""Fill a dataset's prepared-volume cache with several processes.

``train-lpg`` and ``propose`` prepare (body-crop, resample, window) each volume once and keep it in
``DATA/.lesion_harvester_cache``; they do it one volume at a time. On a many-core machine this
script does it up front for every volume that training, validation and ``detection_test`` read:

    python benchmarks/prepare_cache.py DATA --preset bench --workers 16
"""

from __future__ import annotations

import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path

from lesion_harvester.config import load_preset
from lesion_harvester.dataset.prepared_cache import PreparedCache
from lesion_harvester.lpg.sources import build_sources
from lesion_harvester.paths import cache_dir_for

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
import common

_WORKER: dict = {}  # per worker process: the dataset source and the cache, opened once


def _open(data: str, preset_name: str) -> None:
    _WORKER["source"] = build_sources(data).source
    _WORKER["cache"] = PreparedCache(cache_dir_for(data), load_preset(preset_name).preprocess)


def _prepare(key: str) -> str:
    _WORKER["cache"].get(_WORKER["source"], key)
    return key


@common.guarded
def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("data")
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    sources = build_sources(args.data)
    keys = set(sources.training.volume_keys) | set(sources.validation)
    splits = Path(args.data) / "splits.json"
    if splits.is_file():
        keys |= set(json.loads(splits.read_text()).get("detection_test", []))
    start = time.time()
    with Pool(args.workers, initializer=_open, initargs=(args.data, args.preset)) as pool:
        done = sum(1 for _ in pool.imap_unordered(_prepare, sorted(keys)))
    seconds = time.time() - start
    common.report({"volumes": done, "workers": args.workers, "seconds": round(seconds, 1)}, args.json,
                  f"prepared {done} volumes with {args.workers} processes in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
