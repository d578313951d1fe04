"""``prepare(volume, spec)``: the exact preprocessing a checkpoint was trained with, plus its ``GridMap``.

The official μ²Tokenizer pipeline (``src/utils/u2Transform.py``, validation branch, MONAI 1.3) does:

1. read the NIfTI with nibabel (array axes ``(i, j, k)`` as stored) and permute it to ``(k, i, j)``;
2. ``ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0, b_max=1, clip=True)`` over the
   whole volume (numpy's linear percentile);
3. ``CropForeground``: the bounding box of voxels > 0 after scaling (no margin);
4. in-plane: ``ratio = min(256/I, 256/J)``, new size ``int(I*ratio), int(J*ratio)``; depth kept when it
   is at most 256 slices, else resized to 256; MONAI ``resize`` (trilinear, ``align_corners=True``,
   Gaussian anti-aliasing on shrinking axes);
5. zero-pad at the high end to 256×256×256 and split the depth into 8 chunks of 32.

``prepare`` reproduces that arithmetic for any ``PrepSpec`` (``engine.prep_math`` has the kernels),
with two documented differences: the input is a ``Volume`` (reoriented by ``canonical_orientation``
instead of relying on how a file happens to be stored), and a volume whose two percentiles coincide
is clipped to [0, 1] (MONAI returns it unclipped). ``hu_window=(lo, hi)`` replaces the percentiles by
a fixed HU window.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from engine.errors import Mu2InputError
from engine.gridmap import GridMap
from engine.prep_math import AxisResampler, antialias_sigmas, axis_matrix, percentiles
from engine.volume import Volume

log = logging.getLogger(__name__)

_LPS = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}
_SLAB = 16  # slices resampled at a time: bounds the temporaries to a few slabs


@dataclass(frozen=True)
class PrepSpec:
    """How a volume becomes model input; stored in the checkpoint config (``preprocess``).

    Parameters
    ----------
    image_size : (D, H, W)
        The padded cube. ``T = D / chunk_depth`` chunks go to the ViT.
    chunk_depth : int
        Slices per chunk.
    patch_size : (pd, ph, pw)
        ViT patch size.
    pool : int
        Projector pooling; a token cell is ``patch_size * pool`` cube voxels, so one chunk holds
        ``(chunk_depth/pd/pool, H/ph/pool, W/pw/pool)`` tokens ((4, 8, 8) for mu2-1b).
    percentiles : (low, high)
        Intensity scaling: these percentiles of the whole volume map to 0 and 1 (then clipped).
    hu_window : (low, high) or None
        If given, a fixed HU window maps to [0, 1] instead of the percentiles.
    canonical_orientation : str
        Anatomical direction toward which each cube axis (D, H, W) increases, from L/R, P/A, S/I.
        The default ``'SLP'`` (D inferior→superior, H right→left, W anterior→posterior) is what the
        official pipeline feeds the model from a NIfTI stored in DICOM/ITK (LPS) voxel order, because it
        permutes the nibabel array ``(i, j, k)`` to ``(k, i, j)``. ``'stored'`` keeps the volume's own
        voxel order with that same permutation (the official behaviour for any file as stored).
        Reorientation only permutes and flips axes (the nearest axes for oblique volumes); it never
        resamples.
    anti_aliasing : bool
        Gaussian smoothing before shrinking an axis, as MONAI's resize does in the official pipeline.
    """

    image_size: tuple[int, int, int] = (256, 256, 256)
    chunk_depth: int = 32
    patch_size: tuple[int, int, int] = (4, 16, 16)
    pool: int = 2
    percentiles: tuple[float, float] = (0.5, 99.5)
    hu_window: tuple[float, float] | None = None
    canonical_orientation: str = "SLP"
    anti_aliasing: bool = True

    def __post_init__(self) -> None:
        d, h, w = self.image_size
        cell = self.cell
        problems = []
        if d % self.chunk_depth:
            problems.append(f"depth {d} is not a multiple of chunk_depth {self.chunk_depth}")
        if self.chunk_depth % cell[0] or h % cell[1] or w % cell[2]:
            problems.append(
                f"(chunk_depth, H, W) = ({self.chunk_depth}, {h}, {w}) is not divisible by patch×pool {cell}"
            )
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            problems.append(f"percentiles {self.percentiles} must satisfy 0 <= low < high <= 100")
        if self.hu_window is not None and not self.hu_window[0] < self.hu_window[1]:
            problems.append(f"hu_window {self.hu_window} must be (low, high) with low < high")
        if self.canonical_orientation != "stored":
            code = self.canonical_orientation.upper()
            axes = sorted(int(np.flatnonzero(_LPS[c])[0]) for c in code if c in _LPS)
            if len(code) != 3 or axes != [0, 1, 2]:
                problems.append(
                    f"canonical_orientation {self.canonical_orientation!r} must be 'stored' or like 'SLP'"
                )
        if problems:
            raise ValueError("invalid PrepSpec: " + "; ".join(problems))

    @property
    def cell(self) -> tuple[int, int, int]:
        return tuple(p * self.pool for p in self.patch_size)  # type: ignore[return-value]

    @property
    def n_chunks(self) -> int:
        return self.image_size[0] // self.chunk_depth

    @property
    def chunk_token_grid(self) -> tuple[int, int, int]:
        c = self.cell
        return (self.chunk_depth // c[0], self.image_size[1] // c[1], self.image_size[2] // c[2])

    @property
    def tokens_per_chunk(self) -> int:
        return int(np.prod(self.chunk_token_grid))

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> PrepSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            log.warning("ignoring unknown preprocessing keys %s", sorted(unknown))
        kw = {k: v for k, v in d.items() if k in known}
        for key in ("image_size", "patch_size", "percentiles"):
            if key in kw:
                kw[key] = tuple(kw[key])
        if kw.get("hu_window") is not None:
            kw["hu_window"] = tuple(kw["hu_window"])
        return cls(**kw)


@dataclass
class ModelInput:
    """What the model sees: PHI-free, deterministic for a given volume and spec."""

    pixels: np.ndarray  # float32 (T, chunk_depth, H, W) in [0, 1]
    grid_map: GridMap
    fingerprint: str  # sha256 of the pixel bytes and the spec
    spec: PrepSpec
    intensity_range: tuple[float, float] = field(default=(0.0, 1.0))  # the values mapped to 0 and 1

    def __repr__(self) -> str:
        return f"ModelInput(pixels={self.pixels.shape}, fingerprint={self.fingerprint[:12]}…)"


def reorientation(volume: Volume, spec: PrepSpec) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """``(axes, flips)``: cube axis ``a`` is volume axis ``axes[a]``, reversed where ``flips[a]``."""
    if spec.canonical_orientation == "stored":
        return (0, 2, 1), (False, False, False)
    d = volume.direction_matrix()
    array_dirs = np.stack([d[:, 2], d[:, 1], d[:, 0]])  # LPS unit vector of array axes z, y, x
    targets = np.array([_LPS[c] for c in spec.canonical_orientation.upper()], dtype=np.float64)
    dots = targets @ array_dirs.T  # (cube axis, array axis)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(dots[a, p[a]]) for a in range(3)))
    flips = tuple(bool(dots[a, best[a]] < 0) for a in range(3))
    return tuple(int(b) for b in best), flips  # type: ignore[return-value]


def _foreground_box(vox: np.ndarray, threshold: float) -> tuple[list[int], list[int]]:
    """Bounding box (volume axes, [start, stop)) of voxels > threshold; the whole volume if none."""
    any_z = np.zeros(vox.shape[0], dtype=bool)
    any_yx = np.zeros(vox.shape[1:], dtype=bool)
    for z0 in range(0, vox.shape[0], _SLAB):
        m = vox[z0 : z0 + _SLAB] > threshold
        any_z[z0 : z0 + _SLAB] = m.any(axis=(1, 2))
        any_yx |= m.any(axis=0)
    hits = [np.flatnonzero(any_z), np.flatnonzero(any_yx.any(axis=1)), np.flatnonzero(any_yx.any(axis=0))]
    if any(h.size == 0 for h in hits):
        return [0, 0, 0], list(vox.shape)
    return [int(h[0]) for h in hits], [int(h[-1]) + 1 for h in hits]


def _resized_shape(n: tuple[int, int, int], spec: PrepSpec) -> tuple[int, int, int]:
    d, h, w = spec.image_size
    # The official arithmetic, kept operation for operation (float ratio, int() truncation).
    ratio = min(h / n[1], w / n[2])
    m1, m2 = max(1, int(n[1] * ratio)), max(1, int(n[2] * ratio))
    m0 = n[0] if d >= n[0] else d
    return (m0, m1, m2)


def _fingerprint(pixels: np.ndarray, spec: PrepSpec) -> str:
    h = hashlib.sha256()
    h.update(memoryview(pixels).cast("B"))
    h.update(json.dumps(spec.to_dict(), sort_keys=True).encode())
    return h.hexdigest()


def _prepare_prepared(volume: Volume, spec: PrepSpec) -> ModelInput:
    vox = np.asarray(volume.voxels, dtype=np.float32)
    d, h, w = spec.image_size
    if vox.shape[1:] != (h, w) or vox.shape[0] > d:
        raise Mu2InputError(
            f"this prepared volume is {vox.shape[0]}×{vox.shape[1]}×{vox.shape[2]} but the model expects at most "
            f"{d}×{h}×{w}; open the original CT instead of the prepared .npy"
        )
    cube = np.zeros(spec.image_size, dtype=np.float32)
    cube[: vox.shape[0]] = np.clip(vox, 0.0, 1.0)
    pixels = cube.reshape(spec.n_chunks, spec.chunk_depth, h, w)
    gm = GridMap(
        volume_shape=volume.shape,
        axes=(0, 1, 2),
        flips=(False, False, False),
        crop_start=(0, 0, 0),
        crop_stop=volume.shape,
        resized=volume.shape,
        cube=spec.image_size,
        chunk_depth=spec.chunk_depth,
        cell=spec.cell,
        spacing=volume.spacing,
        origin=volume.origin,
        direction=tuple(volume.direction),
    )
    return ModelInput(pixels, gm, _fingerprint(pixels, spec), spec)


def prepare(volume: Volume, spec: PrepSpec) -> ModelInput:
    """Scale, crop, resize, pad and chunk ``volume`` exactly as the checkpoint's training data were.

    Parameters
    ----------
    volume : Volume
        HU volume (or an M3D-prepared one, used as is).
    spec : PrepSpec
        The checkpoint's preprocessing.

    Returns
    -------
    ModelInput
        ``pixels`` (T, chunk_depth, H, W) float32 in [0, 1], the ``GridMap`` back to ``volume``, and a
        PHI-free fingerprint.
    """
    if volume.prepared:
        return _prepare_prepared(volume, spec)
    vox = volume.voxels if volume.voxels.dtype == np.float32 else volume.voxels.astype(np.float32)
    if vox.ndim != 3 or min(vox.shape) < 1:
        raise Mu2InputError(f"a CT volume must be 3-D, got an array of shape {vox.shape}")
    if spec.hu_window is not None:
        a_min, a_max = (float(v) for v in spec.hu_window)
    else:
        a_min, a_max = percentiles(vox, spec.percentiles)
    if not (np.isfinite(a_min) and np.isfinite(a_max)):
        raise Mu2InputError("the volume holds NaN or infinite values; re-export it from the original images")
    # Equal percentiles (a nearly constant volume): divide by 1 HU, so the clip makes it a 0/1 mask.
    scale = (a_max - a_min) or 1.0

    axes, flips = reorientation(volume, spec)
    start_v, stop_v = _foreground_box(vox, a_min)
    view = vox.transpose(axes)
    crop_start, crop_stop = [], []
    for a in range(3):
        s, e = start_v[axes[a]], stop_v[axes[a]]
        n_a = vox.shape[axes[a]]
        if flips[a]:
            s, e = n_a - e, n_a - s
        crop_start.append(s)
        crop_stop.append(e)
    view = view[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
    crop = view[tuple(slice(s, e) for s, e in zip(crop_start, crop_stop))]
    n = tuple(int(x) for x in crop.shape)
    m = _resized_shape(n, spec)  # type: ignore[arg-type]
    sig = antialias_sigmas(n, m) if spec.anti_aliasing and m != n else [0.0, 0.0, 0.0]
    r0, r1, r2 = (AxisResampler(axis_matrix(n[a], m[a], sig[a])) for a in range(3))

    cube = np.zeros(spec.image_size, dtype=np.float32)
    mid = cube[: m[0], : m[1], : m[2]] if r0.identity else np.empty((n[0], m[1], m[2]), dtype=np.float32)
    # Slabs are gathered x-first, (n2, slices, n1), so that each axis is resampled as the leading one.
    buf = np.empty((n[2], min(_SLAB, n[0]), n[1]), dtype=np.float32)
    for z0 in range(0, n[0], _SLAB):
        z1 = min(z0 + _SLAB, n[0])
        b = buf[:, : z1 - z0]
        # One pass gathers any permutation/flip and subtracts; MONAI's order of operations
        # ((x - a_min) / (a_max - a_min), then clip to [0, 1]) is kept.
        np.subtract(crop[z0:z1].transpose(2, 0, 1), np.float32(a_min), out=b)
        np.divide(b, np.float32(scale), out=b)
        np.clip(b, 0.0, 1.0, out=b)
        t = r2(b)  # (m2, slices, n1)
        t = r1(np.ascontiguousarray(t.transpose(2, 1, 0)))  # (m1, slices, m2)
        mid[z0:z1] = t.transpose(1, 0, 2)
    if not r0.identity:
        cube[: m[0], : m[1], : m[2]] = r0(mid)
        del mid
    pixels = cube.reshape(spec.n_chunks, spec.chunk_depth, *spec.image_size[1:])
    gm = GridMap(
        volume_shape=volume.shape,
        axes=axes,
        flips=flips,
        crop_start=tuple(crop_start),  # type: ignore[arg-type]
        crop_stop=tuple(crop_stop),  # type: ignore[arg-type]
        resized=m,
        cube=spec.image_size,
        chunk_depth=spec.chunk_depth,
        cell=spec.cell,
        spacing=tuple(float(s) for s in volume.spacing),  # type: ignore[arg-type]
        origin=tuple(float(o) for o in volume.origin),  # type: ignore[arg-type]
        direction=tuple(float(d) for d in volume.direction),
    )
    return ModelInput(pixels, gm, _fingerprint(pixels, spec), spec, (float(a_min), float(a_max)))
