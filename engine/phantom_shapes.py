"""Rasterising primitives for the synthetic phantom: a voxel grid in LPS millimetres and solids on it.

Every solid is evaluated only inside its own bounding box, so drawing a hundred small vessels costs
about as much as one full-volume comparison. A solid is returned as a ``Region``: the index slices
of its bounding box and a boolean mask of that box's shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Slices = tuple[slice, slice, slice]
Region = tuple[Slices, np.ndarray]


class Grid:
    """An axis-aligned voxel grid (identity direction) with world coordinates along each axis.

    Parameters
    ----------
    shape
        ``(z, y, x)`` voxel counts.
    spacing
        ``(z, y, x)`` voxel size in mm.
    origin
        LPS world position ``(x, y, z)`` in mm of voxel ``[0, 0, 0]``.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        spacing: tuple[float, float, float],
        origin: tuple[float, float, float],
    ) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.origin = tuple(float(o) for o in origin)
        nz, ny, nx = self.shape
        sz, sy, sx = self.spacing
        ox, oy, oz = self.origin
        self.x = (ox + sx * np.arange(nx)).astype(np.float32)
        self.y = (oy + sy * np.arange(ny)).astype(np.float32)
        self.z = (oz + sz * np.arange(nz)).astype(np.float32)

    def bbox(self, lo: Sequence[float], hi: Sequence[float]) -> Slices | None:
        """Index slices covering the world box ``lo..hi`` (both ``(x, y, z)``); None when outside."""
        out = []
        for axis, coords in ((2, self.z), (1, self.y), (0, self.x)):
            step = self.spacing[2 - axis]
            start = self.origin[axis]
            i0 = max(int(math.floor((lo[axis] - start) / step)), 0)
            i1 = min(int(math.ceil((hi[axis] - start) / step)) + 1, coords.size)
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)  # type: ignore[return-value]

    def block(self, sl: Slices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable world coordinates ``(X, Y, Z)`` of the voxels of a bounding box."""
        return (
            self.x[sl[2]][None, None, :],
            self.y[sl[1]][None, :, None],
            self.z[sl[0]][:, None, None],
        )

    def nearest_index(self, point: Sequence[float]) -> tuple[int, int, int] | None:
        """The ``(z, y, x)`` index of the voxel nearest to a world point, None when off the grid."""
        idx = []
        for axis, n in ((2, self.shape[0]), (1, self.shape[1]), (0, self.shape[2])):
            i = int(round((point[axis] - self.origin[axis]) / self.spacing[2 - axis]))
            if not 0 <= i < n:
                return None
            idx.append(i)
        return tuple(idx)  # type: ignore[return-value]


def ellipsoid(
    grid: Grid,
    center: Sequence[float],
    semi: Sequence[float],
    axes: np.ndarray | None = None,
) -> Region | None:
    """A solid ellipsoid; ``axes`` holds its unit axes as columns (world frame), default identity."""
    c = np.asarray(center, dtype=np.float64)
    a = np.asarray(semi, dtype=np.float64)
    rot = np.eye(3) if axes is None else np.asarray(axes, dtype=np.float64)
    half = np.sqrt(((rot * a[None, :]) ** 2).sum(axis=1))
    sl = grid.bbox(c - half, c + half)
    if sl is None:
        return None
    X, Y, Z = grid.block(sl)
    dx, dy, dz = X - c[0], Y - c[1], Z - c[2]
    q = np.zeros(np.broadcast_shapes(dx.shape, dy.shape, dz.shape), dtype=np.float32)
    for j in range(3):
        proj = rot[0, j] * dx + rot[1, j] * dy + rot[2, j] * dz
        q += (proj / a[j]) ** 2
    return sl, q <= 1.0


def ball(grid: Grid, center: Sequence[float], radius: float) -> Region | None:
    """A solid sphere that always holds at least the voxel nearest to its centre.

    Small calcifications and nodules would otherwise vanish between voxel centres on a coarse grid.
    """
    reg = ellipsoid(grid, center, (radius, radius, radius))
    near = grid.nearest_index(center)
    if reg is None or near is None:
        return reg
    sl, m = reg
    local = tuple(i - s.start for i, s in zip(near, sl))
    if all(0 <= li < n for li, n in zip(local, m.shape)):
        m[local] = True
    return sl, m


def capsule(
    grid: Grid,
    p0: Sequence[float],
    p1: Sequence[float],
    r0: float,
    r1: float | None = None,
) -> Region | None:
    """A tube from ``p0`` to ``p1`` with radius tapering from ``r0`` to ``r1`` and rounded ends."""
    r1 = r0 if r1 is None else r1
    a = np.asarray(p0, dtype=np.float64)
    b = np.asarray(p1, dtype=np.float64)
    rmax = max(r0, r1)
    sl = grid.bbox(np.minimum(a, b) - rmax, np.maximum(a, b) + rmax)
    if sl is None:
        return None
    X, Y, Z = grid.block(sl)
    e = b - a
    length2 = float(e @ e) or 1e-9
    dx, dy, dz = X - a[0], Y - a[1], Z - a[2]
    t = np.clip((dx * e[0] + dy * e[1] + dz * e[2]) / length2, 0.0, 1.0)
    d2 = (dx - t * e[0]) ** 2 + (dy - t * e[1]) ** 2 + (dz - t * e[2]) ** 2
    radius = r0 + (r1 - r0) * t
    return sl, d2 <= radius * radius


def polyline(
    grid: Grid, points: Sequence[Sequence[float]], radii: Sequence[float], dilate: float = 0.0
) -> list[Region]:
    """Capsules along consecutive points (radii per point), each widened by ``dilate`` mm."""
    regions = []
    for i in range(len(points) - 1):
        reg = capsule(grid, points[i], points[i + 1], radii[i] + dilate, radii[i + 1] + dilate)
        if reg is not None:
            regions.append(reg)
    return regions


def union_mask(shape: tuple[int, int, int], regions: Sequence[Region | None]) -> np.ndarray:
    """A full-volume boolean mask holding every region."""
    out = np.zeros(shape, dtype=bool)
    for reg in regions:
        if reg is not None:
            out[reg[0]] |= reg[1]
    return out


def rotation_z(angle_rad: float) -> np.ndarray:
    """The 3x3 rotation about the LPS z axis (the patient's long axis)."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def unit(v: Sequence[float]) -> np.ndarray:
    """``v`` scaled to length one."""
    arr = np.asarray(v, dtype=np.float64)
    return arr / (np.linalg.norm(arr) or 1.0)


def frame_from_axis(long_axis: Sequence[float]) -> np.ndarray:
    """Orthonormal columns ``(e1, e2, e3)`` with ``e1`` along ``long_axis`` and ``e2`` horizontal."""
    e1 = unit(long_axis)
    up = np.array([0.0, 0.0, 1.0])
    e2 = np.cross(up, e1)
    if np.linalg.norm(e2) < 1e-6:
        e2 = np.array([1.0, 0.0, 0.0])
    e2 = unit(e2)
    e3 = np.cross(e1, e2)
    return np.stack([e1, e2, e3], axis=1)
