"""Synthetic lesions: DeepLesion-like types, sizes, CT values, placement and RECIST marks.

Statistics follow ../shared/notes/reference-facts.md section 8: the long diameter is a split
log-normal with median 12 mm and 10th/90th percentiles 6 and 34 mm (clipped to 4-100 mm), about
3.8 lesions per volume (median 3, up to a few dozen). CT values follow section 9.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from lesion_harvester.synth.anatomy import Patient
from lesion_harvester.synth.shapes import Canvas, Ellipsoid, soft_alpha

# Long-diameter distribution (mm): split log-normal around the median.
SIZE_MEDIAN_MM, SIZE_P10_MM, SIZE_P90_MM = 12.0, 6.0, 34.0
SIZE_MIN_MM, SIZE_MAX_MM = 4.0, 100.0
Z90 = 1.2816

# name: (DL_info coarse type, weight, largest plausible long diameter in mm)
LESION_KINDS = {
    "liver": (4, 0.22, 100.0),
    "lung": (5, 0.26, 60.0),
    "lymph_node": (3, 0.50, 60.0),  # only >= 11 mm (enlarged); coarse type 3 above the diaphragm, 2 below
    "kidney": (6, 0.07, 50.0),
    "bone": (1, 0.03, 32.0),
    "spleen": (2, 0.05, 50.0),
    "soft_tissue": (7, 0.07, 100.0),
}
# body z range (mm) where each kind can sit
KIND_Z_RANGE = {
    "liver": (215, 385),
    "lung": (10, 280),
    "lymph_node": (40, 600),
    "kidney": (320, 420),
    "bone": (-40, 620),
    "spleen": (235, 325),
    "soft_tissue": (0, 620),
}
DICOM_WINDOWS = {"lung": (-1350.0, 150.0), "bone": (-450.0, 1050.0)}
DEFAULT_WINDOW = (-175.0, 275.0)
PAD_PX = 5.0


def sample_long_diameter_mm(rng: np.random.Generator) -> float:
    z = rng.normal()
    sigma = (
        (np.log(SIZE_MEDIAN_MM) - np.log(SIZE_P10_MM)) / Z90
        if z < 0
        else (np.log(SIZE_P90_MM) - np.log(SIZE_MEDIAN_MM)) / Z90
    )
    return float(np.clip(np.exp(np.log(SIZE_MEDIAN_MM) + sigma * z), SIZE_MIN_MM, SIZE_MAX_MM))


# smallest plausible long diameter: an enlarged lymph node has a short axis over 10 mm (reference
# facts section 9); smaller nodes are normal anatomy, which the phantom paints as such
KIND_MIN_MM = {"lymph_node": 11.0}
NODE_MIN_SHORT_MM = 10.0


def sample_kind(rng: np.random.Generator, long_mm: float, z_range_mm: tuple[float, float] | None = None) -> str:
    """A lesion kind that fits this size and, if given, whose host organs lie in the body z range.

    Choosing among the kinds that can be placed (instead of retrying failed placements with a new
    size) keeps the size distribution unbiased.
    """
    names = [k for k, (_, _, cap) in LESION_KINDS.items() if KIND_MIN_MM.get(k, 0.0) <= long_mm <= cap
             and (z_range_mm is None or (KIND_Z_RANGE[k][0] <= z_range_mm[1] and KIND_Z_RANGE[k][1] >= z_range_mm[0]))]
    weights = np.array([LESION_KINDS[k][1] for k in names])
    return str(rng.choice(names, p=weights / weights.sum()))


def sample_lesion_count(rng: np.random.Generator, max_count: int) -> int:
    """1 + negative binomial: mean about 3.8, median 3, a long tail (DeepLesion V_M: 4.1 / 3 / 24)."""
    return int(min(1 + rng.negative_binomial(1.3, 1.3 / (1.3 + 2.8)), max_count))


@dataclass
class LesionSpec:
    kind: str
    shape: Ellipsoid
    layers: list[tuple[float, float, float]]
    host_hu: float


@dataclass
class RenderedLesion:
    """A painted lesion with its ground truth on the volume's pixel grid."""

    kind: str
    coarse_type: int
    key_z: int
    z_range: tuple[int, int]
    recist_px: tuple[float, ...]  # long x1, y1, x2, y2, short x3, y3, x4, y4
    diameters_px: tuple[float, float]
    box_xyxy_px: tuple[float, float, float, float]  # RECIST extent + 5 px, as DeepLesion
    box3d_xyxy_px: tuple[float, float, float, float]
    centre_mm: tuple[float, float, float]
    value_hu: float
    host_hu: float


def _lesion_value(rng, kind: str, patient: Patient, host_hu: float) -> tuple[list, float]:
    """Layers (inset, HU, texture) and the main HU of a lesion of this kind in this host."""
    h = patient.hu
    if kind == "liver":
        if rng.random() < (0.5 if patient.phase == "arterial" else 0.12):
            value = host_hu + rng.uniform(25, 60)  # hyperdense (hypervascular)
        else:
            value = host_hu - rng.uniform(20, 60)
    elif kind == "lung":
        value = rng.uniform(-650, -350) if rng.random() < 0.15 else rng.uniform(20, 60)
    elif kind == "lymph_node":
        value = rng.uniform(30, 60)
    elif kind == "kidney":
        value = rng.uniform(0, 20) if rng.random() < 0.5 else rng.uniform(35, 90)
    elif kind == "bone":
        value = rng.uniform(600, 900) if rng.random() < 0.2 else rng.uniform(20, 120)
    elif kind == "spleen":
        value = host_hu - rng.uniform(30, 70)
    else:  # soft tissue: a mass in fat or muscle
        value = rng.uniform(25, 60) if host_hu < -30 else h["muscle"] + rng.choice([-1, 1]) * rng.uniform(15, 30)
    layers = [(0.0, value, rng.uniform(5, 12))]
    return layers, float(value)


def _host_ok(kind: str, patient: Patient, canvas: Canvas, centre_mm: np.ndarray, z_index: int) -> float | None:
    """HU of the host tissue at the centre if this kind of lesion may sit there, else None."""
    grid = canvas.grid
    col = int(round((centre_mm[0] - grid.x_mm[0]) / grid.pixel_mm))
    row = int(round((centre_mm[1] - grid.y_mm[0]) / grid.pixel_mm))
    if not (2 <= row < grid.shape[1] - 2 and 2 <= col < grid.shape[2] - 2):
        return None
    hu = float(np.median(canvas.hu[z_index, row - 1 : row + 2, col - 1 : col + 2]))
    h = patient.hu
    ax, ay = patient.cavity_axes(float(centre_mm[2]))
    in_cavity = (centre_mm[0] / ax) ** 2 + (centre_mm[1] / ay) ** 2 < 0.9
    checks = {
        "liver": patient.in_organ("liver", centre_mm, 0.8) and abs(hu - h["liver"]) < 25,
        "lung": patient.in_organ("lung", centre_mm, 0.9) and hu < -600,
        "lymph_node": in_cavity and abs(hu - h["fat"]) < 40,
        "kidney": patient.in_organ("kidney", centre_mm, 0.8) and abs(hu - h["kidney"]) < 45,
        "bone": patient.in_organ("bone", centre_mm, 0.75) and h["cancellous"] - 80 < hu < h["cancellous"] + 100,
        "spleen": patient.in_organ("spleen", centre_mm, 0.8) and abs(hu - h["spleen"]) < 25,
        "soft_tissue": (not in_cavity) and (abs(hu - h["fat"]) < 40 or abs(hu - h["muscle"]) < 25),
    }
    return hu if checks[kind] else None


def _propose_centre(rng, kind: str, patient: Patient, z_mm: float) -> np.ndarray:
    """A candidate centre near where this kind lives (checked afterwards by _host_ok)."""
    organ = {"liver": "liver", "lung": "lung", "kidney": "kidney", "bone": "bone", "spleen": "spleen"}.get(kind)
    if organ is not None:
        sections = [(s, s.section(z_mm)) for s in patient.organs.get(organ, [])]
        sections = [(s, sec) for s, sec in sections if sec is not None]
        if sections:
            shape, (cx, cy, ax, ay) = sections[int(rng.integers(len(sections)))]
            r, t = np.sqrt(rng.random()) * 0.85, rng.uniform(0, 2 * np.pi)
            u, v = r * ax * np.cos(t), r * ay * np.sin(t)
            c, s = np.cos(shape.angle), np.sin(shape.angle)
            return np.array([cx + u * c - v * s, cy + u * s + v * c, z_mm])
    bx, by = patient.body_axes(z_mm)
    r = np.sqrt(rng.random()) if kind != "soft_tissue" else rng.uniform(0.8, 1.0)
    t = rng.uniform(0, 2 * np.pi)
    return np.array([r * bx * np.cos(t), r * by * np.sin(t), z_mm])


def place_lesion(
    rng,
    kind: str,
    long_mm: float,
    patient: Patient,
    canvas: Canvas,
    z_lo: int,
    z_hi: int,
    others: list[np.ndarray],
    tries: int = 200,
) -> LesionSpec | None:
    """Find a host position for a lesion whose centre slice lies in [z_lo, z_hi]; None if none fits."""
    grid = canvas.grid
    kz0, kz1 = KIND_Z_RANGE[kind]
    candidates = [z for z in range(z_lo, z_hi + 1) if kz0 <= grid.z_mm[z] <= kz1]
    if not candidates:
        return None
    w2, w3 = (
        (rng.uniform(0.0, 0.05), 0.0) if kind == "lymph_node" else (rng.uniform(0.02, 0.10), rng.uniform(0.0, 0.06))
    )
    # the wobble stretches the outline; shrink the axes so the measured long diameter stays long_mm
    a = long_mm / 2.0 / (1.0 + 0.7 * (w2 + w3))
    b = a * rng.uniform(0.55, 1.0)
    if kind == "lymph_node":  # enlarged: short axis over 10 mm
        b = min(a, max(b, NODE_MIN_SHORT_MM / 2.0 + 0.25))
    c = np.sqrt(a * b) * rng.uniform(0.75, 1.3)
    for _ in range(tries):
        z_index = int(rng.choice(candidates))
        z_mm = grid.z_mm[z_index] + rng.uniform(-0.4, 0.4) * (grid.z_mm[1] - grid.z_mm[0] if len(grid.z_mm) > 1 else 0)
        centre = _propose_centre(rng, kind, patient, z_mm)
        if any(np.linalg.norm(centre - o[:3]) < a + o[3] + 2.0 for o in others):
            continue
        host = _host_ok(kind, patient, canvas, centre, z_index)
        if host is None:
            continue
        wobble = ((2, w2, rng.uniform(0, 6)), (3, w3, rng.uniform(0, 6)))
        shape = Ellipsoid(
            tuple(centre),
            (a, b, c),
            angle=rng.uniform(0, np.pi),
            power=2.0,
            tilt_xy=(rng.normal(0, 0.15), rng.normal(0, 0.15)),
            wobble=wobble,
        )
        layers, value = _lesion_value(rng, kind, patient, host)
        if long_mm > 25 and kind in ("liver", "lymph_node", "soft_tissue") and rng.random() < 0.3:
            layers.append((0.35 * b, value - rng.uniform(15, 40), 8.0))  # necrotic centre
        return LesionSpec(kind, shape, layers, host)
    return None


def lesion_alpha(spec: LesionSpec, canvas: Canvas, z: int, sub_offsets_mm: np.ndarray):
    """Per-layer alpha on slice z, averaged over sub-slice positions (partial volume of thick slices).

    Returns (rows, cols, [alpha per layer]) or None.
    """
    grid = canvas.grid
    shape = spec.shape
    reach = max(shape.axes[:2]) * 1.25 + 3.0 + np.hypot(*shape.tilt_xy) * shape.axes[2]
    cx, cy = shape.centre[:2]
    r0, r1 = grid.row_range(cy - reach, cy + reach)
    c0, c1 = grid.col_range(cx - reach, cx + reach)
    if r0 >= r1 or c0 >= c1:
        return None
    alphas = [np.zeros((r1 - r0, c1 - c0), dtype=np.float32) for _ in spec.layers]
    hits = 0
    for offset in sub_offsets_mm:
        sd = _section_sd(shape, grid, grid.z_mm[z] + offset, r0, r1, c0, c1)
        if sd is None:
            continue
        hits += 1
        for alpha, (inset, _, _) in zip(alphas, spec.layers):
            alpha += soft_alpha(sd + inset)
    if hits == 0:
        return None
    return slice(r0, r1), slice(c0, c1), [a / len(sub_offsets_mm) for a in alphas]


def _section_sd(shape: Ellipsoid, grid, z_mm: float, r0, r1, c0, c1):
    sec = shape.section(z_mm)
    if sec is None:
        return None
    cx, cy, ax, ay = sec
    dy = grid.y_mm[r0:r1, None] - cy
    dx = grid.x_mm[None, c0:c1] - cx
    ca, sa = np.cos(shape.angle), np.sin(shape.angle)
    u, v = dx * ca + dy * sa, -dx * sa + dy * ca
    d = np.sqrt(u * u + v * v)
    r = np.sqrt((u / max(ax, 1e-3)) ** 2 + (v / max(ay, 1e-3)) ** 2)
    phi = np.arctan2(v, u)
    r = r / np.maximum(1.0 + sum(a * np.cos(k * phi + p) for k, a, p in shape.wobble), 0.2)
    with np.errstate(divide="ignore", invalid="ignore"):
        boundary = np.where(r > 1e-6, d / r, min(ax, ay))
    return (r - 1.0) * boundary


def render_lesion(
    spec: LesionSpec, canvas: Canvas, sub_offsets_mm: np.ndarray, min_area_px: int = 4
) -> RenderedLesion | None:
    """Paint the lesion and measure its ground truth; None (nothing painted) if it is not visible."""
    grid = canvas.grid
    per_slice = {}
    for z in range(grid.shape[0]):
        hit = lesion_alpha(spec, canvas, z, sub_offsets_mm)
        if hit is not None and (hit[2][0] >= 0.5).sum() > 0:
            per_slice[z] = hit
    areas = {z: int((hit[2][0] >= 0.5).sum()) for z, hit in per_slice.items()}
    if not areas or max(areas.values()) < min_area_px:
        return None
    key_z = max(areas, key=lambda z: (areas[z], -abs(grid.z_mm[z] - spec.shape.centre[2])))
    rows, cols, alphas = per_slice[key_z]
    recist = recist_from_mask(alphas[0] >= 0.5, cols.start, rows.start)
    if recist is None:
        return None
    for z, (rows_z, cols_z, alphas_z) in per_slice.items():
        for alpha, (_, value, texture) in zip(alphas_z, spec.layers):
            canvas.paint(z, rows_z, cols_z, alpha, value, texture)
    long_pts, short_pts = recist
    xs = np.concatenate([long_pts[:, 0], short_pts[:, 0]])
    ys = np.concatenate([long_pts[:, 1], short_pts[:, 1]])
    box = (xs.min() - PAD_PX, ys.min() - PAD_PX, xs.max() + PAD_PX, ys.max() + PAD_PX)
    zs = sorted(per_slice)
    tight = []
    for z in zs:
        rows_z, cols_z, alphas_z = per_slice[z]
        m = alphas_z[0] >= 0.5
        rr, cc = np.nonzero(m)
        tight.append(
            (cc.min() + cols_z.start, rr.min() + rows_z.start, cc.max() + cols_z.start, rr.max() + rows_z.start)
        )
    tight = np.array(tight, dtype=np.float64)
    box3d = (
        tight[:, 0].min() - PAD_PX,
        tight[:, 1].min() - PAD_PX,
        tight[:, 2].max() + PAD_PX,
        tight[:, 3].max() + PAD_PX,
    )
    code = LESION_KINDS[spec.kind][0]
    if spec.kind == "lymph_node" and spec.shape.centre[2] > 240:
        code = 2 if spec.shape.centre[2] < 470 else 8
    return RenderedLesion(
        kind=spec.kind,
        coarse_type=code,
        key_z=int(key_z),
        z_range=(int(zs[0]), int(zs[-1])),
        recist_px=tuple(float(v) for v in np.concatenate([long_pts.ravel(), short_pts.ravel()])),
        diameters_px=(
            float(np.linalg.norm(long_pts[1] - long_pts[0])),
            float(np.linalg.norm(short_pts[1] - short_pts[0])),
        ),
        box_xyxy_px=tuple(float(v) for v in box),  # type: ignore[arg-type]
        box3d_xyxy_px=tuple(float(v) for v in box3d),  # type: ignore[arg-type]
        centre_mm=tuple(float(v) for v in spec.shape.centre),  # type: ignore[arg-type]
        value_hu=float(spec.layers[0][1]),
        host_hu=float(spec.host_hu),
    )


def recist_from_mask(mask: np.ndarray, col0: int = 0, row0: int = 0):
    """RECIST axes of a 2D mask in image pixels: ((2, 2) long axis, (2, 2) short axis) as (x, y) points.

    Long axis: the longest distance between pixel centres of the mask (hull vertices); short
    axis: the longest chord perpendicular to it. Each endpoint is then moved half a pixel outward
    along its axis, onto the outer pixel edge, as a reader marks the lesion's edges.
    """
    rr, cc = np.nonzero(mask)
    if len(rr) == 0:
        return None
    pts = np.column_stack([cc, rr]).astype(np.float64) + np.array([col0, row0])
    try:
        hull = pts[ConvexHull(pts).vertices]
    except (QhullError, ValueError):  # fewer than 3 points, or all on one line
        hull = pts
    diff = hull[:, None, :] - hull[None, :, :]
    dist = np.sqrt((diff**2).sum(-1))
    i, j = np.unravel_index(np.argmax(dist), dist.shape)
    p1, p2 = hull[i], hull[j]
    length = dist[i, j]
    u = (p2 - p1) / length if length > 0 else np.array([1.0, 0.0])
    n = np.array([-u[1], u[0]])
    t_v, s_v = (hull - p1) @ u, (hull - p1) @ n
    best = (-1.0, 0.0, 0.0, 0.0)
    m = len(hull)
    for t in np.linspace(0, length, max(5, int(length * 2))):
        ss = []
        for a in range(m):
            b = (a + 1) % m
            ta, tb = t_v[a], t_v[b]
            if (ta - t) * (tb - t) <= 0 and ta != tb:
                ss.append(s_v[a] + (t - ta) / (tb - ta) * (s_v[b] - s_v[a]))
        if len(ss) >= 2 and max(ss) - min(ss) > best[0]:
            best = (max(ss) - min(ss), t, min(ss), max(ss))
    _, t, s0, s1 = best
    # centres -> outer pixel edges: half a pixel beyond each endpoint along its axis
    long_axis = np.array([p1 - 0.5 * u, p2 + 0.5 * u])
    short_axis = np.array([p1 + t * u + (s0 - 0.5) * n, p1 + t * u + (s1 + 0.5) * n])
    return long_axis, short_axis
