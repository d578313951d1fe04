"""Slice geometry: order frames along the slice normal and put them on a regular grid.

A DICOM series is a set of parallel planes. ``plan_stack`` looks only at headers and decides

* the order (by position along the normal ``n = row × column``, never by file name or InstanceNumber),
* which frames are kept (repeated positions and blocks cut off by a large gap are dropped),
* the output grid: the slice planes' own orthonormal frame ``[row, column, normal]`` (what
  SimpleITK/ITK report for a regular series), a regular step along the normal and, when slices are
  offset in-plane (gantry tilt shears the stack), a field of view widened to hold every slice.

``apply_plan`` then resamples the decoded slices onto that grid: slices offset in-plane are shifted
back (bilinear), and where the spacing varies or slices are missing the values between two slices
are interpolated linearly along the normal. A regular, untilted series passes through untouched.
Everything that was changed is said in the plan's ``warnings``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from engine.dicom_scan import FrameRef
from engine.errors import Mu2InputError
from engine.volume_formats import AIR_HU

log = logging.getLogger(__name__)

_DUPLICATE_MM = 1e-3  # positions closer than this along the normal are the same slice
_IOP_TOL = 1e-3
_GAP_FACTOR = 5.0  # a step this many times the typical one (and > _GAP_MIN_MM) splits the stack
_GAP_MIN_MM = 10.0
_UNIFORM_REL, _UNIFORM_ABS = 0.01, 0.02  # step tolerance for calling a series regular
_SHEAR_PIXELS = 0.01  # in-plane offsets below this fraction of a pixel are rounding noise


@dataclass
class StackPlan:
    frames: list[FrameRef]  # kept frames in stacking order
    positions: np.ndarray  # (N,) mm along the normal, increasing
    offsets: np.ndarray  # (N, 2) in-plane shift in pixels (columns i, rows j) of each slice on the grid
    shape: tuple[int, int, int]  # output (z, y, x)
    spacing: tuple[float, float, float]  # output (z, y, x) mm
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    regular: bool  # True: the decoded stack is already the output
    warnings: list[str] = field(default_factory=list)


def _frame_axes(iop: np.ndarray) -> np.ndarray:
    row, col = iop[:3], iop[3:]
    row = row / np.linalg.norm(row)
    col = col - row * float(row @ col)  # re-orthogonalise: IOP strings carry rounding errors
    col = col / np.linalg.norm(col)
    return np.stack([row, col, np.cross(row, col)], axis=1)  # columns: row, column, normal


def _majority(frames: list[FrameRef], warnings: list[str]) -> list[FrameRef]:
    """Keep the frames sharing the most common size and orientation (a series may hold strays)."""

    def sig(f: FrameRef):
        iop = tuple(np.round(f.iop / _IOP_TOL).astype(int)) if f.iop is not None else None
        return (f.rows, f.cols, iop)

    counts: dict = {}
    for f in frames:
        counts[sig(f)] = counts.get(sig(f), 0) + 1
    best = max(counts, key=lambda k: counts[k])
    kept = [f for f in frames if sig(f) == best]
    if len(kept) < len(frames):
        warnings.append(
            f"{len(frames) - len(kept)} of {len(frames)} images of this series differ in size or orientation "
            "from the others and were left out"
        )
    return kept


def _split_at_gaps(order: np.ndarray, pos: np.ndarray, warnings: list[str]) -> np.ndarray:
    steps = np.diff(pos[order])
    typical = float(np.median(steps))
    big = np.flatnonzero((steps > _GAP_FACTOR * typical) & (steps > _GAP_MIN_MM))
    if big.size == 0:
        return order
    bounds = np.concatenate([[0], big + 1, [order.size]])
    blocks = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    best = max(blocks, key=len)  # first of the largest on ties: deterministic
    gap = float(steps[big].max())
    warnings.append(
        f"the slices form {len(blocks)} separate blocks (gap of up to {gap:.1f} mm); kept the largest "
        f"block of {best.size} slices and left out {order.size - best.size}"
    )
    return best


def plan_stack(frames: list[FrameRef]) -> StackPlan:
    """Decide order, kept frames and the output grid of one series from its headers.

    Raises
    ------
    Mu2InputError
        When the frames do not form a volume (no geometry, a single position).
    """
    warnings: list[str] = []
    frames = _majority(frames, warnings)
    first = frames[0]
    if first.iop is None or any(f.ipp is None for f in frames):
        return _plan_without_positions(frames, warnings)
    axes = _frame_axes(first.iop)
    if first.pixel_spacing is None:
        warnings.append("the images do not state their pixel spacing; 1 mm assumed, so sizes are unreliable")
    dy, dx = first.pixel_spacing or (1.0, 1.0)
    ipp = np.stack([f.ipp for f in frames])
    frame_coords = ipp @ axes  # (N, 3): along row, along column, along normal
    pos = frame_coords[:, 2]
    # Sort by position; equal positions by InstanceNumber so the choice among repeats is stable.
    order = np.lexsort((np.array([f.instance for f in frames]), pos))
    keep = np.concatenate([[True], np.diff(pos[order]) > _DUPLICATE_MM])
    if not keep.all():
        warnings.append(
            f"{int((~keep).sum())} images repeat slice positions already present (several acquisitions in "
            "one series?); kept the first of each position"
        )
    order = order[keep]
    if order.size < 2:
        raise Mu2InputError(
            "all images of this series lie at one slice position, so it is not a volume; "
            "Mu2 needs a CT volume (many slices)"
        )
    order = _split_at_gaps(order, pos, warnings)
    if order.size < 2:
        raise Mu2InputError("this series has only one slice; Mu2 needs a CT volume (many slices)")
    kept = [frames[i] for i in order]
    coords = frame_coords[order]
    pos = coords[:, 2]
    steps = np.diff(pos)
    typical = float(np.median(steps))
    uniform = bool(np.all(np.abs(steps - typical) <= _UNIFORM_ABS + _UNIFORM_REL * typical))

    shift_mm = coords[:, :2] - coords[0, :2]
    sheared = bool(np.any(np.abs(shift_mm) > _SHEAR_PIXELS * min(dx, dy)))
    rows, cols = first.rows, first.cols
    if not sheared:
        lo = coords[0, :2]  # the first slice's corner, as SimpleITK reports the origin
        offsets = np.zeros((order.size, 2))
    else:
        lo = coords[:, :2].min(axis=0)
        offsets = (coords[:, :2] - lo) / np.array([dx, dy])  # pixels of each slice's corner on the grid
        cols += int(np.ceil(offsets[:, 0].max() - 1e-6))
        rows += int(np.ceil(offsets[:, 1].max() - 1e-6))
        extent = pos[-1] - pos[0]
        angle = float(np.degrees(np.arctan(np.abs(shift_mm[-1]).max() / extent))) if extent > 0 else 0.0
        tag = next((f.gantry_tilt for f in kept if abs(f.gantry_tilt) > 0), 0.0)
        said = f"; the header states {tag:+.1f}°" if tag else ""
        warnings.append(
            f"the slices are sheared by {angle:.1f}° (gantry tilt{said}): each slice was shifted in its own "
            "plane to remove the shear, so the volume lies on the slices' orthogonal grid (same orientation as "
            f"the slices, field of view widened to {cols}×{rows} pixels, edges filled with air)"
        )
    if sheared and (cols > 3 * first.cols or rows > 3 * first.rows):
        raise Mu2InputError(
            "the slice positions of this series are inconsistent (slices offset far apart in their own "
            "plane), so no volume can be built; the files may be damaged or mixed from several scans"
        )
    if uniform:
        step = (pos[-1] - pos[0]) / (pos.size - 1)
        n_out = pos.size
    else:
        step = typical
        n_out = int(np.floor((pos[-1] - pos[0]) / step + 1e-6)) + 1
        if n_out > 4 * pos.size + 16:
            raise Mu2InputError(
                "the slice positions of this series are too irregular to build a volume; the files may be "
                "damaged or mixed from several scans"
            )
        ratio = steps / typical
        # A step of about 2, 3… typical steps is where slices are missing; 1.75 is just another spacing.
        gaps = (ratio >= 1.8) & (np.abs(ratio - np.round(ratio)) < 0.2)
        missing = int(np.sum(np.round(ratio[gaps]) - 1))
        what = f"about {missing} slices missing, " if missing else ""
        warnings.append(
            f"the slice spacing varies ({what}steps {steps.min():.2f}–{steps.max():.2f} mm along the slice "
            f"normal): resampled to a regular {step:.2f} mm grid ({n_out} slices) by linear interpolation "
            "between neighbouring slices"
        )
    origin = axes @ np.array([lo[0], lo[1], pos[0]])
    return StackPlan(
        frames=kept,
        positions=pos,
        offsets=offsets,
        shape=(n_out, rows, cols),
        spacing=(float(step), float(dy), float(dx)),
        origin=tuple(float(o) for o in origin),  # type: ignore[arg-type]
        direction=tuple(float(d) for d in axes.reshape(-1)),
        regular=uniform and not sheared,
        warnings=warnings,
    )


def _plan_without_positions(frames: list[FrameRef], warnings: list[str]) -> StackPlan:
    """Old or stripped files: order by InstanceNumber and say that the geometry is assumed."""
    instances = [f.instance for f in frames]
    if len(set(instances)) < len(frames) or not any(instances):
        raise Mu2InputError(
            "these images carry neither slice positions nor distinct instance numbers, so their order is "
            "unknown; re-export the series from the scanner or PACS"
        )
    kept = sorted(frames, key=lambda f: f.instance)
    if len(kept) < 2:
        raise Mu2InputError("this series has only one slice; Mu2 needs a CT volume (many slices)")
    dy, dx = kept[0].pixel_spacing or (1.0, 1.0)
    thickness = None
    try:
        thickness = float(kept[0].ds.get("SpacingBetweenSlices") or kept[0].ds.get("SliceThickness"))
    except (TypeError, ValueError):
        thickness = None
    step = thickness if thickness and thickness > 0 else 1.0
    warnings.append(
        "the images carry no slice positions/orientation: ordered by instance number with an assumed "
        f"{step:.2f} mm slice step and axial orientation; positions and sizes may be wrong"
    )
    n = len(kept)
    return StackPlan(
        frames=kept,
        positions=np.arange(n) * step,
        offsets=np.zeros((n, 2)),
        shape=(n, kept[0].rows, kept[0].cols),
        spacing=(float(step), float(dy), float(dx)),
        origin=(0.0, 0.0, 0.0),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        regular=True,
        warnings=warnings,
    )


def _shifted(slice_: np.ndarray, offset: np.ndarray, shape: tuple[int, int], sheared: bool) -> np.ndarray:
    if not sheared:
        return slice_
    from scipy import ndimage

    # output[j, i] = input[j - offset_j, i - offset_i]; bilinear, air outside the slice.
    return ndimage.affine_transform(
        slice_, np.ones(2), offset=-offset[::-1], output_shape=shape, order=1, cval=AIR_HU, mode="constant"
    ).astype(np.float32, copy=False)


def apply_plan(plan: StackPlan, stack: np.ndarray) -> np.ndarray:
    """Resample the decoded ``stack`` (N, rows, cols) HU, in plan order, onto the plan's grid."""
    if plan.regular:
        return stack
    n_out, rows, cols = plan.shape
    sheared = bool(np.any(plan.offsets != 0))
    out = np.empty(plan.shape, dtype=np.float32)
    targets = plan.positions[0] + np.arange(n_out) * plan.spacing[0]
    upper = np.clip(np.searchsorted(plan.positions, targets, side="right"), 1, len(plan.positions) - 1)
    lower = upper - 1
    span = plan.positions[upper] - plan.positions[lower]
    weight = np.clip((targets - plan.positions[lower]) / span, 0.0, 1.0)
    cache: dict[int, np.ndarray] = {}

    def get(k: int) -> np.ndarray:
        if k not in cache:
            if len(cache) > 4:  # targets walk forward, so only the last few slices are reused
                cache.clear()
            cache[k] = _shifted(stack[k], plan.offsets[k], (rows, cols), sheared)
        return cache[k]

    for t in range(n_out):
        a, b, w = int(lower[t]), int(upper[t]), float(weight[t])
        if w <= 1e-6:
            out[t] = get(a)
        elif w >= 1 - 1e-6:
            out[t] = get(b)
        else:
            np.multiply(get(a), 1.0 - w, out=out[t])
            out[t] += w * get(b)
    return out
