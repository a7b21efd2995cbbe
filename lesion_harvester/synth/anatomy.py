"""A sampled patient: body outline, organs, vessels, bowel and bones, painted slice by slice.

Body frame (mm): x to the patient's left (image right), y to the back (image down), z toward the
feet, from the lung apices (z = 0) to the hips (z ~ 640). HU values follow standard radiology
(../shared/notes/reference-facts.md section 9) in a portal venous or arterial contrast phase.

Several structures are deliberate lesion mimics that one axial slice cannot tell from a lesion
but neighbouring slices can: lung and liver vessels seen end-on (round, bright, continuing as
tubes), collapsed or fluid-filled bowel loops, normal lymph nodes, the gallbladder and the renal
sinus.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lesion_harvester.synth.shapes import Canvas, Ellipsoid, Grid, Tube, smooth_path, soft_alpha

Layers = list[tuple[float, float, float]]  # (inset_mm, value_hu, texture_hu)
_ARCH_BOW_MM = 32.0  # how far the aortic arch bows to the left of the straight line between its ends
_NODE_GAP_MM = 2.0  # fat left between a normal node and any other structure
_NODE_TRIES = 50  # candidate spots a normal node may try before it is left out
_HEPATIC_FLEXURE_Z_MM = 420.0  # body z of the colon's turn below the liver (the liver ends near 395)
_SPLENIC_FLEXURE_Z_MM = 400.0  # and of its turn below the spleen and stomach (ends near 335)
_BOWEL_REACH_MM = 14.0  # the widest small-bowel loop's radius: how far its path keeps from the solid organs
_FAT_NAMES = {"body_wall", "pericardial_fat", "node"}  # structures a node may sit in or beside


@dataclass
class Solid:
    """An ellipsoid painted as nested layers (e.g. cortical bone around marrow)."""

    shape: Ellipsoid
    layers: Layers

    def paint(self, canvas: Canvas, z: int) -> None:
        hit = self.shape.signed_distance(canvas.grid, z)
        if hit is None:
            return
        rows, cols, sd = hit
        for inset, value, texture in self.layers:
            alpha = soft_alpha(sd + inset)
            if alpha.any():
                canvas.paint(z, rows, cols, alpha, value, texture)


@dataclass
class Patient:
    """Per-patient anatomy parameters and the structures built from them."""

    half_width_mm: float
    half_depth_mm: float
    fat_mm: float
    wall_mm: float
    phase: str
    hu: dict[str, float]
    structures: list = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # what each structure is, e.g. "node", "lung_vessel"
    organs: dict[str, list[Ellipsoid]] = field(default_factory=dict)

    def body_axes(self, z_mm: float) -> tuple[float, float]:
        """Outer half-width and half-depth of the body at z (thorax, abdomen, pelvis shapes)."""
        t_pelvis = np.clip((z_mm - 420) / 120, 0, 1)
        t_abdomen = np.clip((z_mm - 180) / 120, 0, 1)
        ax = self.half_width_mm * (0.93 + 0.07 * t_abdomen + 0.05 * t_pelvis)
        ay = self.half_depth_mm * (1.06 - 0.06 * t_abdomen - 0.08 * t_pelvis)
        return float(ax), float(ay)

    def cavity_axes(self, z_mm: float) -> tuple[float, float]:
        ax, ay = self.body_axes(z_mm)
        inset = self.fat_mm + self.wall_mm
        return ax - inset, ay - inset * 0.8

    def in_organ(self, name: str, point: np.ndarray, margin: float = 0.85) -> bool:
        """Whether a body point lies inside one of the organ's ellipsoids (normalized radius < margin)."""
        return any(_section_radius(shape, point[0], point[1], point[2]) < margin for shape in self.organs.get(name, []))


def _section_radius(shape: Ellipsoid, x_mm: float, y_mm: float, z_mm: float, grow: float = 1.0,
                    pad_mm: float = 0.0) -> float:
    """How far (x, y) lies from the centre of ``shape``'s cross-section at z, in units of that
    section's semi-axes (each times ``grow``, plus ``pad_mm``): below 1 inside; inf where the slice
    misses the shape."""
    sec = shape.section(float(z_mm))
    if sec is None:
        return float("inf")
    cx, cy, ax, ay = sec
    c, s = np.cos(shape.angle), np.sin(shape.angle)
    u = (x_mm - cx) * c + (y_mm - cy) * s
    v = -(x_mm - cx) * s + (y_mm - cy) * c
    return float(np.hypot(u / (ax * grow + pad_mm), v / (ay * grow + pad_mm)))


def sample_patient(rng: np.random.Generator) -> Patient:
    """Random body size, fat, contrast phase and tissue HU values."""
    arterial = rng.random() < 0.2
    half_width = rng.uniform(135, 180)
    hu = {
        "fat": rng.uniform(-115, -85),
        "muscle": rng.uniform(40, 55),
        "lung": rng.uniform(-880, -820),
        "liver": rng.uniform(70, 90) if arterial else rng.uniform(100, 130),
        "spleen": rng.uniform(120, 150) if arterial else rng.uniform(105, 125),
        "kidney": rng.uniform(180, 230) if arterial else rng.uniform(150, 190),
        "aorta": rng.uniform(250, 380) if arterial else rng.uniform(150, 200),
        "vein": rng.uniform(70, 100) if arterial else rng.uniform(120, 170),
        "lung_vessel": rng.uniform(60, 200),
        "myocardium": rng.uniform(70, 100),
        "bowel_wall": rng.uniform(60, 95),
        "pancreas": rng.uniform(80, 110),
        "cortical": rng.uniform(700, 1100),
        "cancellous": rng.uniform(200, 320),
        "fluid": rng.uniform(0, 15),
        "node": rng.uniform(35, 55),
    }
    patient = Patient(
        half_width_mm=half_width,
        half_depth_mm=half_width * rng.uniform(0.6, 0.74),
        fat_mm=rng.uniform(8, 32),
        wall_mm=rng.uniform(7, 13),
        phase="arterial" if arterial else "portal",
        hu=hu,
    )
    _build(patient, rng)
    return patient


def _add(patient: Patient, structure, organ: str | None = None, name: str | None = None) -> None:
    """Append ``structure`` to the painting order, named ``name`` (default: its ``organ``); a Solid
    with an ``organ`` is also one of the places that organ's lesions may sit."""
    if organ is None and name is None:
        raise ValueError("a structure needs a name or an organ")
    patient.structures.append(structure)
    patient.names.append(name or organ)
    if organ is not None and isinstance(structure, Solid):
        patient.organs.setdefault(organ, []).append(structure.shape)


def _vessel_tree(
    rng,
    patient: Patient,
    organ: str,
    root: np.ndarray,
    n_branches: int,
    r_root: float,
    length: tuple[float, float],
    value: float,
    directions=None,
) -> None:
    """Branching vessels from ``root``, confined to ``organ``: end-on they look like nodules."""

    def inside(p):
        return patient.in_organ(organ, p, 0.97)

    for b in range(n_branches):
        d = directions[b] if directions is not None else rng.normal(0, 1, 3)
        path = smooth_path(rng, root, d, rng.uniform(*length), 1.5, 0.012, inside, max_turns=3)
        if len(path) < 4:
            continue
        radii = np.linspace(r_root * rng.uniform(0.7, 1.0), 1.0, len(path))
        _add(patient, Tube(path, radii, [(0.0, value, 6.0)]), name=f"{organ}_vessel")
        for _ in range(rng.integers(2, 6)):
            i = int(rng.integers(len(path) // 5, len(path) - 1))
            child = smooth_path(rng, path[i], rng.normal(0, 1, 3), rng.uniform(25, 80), 1.5, 0.02, inside, 2)
            if len(child) > 3:
                _add(patient, Tube(child, np.linspace(max(radii[i] * 0.7, 1.0), 0.8, len(child)), [(0.0, value, 6.0)]),
                     name=f"{organ}_vessel")


def _build(p: Patient, rng: np.random.Generator) -> None:
    """Create every structure in painting order (later ones paint over earlier ones)."""
    h = p.hu
    W, D = p.half_width_mm, p.half_depth_mm

    # body wall: subcutaneous fat, muscle, then the visceral cavity (fat), as one layered column
    _add(p, BodyColumn(p), name="body_wall")
    # spine centre line (just behind the cavity's centre), used by several structures
    spine_y = 0.55 * D

    # --- thorax -----------------------------------------------------------------------------
    for side in (-1, 1):
        lung = Ellipsoid(
            (side * 0.47 * W, -0.02 * D, 150.0),
            (0.36 * W, 0.72 * D, 150.0),
            angle=side * 0.12,
            power=2.6,
            tilt_xy=(0.0, 0.12),
            wobble=((2, 0.04, rng.uniform(0, 6)), (3, 0.03, rng.uniform(0, 6))),
        )
        _add(p, Solid(lung, [(0.0, h["lung"], 25.0)]), organ="lung")
    for side in (-1, 1):
        hilum = np.array([side * 0.32 * W, 0.05 * D, 135.0])
        dirs = [
            np.array([side * rng.uniform(0.2, 1.0), rng.normal(0, 0.6), rng.choice([-1, 1]) * rng.uniform(0.3, 1.2)])
            for _ in range(22)
        ]
        _vessel_tree(rng, p, "lung", hilum, 22, 5.5, (60, 190), h["lung_vessel"], dirs)
    # mediastinum: pericardial fat, heart with blood pools, great vessels, trachea, oesophagus
    heart = Ellipsoid((0.12 * W, -0.25 * D, 185.0), (0.36 * W, 0.42 * D, 62.0), angle=-0.55)
    pericardial_fat = Ellipsoid(heart.centre, tuple(a + 6 for a in heart.axes), heart.angle)
    _add(p, Solid(pericardial_fat, [(0, h["fat"], 5)]), name="pericardial_fat")
    _add(p, Solid(heart, [(0.0, h["myocardium"], 6.0)]), organ="heart")
    for dx, dy, r in ((0.22, 0.05, 0.5), (-0.05, -0.35, 0.45)):
        pool = Ellipsoid(
            (heart.centre[0] + dx * W, heart.centre[1] + dy * D, 185.0),
            (r * heart.axes[0], r * heart.axes[1], 40.0),
            angle=-0.5,
        )
        _add(p, Solid(pool, [(0.0, h["vein"] + 30, 8.0)]), name="heart_blood_pool")
    # the arch bows to the patient's left of the trachea and oesophagus, as it does (straight across,
    # it ran through the oesophagus in every patient, a soft-tissue oval inside the bright aorta)
    arch = _arc((0.03 * W, -0.25 * D, 95), (0.14 * W, spine_y - 0.12 * D, 100), 2.0, lift=25)
    arch[:, 0] += _ARCH_BOW_MM * np.sin(np.pi * np.linspace(0, 1, len(arch)))
    aorta = np.concatenate(
        [
            _line((0.03 * W, -0.30 * D, 170), (0.03 * W, -0.25 * D, 95), 2.0),
            arch,
            _line((0.14 * W, spine_y - 0.12 * D, 100), (0.13 * W, spine_y - 0.13 * D, 330), 2.0),
            _line((0.13 * W, spine_y - 0.13 * D, 330), (0.06 * W, spine_y - 0.28 * D, 470), 2.0),
        ]
    )
    radii = np.interp(aorta[:, 2], [90, 200, 470], [15, 12.5, 10.5])
    _add(p, Tube(aorta, radii, [(0.0, h["muscle"], 3.0), (1.5, h["aorta"], 8.0)]), name="aorta")
    for side in (-1, 1):  # common iliac arteries
        il = _line((0.06 * W, spine_y - 0.28 * D, 470), (side * 0.30 * W, spine_y - 0.30 * D, 560), 2.0)
        _add(p, Tube(il, np.full(len(il), 6.5), [(0.0, h["muscle"], 3.0), (1.0, h["aorta"], 8.0)]), name="iliac_artery")
    ivc = _line((-0.12 * W, spine_y - 0.25 * D, 470), (-0.14 * W, -0.05 * D, 215), 2.0)
    _add(p, Tube(ivc, np.full(len(ivc), 11.0), [(0.0, h["vein"], 8.0)]), name="ivc")
    svc = _line((-0.10 * W, -0.20 * D, 20), (-0.09 * W, -0.22 * D, 150), 2.0)
    _add(p, Tube(svc, np.full(len(svc), 9.0), [(0.0, h["vein"], 8.0)]), name="svc")
    trachea = _line((0.0, -0.08 * D, -60), (0.0, 0.02 * D, 115), 2.0)
    _add(p, Tube(trachea, np.full(len(trachea), 9.5), [(0.0, h["muscle"], 3.0), (2.0, -1000.0, 10.0)]), name="trachea")
    for side in (-1, 1):
        bronchus = _line((0.0, 0.02 * D, 115), (side * 0.28 * W, 0.06 * D, 135), 2.0)
        _add(p, Tube(bronchus, np.full(len(bronchus), 6.0), [(0.0, h["muscle"], 3.0), (1.5, -1000.0, 10.0)]),
             name="bronchus")
    oesophagus = _line((0.03 * W, spine_y - 0.22 * D, -40), (0.12 * W, 0.05 * D, 275), 2.0)
    _add(p, Tube(oesophagus, np.full(len(oesophagus), 7.0), [(0.0, h["muscle"] + 5, 5.0)]), name="oesophagus")

    # --- upper abdomen ----------------------------------------------------------------------
    liver_main = Ellipsoid(
        (-0.38 * W, -0.02 * D, 300.0),
        (0.50 * W, 0.70 * D, 95.0),
        angle=0.15,
        power=2.2,
        tilt_xy=(0.1, 0.05),
        wobble=((2, 0.05, rng.uniform(0, 6)), (3, 0.04, rng.uniform(0, 6))),
    )
    liver_left = Ellipsoid((0.08 * W, -0.42 * D, 275.0), (0.32 * W, 0.25 * D, 55.0), angle=-0.3)
    for shape in (liver_main, liver_left):
        _add(p, Solid(shape, [(0.0, h["liver"], 7.0)]), organ="liver")
    _vessel_tree(rng, p, "liver", np.array([-0.18 * W, 0.05 * D, 300.0]), 7, 6.0, (40, 110), h["vein"] + 15)
    _vessel_tree(
        rng,
        p,
        "liver",
        np.array([-0.16 * W, -0.05 * D, 220.0]),
        3,
        6.5,
        (60, 120),
        h["vein"] + 15,
        [np.array([-0.8, -0.3, 0.5]), np.array([-0.2, -0.8, 0.4]), np.array([0.5, -0.7, 0.4])],
    )
    gall = Ellipsoid((-0.22 * W, -0.35 * D, 345.0), (14.0, 19.0, 30.0), angle=0.6)
    _add(p, Solid(gall, [(0.0, h["muscle"], 3.0), (1.5, h["fluid"], 3.0)]), organ="gallbladder")
    spleen = Ellipsoid((0.60 * W, 0.25 * D, 280.0), (0.17 * W, 0.42 * D, 55.0), angle=0.6)
    _add(p, Solid(spleen, [(0.0, h["spleen"], 6.0)]), organ="spleen")
    stomach = Ellipsoid(
        (0.32 * W, -0.30 * D, 265.0), (0.28 * W, 0.35 * D, 55.0), angle=-0.4, wobble=((3, 0.06, rng.uniform(0, 6)),)
    )
    content = -950.0 if rng.random() < 0.4 else rng.uniform(10, 40)
    _add(p, Solid(stomach, [(0.0, h["bowel_wall"], 5.0), (4.0, content, 12.0)]), organ="stomach")
    pancreas = _arc((0.40 * W, 0.18 * D, 305), (-0.10 * W, 0.0, 330), 2.0, lift=-0.15 * D, axis=1)
    _add(p, Tube(pancreas, np.full(len(pancreas), rng.uniform(9, 13)), [(0.0, h["pancreas"], 8.0)]), name="pancreas")
    for side in (-1, 1):
        kidney = Ellipsoid(
            (side * 0.42 * W, spine_y - 0.05 * D, 370.0 + side * 8), (27.0, 33.0, 55.0), angle=side * 0.5
        )
        _add(p, Solid(kidney, [(0.0, h["kidney"], 8.0)]), organ="kidney")
        sinus = Ellipsoid((side * 0.33 * W, spine_y - 0.12 * D, 370.0 + side * 8), (11.0, 14.0, 28.0), angle=side * 0.5)
        _add(p, Solid(sinus, [(0.0, h["fat"] + 30, 6.0), (5.0, h["fluid"], 3.0)]), organ="renal_sinus")

    # --- bowel: small-bowel loops (some collapsed: solid, node-like) and the colon --------
    solid_organs = [shape for organ in ("liver", "spleen", "kidney") for shape in p.organs[organ]]

    def in_abdomen(pt):
        """Inside the abdominal cavity and, by the widest loop's radius, outside the solid organs
        (the loops started at z 320 wound through the liver's lower half: collapsed ones were
        soft-tissue blobs inside liver parenchyma). The walk turns back when it leaves, so a path
        may stray a few steps past this margin, though not into the organs as painted (tested)."""
        if not 320 <= pt[2] <= 600:
            return False
        ax, ay = p.cavity_axes(pt[2])
        if (pt[0] / (0.8 * ax)) ** 2 + ((pt[1] + 0.25 * ay) / (0.65 * ay)) ** 2 >= 1:
            return False
        return all(_ball_misses(shape, pt, _BOWEL_REACH_MM) for shape in solid_organs)

    for _ in range(int(rng.integers(8, 15))):
        start = np.array([rng.uniform(-0.5, 0.5) * W, rng.uniform(-0.6, 0.0) * D, rng.uniform(360, 560)])
        if not in_abdomen(start):
            continue
        path = smooth_path(rng, start, rng.normal(0, 1, 3), rng.uniform(150, 450), 2.0, 0.03, in_abdomen)
        kind = rng.random()
        name = "bowel_loop"
        if kind < 0.3:  # collapsed loop: a solid soft-tissue tube
            layers, r, name = [(0.0, h["bowel_wall"], 8.0)], rng.uniform(5, 8), "collapsed_bowel_loop"
        elif kind < 0.7:
            layers, r = [(0.0, h["bowel_wall"], 6.0), (2.5, rng.uniform(5, 25), 5.0)], rng.uniform(9, 14)
        elif kind < 0.85:
            layers, r = [(0.0, h["bowel_wall"], 6.0), (2.5, -950.0, 20.0)], rng.uniform(9, 14)
        else:
            layers, r = [(0.0, h["bowel_wall"], 6.0), (2.5, rng.uniform(200, 350), 20.0)], rng.uniform(9, 14)
        _add(p, Tube(path, np.full(len(path), r), layers), name=name)
    # the flexures and the transverse colon hang below the liver (at z 330 they ran through it, 16%
    # of the colon drawn inside the liver in every patient)
    hz, sz = _HEPATIC_FLEXURE_Z_MM, _SPLENIC_FLEXURE_Z_MM
    colon = np.concatenate(
        [
            _line((-0.62 * W, -0.05 * D, 560), (-0.62 * W, -0.10 * D, hz), 2.0),
            _arc((-0.62 * W, -0.10 * D, hz), (0.62 * W, -0.10 * D, sz), 2.0, lift=-0.55 * D, axis=1),
            _line((0.62 * W, -0.10 * D, sz), (0.60 * W, 0.0, 520), 2.0),
            _arc((0.60 * W, 0.0, 520), (0.0, 0.15 * D, 560), 2.0, lift=-0.3 * D, axis=1),
        ]
    )
    _add(
        p,
        Tube(
            colon,
            np.full(len(colon), rng.uniform(17, 24)),
            [(0.0, h["bowel_wall"], 6.0), (2.5, rng.uniform(-700, -300), 200.0)],
        ),
        name="colon",
    )

    # --- pelvis -----------------------------------------------------------------------------
    bladder = Ellipsoid((0.0, -0.45 * D, 585.0), (42.0, 35.0, 40.0))
    _add(p, Solid(bladder, [(0.0, h["muscle"], 3.0), (3.0, h["fluid"], 3.0)]), organ="bladder")
    for side in (-1, 1):
        psoas = _line((side * 0.16 * W, spine_y - 0.05 * D, 330), (side * 0.36 * W, 0.05 * D, 560), 2.0)
        _add(p, Tube(psoas, np.linspace(10, 20, len(psoas)), [(0.0, h["muscle"], 6.0)]), name="psoas")
        wing = Ellipsoid((side * 0.60 * W, 0.30 * D, 495.0), (11.0, 0.42 * D, 55.0), angle=side * 0.75)
        _add(p, Solid(wing, [(0.0, h["cortical"], 20.0), (2.0, h["cancellous"], 25.0)]), organ="bone")
        head = Ellipsoid((side * 0.50 * W, 0.05 * D, 615.0), (23.0, 23.0, 23.0))
        _add(p, Solid(head, [(0.0, h["cortical"], 20.0), (2.0, h["cancellous"], 25.0)]), organ="bone")
    sacrum = Ellipsoid((0.0, spine_y + 0.05 * D, 525.0), (0.28 * W, 18.0, 50.0), angle=0.0)
    _add(p, Solid(sacrum, [(0.0, h["cortical"], 20.0), (2.0, h["cancellous"], 25.0)]), organ="bone")

    # --- spine, ribs, sternum ---------------------------------------------------------------
    z = -60.0
    while z < 480:
        height = 22.0 if z < 300 else 28.0
        radius = 15.0 if z < 150 else (18.0 if z < 330 else 21.0)
        body = Ellipsoid((0.0, spine_y, z + height / 2), (radius * 1.1, radius, height / 2), power=6.0)
        _add(p, Solid(body, [(0.0, h["cortical"], 20.0), (1.8, h["cancellous"], 25.0)]), organ="bone")
        disc = Ellipsoid((0.0, spine_y, z + height + 3.0), (radius * 1.05, radius * 0.95, 3.0), power=6.0)
        _add(p, Solid(disc, [(0.0, 85.0, 6.0)]), name="disc")
        arch = Ellipsoid((0.0, spine_y + radius + 12, z + height / 2), (15.0, 13.0, height / 2), power=4.0)
        _add(p, Solid(arch, [(0.0, h["cortical"], 20.0), (4.0, h["fluid"] + 10, 3.0)]), name="vertebral_arch")
        spinous = Ellipsoid((0.0, spine_y + radius + 33, z + height / 2), (5.0, 14.0, height / 2 - 2), power=4.0)
        _add(p, Solid(spinous, [(0.0, h["cortical"] * 0.8, 20.0)]), name="vertebral_arch")
        z += height + 6.0
    for side in (-1, 1):
        paraspinal = _line((side * 0.17 * W, spine_y + 35, -60), (side * 0.17 * W, spine_y + 30, 560), 3.0)
        _add(p, Tube(paraspinal, np.full(len(paraspinal), 0.13 * W + 8), [(0.0, h["muscle"], 6.0)]),
             name="paraspinal_muscle")
    for i in range(12):
        z0 = 15.0 + 24.0 * i
        reach = np.deg2rad(150 if i < 9 else 95)
        for side in (-1, 1):
            theta = np.linspace(np.deg2rad(25), reach, 60)
            zs = z0 + 75.0 * (theta / np.deg2rad(150)) ** 1.3
            pts = []
            for t, zz in zip(theta, zs):
                ax, ay = p.cavity_axes(zz)
                pts.append((side * (ax + 5) * np.sin(t), (ay + 5) * np.cos(t), zz))
            pts = np.array(pts)
            bone = pts[: int(len(pts) * 0.8)]
            _add(p, Tube(bone, np.full(len(bone), 4.5), [(0.0, h["cortical"], 20.0), (1.5, h["cancellous"], 20.0)]),
                 name="rib")
            cart = pts[int(len(pts) * 0.8) :]
            _add(p, Tube(cart, np.full(len(cart), 4.0), [(0.0, 130.0, 10.0)]), name="costal_cartilage")
    sternum = Ellipsoid((0.0, -0.98 * D + p.fat_mm * 0.8, 130.0), (14.0, 6.0, 90.0), power=4.0)
    _add(p, Solid(sternum, [(0.0, h["cortical"], 20.0), (1.5, h["cancellous"], 20.0)]), organ="bone")

    # --- normal lymph nodes (not lesions: short axis under 10 mm) ------------------------------
    obstacles = _Obstacles(p)  # what a node must keep clear of: all of the anatomy above, nodes aside
    for _ in range(int(rng.integers(10, 25))):
        centre = _node_centre(rng, p)
        short = rng.uniform(2.0, 4.5)
        axes = (short * rng.uniform(1.0, 1.8), short, short * rng.uniform(1.0, 2.0))
        angle = rng.uniform(0, np.pi)
        # Normal nodes lie in fat (reference-facts section 9): one that would touch an organ, a
        # vessel, bowel or bone moves to another spot of fat. Its new spots are drawn from a
        # generator seeded by what it drew, so the patient's rng stream (and the lesions drawn after
        # the anatomy) stays as it was; a node with no free spot in _NODE_TRIES is left out.
        local = np.random.default_rng(np.frombuffer(np.array([*centre, short]).tobytes(), np.uint32))
        for _ in range(_NODE_TRIES):
            if obstacles.clear(centre, max(axes) + _NODE_GAP_MM):
                _add(p, Solid(Ellipsoid(tuple(centre), axes, angle=angle), [(0.0, h["node"], 6.0)]), organ="node")
                break
            centre = _node_centre(local, p)


def _node_centre(rng: np.random.Generator, p: Patient) -> np.ndarray:
    """A candidate centre (body mm) for a normal node: mediastinal or axillary above z = 230 mm,
    retroperitoneal or mesenteric below."""
    W, D = p.half_width_mm, p.half_depth_mm
    zc = rng.uniform(40, 600)
    ax, _ = p.cavity_axes(zc)
    if zc < 230:
        if rng.random() < 0.6:
            return np.array([rng.uniform(-0.2, 0.2) * W, rng.uniform(-0.4, 0.2) * D, zc])
        return np.array([rng.choice([-1, 1]) * (ax + p.wall_mm + 5), rng.uniform(-0.3, 0.2) * D, zc])
    return np.array([rng.uniform(-0.3, 0.3) * W, rng.uniform(-0.5, 0.35) * D, zc])


class _Obstacles:
    """The structures of a patient other than fat and nodes, gathered once: every tube's sampled
    points and radii stacked, and the solids' ellipsoids."""

    def __init__(self, p: Patient):
        tubes = [s for n, s in zip(p.names, p.structures) if n not in _FAT_NAMES and isinstance(s, Tube)]
        self.points = np.concatenate([t.points for t in tubes]) if tubes else np.zeros((0, 3))
        self.radii = np.concatenate([t.radii for t in tubes]) if tubes else np.zeros(0)
        self.shapes = [s.shape for n, s in zip(p.names, p.structures) if n not in _FAT_NAMES and isinstance(s, Solid)]

    def clear(self, centre_mm: np.ndarray, reach_mm: float) -> bool:
        """Whether a ball of ``reach_mm`` around ``centre_mm`` (body mm) misses them all: conservative,
        an ellipsoid's wobble counted at its full amplitude."""
        if len(self.radii) and (np.linalg.norm(self.points - centre_mm, axis=1) - self.radii).min() < reach_mm:
            return False
        return all(_ball_misses(shape, centre_mm, reach_mm) for shape in self.shapes)


def _ball_misses(shape: Ellipsoid, centre_mm: np.ndarray, reach_mm: float) -> bool:
    """Whether a ball of ``reach_mm`` around ``centre_mm`` (body mm) misses ``shape``, checked on the
    sections through its centre, top and bottom: conservative, the wobble counted at its full amplitude."""
    x, y, z = centre_mm
    grow = 1.0 + shape.wobble_amplitude
    return all(_section_radius(shape, x, y, z + dz, grow, reach_mm) >= 1.0 for dz in (-reach_mm, 0.0, reach_mm))


@dataclass
class BodyColumn:
    """Skin and subcutaneous fat, the muscle wall and the visceral cavity, with a CT table below."""

    patient: Patient

    def paint(self, canvas: Canvas, z: int) -> None:
        p, h = self.patient, self.patient.hu
        zz = canvas.grid.z_mm[z]
        ax, ay = p.body_axes(zz)
        outer = Ellipsoid((0.0, 0.0, zz), (ax, ay, 1e9), wobble=((2, 0.02, 0.3), (3, 0.015, 1.0)))
        hit = outer.signed_distance(canvas.grid, z)
        if hit is None:
            return
        rows, cols, sd = hit
        canvas.paint(z, rows, cols, soft_alpha(sd), h["muscle"] + 10, 4.0)  # skin
        canvas.paint(z, rows, cols, soft_alpha(sd + 2.0), h["fat"], 6.0)
        canvas.paint(z, rows, cols, soft_alpha(sd + p.fat_mm), h["muscle"], 6.0)
        canvas.paint(z, rows, cols, soft_alpha(sd + p.fat_mm + p.wall_mm), h["fat"], 6.0)
        # the patient table: a thin curved plate below the back; MULAN's 7x7 opening removes it
        grid = canvas.grid
        table_y = ay + 25.0
        r0, r1 = grid.row_range(table_y - 3, table_y + 16)
        c0, c1 = grid.col_range(-1.3 * ax, 1.3 * ax)
        if r0 < r1 and c0 < c1:
            yy = grid.y_mm[r0:r1, None] - table_y - (grid.x_mm[None, c0:c1] / (1.3 * ax)) ** 2 * 12
            alpha = np.clip(1.2 - np.abs(yy - 6) / 1.2, 0, 1) + np.clip(1.0 - np.abs(yy) / 1.0, 0, 1)
            canvas.paint(z, slice(r0, r1), slice(c0, c1), np.clip(alpha, 0, 1), 150.0)


def _line(a, b, step: float) -> np.ndarray:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = max(2, int(np.linalg.norm(b - a) / step) + 1)
    return a + np.linspace(0, 1, n)[:, None] * (b - a)


def _arc(a, b, step: float, lift: float, axis: int = 2) -> np.ndarray:
    """A curve from a to b bowed by ``lift`` mm along ``axis`` at its middle."""
    pts = _line(a, b, step)
    t = np.linspace(0, 1, len(pts))
    pts[:, axis] += lift * np.sin(np.pi * t) * (-1 if axis == 2 else 1)
    return pts


class _Probe(Canvas):
    """A canvas that paints nothing: it records whether a structure covers one pixel."""

    def __init__(self, grid: Grid, row: int, col: int):
        super().__init__(grid, np.zeros((0, 0, 0), np.float32), np.zeros((0, 0, 0), np.float32))
        self.row, self.col, self.covered = row, col, False

    def paint(self, z: int, rows: slice, cols: slice, alpha: np.ndarray, value, texture_hu: float = 0.0) -> None:
        if rows.start <= self.row < rows.stop and cols.start <= self.col < cols.stop:
            self.covered |= bool(alpha[self.row - rows.start, self.col - cols.start] >= 0.5)


def structures_at(patient: Patient, grid: Grid, z_index: int, row: int, col: int) -> list[str]:
    """The names of the structures painted at least half over pixel (row, col) of slice ``z_index``
    of ``grid``, in painting order: the last is the one the rendered volume shows (lesions, painted
    after the anatomy, are not structures); empty outside the body."""
    names = []
    for name, structure in zip(patient.names, patient.structures):
        probe = _Probe(grid, row, col)
        structure.paint(probe, z_index)
        if probe.covered:
            names.append(name)
    return names


def structure_at(patient: Patient, grid: Grid, z_index: int, row: int, col: int) -> str | None:
    """The name of the structure seen at pixel (row, col) of slice ``z_index`` (:func:`structures_at`'s
    last), or None outside the body."""
    names = structures_at(patient, grid, z_index, row, col)
    return names[-1] if names else None
