"""Reference reports for phantoms, written the way CT-RATE chest CT reports read.

A report has exactly two sections, ``FINDINGS:`` and ``IMPRESSION:``, each header on its own line.
FINDINGS walks trachea and bronchi, mediastinum, heart, vessels, lungs, pleura, upper abdomen and
bones; each finding is inserted where a radiologist would describe it, and every structure without
a finding gets a normal statement that never contradicts a present finding. Phrasing varies with
the random generator, but each finding always names its CT-RATE concept in standard words
("nodule", "consolidation", "pleural effusion", ...) with side, lobe and size, and every normal
statement is an explicit negation ("No pleural effusion was detected."), so a rule-based
extractor reads the labels back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from engine.phantom_findings import Finding

Rng = np.random.Generator


def _mm(size: float | None) -> str:
    if size is None:
        return ""
    return f"{size:.0f} mm" if float(size).is_integer() else f"{size:.1f} mm"


def _choose(rng: Rng, variants: Sequence[str]) -> str:
    return variants[int(rng.integers(len(variants)))]


def _where(f: Finding) -> str:
    return f"the {f.lobe}" if f.lobe else "the lung"


# --- positive sentences (FINDINGS) -------------------------------------------------------------


def _nodule(f: Finding, rng: Rng) -> str:
    size = _mm(f.size_mm)
    if size:
        return _choose(
            rng,
            [
                f"A solid nodule measuring {size} in diameter is observed in {_where(f)}.",
                f"There is a {size} solid nodule in {_where(f)}.",
                f"A well-circumscribed solid nodule of {size} is seen in {_where(f)}.",
            ],
        )
    return _choose(
        rng, [f"A solid nodule is observed in {_where(f)}.", f"There is a solid nodule in {_where(f)}."]
    )


def _consolidation(f: Finding, rng: Rng) -> str:
    return _choose(
        rng,
        [
            f"An area of consolidation with air bronchograms is observed in {_where(f)}.",
            f"There is consolidation in {_where(f)}.",
            f"Consolidation containing air bronchograms is seen in {_where(f)}.",
        ],
    )


def _atelectasis(f: Finding, rng: Rng) -> str:
    return _choose(
        rng,
        [
            f"Subsegmental atelectasis is observed in {_where(f)}.",
            f"There is plate-like atelectasis in {_where(f)}.",
            f"Linear atelectasis is seen in {_where(f)}.",
        ],
    )


def _emphysema(f: Finding, rng: Rng) -> str:
    if f.lobe:
        where = f"the {f.lobe}"
    elif f.side in ("right", "left"):
        where = f"the {f.side} upper lobe"
    else:
        where = "both upper lobes"
    return _choose(
        rng,
        [
            f"Emphysematous changes are present in {where}.",
            f"There is centrilobular emphysema in {where}.",
            f"Low-attenuation areas of emphysema are observed in {where}.",
        ],
    )


def _pleural(f: Finding, rng: Rng) -> str:
    size = _mm(f.size_mm)
    thick = f" measuring {size} in its thickest part" if size else ""
    if f.side == "bilateral":
        variants = [
            f"There is bilateral pleural effusion{thick}.",
            f"Bilateral pleural effusion{thick} is observed.",
        ]
    elif f.side in ("right", "left"):
        variants = [
            f"A {f.side} pleural effusion{thick} is observed.",
            f"There is {f.side} pleural effusion{thick}.",
            f"Pleural effusion{thick} is seen on the {f.side}.",
        ]
    else:
        variants = [f"Pleural effusion{thick} is observed."]
    return _choose(rng, variants)


def _pericardial(f: Finding, rng: Rng) -> str:
    size = _mm(f.size_mm)
    if size:
        return _choose(
            rng,
            [
                f"Pericardial effusion reaching {size} in thickness is observed.",
                f"There is pericardial effusion measuring {size}.",
            ],
        )
    return "There is pericardial effusion."


def _cardiomegaly(f: Finding, rng: Rng) -> str:
    return _choose(
        rng,
        [
            "The heart is enlarged (cardiomegaly).",
            "Cardiomegaly is observed.",
            "The cardiothoracic ratio is increased (cardiomegaly).",
        ],
    )


def _lymph(f: Finding, rng: Rng) -> str:
    size = _mm(f.size_mm)
    tail = f", the largest measuring {size} in short axis" if size else ""
    return _choose(
        rng,
        [
            f"Enlarged lymph nodes are observed in the mediastinum{tail}.",
            f"There is mediastinal lymphadenopathy{tail}.",
        ],
    )


def _aortic(f: Finding, rng: Rng) -> str:
    return _choose(
        rng,
        [
            "Calcific atherosclerotic changes in the aorta are observed.",
            "There is aortic wall calcification.",
            "Calcific atherosclerotic changes in the aorta are seen in the arch and descending aorta.",
        ],
    )


def _coronary(f: Finding, rng: Rng) -> str:
    return _choose(
        rng,
        [
            "Coronary artery calcification is observed.",
            "There is coronary artery calcification along the course of the coronary arteries.",
        ],
    )


# --- impression items ----------------------------------------------------------------------------

_IMPRESSION: dict[str, Callable[[Finding], str]] = {
    "Lung nodule": lambda f: (
        "Solid nodule"
        + (f" of {_mm(f.size_mm)}" if f.size_mm else "")
        + (f" in the {f.lobe}" if f.lobe else "")
        + "."
    ),
    "Consolidation": lambda f: f"Consolidation in {_where(f)}.",
    "Atelectasis": lambda f: f"Atelectasis in {_where(f)}.",
    "Emphysema": lambda f: (
        f"Emphysema in the {f.lobe}."
        if f.lobe
        else f"Emphysema in the {f.side} upper lobe."
        if f.side in ("right", "left")
        else "Emphysema in both upper lobes."
    ),
    "Pleural effusion": lambda f: (
        f"{f.side.capitalize()} pleural effusion." if f.side else "Pleural effusion."
    ),
    "Pericardial effusion": lambda f: "Pericardial effusion.",
    "Cardiomegaly": lambda f: "Cardiomegaly.",
    "Lymphadenopathy": lambda f: (
        f"Mediastinal lymphadenopathy, short axis up to {_mm(f.size_mm)}."
        if f.size_mm
        else "Mediastinal lymphadenopathy."
    ),
    "Arterial wall calcification": lambda f: "Calcific atherosclerotic changes in the aorta.",
    "Coronary artery wall calcification": lambda f: "Coronary artery calcification.",
}
_IMPRESSION_ORDER = (
    "Consolidation",
    "Lung nodule",
    "Pleural effusion",
    "Pericardial effusion",
    "Lymphadenopathy",
    "Atelectasis",
    "Emphysema",
    "Cardiomegaly",
    "Arterial wall calcification",
    "Coronary artery wall calcification",
)


def _findings_section(findings: Sequence[Finding], rng: Rng) -> list[str]:
    kinds = {f.kind for f in findings}

    def of(kind: str) -> list[Finding]:
        return [f for f in findings if f.kind == kind]

    out = [
        _choose(
            rng,
            [
                "Trachea and both main bronchi are open.",
                "Trachea, both main bronchi are open.",
                "The trachea is in the midline and both main bronchi are open.",
                "Trachea and both main bronchi are in the midline and no obstructive pathology was "
                "observed in the lumen.",
            ],
        )
    ]
    # Mediastinum and lymph nodes.
    out.append(
        _choose(
            rng,
            [
                "Mediastinal main vascular structures are normal in calibre.",
                "Mediastinal main vascular structures were evaluated as natural.",
            ],
        )
    )
    if "Lymphadenopathy" in kinds:
        out += [_lymph(f, rng) for f in of("Lymphadenopathy")]
    else:
        out.append(
            _choose(
                rng,
                [
                    "No enlarged lymph nodes were detected in prevascular, pre-paratracheal, subcarinal or "
                    "bilateral hilar-axillary regions.",
                    "No mediastinal or hilar lymphadenopathy was detected.",
                    "No lymph nodes of pathological size were observed in the mediastinum.",
                ],
            )
        )
    # Heart and pericardium.
    if "Cardiomegaly" in kinds:
        out.append(_cardiomegaly(of("Cardiomegaly")[0], rng))
    else:
        out.append(
            _choose(
                rng,
                [
                    "Heart contour and size are normal.",
                    "Heart size is normal.",
                    "The heart is of normal size.",
                ],
            )
        )
    if "Pericardial effusion" in kinds:
        out.append(_pericardial(of("Pericardial effusion")[0], rng))
    elif "Pleural effusion" in kinds or rng.random() < 0.6:
        out.append(
            _choose(
                rng,
                [
                    "Pericardial effusion-thickening was not observed.",
                    "No pericardial effusion was detected.",
                ],
            )
        )
    if "Coronary artery wall calcification" in kinds:
        out.append(_coronary(of("Coronary artery wall calcification")[0], rng))
    # Vessels.
    out.append(
        _choose(rng, ["Thoracic aorta diameter is normal.", "The calibre of the thoracic aorta is normal."])
    )
    if "Arterial wall calcification" in kinds:
        out.append(_aortic(of("Arterial wall calcification")[0], rng))
    # Lungs.
    out.append(
        _choose(rng, ["When examined in the lung parenchyma window;", "In the lung parenchyma window;"])
    )
    lung = [f for f in findings if f.kind in ("Emphysema", "Consolidation", "Atelectasis", "Lung nodule")]
    order = {"Emphysema": 0, "Consolidation": 1, "Atelectasis": 2, "Lung nodule": 3}
    sentences = {
        "Emphysema": _emphysema,
        "Consolidation": _consolidation,
        "Atelectasis": _atelectasis,
        "Lung nodule": _nodule,
    }
    for f in sorted(lung, key=lambda f: order[f.kind]):
        out.append(sentences[f.kind](f, rng))
    if not lung:
        out.append(
            _choose(
                rng,
                [
                    "Aeration of both lungs is normal and no nodular lesion or consolidation was detected in the "
                    "lung parenchyma.",
                    "No nodule, consolidation or atelectasis was detected in either lung.",
                    "Both lungs are normally aerated; no nodular lesion was detected.",
                ],
            )
        )
    # Pleura.
    if "Pleural effusion" in kinds:
        out += [_pleural(f, rng) for f in of("Pleural effusion")]
    elif "Pericardial effusion" not in kinds and rng.random() < 0.4:
        out.append("No pleural or pericardial effusion was detected.")
        # The combined statement replaces the separate pericardial negation when it was given.
        for neg in (
            "Pericardial effusion-thickening was not observed.",
            "No pericardial effusion was detected.",
        ):
            if neg in out:
                out.remove(neg)
    else:
        out.append(
            _choose(
                rng, ["Pleural effusion-thickening was not detected.", "No pleural effusion was detected."]
            )
        )
    # Upper abdomen and bones.
    out.append(
        _choose(
            rng,
            [
                "Upper abdominal organs included in the sections are normal.",
                "The liver dome included in the sections is normal.",
            ],
        )
    )
    out.append(
        _choose(
            rng,
            [
                "Bone structures in the study area are natural. Vertebral corpus heights are preserved.",
                "No lytic-destructive lesion was detected in bone structures.",
                "Bone structures are normal.",
            ],
        )
    )
    return out


def report_for(findings: Sequence[Finding], rng: Rng | int | None = None) -> str:
    """A reference report for ``findings``, phrased deterministically from ``rng``.

    Parameters
    ----------
    findings
        Ground-truth findings; unspecified side, lobe or size are simply not mentioned.
    rng
        A generator or an integer seed (``None``: seed 0) choosing among phrasing variants.

    Returns
    -------
    str
        ``"FINDINGS:\\n<paragraph>\\n\\nIMPRESSION:\\n<paragraph>"``.
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(0 if rng is None else rng)
    body = " ".join(_findings_section(findings, rng))
    rank = {k: i for i, k in enumerate(_IMPRESSION_ORDER)}
    items = [_IMPRESSION[f.kind](f) for f in sorted(findings, key=lambda f: rank[f.kind])]
    if not items:
        items = [
            _choose(
                rng,
                [
                    "No acute cardiopulmonary abnormality.",
                    "Thoracic CT examination within normal limits.",
                    "No significant pathology was detected in the thorax.",
                ],
            )
        ]
    return f"FINDINGS:\n{body}\n\nIMPRESSION:\n{' '.join(items)}"
