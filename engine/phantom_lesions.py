"""Paint ground-truth findings into a phantom's anatomy and return one boolean mask per finding.

Cardiomegaly and pericardial effusion change the anatomy itself (``AnatomyParams.heart_scale`` and
``pericardial_fluid_mm``) and are only collected here. Every other finding is painted in an order
that keeps masks apart: pleural fluid first (it displaces the lung), then parenchymal changes in the
remaining aerated lung, then nodes and calcifications.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from engine.phantom_anatomy import Anatomy, Tissue
from engine.phantom_findings import LOBES, Finding
from engine.phantom_shapes import Region, ball, capsule, ellipsoid, frame_from_axis, unit

logger = logging.getLogger(__name__)

_ORDER = (
    "Cardiomegaly",
    "Pericardial effusion",
    "Pleural effusion",
    "Emphysema",
    "Consolidation",
    "Atelectasis",
    "Lung nodule",
    "Lymphadenopathy",
    "Arterial wall calcification",
    "Coronary artery wall calcification",
)


def _stamp(a: Anatomy, reg: Region | None, value, mask: np.ndarray, where: np.ndarray | None = None) -> None:
    """Paint ``reg`` (optionally limited to ``where``) as lesion and add it to ``mask``."""
    if reg is None:
        return
    sl, m = reg
    if where is not None:
        m = m & where[sl]
    if not m.any():
        return
    a.hu[sl][m] = value if np.isscalar(value) else value[sl][m]
    a.labels[sl][m] = Tissue.LESION
    mask[sl] |= m


def _lobe(a: Anatomy, lobe: str) -> np.ndarray:
    return a.lobes == (LOBES.index(lobe) + 1)


def _world_of(a: Anatomy, flat_index: int) -> np.ndarray:
    z, y, x = np.unravel_index(flat_index, a.hu.shape)
    return np.array([a.grid.x[x], a.grid.y[y], a.grid.z[z]], dtype=np.float64)


def _pick(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray | None:
    idx = np.flatnonzero(mask)
    return None if idx.size == 0 else idx[rng.integers(idx.size)]


def paint_findings(a: Anatomy, findings: Sequence[Finding], rng: np.random.Generator) -> list[np.ndarray]:
    """Paint ``findings`` (fully resolved) into ``a`` and return their masks, aligned with ``findings``."""
    masks: list[np.ndarray | None] = [None] * len(findings)
    a.masks["effusion"] = np.zeros(a.hu.shape, dtype=bool)
    for kind in _ORDER:
        for i, f in enumerate(findings):
            if f.kind == kind:
                masks[i] = _PAINTERS[kind](a, f, rng)
    out = []
    for f, m in zip(findings, masks):
        if m is None or not m.any():
            # A finding without voxels would be invisible ground truth; say so rather than hide it.
            logger.warning("phantom finding %s left no voxels on this grid", f)
            m = np.zeros(a.hu.shape, dtype=bool) if m is None else m
        out.append(m)
    return out


def _cardiomegaly(a: Anatomy, f: Finding, rng) -> np.ndarray:
    return a.labels == Tissue.HEART


def _pericardial(a: Anatomy, f: Finding, rng) -> np.ndarray:
    fluid = a.masks.get("pericardial_fluid")
    return np.zeros(a.hu.shape, dtype=bool) if fluid is None else fluid & (a.labels == Tissue.LESION)


def _pleural(a: Anatomy, f: Finding, rng) -> np.ndarray:
    """Dependent fluid: a crescent along the posterior chest wall, thickest at the base."""
    p = a.params
    depth_mm = float(f.size_mm or 25.0)
    w_top, w_base = p.carina_w + 40.0, p.dome_right - 40.0
    taper = np.clip((w_top - a.W) / (w_top - w_base), 0.25, 1.0).astype(np.float32)
    level = a.cavity_wall_v()[None] - (depth_mm * taper)[:, None, None]
    region = a.side_mask(f.side or "right") & (a.V[None] > level)
    # Fluid replaces everything in the pleural space it fills, vessels and bronchi included.
    a.hu[region] = 10.0
    a.labels[region] = Tissue.LESION
    a.masks["effusion"] |= region
    return region


def _aerated(a: Anatomy) -> np.ndarray:
    return (a.lobes > 0) & ~a.masks["effusion"]


def _emphysema(a: Anatomy, f: Finding, rng) -> np.ndarray:
    """Centrilobular low-attenuation holes (about -960 HU) scattered through the upper lobes."""
    if f.lobe is not None:
        lobes = [f.lobe]
    elif f.side in ("right", "left"):
        lobes = [f"{f.side} upper lobe"]
    else:
        lobes = ["right upper lobe", "left upper lobe"]
    mask = np.zeros(a.hu.shape, dtype=bool)
    for lobe in lobes:
        region = _lobe(a, lobe) & _aerated(a) & (a.labels == Tissue.LUNG)
        n = int(rng.integers(45, 80))
        for _ in range(n):
            idx = _pick(rng, region)
            if idx is None:
                break
            reg = ball(a.grid, _world_of(a, idx), float(rng.uniform(3.0, 7.0)))
            _stamp(a, reg, float(rng.uniform(-975.0, -945.0)), mask, region)
    return mask


def _consolidation(a: Anatomy, f: Finding, rng) -> np.ndarray:
    """A confluent airless region (about +25 HU) in one lobe, with air bronchograms running through it."""
    allowed = _lobe(a, f.lobe) & _aerated(a)
    mask = np.zeros(a.hu.shape, dtype=bool)
    idx = _pick(rng, allowed & (a.V[None] > np.median(a.V[np.any(allowed, axis=0)])))
    idx = _pick(rng, allowed) if idx is None else idx
    if idx is None:
        return mask
    center = _world_of(a, idx)
    regions = [
        ellipsoid(a.grid, center + rng.uniform(-14.0, 14.0, size=3), rng.uniform(12.0, 26.0, size=3))
        for _ in range(4)
    ]
    region = np.zeros(a.hu.shape, dtype=bool)
    for reg in regions:
        if reg is not None:
            region[reg[0]] |= reg[1]
    region &= allowed
    # Airways crossing the region stay aerated: natural air bronchograms.
    solid = region & (a.labels != Tissue.AIRWAY)
    a.hu[solid] = 25.0 + 8.0 * rng.standard_normal(int(solid.sum())).astype(np.float32)
    a.labels[solid] = Tissue.LESION
    mask |= region
    hilum = a.landmarks["hilum_right" if f.side == "right" else "hilum_left"]
    towards = unit(hilum - center)
    for _ in range(2):
        start = center + rng.uniform(-8.0, 8.0, size=3)
        reg = capsule(a.grid, start - towards * 10.0, start + towards * 28.0, 2.2, 1.6)
        if reg is not None:
            sl, m = reg
            m = m & region[sl]
            a.hu[sl][m] = -900.0
    return mask


def _atelectasis(a: Anatomy, f: Finding, rng) -> np.ndarray:
    """Plate-like band or peripheral wedge of collapsed lung (about +35 HU) in one lobe."""
    allowed = _lobe(a, f.lobe) & _aerated(a)
    mask = np.zeros(a.hu.shape, dtype=bool)
    lower_half = allowed & (a.W[:, None, None] < np.median(a.W[np.any(allowed, axis=(1, 2))]))
    idx = _pick(rng, lower_half)
    idx = _pick(rng, allowed) if idx is None else idx
    if idx is None:
        return mask
    center = _world_of(a, idx)
    if rng.random() < 0.6:
        normal = a.frame.vector(unit([rng.uniform(-0.2, 0.2), 1.0, rng.uniform(0.3, 0.8)]))
        axes = frame_from_axis(normal)
        reg = ellipsoid(a.grid, center, (4.5, 55.0, 40.0), axes)
    else:
        hilum = a.landmarks["hilum_right" if f.side == "right" else "hilum_left"]
        towards = unit(hilum - center)
        reg = capsule(a.grid, center - towards * 10.0, center + towards * 30.0, 15.0, 2.0)
    _stamp(a, reg, 35.0, mask, allowed)
    return mask


def _nodule(a: Anatomy, f: Finding, rng) -> np.ndarray:
    """A solid sphere (+30 HU) wholly inside aerated lung of its lobe where possible."""
    allowed = _lobe(a, f.lobe) & _aerated(a)
    radius = float(f.size_mm or 10.0) / 2.0
    candidates = allowed & (a.labels != Tissue.AIRWAY)
    best, best_fit = None, -1.0
    for _ in range(60):
        idx = _pick(rng, candidates)
        if idx is None:
            break
        reg = ball(a.grid, _world_of(a, idx), radius + 1.5)
        if reg is None:
            continue
        fit = float(allowed[reg[0]][reg[1]].mean())
        if fit > best_fit:
            best, best_fit = idx, fit
        if fit >= 1.0:
            break
    mask = np.zeros(a.hu.shape, dtype=bool)
    if best is not None:
        _stamp(a, ball(a.grid, _world_of(a, best), radius), 30.0, mask, allowed)
    return mask


# Mediastinal node stations relative to the carina (u, v - trachea_v, w - carina_w) in mm.
_STATIONS = {
    "right paratracheal": (-16.0, -4.0, 22.0),
    "subcarinal": (0.0, 12.0, -22.0),
    "prevascular": (-6.0, -60.0, 5.0),
    "aortopulmonary": (22.0, -6.0, 6.0),
}


def _lymph(a: Anatomy, f: Finding, rng) -> np.ndarray:
    """One to three enlarged mediastinal nodes (+40 HU); the largest has ``size_mm`` short axis."""
    p = a.params
    short = float(f.size_mm or 15.0)
    names = list(_STATIONS)
    order = rng.permutation(len(names))
    sizes = [short] + [float(rng.uniform(10.0, short)) for _ in range(int(rng.integers(0, 3)))]
    where = (a.labels == Tissue.MEDIASTINUM) | (a.labels == Tissue.LUNG)
    mask = np.zeros(a.hu.shape, dtype=bool)
    for k, size in enumerate(sizes):
        du, dv, dw = _STATIONS[names[order[k]]]
        center = a.frame.point([du, p.trachea_v + dv, p.carina_w + dw])
        axes = a.frame.rot @ frame_from_axis([0.0, 0.0, 1.0])
        semi = (size * 0.7, size * 0.5, size * 0.55)
        _stamp(a, ellipsoid(a.grid, center, semi, axes), 40.0, mask, where)
    return mask


def _on_polyline(
    pts: np.ndarray, rng: np.random.Generator, lo: int = 0
) -> tuple[np.ndarray, np.ndarray, int]:
    """A random point on a polyline from segment ``lo`` on, with the local direction."""
    seg = int(rng.integers(lo, len(pts) - 1))
    t = float(rng.random())
    return pts[seg] + t * (pts[seg + 1] - pts[seg]), unit(pts[seg + 1] - pts[seg]), seg


def _aortic_calcification(a: Anatomy, f: Finding, rng) -> np.ndarray:
    """Calcified plaques (+450..+850 HU) in the wall of the arch and descending aorta."""
    pts, radii = a.paths["aorta"]
    mask = np.zeros(a.hu.shape, dtype=bool)
    for _ in range(int(rng.integers(4, 9))):
        c, d, seg = _on_polyline(pts, rng, lo=2)
        perp = unit(np.cross(d, rng.normal(size=3)))
        center = c + perp * (radii[seg] - 1.0)
        _stamp(a, ball(a.grid, center, float(rng.uniform(2.2, 3.6))), float(rng.uniform(450, 850)), mask)
    return mask


def _coronary_calcification(a: Anatomy, f: Finding, rng) -> np.ndarray:
    """Calcified spots along the coronary courses on the heart surface, most on the LAD."""
    mask = np.zeros(a.hu.shape, dtype=bool)
    names = ["lad", "lad", "rca", "lcx"]
    for _ in range(int(rng.integers(2, 6))):
        pts, _ = a.paths[names[int(rng.integers(len(names)))]]
        c, _, _ = _on_polyline(pts, rng)
        _stamp(a, ball(a.grid, c, float(rng.uniform(2.0, 3.2))), float(rng.uniform(450, 850)), mask)
    return mask


_PAINTERS = {
    "Cardiomegaly": _cardiomegaly,
    "Pericardial effusion": _pericardial,
    "Pleural effusion": _pleural,
    "Emphysema": _emphysema,
    "Consolidation": _consolidation,
    "Atelectasis": _atelectasis,
    "Lung nodule": _nodule,
    "Lymphadenopathy": _lymph,
    "Arterial wall calcification": _aortic_calcification,
    "Coronary artery wall calcification": _coronary_calcification,
}
