"""Scanning at scale: end-to-end propose throughput for 1 and N processes, its parts, memory, projection.

    python benchmarks/bench_scale.py CKPT [--preset bench] [--volumes 12] [--processes 1,2] [--device cpu]
        [--loader-workers 0] [--flat-volumes 1000] [--project-slices 24] [--json OUT]

1. A synthetic dataset of --volumes harvest volumes of the preset (its image size) is written to a
   temporary folder.
2. End to end, per process count: ``lesion-harvester propose`` on it (under torchrun, gloo on the
   CPU, when N > 1), each run with an empty cache, so reading the PNGs, resampling and caching are
   counted, as are the start of the processes and the merged, written output. Slices per second
   (wall clock) and the peak resident memory of the largest process.
3. Its parts, in this process on the same volumes: preparing (reading, resampling), the LPG with
   its decoding, stacking into 3D and writing, in seconds per slice.
4. Memory over many volumes: one ``propose`` over --flat-volumes small (tiny preset) volumes, its
   resident memory sampled as the finished volumes appear: after 10%, 50% and 100% of them.
5. Projection: the ``paper`` preset's LPG (random weights: the speed does not depend on them) scans
   --project-slices slices of 512 x 512 (the model and decoding alone); seconds per slice give the
   hours for DeepLesion's 0.9 million slices on this device and process count.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lesion_harvester.config import ScanConfig, load_preset
from lesion_harvester.dataset.prepared_cache import PreparedCache
from lesion_harvester.io.annotations import write_tracklets
from lesion_harvester.io.loader import open_volumes
from lesion_harvester.lpg.checkpoint import model_payload, save_checkpoint
from lesion_harvester.lpg.model import MSCN
from lesion_harvester.lpg.scan import Scanner, scanner_from_checkpoint
from lesion_harvester.preprocessing import PreparedVolume
from lesion_harvester.stacking.stack import stack_proposals
from lesion_harvester.synth.dataset import write_synthetic_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
import common

DEEPLESION_SLICES = 900_000  # about 0.9 million slices in DeepLesion's sub-volumes (the paper's scan)


def _dataset(out: Path, preset: str, volumes: int, seed: int) -> Path:
    synth = dataclasses.replace(load_preset(preset).synth, fully_annotated=0, harvest=volumes, harvest_test=0,
                                validation=0, detection_test=0, workers=2)
    write_synthetic_dataset(out, synth, seed=seed, progress=False)
    return out


def _rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the torchrun workers), in MB."""
    total = 0.0
    for p in [pid] + _descendants(pid):
        try:
            text = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        match = re.search(r"VmRSS:\s+(\d+) kB", text)
        total = max(total, int(match.group(1)) / 1024) if match else total  # the largest process
    return total


def _descendants(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found = [int(c) for c in children]
    return found + [d for c in found for d in _descendants(c)]


def _propose(data: Path, checkpoint: str, out: Path, processes: int, device: str, workers: int,
             sample: bool = False) -> dict:
    """Run ``propose`` as a command; wall seconds, peak RSS of the largest process and, with
    ``sample``, (finished volumes, RSS) each time the count of finished volumes changes."""
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}
    cli = ["propose", str(data), "--checkpoint", checkpoint, "--out", str(out), "--device", device,
           "--cache-dir", str(out.parent / f"cache_{out.stem}"), "--loader-workers", str(workers), "-q"]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
                   "-m", "lesion_harvester.cli.main", *cli]
    else:
        command = [sys.executable, "-m", "lesion_harvester.cli.main", *cli]
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, samples, seen = 0.0, [], -1
    partial = out.parent / f"{out.name}.partial"
    while proc.poll() is None:
        rss = _rss_mb(proc.pid)
        peak = max(peak, rss)
        if sample:
            count = len(list(partial.glob("*.pkl"))) if partial.is_dir() else seen
            if count != seen:
                samples.append((count, rss))
                seen = count
        time.sleep(0.2)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"propose failed: {proc.stderr.read()[-2000:]}")
    return {"wall_s": wall, "peak_rss_mb": peak, "samples": samples}


def _untrained_checkpoint(preset_name: str, path: Path) -> str:
    """A randomly initialised LPG of a preset, saved as a checkpoint (speed and memory do not depend
    on the weights)."""
    preset = load_preset(preset_name)
    torch.manual_seed(0)
    save_checkpoint(path, model_payload(MSCN(preset.lpg), preset.lpg, preset.preprocess, preset.stack, epoch=0))
    return str(path)


def _parts(data: Path, checkpoint: str, device: str, cache_root: Path) -> dict:
    """Seconds per slice of each part of a scan, in this process."""
    scanner, pre, stack = scanner_from_checkpoint(checkpoint, device)
    source = open_volumes(data)
    cache = PreparedCache(cache_root, pre)
    times = dict.fromkeys(("prepare", "lpg", "stack", "write"), 0.0)
    slices, results = 0, {}
    for key in source.keys:
        t0 = time.perf_counter()
        pv = cache.get(source, key)
        t1 = time.perf_counter()
        per_slice = scanner.predict(pv)
        t2 = time.perf_counter()
        results[key] = stack_proposals([(per_slice[z].boxes_xyxy_px, per_slice[z].scores)
                                        for z in range(pv.num_slices)], stack)
        t3 = time.perf_counter()
        times["prepare"] += t1 - t0
        times["lpg"] += t2 - t1
        times["stack"] += t3 - t2
        slices += pv.num_slices
    t0 = time.perf_counter()
    write_tracklets(cache_root / "parts.pkl", results)
    times["write"] = time.perf_counter() - t0
    return {"slices": slices, "seconds_per_slice": {k: v / slices for k, v in times.items()}}


def _projection(device: str, slices: int) -> dict:
    preset = load_preset("paper")
    torch.manual_seed(0)
    model = MSCN(preset.lpg).to(device).eval()
    scanner = Scanner(model, preset.preprocess, ScanConfig(), device)
    rng = np.random.default_rng(0)
    image = rng.normal(0, 200, (slices, 512, 512)).astype(np.float16)
    pv = PreparedVolume("projection", image, (0, 0), 1.0, (2.0, 0.8, 0.8), (slices, 512, 512))
    scanner.predict(PreparedVolume("warm", image[:8], (0, 0), 1.0, (2.0, 0.8, 0.8), (8, 512, 512)))
    start = time.perf_counter()
    scanner.predict(pv)
    per_slice = (time.perf_counter() - start) / slices
    return {"slices": slices, "seconds_per_slice": per_slice,
            "deeplesion_hours": per_slice * DEEPLESION_SLICES / 3600}


@common.guarded
def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("checkpoint", help="an LPG checkpoint of --preset (e.g. train-lpg's best.pt)")
    parser.add_argument("--preset", default="bench", help="image size of the synthetic volumes")
    parser.add_argument("--volumes", type=int, default=12)
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--loader-workers", type=int, default=0)
    parser.add_argument("--flat-volumes", type=int, default=1000, help="0: skip the memory run")
    parser.add_argument("--flat-checkpoint", default=None,
                        help="the LPG of the memory run (default: an untrained one of the tiny preset)")
    parser.add_argument("--project-slices", type=int, default=24, help="0: skip the projection")
    parser.add_argument("--seed", type=int, default=700)
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.processes.split(",")]
    results: dict = {"preset": args.preset, "volumes": args.volumes, "device": args.device,
                     "cpu_count": os.cpu_count(), "torch": torch.__version__, "loader_workers": args.loader_workers}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = _dataset(tmp / "data", args.preset, args.volumes, args.seed)
        slices = sum(open_volumes(data).dataset.sub_volumes[k].num_slices for k in open_volumes(data).keys)
        results["slices"] = slices
        results["end_to_end"] = {}
        for n in counts:
            run = _propose(data, args.checkpoint, tmp / f"p{n}.pkl", n, args.device, args.loader_workers)
            results["end_to_end"][n] = {"processes": n, "slices_per_s": slices / run["wall_s"], **run}
            del results["end_to_end"][n]["samples"]
        results["parts"] = _parts(data, args.checkpoint, args.device, tmp / "parts_cache")
        if args.flat_volumes:
            flat_ckpt = args.flat_checkpoint or _untrained_checkpoint("tiny", tmp / "tiny_lpg.pt")
            flat = _dataset(tmp / "flat", "tiny", args.flat_volumes, args.seed)
            run = _propose(flat, flat_ckpt, tmp / "flat.pkl", 1, args.device, args.loader_workers, sample=True)
            samples = run["samples"]
            at = {f"{p}%": next((rss for count, rss in samples if count >= p * args.flat_volumes / 100), None)
                  for p in (10, 50, 100)}
            at["100%"] = at["100%"] or (samples[-1][1] if samples else None)
            results["memory_over_volumes"] = {"volumes": args.flat_volumes, "rss_mb_after": at,
                                              "peak_rss_mb": run["peak_rss_mb"], "wall_s": run["wall_s"]}
    if args.project_slices:
        results["projection_paper_512"] = _projection(args.device, args.project_slices)
    e2e = results["end_to_end"]
    lines = [", ".join(f"{n} process{'es' if n > 1 else ''}: {e2e[n]['slices_per_s']:.1f} slices/s "
                       f"(peak {e2e[n]['peak_rss_mb']:.0f} MB)" for n in counts)
             + f" end to end on {slices} {args.preset} slices ({args.device})"]
    parts = results["parts"]["seconds_per_slice"]
    lines.append("parts, ms per slice: " + ", ".join(f"{k} {1000 * v:.1f}" for k, v in parts.items()))
    if "memory_over_volumes" in results:
        m = results["memory_over_volumes"]
        lines.append(f"memory over {m['volumes']} volumes: RSS " +
                     ", ".join(f"{k} {v:.0f} MB" for k, v in m["rss_mb_after"].items() if v is not None))
    if "projection_paper_512" in results:
        p = results["projection_paper_512"]
        lines.append(f"paper preset, 512 x 512: {1000 * p['seconds_per_slice']:.0f} ms per slice -> "
                     f"{p['deeplesion_hours']:.0f} h for 0.9 million slices ({args.device}, one process)")
    common.report(results, args.json, *lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
