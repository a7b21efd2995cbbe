"""Soft-edged shape primitives painted into a (Z, Y, X) HU canvas.

Geometry is in millimetres of a body frame: x to the patient's left (image right), y to the
back (image down), z toward the feet. A :class:`Grid` maps it to voxels. Shapes give a signed
distance to their surface (negative inside) on the slices and pixels they touch; painting blends
``value`` in with alpha = clip(0.5 - sd / edge_mm, 0, 1), a partial-volume-like soft edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EDGE_MM = 1.2


@dataclass(frozen=True)
class Grid:
    """Slice positions and pixel centres in body millimetres.

    z_mm: (Z,) body z of each slice; y_mm: (H,); x_mm: (W,); pixel_mm: in-plane spacing.
    """

    z_mm: np.ndarray
    y_mm: np.ndarray
    x_mm: np.ndarray
    pixel_mm: float

    @classmethod
    def make(cls, z_mm: np.ndarray, size_px: int, pixel_mm: float, centre_xy_mm=(0.0, 0.0)) -> Grid:
        offsets = (np.arange(size_px) - (size_px - 1) / 2.0) * pixel_mm
        return cls(np.asarray(z_mm, dtype=np.float64), offsets + centre_xy_mm[1], offsets + centre_xy_mm[0], pixel_mm)

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.z_mm), len(self.y_mm), len(self.x_mm)

    def col_range(self, lo_mm: float, hi_mm: float) -> tuple[int, int]:
        return _index_range(self.x_mm, lo_mm, hi_mm)

    def row_range(self, lo_mm: float, hi_mm: float) -> tuple[int, int]:
        return _index_range(self.y_mm, lo_mm, hi_mm)

    def to_px(self, x_mm: float, y_mm: float) -> tuple[float, float]:
        """Body mm -> (column, row) pixel coordinates."""
        return (x_mm - self.x_mm[0]) / self.pixel_mm, (y_mm - self.y_mm[0]) / self.pixel_mm


def _index_range(axis: np.ndarray, lo: float, hi: float) -> tuple[int, int]:
    i0 = int(np.searchsorted(axis, lo, side="left"))
    i1 = int(np.searchsorted(axis, hi, side="right"))
    return max(i0, 0), min(i1, len(axis))


def soft_alpha(sd_mm: np.ndarray, edge_mm: float = EDGE_MM) -> np.ndarray:
    return np.clip(0.5 - sd_mm / edge_mm, 0.0, 1.0)


@dataclass
class Canvas:
    """The HU volume being painted, with a shared smooth texture field for tissue mottling."""

    grid: Grid
    hu: np.ndarray  # (Z, H, W) float32
    texture: np.ndarray  # (Z, H, W) float32, unit-variance smooth noise

    def paint(
        self, z: int, rows: slice, cols: slice, alpha: np.ndarray, value: float | np.ndarray, texture_hu: float = 0.0
    ) -> None:
        region = self.hu[z, rows, cols]
        target = value if texture_hu == 0 else value + texture_hu * self.texture[z, rows, cols]
        region += alpha * (target - region)


@dataclass
class Ellipsoid:
    """An ellipsoid-like solid: per slice a (possibly wobbly) ellipse.

    The cross-section at body z has semi-axes ``(ax, ay) * profile`` with
    ``profile = (1 - |dz / az|^p)^(1/p)`` (p = 2: a true ellipsoid; larger p: flatter ends), its
    centre drifting by ``tilt_xy`` mm per mm of z. ``wobble`` are (k, amplitude, phase) Fourier
    terms of the boundary radius, for organ- and lesion-like irregular outlines.
    """

    centre: tuple[float, float, float]
    axes: tuple[float, float, float]
    angle: float = 0.0
    power: float = 2.0
    tilt_xy: tuple[float, float] = (0.0, 0.0)
    wobble: tuple[tuple[int, float, float], ...] = ()

    @property
    def wobble_amplitude(self) -> float:
        """The most the wobble can push the boundary out, as a fraction of the radius."""
        return sum(abs(a) for _, a, _ in self.wobble)

    def z_extent(self) -> tuple[float, float]:
        return self.centre[2] - self.axes[2], self.centre[2] + self.axes[2]

    def section(self, z_mm: float) -> tuple[float, float, float, float] | None:
        """(cx, cy, ax, ay) of the cross-section at z, or None if the slice misses it."""
        dz = z_mm - self.centre[2]
        t = abs(dz) / self.axes[2]
        if t >= 1.0:
            return None
        s = (1.0 - t**self.power) ** (1.0 / self.power)
        return (
            self.centre[0] + self.tilt_xy[0] * dz,
            self.centre[1] + self.tilt_xy[1] * dz,
            self.axes[0] * s,
            self.axes[1] * s,
        )

    def signed_distance(self, grid: Grid, z: int, margin_mm: float = 2.0):
        """(rows, cols, sd_mm) on slice z, or None. sd is approximate (exact on the axes)."""
        sec = self.section(grid.z_mm[z])
        if sec is None:
            return None
        cx, cy, ax, ay = sec
        reach = max(ax, ay) * (1 + self.wobble_amplitude) + margin_mm
        r0, r1 = grid.row_range(cy - reach, cy + reach)
        c0, c1 = grid.col_range(cx - reach, cx + reach)
        if r0 >= r1 or c0 >= c1:
            return None
        dy = grid.y_mm[r0:r1, None] - cy
        dx = grid.x_mm[None, c0:c1] - cx
        cos_a, sin_a = np.cos(self.angle), np.sin(self.angle)
        u = dx * cos_a + dy * sin_a
        v = -dx * sin_a + dy * cos_a
        d = np.sqrt(u * u + v * v)
        r = np.sqrt((u / max(ax, 1e-3)) ** 2 + (v / max(ay, 1e-3)) ** 2)
        if self.wobble:
            phi = np.arctan2(v, u)
            scale = 1.0 + sum(a * np.cos(k * phi + p) for k, a, p in self.wobble)
            r = r / np.maximum(scale, 0.2)
        with np.errstate(divide="ignore", invalid="ignore"):
            boundary = np.where(r > 1e-6, d / r, min(ax, ay))
        sd = (r - 1.0) * boundary
        return slice(r0, r1), slice(c0, c1), sd


@dataclass
class Tube:
    """A tube along sampled points: the union of spheres of radius ``radii`` at ``points``.

    ``layers`` are (inset_mm, value_hu, texture_hu): layer 0 fills the whole tube (a wall), a
    later layer inset by its wall thickness fills the lumen, and so on.
    """

    points: np.ndarray  # (N, 3) body mm (x, y, z), consecutive samples about 1-2 mm apart
    radii: np.ndarray  # (N,)
    layers: list[tuple[float, float, float]] = field(default_factory=list)

    def runs_on_slice(self, z_mm: float):
        """Contiguous runs of sample indices whose sphere cuts the slice, with section radii."""
        dz = np.abs(self.points[:, 2] - z_mm)
        cut = dz < self.radii
        if not cut.any():
            return []
        idx = np.flatnonzero(cut)
        splits = np.flatnonzero(np.diff(idx) > 1) + 1
        rc = np.sqrt(np.maximum(self.radii[idx] ** 2 - dz[idx] ** 2, 0.0))
        return [(run, rc_run) for run, rc_run in zip(np.split(idx, splits), np.split(rc, splits))]

    def paint(self, canvas: Canvas, z: int) -> None:
        grid = canvas.grid
        for run, rc in self.runs_on_slice(grid.z_mm[z]):
            pts = self.points[run]
            reach = rc.max() + 2.0
            r0, r1 = grid.row_range(pts[:, 1].min() - reach, pts[:, 1].max() + reach)
            c0, c1 = grid.col_range(pts[:, 0].min() - reach, pts[:, 0].max() + reach)
            if r0 >= r1 or c0 >= c1:
                continue
            sd = _union_of_discs(grid.x_mm[c0:c1], grid.y_mm[r0:r1], pts[:, 0], pts[:, 1], rc)
            rows, cols = slice(r0, r1), slice(c0, c1)
            for inset, value, texture in self.layers:
                alpha = soft_alpha(sd + inset)
                if alpha.any():
                    canvas.paint(z, rows, cols, alpha, value, texture)


def _union_of_discs(xs: np.ndarray, ys: np.ndarray, px: np.ndarray, py: np.ndarray, rc: np.ndarray) -> np.ndarray:
    """Signed distance (H, W) to the union of discs (px, py, rc), processed in chunks."""
    sd = np.full((len(ys), len(xs)), np.inf, dtype=np.float32)
    for start in range(0, len(px), 64):
        sl = slice(start, start + 64)
        dx = xs[None, None, :] - px[sl, None, None]
        dy = ys[None, :, None] - py[sl, None, None]
        d = np.sqrt(dx * dx + dy * dy) - rc[sl, None, None]
        np.minimum(sd, d.min(axis=0), out=sd)
    return sd


def smooth_path(
    rng: np.random.Generator,
    start: np.ndarray,
    direction: np.ndarray,
    length_mm: float,
    step_mm: float,
    curvature: float,
    inside=None,
    max_turns: int = 50,
) -> np.ndarray:
    """A smooth random 3D path (N, 3) from ``start``: a persistent random walk.

    ``curvature`` is the standard deviation of the direction change per mm. When ``inside`` is
    given (a callable on an (3,) point), the walk turns back toward the start on leaving it.
    """
    n = max(2, int(length_mm / step_mm))
    pts = np.empty((n, 3))
    pos = np.asarray(start, dtype=np.float64).copy()
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    turns = 0
    for i in range(n):
        pts[i] = pos
        d = d + rng.normal(0.0, curvature * np.sqrt(step_mm), 3)
        d /= np.linalg.norm(d)
        nxt = pos + d * step_mm
        if inside is not None and not inside(nxt):
            turns += 1
            if turns > max_turns:
                return pts[: i + 1]
            back = np.asarray(start) - pos
            back[2] *= 0.3
            d = back / (np.linalg.norm(back) + 1e-9) + rng.normal(0, 0.3, 3)
            d /= np.linalg.norm(d)
            nxt = pos + d * step_mm
        pos = nxt
    return pts
