"""Normal chest anatomy of the synthetic phantom: body wall, lungs and lobes, mediastinum, upper abdomen.

All landmarks are given in an *anatomical frame* ``(u, v, w)`` in mm: ``u`` towards the patient's
left, ``v`` posterior, ``w`` superior, origin at the body centre at mid-field. That is LPS turned by
a few degrees about the long axis (patients never lie perfectly straight) and shifted by the table
offset; ``Frame`` maps it to LPS world coordinates. With the identity direction of ``Volume``, low
``x`` index is the patient's right, low ``y`` index anterior, low ``z`` index inferior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from engine.phantom_shapes import Grid, union_mask


class Tissue(IntEnum):
    """Voxel labels of the phantom (what each voxel was painted as)."""

    OUTSIDE = 0
    FAT = 1
    MUSCLE = 2
    MEDIASTINUM = 3
    LUNG = 4
    AIRWAY = 5
    VESSEL = 6
    HEART = 7
    PERICARDIUM = 8
    GREAT_VESSEL = 9
    BONE = 10
    LIVER = 11
    ABDOMEN = 12
    SOFT_TISSUE = 13
    LESION = 14


@dataclass
class AnatomyParams:
    """Per-seed anatomical variation (mm and radians). ``draw`` samples it; fields may be edited."""

    body_a: float = 158.0  # half-width of the body
    body_b: float = 105.0  # half-depth (anterior-posterior) of the body
    fat_t: float = 14.0
    muscle_t: float = 14.0
    angle: float = 0.0  # rotation about the long axis
    shift_u: float = 0.0
    shift_v: float = 0.0
    carina_w: float = 40.0
    dome_right: float = -88.0
    dome_drop_left: float = 15.0  # left hemidiaphragm lies lower than the right
    apex_w: float = 145.0
    heart_u: float = 22.0
    heart_w: float = -40.0
    heart_size: float = 1.0
    heart_axis: tuple[float, float, float] = (0.7, -0.45, -0.5)
    rib_phase: float = 0.0
    gastric_air: bool = True
    contrast: bool = False
    # Set from findings: enlarged heart, pericardial fluid rim thickness.
    heart_scale: float = 1.0
    pericardial_fluid_mm: float = 0.0

    @classmethod
    def draw(cls, rng: np.random.Generator) -> AnatomyParams:
        """Sample a plausible adult chest."""

        def j(scale: float) -> float:
            return float(rng.uniform(-scale, scale))

        ax = np.array([0.7 + j(0.06), -0.45 + j(0.06), -0.5 + j(0.06)])
        body_a = 158.0 + j(12.0)
        carina = 40.0 + j(8.0)
        return cls(
            body_a=body_a,
            body_b=105.0 + j(9.0),
            fat_t=14.0 + j(6.0),
            muscle_t=14.0 + j(3.0),
            angle=math.radians(j(4.0)),
            shift_u=j(8.0),
            shift_v=j(6.0),
            carina_w=carina,
            dome_right=carina - 128.0 + j(7.0),
            dome_drop_left=15.0 + j(5.0),
            apex_w=145.0 + j(6.0),
            heart_u=22.0 + j(5.0),
            # The heart hangs below the carina and rests on the diaphragm.
            heart_w=carina - 80.0 + j(5.0),
            # Bigger chests hold bigger hearts: the cardiothoracic ratio stays normal.
            heart_size=body_a / 158.0 * (1.0 + j(0.04)),
            heart_axis=tuple(float(a) for a in ax),  # type: ignore[arg-type]
            rib_phase=j(8.0),
            gastric_air=bool(rng.random() < 0.7),
        )

    # Derived geometry, shared by every part of the builder.
    @property
    def cavity_a(self) -> float:
        return self.body_a - self.fat_t - self.muscle_t

    @property
    def cavity_b(self) -> float:
        return self.body_b - self.fat_t - self.muscle_t - 4.0

    @property
    def cavity_v(self) -> float:
        # The thoracic cavity sits anterior to the body centre: the back muscles are thicker.
        return -6.0

    @property
    def spine_v(self) -> float:
        return self.cavity_v + self.cavity_b - 20.0

    @property
    def trachea_v(self) -> float:
        return self.spine_v - 44.0


class Frame:
    """Maps anatomical ``(u, v, w)`` to LPS world ``(x, y, z)``: a turn about z plus a shift."""

    def __init__(self, angle: float, shift: np.ndarray) -> None:
        c, s = math.cos(angle), math.sin(angle)
        self.rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        self.shift = np.asarray(shift, dtype=np.float64)

    def point(self, p) -> np.ndarray:
        return np.asarray(p, dtype=np.float64) @ self.rot.T + self.shift

    def vector(self, d) -> np.ndarray:
        return np.asarray(d, dtype=np.float64) @ self.rot.T

    def plane_coords(self, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Anatomical ``U``, ``V`` of every in-plane pixel ``(ny, nx)`` and ``W`` of every slice ``(nz,)``."""
        x = grid.x[None, :] - np.float32(self.shift[0])
        y = grid.y[:, None] - np.float32(self.shift[1])
        c, s = np.float32(self.rot[0, 0]), np.float32(self.rot[1, 0])
        return c * x + s * y, -s * x + c * y, grid.z - np.float32(self.shift[2])


@dataclass
class Anatomy:
    """A painted normal chest and everything the lesion painter needs to place findings."""

    grid: Grid
    params: AnatomyParams
    frame: Frame
    hu: np.ndarray
    labels: np.ndarray
    lobes: np.ndarray  # 0 outside the lungs, else 1 + index into LOBES
    U: np.ndarray
    V: np.ndarray
    W: np.ndarray
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)  # world points
    paths: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # world polyline, radii
    # Full-volume masks for later painters; "cavity2d" is the in-plane (ny, nx) thoracic cavity.
    masks: dict[str, np.ndarray] = field(default_factory=dict)

    def side_mask(self, side: str) -> np.ndarray:
        """The lungs of one side (``right``, ``left`` or ``bilateral``)."""
        if side == "bilateral":
            return self.lobes > 0
        return (self.lobes >= 1) & (self.lobes <= 3) if side == "right" else self.lobes >= 4

    def cavity_wall_v(self) -> np.ndarray:
        """Anatomical ``v`` of the posterior inner chest wall for every pixel's ``u`` ``(ny, nx)``."""
        p = self.params
        frac = np.clip(1.0 - (self.U / p.cavity_a) ** 2, 0.0, None)
        return p.cavity_v + p.cavity_b * np.sqrt(frac)


def _ellipse2d(U: np.ndarray, V: np.ndarray, a: float, b: float, v0: float = 0.0) -> np.ndarray:
    return (U / a) ** 2 + ((V - v0) / b) ** 2


def dome_heights(p: AnatomyParams, U: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Height ``w`` of the diaphragm under every pixel: domes peak centrally, recesses run deep behind."""
    cx = 0.5 * p.cavity_a
    out = np.empty_like(U)
    for sign, peak in ((-1.0, p.dome_right), (1.0, p.dome_right - p.dome_drop_left)):
        rho2 = ((U - sign * cx) / (0.6 * p.cavity_a)) ** 2 + ((V - p.cavity_v) / p.cavity_b) ** 2
        h = peak - 40.0 * rho2 - 16.0 * np.clip((V - p.cavity_v) / p.cavity_b, 0.0, None)
        side = U < 0 if sign < 0 else U >= 0
        out[side] = h[side]
    return out


def paint_wall_and_abdomen(a: Anatomy, rng: np.random.Generator) -> None:
    """Subcutaneous fat, chest-wall muscle, mediastinal fat filling, diaphragm, liver, stomach, spleen."""
    p, U, V, W, hu, lab = a.params, a.U, a.V, a.W, a.hu, a.labels
    body = _ellipse2d(U, V, p.body_a, p.body_b) <= 1.0
    muscle = _ellipse2d(U, V, p.body_a - p.fat_t, p.body_b - p.fat_t) <= 1.0
    cavity = _ellipse2d(U, V, p.cavity_a, p.cavity_b, p.cavity_v) <= 1.0
    for mask2d, value, tissue in (
        (body, -100.0, Tissue.FAT),
        (muscle, 45.0, Tissue.MUSCLE),
        (cavity, -90.0, Tissue.MEDIASTINUM),
    ):
        hu[:, mask2d] = value
        lab[:, mask2d] = tissue
    a.masks["cavity2d"] = cavity

    dome = dome_heights(p, U, V)
    below = cavity[None] & (W[:, None, None] < dome[None])
    diaphragm = below & (W[:, None, None] > dome[None] - 5.0)
    liver_edge = 15.0 - 0.35 * (V - p.cavity_v)
    liver = below & (U < liver_edge)[None]
    rest = below & ~liver
    spleen = rest & ((V - p.cavity_v > 0.15 * p.cavity_b) & (U > 0.4 * p.cavity_a))[None]
    stomach = rest & ~spleen
    hu[liver], lab[liver] = 60.0, Tissue.LIVER
    hu[spleen], lab[spleen] = 47.0, Tissue.ABDOMEN
    hu[stomach], lab[stomach] = 30.0, Tissue.ABDOMEN
    if p.gastric_air:
        # Swallowed air rises to the non-dependent (anterior) top of the gastric fundus.
        fv = p.cavity_v - 0.2 * p.cavity_b
        fundus = ((U - 0.45 * p.cavity_a) ** 2 + (V - fv) ** 2 < 30.0**2) & (V < fv - 4.0)
        air = stomach & (W[:, None, None] > dome[None] - 45.0) & fundus[None]
        hu[air], lab[air] = -1000.0, Tissue.ABDOMEN
    hu[diaphragm], lab[diaphragm] = 40.0, Tissue.MUSCLE


def lung_mask(a: Anatomy, exclusions: list) -> np.ndarray:
    """Both lungs: the cavity above the diaphragm and below the apices, outside the mediastinum."""
    p, U, V, W = a.params, a.U, a.V, a.W
    cavity = a.masks["cavity2d"]
    w3 = W[:, None, None]
    # A thin midline band keeps the lungs apart (anterior junction line); the mediastinal organs
    # (heart, great vessels, trachea, oesophagus) carve out the rest through ``exclusions``.
    band = (np.abs(U) < 9.0)[None]
    spine = (np.abs(U) < 26.0) & (V > p.spine_v - 19.0)
    lungs = (cavity & ~spine)[None] & ~band & (w3 > dome_heights(p, U, V)[None])
    # Apices: each lung narrows to a dome above the upper thoracic aperture.
    w0 = p.carina_w + 45.0
    s2 = np.where(W > w0, 1.0 - ((W - w0) / (p.apex_w - w0)) ** 2, 100.0).astype(np.float32)
    cx = 0.45 * p.cavity_a
    for sign in (-1.0, 1.0):
        q = ((U - sign * cx) / (0.55 * p.cavity_a)) ** 2 + ((V - p.cavity_v - 10.0) / p.cavity_b) ** 2
        side = (U < 0) if sign < 0 else (U >= 0)
        lungs &= ~side[None] | (q[None] < s2[:, None, None])
    lungs &= ~union_mask(a.hu.shape, exclusions)
    return lungs


def lobe_labels(a: Anatomy, lungs: np.ndarray) -> np.ndarray:
    """1..5 for the lobes in ``LOBES`` order, split by oblique and horizontal fissure surfaces."""
    p, U, V, W = a.params, a.U, a.V, a.W
    out = np.zeros(lungs.shape, dtype=np.uint8)
    for sign, hilum_w, codes in ((-1.0, p.carina_w - 22.0, (1, 2, 3)), (1.0, p.carina_w - 28.0, (4, 5))):
        side = lungs & ((U < 0) if sign < 0 else (U >= 0))[None]
        # The oblique fissure climbs from the anterior diaphragm to high on the posterior wall.
        fissure = hilum_w + np.minimum(1.2 * (V - p.trachea_v - 8.0), 50.0)
        lower = side & (W[:, None, None] < fissure[None])
        if len(codes) == 3:
            middle = side & ~lower & (W < hilum_w + 6.0)[:, None, None]
            out[side] = codes[0]
            out[middle] = codes[1]
            out[lower] = codes[2]
        else:
            out[side] = codes[0]
            out[lower] = codes[1]
    return out
