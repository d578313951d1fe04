"""Ground-truth findings of a synthetic phantom: the ``Finding`` record, its vocabulary, random draws.

Kinds are spelled exactly as the CT-RATE label columns so that phantom ground truth, extracted
labels and CT-RATE labels compare without a mapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

#: The finding kinds a phantom can hold (a subset of the 18 CT-RATE labels, same spelling).
KINDS: tuple[str, ...] = (
    "Lung nodule",
    "Consolidation",
    "Pleural effusion",
    "Pericardial effusion",
    "Cardiomegaly",
    "Emphysema",
    "Atelectasis",
    "Lymphadenopathy",
    "Arterial wall calcification",
    "Coronary artery wall calcification",
)

#: Lobe names as the reports spell them.
LOBES: tuple[str, ...] = (
    "right upper lobe",
    "right middle lobe",
    "right lower lobe",
    "left upper lobe",
    "left lower lobe",
)

SIDES: tuple[str, ...] = ("right", "left", "bilateral")

#: Kinds that sit in one lobe (lobe required after resolution).
LOBAR_KINDS = frozenset({"Lung nodule", "Consolidation", "Atelectasis"})
#: Kinds whose masks lie inside the lungs (pleural space included).
LUNG_KINDS = frozenset({"Lung nodule", "Consolidation", "Atelectasis", "Emphysema", "Pleural effusion"})

# (low, high) of ``size_mm`` when drawn: nodule diameter, node short axis, effusion thickness.
_SIZE_RANGE = {
    "Lung nodule": (5, 30),
    "Lymphadenopathy": (11, 25),
    "Pleural effusion": (15, 45),
    "Pericardial effusion": (6, 16),
}
# Relative frequencies of kinds in random studies; nodules dominate chest CT as they do in CT-RATE.
_WEIGHTS = {
    "Lung nodule": 0.22,
    "Consolidation": 0.10,
    "Pleural effusion": 0.11,
    "Pericardial effusion": 0.06,
    "Cardiomegaly": 0.08,
    "Emphysema": 0.09,
    "Atelectasis": 0.09,
    "Lymphadenopathy": 0.08,
    "Arterial wall calcification": 0.10,
    "Coronary artery wall calcification": 0.07,
}
NORMAL_FRACTION = 0.2


@dataclass(frozen=True)
class Finding:
    """One ground-truth finding of a phantom.

    Parameters
    ----------
    kind
        One of ``KINDS`` (CT-RATE label spelling).
    side
        ``"right"``, ``"left"`` or ``"bilateral"``; derived from ``lobe`` when a lobe is given.
    lobe
        One of ``LOBES`` for nodules, consolidation, atelectasis (optional for emphysema).
    size_mm
        Nodule diameter, lymph-node short axis or effusion thickness in mm; None for other kinds.

    Raises
    ------
    ValueError
        For an unknown kind, side or lobe, or a side that contradicts the lobe.
    """

    kind: str
    side: str | None = None
    lobe: str | None = None
    size_mm: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown finding kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.lobe is not None:
            if self.lobe not in LOBES:
                raise ValueError(f"unknown lobe {self.lobe!r}; use one of {', '.join(LOBES)}")
            lobe_side = self.lobe.split()[0]
            if self.side is None:
                object.__setattr__(self, "side", lobe_side)
            elif self.side != lobe_side:
                raise ValueError(f"side {self.side!r} contradicts lobe {self.lobe!r}")
        if self.side is not None and self.side not in SIDES:
            raise ValueError(f"unknown side {self.side!r}; use one of {', '.join(SIDES)}")
        if self.size_mm is not None and not self.size_mm > 0:
            raise ValueError(f"size_mm must be positive, got {self.size_mm!r}")

    def as_dict(self) -> dict:
        """A JSON-ready dict (inverse of ``Finding(**d)``)."""
        return asdict(self)


def draw_findings(rng: np.random.Generator) -> list[Finding]:
    """A random ground-truth list: about ``NORMAL_FRACTION`` normal studies, else 1–3 distinct kinds."""
    if rng.random() < NORMAL_FRACTION:
        return []
    n = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    kinds = list(_WEIGHTS)
    p = np.array([_WEIGHTS[k] for k in kinds])
    chosen = rng.choice(len(kinds), size=n, replace=False, p=p / p.sum())
    # Keep the order of KINDS so the same set always yields the same list.
    return [Finding(kinds[i]) for i in sorted(chosen)]


def resolve_findings(findings: Sequence[Finding], rng: np.random.Generator) -> list[Finding]:
    """Fill every unspecified lobe, side and size from ``rng`` so that the list fully describes the phantom.

    Lobar findings prefer lobes not yet used by another lobar finding, so their masks do not overlap.
    """
    used = {f.lobe for f in findings if f.lobe is not None}
    out = []
    for f in findings:
        lobe, side, size = f.lobe, f.side, f.size_mm
        if f.kind in LOBAR_KINDS and lobe is None:
            pref = side if side in ("right", "left") else ""
            pool = [lb for lb in LOBES if lb.startswith(pref) and lb not in used]
            pool = pool or [lb for lb in LOBES if lb.startswith(pref)]
            lobe = str(rng.choice(pool))
            used.add(lobe)
            side = lobe.split()[0]
        if f.kind == "Pleural effusion" and side is None:
            side = str(rng.choice(SIDES, p=[0.4, 0.3, 0.3]))
        if f.kind == "Emphysema" and side is None and lobe is None:
            side = "bilateral"
        if f.kind in _SIZE_RANGE and size is None:
            lo, hi = _SIZE_RANGE[f.kind]
            # Small nodules are far commoner than large ones.
            frac = rng.random() ** 1.6 if f.kind == "Lung nodule" else rng.random()
            size = float(round(lo + (hi - lo) * frac))
        out.append(replace(f, lobe=lobe, side=side, size_mm=size))
    return out
