"""``GridMap``: where every visual-token cell of the model cube lies in the original volume.

``prepare`` reorients the volume (axis permutation and flips only), crops the foreground box,
resizes the box to ``resized`` voxels (align-corners linear sampling) and zero-pads it at the high end
to the cube ``(D, H, W)``. The ViT + projector turn the cube into a grid of token cells, each
``cell = patch_size * pool`` cube voxels; chunk ``t`` holds cube depths ``[t*chunk_depth, (t+1)*chunk_depth)``
and its token ``n`` is ``(d, h, w)`` flattened row-major over ``(chunk_depth/cell_d, H/cell_h, W/cell_w)``,
so its global cell is ``(t * chunk_depth/cell_d + d, h, w)``.

An original voxel belongs to the cell that holds the cube voxel nearest to where the resize put it.
``to_volume`` and ``token_bounds_voxels`` both use that one rule, so a token's value lands exactly in
the box ``token_bounds_voxels`` reports. Bounds are continuous voxel indices (voxel ``i`` spans
``[i - 0.5, i + 0.5]``, as in ``Volume.index_to_world``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def _ints(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class GridMap:
    volume_shape: tuple[int, int, int]  # original (z, y, x)
    axes: tuple[int, int, int]  # cube axis a is volume axis axes[a]
    flips: tuple[bool, bool, bool]  # cube axis a runs against volume axis axes[a]
    crop_start: tuple[int, int, int]  # foreground box in reoriented voxel coordinates, [start, stop)
    crop_stop: tuple[int, int, int]
    resized: tuple[int, int, int]  # size of the box in the cube (before padding)
    cube: tuple[int, int, int]  # (D, H, W)
    chunk_depth: int
    cell: tuple[int, int, int]  # cube voxels per token cell, (patch * pool) per axis
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # of the original volume, for world positions
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    # -- the token grid ---------------------------------------------------------------------------
    @property
    def token_grid_shape(self) -> tuple[int, int, int]:
        """``(Gz, Gy, Gx)``: token cells over the whole cube (for mu2-1b ``(32, 8, 8)``)."""
        return tuple(c // s for c, s in zip(self.cube, self.cell))  # type: ignore[return-value]

    @property
    def chunk_grid_shape(self) -> tuple[int, int, int]:
        """Token cells of one chunk, ``(chunk_depth/cell_d, Gy, Gx)`` (for mu2-1b ``(4, 8, 8)``)."""
        g = self.token_grid_shape
        return (self.chunk_depth // self.cell[0], g[1], g[2])

    @property
    def n_chunks(self) -> int:
        return self.cube[0] // self.chunk_depth

    @property
    def tokens_per_chunk(self) -> int:
        return int(np.prod(self.chunk_grid_shape))

    def global_cell(self, t: int, n: int) -> tuple[int, int, int]:
        """Cell ``(gz, gy, gx)`` of token ``n`` of chunk ``t``."""
        if not (0 <= t < self.n_chunks and 0 <= n < self.tokens_per_chunk):
            raise IndexError(
                f"token ({t}, {n}) outside {self.n_chunks} chunks × {self.tokens_per_chunk} tokens"
            )
        d, h, w = np.unravel_index(n, self.chunk_grid_shape)
        return (t * self.chunk_grid_shape[0] + int(d), int(h), int(w))

    def as_grid(self, values: np.ndarray) -> np.ndarray:
        """Per-token values shaped ``(T, N)``, ``(T*N,)`` or ``(Gz, Gy, Gx)`` → ``(Gz, Gy, Gx)``."""
        values = np.asarray(values)
        g = self.token_grid_shape
        if values.shape == g:
            return values
        if values.size != int(np.prod(g)):
            raise ValueError(
                f"expected {self.n_chunks}×{self.tokens_per_chunk} token values or a {g} grid, got {values.shape}"
            )
        return values.reshape(self.n_chunks, *self.chunk_grid_shape).reshape(g)

    # -- voxel ↔ cell -----------------------------------------------------------------------------
    def _cube_coord(self, a: int, c: np.ndarray) -> np.ndarray:
        """Continuous cube index along cube axis ``a`` of crop-relative voxel index ``c``."""
        n = self.crop_stop[a] - self.crop_start[a]
        m = self.resized[a]
        if m == n:
            return c.astype(np.float64)
        if m == 1:
            return np.zeros_like(c, dtype=np.float64)
        if n == 1:
            return np.full_like(c, (m - 1) / 2.0, dtype=np.float64)
        return c * ((m - 1) / (n - 1))

    def cell_index(self, a: int) -> np.ndarray:
        """Cell of every voxel along the VOLUME axis matching cube axis ``a``; -1 outside the crop."""
        size = self.volume_shape[self.axes[a]]
        x = np.arange(size)  # reoriented coordinate
        c = x - self.crop_start[a]
        inside = (c >= 0) & (x < self.crop_stop[a])
        u = self._cube_coord(a, np.where(inside, c, 0))
        cell = np.floor((u + 0.5) / self.cell[a]).astype(np.int64)
        cell = np.where(inside, np.minimum(cell, self.token_grid_shape[a] - 1), -1)
        return cell[::-1].copy() if self.flips[a] else cell

    def to_volume(self, values: np.ndarray) -> np.ndarray:
        """Per-token values → float32 array on the original volume grid (0 outside the cropped box).

        Parameters
        ----------
        values : numpy.ndarray
            ``(T, N)`` (chunk, token) or ``(Gz, Gy, Gx)``.

        Returns
        -------
        numpy.ndarray
            float32, shape ``volume_shape``; each voxel holds the value of the token cell it falls in.
        """
        grid = self.as_grid(np.asarray(values, dtype=np.float32))
        padded = np.zeros(tuple(s + 1 for s in grid.shape), dtype=np.float32)
        padded[:-1, :-1, :-1] = grid  # index -1 picks the trailing zero cell
        # Put the small grid into volume axis order, then expand one axis at a time (cheap, contiguous).
        order = [self.axes.index(v) for v in range(3)]
        out = np.ascontiguousarray(padded.transpose(order))
        for v in range(3):
            out = np.take(out, self.cell_index(order[v]), axis=v)
        return out

    def token_bounds_voxels(self, t: int, n: int) -> tuple[tuple[float, float], ...]:
        """``((z0, z1), (y0, y1), (x0, x1))`` continuous index ranges of token ``(t, n)`` in the volume.

        Exactly the voxels ``to_volume`` fills with this token's value: voxel ``i`` is inside when
        ``z0 < i < z1``. An axis the token does not reach (padding) has ``z1 == z0``.
        """
        cell = self.global_cell(t, n)
        out: list[tuple[float, float]] = [(0.0, 0.0)] * 3
        for a in range(3):
            hit = np.flatnonzero(self.cell_index(a) == cell[a])
            out[self.axes[a]] = (float(hit[0]) - 0.5, float(hit[-1]) + 0.5) if hit.size else (0.0, 0.0)
        return tuple(out)

    def token_center_world(self, t: int, n: int) -> np.ndarray:
        """LPS ``(x, y, z)`` mm of the centre of token ``(t, n)``'s box in the volume.

        For a cell that lies partly in the zero padding this is the centre of the part that covers the
        volume; for a cell of padding only, the centre of the cell extrapolated beyond the volume.
        """
        cell = self.global_cell(t, n)
        box = self.token_bounds_voxels(t, n)
        zyx = np.array([(lo + hi) / 2.0 for lo, hi in box])
        for a in range(3):
            if box[self.axes[a]][1] > box[self.axes[a]][0]:
                continue
            u = (cell[a] + 0.5) * self.cell[a] - 0.5  # cube coordinate of the cell centre
            n_a = self.crop_stop[a] - self.crop_start[a]
            m_a = self.resized[a]
            if m_a == n_a:
                c = u
            elif m_a == 1:  # the whole box was squeezed into one cube voxel
                c = (n_a - 1) / 2.0
            elif n_a == 1:
                c = 0.0
            else:
                c = u * (n_a - 1) / (m_a - 1)  # inverse of the align-corners sampling
            x = c + self.crop_start[a]
            size = self.volume_shape[self.axes[a]]
            zyx[self.axes[a]] = size - 1 - x if self.flips[a] else x
        ijk = zyx[::-1] * np.asarray(self.spacing[::-1])
        return ijk @ np.asarray(self.direction, dtype=np.float64).reshape(3, 3).T + np.asarray(self.origin)

    # -- storage ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> GridMap:
        return cls(
            volume_shape=_ints(d["volume_shape"]),  # type: ignore[arg-type]
            axes=_ints(d["axes"]),  # type: ignore[arg-type]
            flips=tuple(bool(f) for f in d["flips"]),  # type: ignore[arg-type]
            crop_start=_ints(d["crop_start"]),  # type: ignore[arg-type]
            crop_stop=_ints(d["crop_stop"]),  # type: ignore[arg-type]
            resized=_ints(d["resized"]),  # type: ignore[arg-type]
            cube=_ints(d["cube"]),  # type: ignore[arg-type]
            chunk_depth=int(d["chunk_depth"]),
            cell=_ints(d["cell"]),  # type: ignore[arg-type]
            spacing=tuple(float(v) for v in d.get("spacing", (1.0, 1.0, 1.0))),  # type: ignore[arg-type]
            origin=tuple(float(v) for v in d.get("origin", (0.0, 0.0, 0.0))),  # type: ignore[arg-type]
            direction=tuple(float(v) for v in d.get("direction", np.eye(3).reshape(-1))),
        )
