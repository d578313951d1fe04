"""Mediastinal organs, airways, pulmonary vessels and skeleton of the synthetic phantom.

Positions are anatomical ``(u, v, w)`` (see ``engine.phantom_anatomy``) relative to a few landmarks
(carina height, spine and trachea depth), so every seed keeps the organs in their usual relation.
"""

from __future__ import annotations

import math

import numpy as np

from engine.phantom_anatomy import Anatomy, Tissue
from engine.phantom_shapes import Region, capsule, ellipsoid, frame_from_axis, polyline, union_mask

# Pericardial layers outside the myocardium, in mm.
EPICARDIAL_FAT_MM = 4.0
PERICARDIUM_MM = 2.5


def _paint(a: Anatomy, reg: Region | None, value: float, tissue: Tissue, where=None) -> None:
    if reg is None:
        return
    sl, m = reg
    if where is not None:
        m = m & where[sl]
    a.hu[sl][m] = value
    a.labels[sl][m] = tissue


def heart_geometry(a: Anatomy) -> None:
    """Centre, axes and semi-axes of the heart (world), scaled for cardiomegaly."""
    p = a.params
    scale = p.heart_scale
    # An enlarged heart grows mostly towards the left and down, as on a chest film.
    grow = p.heart_scale - 1.0
    center = np.array([p.heart_u + 30.0 * grow, p.cavity_v - 16.0, p.heart_w - 15.0 * grow])
    axes = frame_from_axis(p.heart_axis)
    a.landmarks["heart_center"] = a.frame.point(center)
    a.landmarks["heart_axes"] = a.frame.rot @ axes
    # Cardiomegaly widens the heart more than it lengthens it.
    a.landmarks["heart_semi"] = np.array([60.0, 44.0, 40.0]) * p.heart_size * np.array([1.0, scale, scale])
    a.landmarks["heart_semi"][0] *= 1.0 + 0.5 * grow


def _heart_shell(a: Anatomy, extra: float) -> Region | None:
    semi = a.landmarks["heart_semi"] + extra
    return ellipsoid(a.grid, a.landmarks["heart_center"], semi, a.landmarks["heart_axes"])


def great_vessel_paths(a: Anatomy) -> None:
    """Centre lines (world) and radii of aorta, pulmonary arteries, SVC, arch branches, oesophagus."""
    p = a.params
    wc, vt, vs = p.carina_w, p.trachea_v, p.spine_v
    anat = {
        "aorta": (
            [
                (3, -22, wc - 60),
                (0, -26, wc - 10),
                (6, -20, wc + 18),
                (20, -8, wc + 32),
                (29, vt + 14, wc + 28),
                (31, vs - 8, wc + 10),
                (30, vs - 6, wc - 40),
                (23, vs - 4, -175),
            ],
            [13, 14, 13.5, 13, 12, 11.5, 11, 10.5],
        ),
        "pulmonary_trunk": ([(14, -44, wc - 72), (18, -22, wc - 18)], [13, 13]),
        "left_pa": ([(18, -22, wc - 18), (48, vt + 2, wc - 22)], [11, 9]),
        "right_pa": ([(18, -22, wc - 18), (-12, vt - 4, wc - 24), (-46, vt - 8, wc - 30)], [11, 10, 9]),
        "svc": ([(-25, -14, 175), (-25, -16, wc - 50)], [9, 10]),
        "brachiocephalic": ([(4, -18, wc + 22), (-12, -10, 175)], [6.5, 6]),
        "left_carotid": ([(14, -8, wc + 32), (15, -6, 175)], [4.5, 4.5]),
        "left_subclavian": ([(26, 4, wc + 32), (36, 4, 175)], [5, 5]),
        "esophagus": (
            [(6, vs - 25, 175), (8, vs - 24, wc - 90), (20, vs - 30, p.dome_right - 25)],
            [7, 7, 7],
        ),
    }
    for name, (pts, radii) in anat.items():
        a.paths[name] = (a.frame.point(np.array(pts, dtype=np.float64)), np.array(radii, dtype=np.float64))


def lung_exclusions(a: Anatomy) -> list[Region | None]:
    """Solids the lungs must not enter: the pericardial sac and the great vessels with a fat margin."""
    outer = EPICARDIAL_FAT_MM + a.params.pericardial_fluid_mm + PERICARDIUM_MM + 2.0
    regions: list[Region | None] = [_heart_shell(a, outer)]
    for pts, radii in a.paths.values():
        regions.extend(polyline(a.grid, pts, radii, dilate=4.0))
    trachea = a.frame.point([(0, a.params.trachea_v, 175), (0, a.params.trachea_v, a.params.carina_w)])
    regions.append(capsule(a.grid, trachea[0], trachea[1], 13.0))
    return regions


def paint_heart(a: Anatomy) -> None:
    """Pericardium, pericardial fluid, epicardial fat, myocardium and blood pool; coronary arteries."""
    p = a.params
    fluid = p.pericardial_fluid_mm
    blood = 250.0 if p.contrast else 40.0
    # The heart stays inside the thoracic cavity even when enlarged (the chest wall does not yield).
    inside = np.broadcast_to(a.masks["cavity2d"][None], a.hu.shape)
    # Outer to inner, each layer overwrites the previous one.
    _paint(a, _heart_shell(a, EPICARDIAL_FAT_MM + fluid + PERICARDIUM_MM), 28.0, Tissue.PERICARDIUM, inside)
    if fluid > 0:
        # The fluid is a finding: it is labelled as lesion, and its mask is what keeps that label.
        shell = _heart_shell(a, EPICARDIAL_FAT_MM + fluid)
        _paint(a, shell, 15.0, Tissue.LESION, inside)
        a.masks["pericardial_fluid"] = union_mask(a.hu.shape, [shell]) & inside
    _paint(a, _heart_shell(a, EPICARDIAL_FAT_MM), -90.0, Tissue.MEDIASTINUM, inside)
    _paint(a, _heart_shell(a, 0.0), 40.0, Tissue.HEART, inside)
    inner = a.landmarks["heart_semi"] * 0.72
    _paint(
        a,
        ellipsoid(a.grid, a.landmarks["heart_center"], inner, a.landmarks["heart_axes"]),
        blood,
        Tissue.HEART,
        inside,
    )
    # Coronary arteries run in the epicardial fat, so they may only replace fat.
    fat = a.labels == Tissue.MEDIASTINUM
    for name, pts in coronary_paths(a).items():
        radii = np.full(len(pts), 1.8)
        a.paths[name] = (pts, radii)
        for reg in polyline(a.grid, pts, radii):
            _paint(a, reg, blood, Tissue.GREAT_VESSEL, where=fat)


def coronary_paths(a: Anatomy) -> dict[str, np.ndarray]:
    """World polylines of LAD, RCA and circumflex in the epicardial fat on the heart's surface."""
    c = a.landmarks["heart_center"]
    axes = a.landmarks["heart_axes"]
    semi = a.landmarks["heart_semi"]
    e1, e2, e3 = axes[:, 0], axes[:, 1], axes[:, 2]
    lift = EPICARDIAL_FAT_MM * 0.5

    def angle_of(world_dir) -> float:
        d = a.frame.vector(world_dir)
        return math.atan2(float(d @ e3), float(d @ e2))

    def surface(s: float, psi: float) -> np.ndarray:
        ring = math.sqrt(max(1.0 - s * s, 0.0))
        return (
            c
            + e1 * semi[0] * s
            + (e2 * (semi[1] + lift) * math.cos(psi) + e3 * (semi[2] + lift) * math.sin(psi)) * ring
        )

    def sweep(psi0: float, psi1: float, s: float, n: int = 9) -> np.ndarray:
        delta = (psi1 - psi0 + math.pi) % (2 * math.pi) - math.pi
        return np.array([surface(s, psi0 + delta * t) for t in np.linspace(0, 1, n)])

    ant = angle_of([0.0, -1.0, 0.3])
    right = angle_of([-1.0, 0.0, 0.0])
    inferior = angle_of([0.0, 0.2, -1.0])
    left = angle_of([1.0, 0.2, 0.0])
    lad = np.array([surface(s, ant + 0.15) for s in np.linspace(-0.55, 0.9, 10)])
    return {
        "lad": lad,
        "rca": np.concatenate([sweep(ant - 0.3, right, -0.62), sweep(right, inferior, -0.62)[1:]]),
        "lcx": sweep(ant + 0.6, left, -0.62),
    }


def paint_great_vessels(a: Anatomy) -> None:
    """Aorta, pulmonary arteries, SVC and arch branches over mediastinal fat; the oesophagus."""
    contrast = a.params.contrast
    for name, (pts, radii) in a.paths.items():
        if name in ("lad", "rca", "lcx"):
            continue
        if name == "esophagus":
            value, tissue = 35.0, Tissue.SOFT_TISSUE
        elif name == "svc":
            value, tissue = (120.0 if contrast else 38.0), Tissue.GREAT_VESSEL
        else:
            value, tissue = (250.0 if contrast else 42.0), Tissue.GREAT_VESSEL
        for reg in polyline(a.grid, pts, radii):
            _paint(a, reg, value, tissue)
    # The aortic wall is where atherosclerotic plaques will sit.
    pts, radii = a.paths["aorta"]
    a.masks["aorta"] = np.zeros(a.hu.shape, dtype=bool)
    for sl, m in polyline(a.grid, pts, radii):
        a.masks["aorta"][sl] |= m


def paint_skeleton(a: Anatomy) -> None:
    """Vertebrae with canal and posterior elements, ribs with costal cartilage, sternum, scapulae."""
    p, U, V, W, hu, lab = a.params, a.U, a.V, a.W, a.hu, a.labels
    w3 = W[:, None, None]
    vs = p.spine_v
    canal_v = vs + 26.0
    r_body = np.hypot(U, V - vs)
    r_canal = np.hypot(U, V - canal_v)
    # Vertebral levels every ~26 mm with a 5 mm intervertebral disc.
    disc = (np.mod(W - p.rib_phase, 26.0) < 5.0)[:, None, None]
    body = (r_body < 17.0)[None]
    cortex = body & ~(r_body < 14.0)[None]
    post = (
        ((r_canal >= 8.0) & (r_canal < 13.0) & (V > canal_v - 3.0))
        | ((np.abs(U) < 3.5) & (V > canal_v + 10.0) & (V < canal_v + 24.0))
        | ((np.abs(U) > 10.0) & (np.abs(U) < 30.0) & (np.abs(V - canal_v + 4.0) < 5.0))
    )
    for mask, value in (
        (body & ~disc, 230.0),
        (cortex & ~disc, 650.0),
        (post[None] & ~disc, 560.0),
    ):
        hu[mask], lab[mask] = value, Tissue.BONE
    hu[body & disc], lab[body & disc] = 85.0, Tissue.SOFT_TISSUE
    canal = np.broadcast_to((r_canal < 8.0)[None], hu.shape)
    hu[canal], lab[canal] = 20.0, Tissue.SOFT_TISSUE

    # Ribs: arcs just outside the parietal pleura, high at the spine, sloping down anteriorly.
    rho = np.sqrt((U / p.cavity_a) ** 2 + ((V - p.cavity_v) / p.cavity_b) ** 2)
    depth = (rho - 1.0) * np.hypot(U, V - p.cavity_v) / np.maximum(rho, 1e-3)
    theta = np.arctan2(np.abs(U), V - p.cavity_v) / math.pi  # 0 posterior, 1 anterior
    ring = (depth > 1.0) & (depth < 9.0) & (np.abs(U) > 20.0)
    yy, xx = np.nonzero(ring)
    th = theta[yy, xx]
    top = p.apex_w - 5.0 + p.rib_phase * 0.3
    for k in range(12):
        w_rib = top - 24.0 * k - 95.0 * th
        reach = 0.85 - 0.035 * k
        near = np.abs(W[:, None] - w_rib[None, :]) < 5.0
        bone = near & (th < reach)[None, :]
        cart = near & (th >= reach)[None, :] & (th < 0.93)[None, :] & (k < 10)
        for sel, value, tissue in ((bone, 520.0 - 8.0 * k, Tissue.BONE), (cart, 130.0, Tissue.SOFT_TISSUE)):
            zi, ri = np.nonzero(sel)
            hu[zi, yy[ri], xx[ri]] = value
            lab[zi, yy[ri], xx[ri]] = tissue

    sternum = ((np.abs(U) < 14.0) & (depth > 0.0) & (depth < 12.0) & (theta > 0.9))[None] & (
        (w3 > p.carina_w - 140.0) & (w3 < p.carina_w + 65.0)
    )
    hu[sternum], lab[sternum] = 380.0, Tissue.BONE
    scapula = ((depth > 13.0) & (depth < 18.0) & (theta > 0.2) & (theta < 0.48))[None] & (
        (w3 > p.carina_w - 40.0) & (w3 < p.carina_w + 100.0)
    )
    hu[scapula], lab[scapula] = 500.0, Tissue.BONE


def _unit_rows(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)


def _tree(
    rng: np.random.Generator,
    roots: np.ndarray,
    directions: np.ndarray,
    length: float,
    radius: float,
    depth: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Dichotomously branching segments from each root, one generation at a time.

    Returns start points, end points (both ``(S, 3)``, anatomical frame), start and end radii ``(S,)``.
    """
    p0 = np.asarray(roots, dtype=np.float64).reshape(-1, 3)
    d = _unit_rows(np.asarray(directions, dtype=np.float64).reshape(-1, 3))
    lengths = np.full(len(p0), float(length))
    radii = np.full(len(p0), float(radius))
    out: list[tuple[np.ndarray, ...]] = []
    for gen in range(depth):
        p1 = p0 + d * lengths[:, None]
        r1 = radii * 0.72
        out.append((p0, p1, radii, r1))
        if gen + 1 == depth:
            break
        n = len(p0)
        perp = _unit_rows(np.cross(d, rng.normal(size=(n, 3))))
        d2 = np.concatenate([d, d])
        wobble = np.concatenate([perp, -perp]) + 0.3 * rng.normal(size=(2 * n, 3))
        wobble = _unit_rows(wobble - (wobble * d2).sum(axis=1, keepdims=True) * d2)
        ang = np.radians(rng.uniform(22.0, 40.0, size=2 * n))[:, None]
        d = _unit_rows(np.cos(ang) * d2 + np.sin(ang) * wobble)
        p0 = np.concatenate([p1, p1])
        lengths = np.concatenate([lengths, lengths]) * rng.uniform(0.62, 0.8, size=2 * n)
        radii = np.concatenate([r1, r1])
    return tuple(np.concatenate(parts) for parts in zip(*out))  # type: ignore[return-value]


def _roots(
    hilum: np.ndarray, table: list[tuple[float, float, float]], side: float
) -> tuple[np.ndarray, np.ndarray]:
    dirs = np.array([(side * d[0], d[1], d[2]) for d in table])
    return np.repeat(np.asarray(hilum, dtype=np.float64)[None], len(dirs), axis=0), dirs


# Initial branch directions from each hilum: (lateral, posterior, superior) before side mirroring.
_VESSEL_ROOTS = [
    (0.35, 0.1, 1.0),
    (0.6, -0.5, 0.6),
    (1.0, -0.3, 0.25),
    (0.5, -0.8, -0.35),
    (0.45, 0.55, -0.7),
    (0.6, 0.15, -0.8),
    (0.3, 0.8, 0.3),
    (0.9, 0.5, 0.0),
]
_AIRWAY_ROOTS = [(0.4, 0.15, 1.0), (0.7, -0.7, -0.3), (0.45, 0.5, -0.75), (0.7, 0.1, -0.6)]


def paint_airways(a: Anatomy, rng: np.random.Generator) -> None:
    """Trachea splitting at the carina into main bronchi, then air-filled bronchial trees in the lungs."""
    p = a.params
    wc, vt = p.carina_w, p.trachea_v
    carina = np.array([0.0, vt, wc])
    hila = {-1.0: np.array([-30.0, vt + 4.0, wc - 22.0]), 1.0: np.array([42.0, vt + 6.0, wc - 30.0])}
    a.landmarks["carina"] = a.frame.point(carina)
    central = [(np.array([0.0, vt, 175.0]), carina, 9.0, 8.5)]
    central += [(carina, hila[s], 7.0 if s < 0 else 6.5, 6.0) for s in (-1.0, 1.0)]
    for p0, p1, r0, r1 in central:
        w0, w1 = a.frame.point(p0), a.frame.point(p1)
        _paint(a, capsule(a.grid, w0, w1, r0 + 2.0, r1 + 2.0), 40.0, Tissue.SOFT_TISSUE)
    for p0, p1, r0, r1 in central:
        _paint(a, capsule(a.grid, a.frame.point(p0), a.frame.point(p1), r0, r1), -1000.0, Tissue.AIRWAY)
    lungs = a.lobes > 0
    for s, hilum in hila.items():
        a.landmarks["hilum_right" if s < 0 else "hilum_left"] = a.frame.point(hilum)
        p0, p1, r0, r1 = _tree(rng, *_roots(hilum, _AIRWAY_ROOTS, s), 34.0, 4.5, 3)
        w0, w1 = a.frame.point(p0), a.frame.point(p1)
        for i in range(len(w0)):
            _paint(a, capsule(a.grid, w0[i], w1[i], r0[i] + 1.3, r1[i] + 1.3), -300.0, Tissue.AIRWAY, lungs)
            _paint(a, capsule(a.grid, w0[i], w1[i], r0[i], r1[i]), -990.0, Tissue.AIRWAY, lungs)


def paint_lung_vessels(a: Anatomy, rng: np.random.Generator) -> None:
    """Pulmonary arterial trees branching from the ends of the right and left pulmonary arteries.

    Branches at least a voxel wide are solid tubes. Thinner ones are traced as one-voxel lines at
    the contrast their partial volume gives on CT, which is what makes lung parenchyma look like
    lung at a few millimetres per voxel (and is far cheaper than hundreds of tiny tubes).
    """
    value = 150.0 if a.params.contrast else 40.0
    sz, sy, sx = a.grid.spacing
    floor = 0.9 * min(sy, sx)
    where = a.labels == Tissue.LUNG
    segs = []
    for name, s in (("right_pa", -1.0), ("left_pa", 1.0)):
        pts, _ = a.paths[name]
        hilum = np.linalg.solve(a.frame.rot, pts[-1] - a.frame.shift)
        segs.append(_tree(rng, *_roots(hilum, _VESSEL_ROOTS, s), 34.0, 6.5, 8))
    p0, p1, r0, r1 = (np.concatenate(parts) for parts in zip(*segs))
    w0, w1 = a.frame.point(p0), a.frame.point(p1)
    thick = r1 >= floor
    for i in np.flatnonzero(thick):
        _paint(a, capsule(a.grid, w0[i], w1[i], r0[i], r1[i]), value, Tissue.VESSEL, where)
    starts, ends, radii = w0[~thick], w1[~thick], 0.5 * (r0[~thick] + r1[~thick])
    t = np.linspace(0.0, 1.0, 12)[None, :, None]
    samples = starts[:, None, :] + t * (ends - starts)[:, None, :]
    frac = np.minimum(1.0, math.pi * radii**2 / (sy * sz))
    values = np.broadcast_to((-850.0 + (value + 850.0) * frac)[:, None], samples.shape[:2])
    ijk = np.rint((samples - np.asarray(a.grid.origin)) / np.array([sx, sy, sz])).astype(np.int64)
    inside = np.all((ijk >= 0) & (ijk < np.array(a.grid.shape[::-1])), axis=-1)
    xi, yi, zi = ijk[inside].T
    vals = values[inside].astype(np.float32)
    keep = where[zi, yi, xi]
    zi, yi, xi, vals = zi[keep], yi[keep], xi[keep], vals[keep]
    a.hu[zi, yi, xi] = np.maximum(a.hu[zi, yi, xi], vals)
    a.labels[zi, yi, xi] = Tissue.VESSEL


def paint_lungs(a: Anatomy, lungs: np.ndarray) -> None:
    """Aerated parenchyma, slightly denser in the dependent (posterior) lung as in a supine patient."""
    p = a.params
    gradient = (-860.0 + 30.0 * np.clip((a.V - p.cavity_v) / p.cavity_b, -1.0, 1.0)).astype(np.float32)
    a.hu[lungs] = np.broadcast_to(gradient[None], a.hu.shape)[lungs]
    a.labels[lungs] = Tissue.LUNG


__all__ = [
    "heart_geometry",
    "great_vessel_paths",
    "lung_exclusions",
    "paint_heart",
    "paint_great_vessels",
    "paint_skeleton",
    "paint_airways",
    "paint_lung_vessels",
    "paint_lungs",
]
