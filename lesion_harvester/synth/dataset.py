"""Generate a synthetic CT dataset in the DeepLesion layout, with complete ground truth.

Output folder::

    OUT/Images_png/PPPPPP_SS_RR/NNN.png   16-bit slices (HU + 32768)
    OUT/DL_info.csv                       rows only for the lesions with a RECIST mark
    OUT/ground_truth/complete.pkl         every lesion: one box on its largest slice
    OUT/ground_truth/boxes_3d.pkl         every lesion's 3D box
    OUT/ground_truth/lesions.csv          every lesion with kind, size, CT values, marked or not
    OUT/splits.json                       fully_annotated, harvest (incl. harvest_test), harvest_test,
                                          validation, detection_test
    OUT/stats.json, OUT/montage.png, OUT/synth_config.yaml

Each volume is generated from its own seed ``(seed, index)``, so the result does not depend on
the number of worker processes. The folder is built under a temporary name (``.OUT.XXXX.partial``
beside OUT) and renamed at the end: an interrupted run leaves nothing half-written, and the hidden
folder a killed run leaves is removed by the next run into the same OUT
(:func:`lesion_harvester.storage.atomic.atomic_directory`).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm import tqdm

from lesion_harvester.config import SynthConfig, dump_config
from lesion_harvester.io.annotations import write_boxes_3d, write_slice_boxes
from lesion_harvester.io.deeplesion import DLInfoRow, sub_volume_key, write_dl_info
from lesion_harvester.io.png16 import write_png_hu
from lesion_harvester.storage.atomic import atomic_directory, atomic_write_text
from lesion_harvester.structures import Box3D, SliceBox
from lesion_harvester.synth.anatomy import Patient, Solid, sample_patient
from lesion_harvester.synth.lesions import (
    DEFAULT_WINDOW,
    DICOM_WINDOWS,
    KIND_Z_RANGE,
    place_lesion,
    render_lesion,
    sample_kind,
    sample_lesion_count,
    sample_long_diameter_mm,
)
from lesion_harvester.synth.montage import synth_montage
from lesion_harvester.synth.shapes import Canvas, Grid, Tube

log = logging.getLogger(__name__)

SPLIT_CODES = {"fully_annotated": 1, "harvest": 1, "validation": 2, "detection_test": 3}


def mark_probability(long_mm: float) -> float:
    """Chance that a lesion other than the key lesion carries a RECIST mark: larger, likelier.

    With one key lesion per volume this gives about 40% marked lesions overall, the DeepLesion
    rate (44.9% of V_D^test lesions are marked).
    """
    return float(0.04 + 0.40 * np.clip((long_mm - 5.0) / 35.0, 0.0, 1.0))


@dataclass
class SynthLesion:
    lesion_id: int
    kind: str
    coarse_type: int
    marked: bool
    long_mm: float
    short_mm: float
    key_z: int
    z_range: tuple[int, int]
    recist_px: tuple[float, ...]
    diameters_px: tuple[float, float]
    box_xyxy_px: tuple[float, float, float, float]
    box3d_xyxy_px: tuple[float, float, float, float]
    centre_mm: tuple[float, float, float]
    value_hu: float
    host_hu: float


@dataclass
class SynthVolume:
    key: str
    folder: str
    patient_index: int
    first_slice: int
    num_slices: int
    interval_mm: float
    pixel_mm: float
    image_size_px: int
    split: str
    phase: str
    gender: str
    age: int
    body_box_px: tuple[float, float, float, float]
    lesions: list[SynthLesion] = field(default_factory=list)


def _z_extent(structure) -> tuple[float, float]:
    if isinstance(structure, Solid):
        return structure.shape.z_extent()
    if isinstance(structure, Tube):
        r = float(structure.radii.max())
        return float(structure.points[:, 2].min()) - r, float(structure.points[:, 2].max()) + r
    return -np.inf, np.inf


def texture_field(rng: np.random.Generator, shape: tuple[int, int, int], scale_px: int = 4) -> np.ndarray:
    """Smooth unit-variance noise (Z, H, W): per-slice low-resolution noise upsampled bilinearly."""
    z, h, w = shape
    low = torch.from_numpy(rng.standard_normal((z, 1, h // scale_px + 2, w // scale_px + 2)).astype(np.float32))
    up = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[:, 0].numpy()
    return up / max(float(up.std()), 1e-6)


@dataclass
class Scene:
    """What volume ``index`` shows before anything is painted: its patient, its slices and pixels
    (``grid``), the key lesion's size and kind, and the generator that draws the rest."""

    rng: np.random.Generator
    patient: Patient
    grid: Grid
    interval_mm: float
    key_long_mm: float
    key_kind: str


def sample_scene(index: int, seed: int, cfg: SynthConfig) -> Scene:
    """The scene of volume ``index`` of a dataset of ``seed``; :func:`generate_volume` paints it, and
    a diagnosis can ask what lies at a pixel of it (:func:`~lesion_harvester.synth.anatomy.structure_at`)."""
    rng = np.random.default_rng([seed, index])
    patient = sample_patient(rng)
    interval = float(
        rng.choice(cfg.slice_intervals_mm, p=np.array(cfg.slice_interval_weights) / sum(cfg.slice_interval_weights))
    )
    half = rng.uniform(*cfg.half_extent_mm)
    n = 2 * int(round(half / interval)) + 1
    key_long = _key_lesion_diameter_mm(rng)
    key_kind = sample_kind(rng, key_long)
    kz0, kz1 = KIND_Z_RANGE[key_kind]
    z_key = rng.uniform(kz0 + 10, kz1 - 10)
    z_mm = z_key + rng.uniform(-0.25, 0.25) * half + (np.arange(n) - (n - 1) / 2) * interval
    # the field of view fits the body, as a technologist would set it
    widest = max(patient.body_axes(z)[0] for z in z_mm)
    deepest = max(patient.body_axes(z)[1] for z in z_mm)
    pixel = max(
        rng.uniform(*cfg.pixel_mm), (2 * widest + 20) / cfg.image_size_px, (2 * deepest + 70) / cfg.image_size_px
    )
    grid = Grid.make(z_mm, cfg.image_size_px, pixel, centre_xy_mm=(rng.normal(0, 6), 18 + rng.normal(0, 6)))
    return Scene(rng, patient, grid, interval, key_long, key_kind)


def painted_structures(scene: Scene) -> list[tuple[str, object]]:
    """(name, structure) of each anatomical structure of ``scene``'s patient that reaches its slices
    (within one slice interval), in painting order: what :func:`generate_volume` paints."""
    z_mm = scene.grid.z_mm
    lo, hi = z_mm.min() - scene.interval_mm, z_mm.max() + scene.interval_mm
    painted = []
    for name, structure in zip(scene.patient.names, scene.patient.structures, strict=True):
        s0, s1 = _z_extent(structure)
        if not (s1 < lo or s0 > hi):
            painted.append((name, structure))
    return painted


def scene_of_volume(key: str, seed: int, cfg: SynthConfig) -> Scene:
    """The scene of the volume with key ``key`` (folder ``f"{index + 1:06d}_01_01"``, as
    :func:`generate_volume` names it) in a dataset of ``seed`` and ``cfg``."""
    if len(key) < 6 or not key[:6].isdigit() or int(key[:6]) < 1:
        raise ValueError(f"{key!r} is not the key of a synthetic volume (PPPPPP_01_01_first-last)")
    return sample_scene(int(key[:6]) - 1, seed, cfg)


def generate_volume(index: int, seed: int, cfg: SynthConfig, split: str) -> tuple[np.ndarray, SynthVolume]:
    """Render volume ``index``: (Z, H, W) int16 HU and its record (ground truth included)."""
    scene = sample_scene(index, seed, cfg)
    rng, patient, grid, interval = scene.rng, scene.patient, scene.grid, scene.interval_mm
    key_long, key_kind = scene.key_long_mm, scene.key_kind
    z_mm, n, pixel = grid.z_mm, len(grid.z_mm), grid.pixel_mm
    canvas = Canvas(grid, np.full(grid.shape, -1000.0, dtype=np.float32), texture_field(rng, grid.shape))
    for _, structure in painted_structures(scene):
        for z in range(n):
            structure.paint(canvas, z)
    # lesions: the key lesion near the middle first (it is always marked), then the others
    sub_offsets = np.array([-interval / 3, 0.0, interval / 3]) if interval > 1.5 else np.array([0.0])
    placed: list[np.ndarray] = []
    lesions: list[SynthLesion] = []
    target = sample_lesion_count(rng, cfg.max_lesions)
    attempts, budget = 0, 6 * target + 20
    # a volume with no lesion yet gets 200 more attempts (a small image may refuse a few key lesions
    # in a row); every volume that placed one within the budget is drawn as before
    while len(lesions) < target and (attempts < budget or (not lesions and attempts < budget + 200)):
        attempts += 1
        is_key = not lesions
        if is_key:
            long_mm = key_long if attempts == 1 else _key_lesion_diameter_mm(rng)
            kind = key_kind if attempts == 1 else sample_kind(rng, long_mm)
            z_lo, z_hi = n // 2 - n // 6, n // 2 + n // 6
        else:
            long_mm = sample_long_diameter_mm(rng)
            kind = sample_kind(rng, long_mm, (float(z_mm.min()), float(z_mm.max())))
            z_lo, z_hi = 0, n - 1
        spec = place_lesion(rng, kind, long_mm, patient, canvas, z_lo, z_hi, placed)
        if spec is None:
            continue
        rendered = render_lesion(spec, canvas, sub_offsets)
        if rendered is None:
            continue
        placed.append(np.array([*spec.shape.centre, max(spec.shape.axes)]))
        long_px, short_px = rendered.diameters_px
        marked = is_key or rng.random() < mark_probability(long_px * pixel)
        lesions.append(
            SynthLesion(
                lesion_id=len(lesions),
                kind=rendered.kind,
                coarse_type=rendered.coarse_type,
                marked=bool(marked),
                long_mm=long_px * pixel,
                short_mm=short_px * pixel,
                key_z=rendered.key_z,
                z_range=rendered.z_range,
                recist_px=rendered.recist_px,
                diameters_px=rendered.diameters_px,
                box_xyxy_px=_clip_box(rendered.box_xyxy_px, cfg.image_size_px),
                box3d_xyxy_px=_clip_box(rendered.box3d_xyxy_px, cfg.image_size_px),
                centre_mm=rendered.centre_mm,
                value_hu=rendered.value_hu,
                host_hu=rendered.host_hu,
            )
        )
    if not lesions:
        raise RuntimeError(f"volume {index}: no lesion could be placed (seed {seed}); this is a bug")
    hu = ndimage.gaussian_filter(canvas.hu, sigma=(0, 0.6, 0.6))  # scanner blur
    noise = ndimage.gaussian_filter(rng.standard_normal(grid.shape).astype(np.float32), sigma=(0, 0.7, 0.7))
    hu += noise * (rng.uniform(*cfg.noise_hu) / max(float(noise.std()), 1e-6))
    hu_int = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    first = int(rng.integers(1, 60))
    folder = f"{index + 1:06d}_01_01"
    bx, by = patient.body_axes(float(z_mm[n // 2]))
    c0, r0 = grid.to_px(-bx, -by)
    c1, r1 = grid.to_px(bx, by)
    record = SynthVolume(
        key=sub_volume_key(folder, first, first + n - 1),
        folder=folder,
        patient_index=index + 1,
        first_slice=first,
        num_slices=n,
        interval_mm=interval,
        pixel_mm=float(pixel),
        image_size_px=cfg.image_size_px,
        split=split,
        phase=patient.phase,
        gender=str(rng.choice(["M", "F"])),
        age=int(rng.integers(20, 90)),
        body_box_px=(float(c0), float(r0), float(c1), float(r1)),
        lesions=lesions,
    )
    return hu_int, record


def _key_lesion_diameter_mm(rng: np.random.Generator) -> float:
    """The key (always marked) lesion runs larger: half the time the larger of two draws."""
    first = sample_long_diameter_mm(rng)
    return max(first, sample_long_diameter_mm(rng)) if rng.random() < 0.5 else first


def _clip_box(box, size: int) -> tuple[float, float, float, float]:
    lo, hi = -5.0, size - 1 + 5.0
    return tuple(float(np.clip(v, lo, hi)) for v in box)  # type: ignore[return-value]


def _work(args) -> SynthVolume:
    index, seed, cfg, split, images_dir = args
    hu, record = generate_volume(index, seed, cfg, split)
    folder = Path(images_dir) / record.folder
    folder.mkdir(parents=True, exist_ok=True)
    for z in range(hu.shape[0]):
        write_png_hu(folder / f"{record.first_slice + z:03d}.png", hu[z], compress_level=cfg.png_compress_level)
    return record


def assign_splits(cfg: SynthConfig, seed: int) -> list[str]:
    """Split name of each volume index (a seeded shuffle)."""
    labels = (
        ["fully_annotated"] * cfg.fully_annotated
        + ["harvest"] * cfg.harvest
        + ["validation"] * cfg.validation
        + ["detection_test"] * cfg.detection_test
    )
    order = np.random.default_rng([seed, 10**6]).permutation(len(labels))
    return [labels[i] for i in order]


def dl_info_rows(volumes: list[SynthVolume]) -> list[DLInfoRow]:
    rows = []
    for v in volumes:
        code = SPLIT_CODES[v.split]
        for lesion in v.lesions:
            if not lesion.marked:
                continue
            x0, y0, x1, y1 = v.body_box_px
            cx = 0.5 * (lesion.box_xyxy_px[0] + lesion.box_xyxy_px[2])
            cy = 0.5 * (lesion.box_xyxy_px[1] + lesion.box_xyxy_px[3])
            key_slice = v.first_slice + lesion.key_z
            window = DICOM_WINDOWS.get(lesion.kind, DEFAULT_WINDOW)
            rows.append(
                DLInfoRow(
                    file_name=f"{v.folder}_{key_slice:03d}.png",
                    patient_index=v.patient_index,
                    study_index=1,
                    series_id=1,
                    key_slice_index=key_slice,
                    measurement_coordinates_px=tuple(round(c, 3) for c in lesion.recist_px),
                    box_xyxy_px=tuple(round(c, 3) for c in lesion.box_xyxy_px),  # type: ignore[arg-type]
                    lesion_diameters_px=tuple(round(d, 4) for d in lesion.diameters_px),  # type: ignore[arg-type]
                    normalized_location_xyz=(
                        float(np.clip((cx - x0) / (x1 - x0), 0, 1)),
                        float(np.clip((cy - y0) / (y1 - y0), 0, 1)),
                        float(np.clip(lesion.centre_mm[2] / 650.0, 0, 1)),
                    ),
                    coarse_lesion_type=-1 if code == 1 else lesion.coarse_type,
                    possibly_noisy=False,
                    slice_range=(v.first_slice, v.first_slice + v.num_slices - 1),
                    spacing_mm=(round(v.pixel_mm, 6), round(v.pixel_mm, 6), v.interval_mm),
                    image_size_px=(v.image_size_px, v.image_size_px),
                    dicom_window_hu=window,
                    patient_gender=v.gender,
                    patient_age=float(v.age),
                    split=code,
                )
            )
    return rows


def dataset_stats(volumes: list[SynthVolume]) -> dict:
    """The statistics of a dataset (``stats.json``); each preset's are in benchmarks/RESULTS.md,
    'Synthetic benchmark generation'."""
    slices = np.array([v.num_slices for v in volumes])
    counts = np.array([len(v.lesions) for v in volumes])
    sizes = np.array([lesion.long_mm for v in volumes for lesion in v.lesions])
    marked = np.array([lesion.marked for v in volumes for lesion in v.lesions])
    edges = [0, 5, 10, 20, 30, 50, 101]
    hist = {f"{a}-{b}": int(((sizes >= a) & (sizes < b)).sum()) for a, b in zip(edges[:-1], edges[1:])}
    marked_by_size = {
        f"{a}-{b}": round(float(marked[(sizes >= a) & (sizes < b)].mean()), 3)
        if ((sizes >= a) & (sizes < b)).any()
        else None
        for a, b in zip(edges[:-1], edges[1:])
    }
    kinds: dict[str, int] = {}
    for v in volumes:
        for lesion in v.lesions:
            kinds[lesion.kind] = kinds.get(lesion.kind, 0) + 1
    intervals: dict[str, int] = {}
    for v in volumes:
        intervals[f"{v.interval_mm:g}"] = intervals.get(f"{v.interval_mm:g}", 0) + 1
    splits: dict[str, dict] = {}
    for name in ("fully_annotated", "harvest", "validation", "detection_test"):
        members = [v for v in volumes if v.split == name]
        splits[name] = {
            "volumes": len(members),
            "lesions": sum(len(v.lesions) for v in members),
            "marked": sum(sum(lesion.marked for lesion in v.lesions) for v in members),
        }
    return {
        "volumes": len(volumes),
        "splits": splits,
        "slices_per_volume": {
            "p10": float(np.percentile(slices, 10)),
            "p50": float(np.median(slices)),
            "p90": float(np.percentile(slices, 90)),
            "max": int(slices.max()),
        },
        "slice_interval_mm": intervals,
        "pixel_mm": {
            "min": round(min(v.pixel_mm for v in volumes), 3),
            "max": round(max(v.pixel_mm for v in volumes), 3),
        },
        "lesions": int(len(sizes)),
        "lesions_per_volume": {
            "mean": round(float(counts.mean()), 2),
            "median": float(np.median(counts)),
            "max": int(counts.max()),
        },
        "marked_fraction": round(float(marked.mean()), 3),
        "long_diameter_mm": {
            "p10": round(float(np.percentile(sizes, 10)), 1),
            "p50": round(float(np.median(sizes)), 1),
            "p90": round(float(np.percentile(sizes, 90)), 1),
            "max": round(float(sizes.max()), 1),
        },
        "size_histogram_mm": hist,
        "marked_fraction_by_size_mm": marked_by_size,
        "kinds": kinds,
    }


def write_synthetic_dataset(out: str | Path, cfg: SynthConfig, seed: int, progress: bool = True) -> dict:
    """Generate and write the whole dataset; returns its statistics."""
    labels = assign_splits(cfg, seed)
    with atomic_directory(out) as tmp:
        images = tmp / "Images_png"
        images.mkdir()
        jobs = [(i, seed, cfg, label, str(images)) for i, label in enumerate(labels)]
        bar = tqdm(total=len(jobs), desc="synth volumes", unit="vol", disable=not progress)
        volumes: list[SynthVolume] = []
        if cfg.workers > 1 and len(jobs) > 1:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(cfg.workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                for record in pool.imap(_work, jobs):
                    volumes.append(record)
                    bar.update()
        else:
            for job in jobs:
                volumes.append(_work(job))
                bar.update()
        bar.close()
        harvest_keys = [v.key for v in volumes if v.split == "harvest"]
        splits = {
            "fully_annotated": [v.key for v in volumes if v.split == "fully_annotated"],
            "harvest": harvest_keys,
            "harvest_test": harvest_keys[: cfg.harvest_test],
            "validation": [v.key for v in volumes if v.split == "validation"],
            "detection_test": [v.key for v in volumes if v.split == "detection_test"],
        }
        write_dl_info(tmp / "DL_info.csv", dl_info_rows(volumes))
        gt = tmp / "ground_truth"
        gt.mkdir()
        write_slice_boxes(
            gt / "complete.pkl", {v.key: [SliceBox(les.key_z, les.box_xyxy_px) for les in v.lesions] for v in volumes}
        )
        write_boxes_3d(
            gt / "boxes_3d.pkl",
            {
                v.key: [Box3D(les.box3d_xyxy_px, (float(les.z_range[0]), float(les.z_range[1]))) for les in v.lesions]
                for v in volumes
            },
        )
        _write_lesion_table(gt / "lesions.csv", volumes)
        atomic_write_text(tmp / "splits.json", json.dumps(splits, indent=1))
        atomic_write_text(gt / "volumes.json", json.dumps([_volume_json(v) for v in volumes], indent=1))
        stats = dataset_stats(volumes)
        stats["seed"] = seed
        stats["harvest_test_volumes"] = len(splits["harvest_test"])
        atomic_write_text(tmp / "stats.json", json.dumps(stats, indent=1))
        dump_config(cfg, tmp / "synth_config.yaml")
        synth_montage(tmp, volumes, tmp / "montage.png")
    return stats


def _volume_json(v: SynthVolume) -> dict:
    d = asdict(v)
    d.pop("lesions")
    d["n_lesions"] = len(v.lesions)
    return d


def _write_lesion_table(path: Path, volumes: list[SynthVolume]) -> None:
    import csv

    from lesion_harvester.storage.atomic import atomic_write

    with atomic_write(path, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(
            [
                "volume_key",
                "split",
                "lesion_id",
                "kind",
                "marked",
                "long_mm",
                "short_mm",
                "key_z",
                "z0",
                "z1",
                "x1",
                "y1",
                "x2",
                "y2",
                "value_hu",
                "host_hu",
            ]
        )
        for v in volumes:
            for les in v.lesions:
                writer.writerow(
                    [
                        v.key,
                        v.split,
                        les.lesion_id,
                        les.kind,
                        int(les.marked),
                        round(les.long_mm, 2),
                        round(les.short_mm, 2),
                        les.key_z,
                        *les.z_range,
                        *(round(c, 2) for c in les.box_xyxy_px),
                        round(les.value_hu, 1),
                        round(les.host_hu, 1),
                    ]
                )
