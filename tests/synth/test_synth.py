import dataclasses
import json

import numpy as np
import pytest

from lesion_harvester.config import load_preset
from lesion_harvester.errors import DataError
from lesion_harvester.io.annotations import read_boxes_3d, read_slice_boxes
from lesion_harvester.io.deeplesion import DeepLesionDataset, read_dl_info
from lesion_harvester.io.png16 import read_png_hu
from lesion_harvester.synth.anatomy import structure_at, structures_at
from lesion_harvester.synth.dataset import (
    generate_volume,
    mark_probability,
    painted_structures,
    scene_of_volume,
    write_synthetic_dataset,
)
from lesion_harvester.synth.lesions import recist_from_mask, sample_lesion_count, sample_long_diameter_mm


def test_layout_is_read_by_the_deeplesion_reader(tiny_dataset):
    ds = DeepLesionDataset(tiny_dataset)
    rows = read_dl_info(tiny_dataset / "DL_info.csv")
    splits = json.loads((tiny_dataset / "splits.json").read_text())
    complete = read_slice_boxes(tiny_dataset / "ground_truth" / "complete.pkl")
    boxes3d = read_boxes_3d(tiny_dataset / "ground_truth" / "boxes_3d.pkl")
    cfg = load_preset("tiny").synth
    assert len(ds.sub_volumes) == cfg.total_volumes == len(complete) == len(boxes3d)
    assert set(splits["harvest_test"]) <= set(splits["harvest"])
    assert len(splits["fully_annotated"]) == cfg.fully_annotated
    every = splits["fully_annotated"] + splits["harvest"] + splits["validation"] + splits["detection_test"]
    assert sorted(every) == sorted(ds.sub_volumes)
    for row in rows:  # each row's Slice_range is its sub-volume's AAA-BBB
        key = f"{row.series_folder}_{row.slice_range[0]:03d}-{row.slice_range[1]:03d}"
        assert key in ds.sub_volumes
    marks = ds.marks()
    for key in ds.sub_volumes:
        assert marks[key], f"{key} has no marked lesion"
        for mark in marks[key]:  # every mark is one of the complete ground truth boxes
            assert any(
                b.z_index == mark.z_index and np.allclose(b.box_xyxy_px, mark.box_xyxy_px, atol=1e-2)
                for b in complete[key]
            )
        assert len(complete[key]) == len(boxes3d[key]) >= len(marks[key])
    splits_by_code = {row.split for row in rows}
    assert splits_by_code <= {1, 2, 3}
    assert (tiny_dataset / "montage.png").stat().st_size > 10_000
    stats = json.loads((tiny_dataset / "stats.json").read_text())
    assert stats["volumes"] == cfg.total_volumes and 0 < stats["marked_fraction"] <= 1


def test_png_values_are_hu_plus_32768(tiny_dataset):
    ds = DeepLesionDataset(tiny_dataset)
    sv = next(iter(ds.sub_volumes.values()))
    hu = read_png_hu(sv.folder / f"{sv.first_slice:03d}.png")
    assert hu.min() >= -1024 and hu.max() <= 3071
    assert (hu < -900).mean() > 0.2  # air around the body
    assert (np.abs(hu) < 200).mean() > 0.05  # soft tissue (a chest slice is mostly lung)


def test_same_seed_same_volume():
    cfg = load_preset("tiny").synth
    a, rec_a = generate_volume(3, 77, cfg, "harvest")
    b, rec_b = generate_volume(3, 77, cfg, "harvest")
    c, _ = generate_volume(3, 78, cfg, "harvest")
    assert np.array_equal(a, b) and rec_a == rec_b
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_lesion_ground_truth_matches_the_image():
    """The key-slice box of each clearly visible lesion surrounds voxels of the lesion's CT value."""
    cfg = load_preset("demo").synth
    checked = 0
    for index in range(6):
        hu, record = generate_volume(index, 5, cfg, "harvest")
        for lesion in record.lesions:
            if lesion.long_mm < 15 or abs(lesion.value_hu - lesion.host_hu) < 40:
                continue
            x1, y1, x2, y2 = (int(round(v)) for v in lesion.box_xyxy_px)
            inner = hu[lesion.key_z, y1 + 5 : y2 - 4, x1 + 5 : x2 - 4].astype(float)
            h, w = inner.shape
            centre = np.median(inner[h // 3 : 2 * h // 3 + 1, w // 3 : 2 * w // 3 + 1])
            assert abs(centre - lesion.value_hu) < abs(centre - lesion.host_hu) + 10
            checked += 1
    assert checked >= 3


def test_size_and_count_distributions_follow_deeplesion():
    rng = np.random.default_rng(0)
    sizes = np.array([sample_long_diameter_mm(rng) for _ in range(20000)])
    p10, p50, p90 = np.percentile(sizes, [10, 50, 90])
    assert 5.5 < p10 < 6.5 and 11.5 < p50 < 12.5 and 32 < p90 < 36
    assert sizes.min() >= 4 and sizes.max() <= 100
    counts = np.array([sample_lesion_count(rng, 30) for _ in range(20000)])
    assert 3.5 < counts.mean() < 4.1 and np.median(counts) == 3 and counts.max() > 20
    assert mark_probability(40) > mark_probability(10) > mark_probability(5)


def test_recist_of_a_rasterized_ellipse():
    yy, xx = np.mgrid[0:80, 0:80]
    mask = ((xx - 40) / 20.0) ** 2 + ((yy - 40) / 10.0) ** 2 <= 1
    long_axis, short_axis = recist_from_mask(mask, col0=100, row0=200)
    assert np.linalg.norm(long_axis[1] - long_axis[0]) == pytest.approx(41, abs=1.0)
    assert np.linalg.norm(short_axis[1] - short_axis[0]) == pytest.approx(21, abs=1.0)
    assert long_axis[:, 0].min() == pytest.approx(100 + 19.5, abs=0.6)
    assert np.allclose(long_axis[:, 1], 240, atol=1.0)


def test_refuses_to_overwrite_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists and is not empty"):
        write_synthetic_dataset(out, load_preset("tiny").synth, seed=1, progress=False)
    assert (out / "keep.txt").read_text() == "mine"

    import lesion_harvester.synth.dataset as dataset_module

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(dataset_module, "write_dl_info", boom)
    target = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        write_synthetic_dataset(target, load_preset("tiny").synth, seed=1, progress=False)
    assert not target.exists()
    assert not any(p.name.startswith(".fresh") for p in tmp_path.iterdir())


def test_a_small_image_that_refuses_its_first_key_lesions_still_gets_one():
    """Tiny preset, seed 700, volume 986: the first 20 attempts at a key lesion all failed, which
    ended a 1,000-volume generation with an error; further attempts place one."""
    from lesion_harvester.config import load_preset
    from lesion_harvester.synth.dataset import generate_volume

    _, record = generate_volume(986, 700, load_preset("tiny").synth, "harvest")
    assert record.lesions and record.lesions[0].marked


def test_normal_nodes_move_into_fat_without_changing_the_patients_draws(monkeypatch):
    """Every normal node keeps clear of organs, vessels, bowel and bone; moving one draws from its own
    generator, so the patient's stream (which the lesions draw from next) is as if none had moved."""
    from lesion_harvester.synth import anatomy

    moved = 0
    for seed in range(4):
        rng = np.random.default_rng(seed)
        patient = anatomy.sample_patient(rng)
        after = rng.random()
        nodes = [s.shape for s, name in zip(patient.structures, patient.names) if name == "node"]
        assert len(nodes) >= 8
        obstacles = anatomy._Obstacles(patient)
        for node in nodes:
            assert obstacles.clear(np.array(node.centre), max(node.axes) + 1.9)
        with monkeypatch.context() as m:  # every first spot accepted: the old, organ-blind placement
            m.setattr(anatomy._Obstacles, "clear", lambda *a: True)
            rng = np.random.default_rng(seed)
            blind = anatomy.sample_patient(rng)
            assert rng.random() == after and len(blind.names) >= len(patient.names)
        blind_centres = {s.shape.centre for s, name in zip(blind.structures, blind.names) if name == "node"}
        moved += sum(node.centre not in blind_centres for node in nodes)
    assert moved >= 4  # the organ-blind placement put some nodes where the rule moves them


def test_the_oesophagus_passes_beside_the_aortic_arch_not_through_it():
    """Straight across, the arch ran through the oesophagus in every patient: a soft-tissue oval
    inside the bright aorta, which the harvest took for a lesion."""
    from lesion_harvester.synth import anatomy
    from lesion_harvester.synth.shapes import Tube

    for seed in range(6):
        patient = anatomy.sample_patient(np.random.default_rng(seed))
        tubes = {name: s for name, s in zip(patient.names, patient.structures) if isinstance(s, Tube)}
        oesophagus, aorta = tubes["oesophagus"], tubes["aorta"]
        centres = np.linalg.norm(oesophagus.points[:, None] - aorta.points[None], axis=2)
        assert (centres - oesophagus.radii[:, None] - aorta.radii[None]).min() > 0


def test_the_colon_and_the_small_bowel_keep_out_of_the_solid_organs():
    """With its flexures at z 330 the colon ran through the liver (a sixth of it drawn inside the
    liver in every patient), and small-bowel loops wound through the liver's lower half; a collapsed
    loop there was a soft-tissue blob inside liver parenchyma. Checked on what is painted (half
    covered or more), on 3 mm pixels and 2 mm slices from the liver's dome to below the kidneys."""
    from lesion_harvester.synth import anatomy
    from lesion_harvester.synth.shapes import Canvas, Grid

    class Coverage(Canvas):
        def __init__(self, grid: Grid):
            super().__init__(grid, np.zeros((0, 0, 0), np.float32), np.zeros((0, 0, 0), np.float32))
            self.mask = np.zeros(grid.shape, bool)

        def paint(self, z, rows, cols, alpha, value, texture_hu=0.0):
            self.mask[z, rows, cols] |= alpha >= 0.5

    grid = Grid.make(np.arange(180.0, 460.0, 2.0), 140, 3.0)
    loops = 0
    for seed in range(4):
        patient = anatomy.sample_patient(np.random.default_rng(seed))

        def painted(names: set[str], patient=patient) -> np.ndarray:
            canvas = Coverage(grid)
            for name, structure in zip(patient.names, patient.structures):
                if name in names:
                    for z in range(grid.shape[0]):
                        structure.paint(canvas, z)
            return canvas.mask

        liver, other_organs = painted({"liver"}), painted({"spleen", "kidney"})
        colon, small_bowel = painted({"colon"}), painted({"bowel_loop", "collapsed_bowel_loop"})
        assert liver.sum() > 50_000 and colon.sum() > 10_000 and small_bowel.sum() > 5_000
        assert not (colon & liver).any() and not (small_bowel & (liver | other_organs)).any(), seed
        loops += sum(name.endswith("bowel_loop") for name in patient.names)
    assert loops >= 4 * 6  # the rule leaves the loops their place in the abdomen


def test_structure_at_names_the_anatomy_the_rendered_volume_shows():
    """A normal lymph node's centre shows the node at its CT value, and structure_at names it there;
    the scene drawn again from a volume's key is the one its volume was painted from."""
    # the tiny preset's 4 mm pixels blur a node of a few mm into its surroundings; these pixels are ~1.3 mm
    cfg = dataclasses.replace(load_preset("tiny").synth, image_size_px=256, pixel_mm=(0.9, 1.0))
    seed, checked = 77, 0
    for index in range(6):
        hu, record = generate_volume(index, seed, cfg, "harvest")
        scene = scene_of_volume(record.key, seed, cfg)
        patient, grid = scene.patient, scene.grid
        assert grid.shape == hu.shape and len(patient.names) == len(patient.structures)
        assert structure_at(patient, grid, 0, 0, 0) is None  # the corner: air above the body
        # painted_structures (what benchmarks count per volume) holds a node exactly where it reaches the slices
        painted_nodes = {id(s.shape) for name, s in painted_structures(scene) if name == "node"}
        for node in patient.organs.get("node", []):
            z0, z1 = node.z_extent()
            reaches = z1 >= grid.z_mm.min() - scene.interval_mm and z0 <= grid.z_mm.max() + scene.interval_mm
            assert (id(node) in painted_nodes) == reaches
        for node in patient.organs.get("node", []):
            z = int(np.argmin(np.abs(grid.z_mm - node.centre[2])))
            col, row = (int(round(v)) for v in grid.to_px(node.centre[0], node.centre[1]))
            inside_image = 0 <= row < hu.shape[1] and 0 <= col < hu.shape[2]
            on_lesion = any(les.box3d_xyxy_px[0] <= col <= les.box3d_xyxy_px[2]
                            and les.box3d_xyxy_px[1] <= row <= les.box3d_xyxy_px[3] for les in record.lesions)
            if abs(grid.z_mm[z] - node.centre[2]) > 0.3 * node.axes[2] or not inside_image or on_lesion:
                continue
            assert structure_at(patient, grid, z, row, col) == "node" and id(node) in painted_nodes
            below = structures_at(patient, grid, z, row, col)  # in painting order: the body first, the node last
            assert below[0] == "body_wall" and below[-1] == "node"
            assert set(below) <= {"body_wall", "pericardial_fat", "node"}  # in fat, never over an organ or a vessel
            assert abs(float(hu[z, row, col]) - patient.hu["node"]) < 60  # noise, texture and blur
            checked += 1
    assert checked >= 2
    with pytest.raises(ValueError, match="not the key of a synthetic volume"):
        scene_of_volume("scan.nii.gz", seed, cfg)
