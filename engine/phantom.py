"""Synthetic chest CT phantoms with known findings, lesion masks and reference reports.

``make_phantom(seed)`` paints a plausible adult chest in Hounsfield units: air around a body of
subcutaneous fat and muscle, ribs, sternum, scapulae and vertebrae with their canal, two lungs split
into five lobes with branching vessels and bronchi, trachea and main bronchi, heart with
pericardium and coronary arteries, aorta, pulmonary arteries, SVC, oesophagus, the liver dome under
the right hemidiaphragm, stomach and spleen on the left. Sizes, positions and a turn of a few
degrees about the long axis vary with the seed; CT-like correlated noise of 10–20 HU is added.

Geometry follows ``engine.volume``: voxels ``(z, y, x)``, identity direction, so axis 0 runs
inferior→superior (index 0 is the lowest slice), axis 1 anterior→posterior and axis 2 from the
patient's right to the patient's left (LPS). The right lung therefore lies at low ``x`` index,
which is image left in the usual axial display.

Findings are ``Finding`` records with CT-RATE label names; ``None`` draws them from the seed
(about 20% normal studies). ``Phantom.masks[i]`` is the ground-truth voxel mask of
``Phantom.findings[i]``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from engine import phantom_organs as organs
from engine.phantom_anatomy import (
    Anatomy,
    AnatomyParams,
    Frame,
    Tissue,
    lobe_labels,
    lung_mask,
    paint_wall_and_abdomen,
)
from engine.phantom_dicom import write_phantom_dicom
from engine.phantom_findings import KINDS, LOBES, Finding, draw_findings, resolve_findings
from engine.phantom_lesions import paint_findings
from engine.phantom_report import report_for
from engine.phantom_shapes import Grid
from engine.volume import Volume

logger = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "LOBES",
    "Finding",
    "Phantom",
    "Tissue",
    "make_phantom",
    "load_phantom_sample",
    "report_for",
    "write_phantom_dicom",
]

DEFAULT_SHAPE = (64, 128, 128)
# Field of view (z, y, x) in mm when no spacing is given: chest from upper abdomen to the neck.
FIELD_MM = (320.0, 358.4, 358.4)
SERIES_DESCRIPTION = "Mu2 synthetic chest phantom"
SAMPLE_SEED = 7

# Amplitude (HU) of slow texture per tissue: lung parenchyma is patchy, bone marrow varies.
_TEXTURE_HU = np.full(len(Tissue), 4.0, dtype=np.float32)
_TEXTURE_HU[[Tissue.LUNG, Tissue.BONE]] = (18.0, 40.0)
_TEXTURE_HU[[Tissue.FAT, Tissue.MEDIASTINUM, Tissue.MUSCLE, Tissue.LIVER]] = (10.0, 8.0, 7.0, 6.0)
_TEXTURE_HU[Tissue.OUTSIDE] = 0.0
# Point-spread blur in voxels (z, y, x): thick slices are blurred less per voxel than in-plane.
_BLUR_SIGMA = (0.35, 0.55, 0.55)


@dataclass
class Phantom:
    """A synthetic chest CT and its ground truth.

    Attributes
    ----------
    volume
        HU voxels and geometry (``case_id`` ``phantom-<seed>``).
    findings
        Fully resolved ground-truth findings (side, lobe, size filled in).
    report
        Reference report for ``findings`` (``FINDINGS:`` / ``IMPRESSION:``).
    masks
        One boolean ``(z, y, x)`` mask per finding, aligned with ``findings``.
    seed
        The seed that made it.
    labels
        ``Tissue`` code of every voxel (uint8).
    lobes
        0 outside the lungs, else ``1 + LOBES.index(lobe)`` (pleural space included).
    """

    volume: Volume
    findings: list[Finding]
    report: str
    masks: list[np.ndarray] = field(repr=False)
    seed: int
    labels: np.ndarray = field(repr=False)
    lobes: np.ndarray = field(repr=False)

    def mask_of(self, kind: str) -> np.ndarray:
        """Union of the masks of every finding of ``kind`` (all False when absent)."""
        out = np.zeros(self.volume.shape, dtype=bool)
        for f, m in zip(self.findings, self.masks):
            if f.kind == kind:
                out |= m
        return out

    def lung_mask(self, lobe_or_side: str | None = None) -> np.ndarray:
        """Lungs (pleural space included), or one lobe, or one side (``right``/``left``)."""
        if lobe_or_side is None:
            return self.lobes > 0
        if lobe_or_side in LOBES:
            return self.lobes == LOBES.index(lobe_or_side) + 1
        if lobe_or_side == "right":
            return (self.lobes >= 1) & (self.lobes <= 3)
        if lobe_or_side == "left":
            return self.lobes >= 4
        raise ValueError(f"unknown lobe or side {lobe_or_side!r}")


def _rng(seed: int, stream: int) -> np.random.Generator:
    # Independent streams: editing the findings of a seed leaves its anatomy and noise unchanged.
    return np.random.default_rng([seed, stream])


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing, scale_mm: float
) -> np.ndarray:
    """Unit-variance noise correlated over ``scale_mm``, built separably from a coarse lattice."""
    mats = []
    for n, step in zip(shape, spacing):
        pos = np.arange(n) * step
        ctrl = (np.arange(int(np.ceil(pos[-1] / scale_mm)) + 3) - 1.0) * scale_mm
        w = np.exp(-0.5 * ((pos[:, None] - ctrl[None, :]) / (0.6 * scale_mm)) ** 2)
        mats.append((w / w.sum(axis=1, keepdims=True)).astype(np.float32))
    coarse = rng.standard_normal(tuple(m.shape[1] for m in mats)).astype(np.float32)
    f = np.tensordot(mats[0], coarse, axes=(1, 0))
    f = np.matmul(mats[1][None], f)
    f = np.matmul(f, mats[2].T)
    return f / max(float(f.std()), 1e-6)


def _gauss_gain(sigma: float) -> float:
    """Factor by which ``ndimage.gaussian_filter`` shrinks the std of white noise along one axis."""
    r = int(4.0 * sigma + 0.5)
    x = np.arange(-r, r + 1)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    w /= w.sum()
    return float(np.sqrt((w**2).sum()))


def _check(
    seed: int, shape: Sequence[int], spacing
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes of at least 8 voxels, got {shape}")
    if spacing is None:
        spacing = tuple(round(f / n, 4) for f, n in zip(FIELD_MM, shape))
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive sizes in mm, got {spacing}")
    return shape, spacing  # type: ignore[return-value]


def build_anatomy(grid: Grid, params: AnatomyParams, rng: np.random.Generator) -> Anatomy:
    """Paint the normal chest of ``params`` on ``grid`` (findings that change anatomy included)."""
    center = np.array(grid.origin) + (np.array(grid.shape[::-1]) - 1) * np.array(grid.spacing[::-1]) / 2.0
    frame = Frame(params.angle, center + np.array([params.shift_u, params.shift_v, 0.0]))
    U, V, W = frame.plane_coords(grid)
    a = Anatomy(
        grid=grid,
        params=params,
        frame=frame,
        hu=np.full(grid.shape, -1000.0, dtype=np.float32),
        labels=np.zeros(grid.shape, dtype=np.uint8),
        lobes=np.zeros(grid.shape, dtype=np.uint8),
        U=U,
        V=V,
        W=W,
    )
    organs.heart_geometry(a)
    organs.great_vessel_paths(a)
    paint_wall_and_abdomen(a, rng)
    lungs = lung_mask(a, organs.lung_exclusions(a))
    a.lobes = lobe_labels(a, lungs)
    organs.paint_lungs(a, lungs)
    organs.paint_heart(a)
    organs.paint_great_vessels(a)
    organs.paint_skeleton(a)
    organs.paint_airways(a, rng)
    organs.paint_lung_vessels(a, rng)
    return a


def make_phantom(
    seed: int,
    findings: Sequence[Finding] | None = None,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] | None = None,
    *,
    contrast: bool = False,
    noise_hu: float | None = None,
) -> Phantom:
    """Make a synthetic chest CT with known findings.

    Parameters
    ----------
    seed
        Non-negative integer; the same seed and arguments always give the same phantom.
    findings
        Ground truth to paint; unspecified lobe/side/size are drawn from the seed. ``None`` draws
        the whole list from the seed (about 20% normal studies); ``[]`` makes a normal study.
    shape
        ``(z, y, x)`` voxels; default ``(64, 128, 128)``.
    spacing
        ``(z, y, x)`` mm; default covers about 320 mm (z) by 358 mm (in-plane) whatever the shape,
        i.e. ``(5.0, 2.8, 2.8)`` at the default shape. Anatomy is fixed in mm.
    contrast
        Contrast-enhanced blood pool (aorta, heart chambers, pulmonary arteries about +250 HU).
    noise_hu
        Standard deviation of the image noise; default drawn from the seed in 10–20 HU.

    Returns
    -------
    Phantom
    """
    shape, spacing = _check(seed, shape, spacing)
    origin = tuple(round(-(n - 1) / 2.0 * s, 4) for n, s in zip(shape[::-1], spacing[::-1]))
    grid = Grid(shape, spacing, origin)

    truth = draw_findings(_rng(seed, 1)) if findings is None else list(findings)
    truth = resolve_findings(truth, _rng(seed, 2))
    params = AnatomyParams.draw(_rng(seed, 0))
    params.contrast = bool(contrast)
    for f in truth:
        if f.kind == "Cardiomegaly":
            params.heart_scale = 1.38
        if f.kind == "Pericardial effusion":
            params.pericardial_fluid_mm = max(params.pericardial_fluid_mm, float(f.size_mm or 10.0))

    anatomy = build_anatomy(grid, params, _rng(seed, 3))
    masks = paint_findings(anatomy, truth, _rng(seed, 4))
    hu = _finish(anatomy, _rng(seed, 5), noise_hu)

    volume = Volume(
        voxels=hu,
        spacing=spacing,
        origin=origin,
        modality="CT",
        series_description=SERIES_DESCRIPTION,
        case_id=f"phantom-{seed}",
    )
    report = report_for(truth, _rng(seed, 6))
    return Phantom(
        volume=volume,
        findings=truth,
        report=report,
        masks=masks,
        seed=int(seed),
        labels=anatomy.labels,
        lobes=anatomy.lobes,
    )


def _finish(a: Anatomy, rng: np.random.Generator, noise_hu: float | None) -> np.ndarray:
    """Tissue texture, scanner blur, correlated noise; clipped to the CT range and rounded to whole HU."""
    hu = a.hu
    hu += _smooth_field(rng, a.grid.shape, a.grid.spacing, 18.0) * _TEXTURE_HU[a.labels]
    sigma = float(rng.uniform(10.0, 20.0)) if noise_hu is None else float(noise_hu)
    if sigma > 0:
        # Noise goes in before the blur so that it comes out spatially correlated like CT noise.
        gain = float(np.prod([_gauss_gain(s) for s in _BLUR_SIGMA]))
        hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(sigma / gain)
    hu = ndimage.gaussian_filter(hu, _BLUR_SIGMA)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    return np.rint(hu).astype(np.float32)


def load_phantom_sample() -> Volume:
    """The fixed demo study (seed 7): a 14 mm right-upper-lobe nodule and a left pleural effusion."""
    phantom = make_phantom(
        SAMPLE_SEED,
        findings=[
            Finding("Lung nodule", lobe="right upper lobe", size_mm=14.0),
            Finding("Pleural effusion", side="left", size_mm=30.0),
        ],
    )
    return phantom.volume
