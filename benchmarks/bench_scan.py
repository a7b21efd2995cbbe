"""Benchmark whole-volume scanning: naive (every target slice from scratch) vs shared triplets.

    python benchmarks/bench_scan.py --json OUT.json [--presets paper,bench] [--slices 16] [--device cpu]

On a synthetic 512 x 512 volume (2 mm slices), for each preset with a randomly initialised model:
``naive_slices_per_s``, ``shared_slices_per_s``, ``ratio`` (shared over naive speed),
``theoretical_ratio`` (naive over shared FLOPs per target slice, counted with
``torch.utils.flop_counter`` over both whole scans), ``max_abs_diff`` of the heatmaps,
``peak_rss_mb`` (this preset's process) and ``device``, plus the FLOPs per target slice of each
stage so that the next speed-up can aim at the largest one. Each preset runs in its own process.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from lesion_harvester.config import ScanConfig, SynthConfig, load_preset
from lesion_harvester.lpg.model import MSCN
from lesion_harvester.lpg.scan import Scanner
from lesion_harvester.preprocessing import prepare_volume
from lesion_harvester.structures import Volume
from lesion_harvester.synth.dataset import generate_volume

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
import common

STAGES = {  # module name prefix -> stage
    "stem": "stem + dense block 1", "block1": "stem + dense block 1", "trans1": "transition 1 + dense block 2",
    "block2": "transition 1 + dense block 2", "trans2": "transition 2", "lat1": "laterals b1, b2",
    "lat2": "laterals b1, b2", "fuse_a": "fusion (a)", "block3": "dense block 3 + lateral b3",
    "lat3": "dense block 3 + lateral b3", "fuse_b": "fusion (b)", "hm": "heads", "wh": "heads", "reg": "heads",
}


def synthetic_volume(slices: int, seed: int = 0) -> Volume:
    cfg = dataclasses.replace(SynthConfig(), image_size_px=512, pixel_mm=(0.8, 0.8), slice_intervals_mm=(2.0,),
                              slice_interval_weights=(1.0,), half_extent_mm=(slices, slices + 0.5))
    hu, record = generate_volume(seed, seed, cfg, "harvest")
    hu = hu[:slices]
    return Volume("bench", hu, (record.interval_mm, record.pixel_mm, record.pixel_mm))


def _count(model: MSCN, fn) -> tuple[float, dict[str, float]]:
    """Total FLOPs of ``fn()`` and their split over the model's stages.

    The shared scan calls the model's parts directly, so a first small forward through the whole
    model inside the same counter names every submodule after its place in the model; its FLOPs are
    subtracted again.
    """
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, model.cfg.num_slices, 32, 32, device=next(model.parameters()).device))
        before_total = counter.get_total_flops()
        before = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
        fn()
    stages: dict[str, float] = {}
    for name, ops in counter.get_flop_counts().items():
        parts = name.split(".")
        if len(parts) == 2 and parts[0] == "MSCN":  # direct children of the model
            stage = STAGES.get(parts[1], parts[1])
            stages[stage] = stages.get(stage, 0.0) + float(sum(ops.values()) - before.get(name, 0))
    return float(counter.get_total_flops() - before_total), stages


def run_preset(name: str, slices: int, device: str, repeats: int, tf32: bool = True) -> dict:
    torch.manual_seed(0)
    # TF32 (on by default for cuDNN convolutions) rounds inputs to 10-bit mantissas: shared and naive
    # scans then differ by ~1e-3 for reasons unrelated to sharing
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    preset = load_preset(name)
    model = MSCN(dataclasses.replace(preset.lpg, pretrained_path=None)).to(device).eval()
    pv = prepare_volume(synthetic_volume(slices), preset.preprocess)
    scanner = Scanner(model, preset.preprocess, dataclasses.replace(ScanConfig(), amp=False), device)
    with torch.no_grad():
        scanner.heatmaps(pv, shared=True, targets=[0, 1])  # warm-up
    timings = {}
    maps = {}
    for shared in (False, True):
        best = float("inf")
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            maps[shared] = scanner.heatmaps(pv, shared=shared)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        timings[shared] = best
    naive_flops, naive_stages = _count(model, lambda: scanner.heatmaps(pv, shared=False))
    shared_flops, shared_stages = _count(model, lambda: scanner.heatmaps(pv, shared=True))
    z = pv.num_slices
    result = {
        "preset": name,
        "input_hw": list(pv.image.shape[1:]),
        "slices": z,
        "naive_slices_per_s": z / timings[False],
        "shared_slices_per_s": z / timings[True],
        "ratio": timings[False] / timings[True],
        "theoretical_ratio": naive_flops / shared_flops,
        "naive_gflop_per_slice": naive_flops / z / 1e9,
        "shared_gflop_per_slice": shared_flops / z / 1e9,
        "max_abs_diff": float(np.abs(maps[False] - maps[True]).max()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": (torch.cuda.get_device_name(0) if device.startswith("cuda")
                   else f"cpu ({torch.get_num_threads()} threads)"),
        "tf32": tf32 and device.startswith("cuda"),
        "stages_gflop_per_slice": {
            stage: {"naive": naive_stages.get(stage, 0.0) / z / 1e9, "shared": shared_stages.get(stage, 0.0) / z / 1e9}
            for stage in dict.fromkeys(STAGES.values())
        },
    }
    result["ratio_over_theoretical"] = result["ratio"] / result["theoretical_ratio"]
    return result


def _child(args, queue):
    try:
        queue.put(run_preset(*args))
    except BaseException as exc:  # the parent must not wait forever on a child that failed
        queue.put({"preset": args[0], "error": f"{type(exc).__name__}: {exc}"})
        raise


@common.guarded
def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--presets", default="paper,bench")
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-tf32", action="store_true", help="CUDA: full fp32 convolutions and matmuls")
    args = parser.parse_args(argv)
    results = []
    ctx = multiprocessing.get_context("spawn")
    for name in args.presets.split(","):
        queue = ctx.Queue()
        child_args = (name, args.slices, args.device, args.repeats, not args.no_tf32)
        proc = ctx.Process(target=_child, args=(child_args, queue))
        proc.start()
        result = queue.get()
        proc.join()
        if "error" in result:
            print(f"{name}: failed: {result['error']}", file=sys.stderr)
            return 1
        results.append(result)
    common.report(results, args.json, *(
        f"{r['preset']}: shared {r['shared_slices_per_s']:.2f} vs naive {r['naive_slices_per_s']:.2f} slices/s "
        f"on {r['device']}, {r['input_hw'][0]}x{r['input_hw'][1]} px: ratio {r['ratio']:.2f} = "
        f"{r['ratio_over_theoretical']:.2f} x theoretical {r['theoretical_ratio']:.2f}, "
        f"max |diff| {r['max_abs_diff']:.1e}, peak RSS {r['peak_rss_mb']:.0f} MB" for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
