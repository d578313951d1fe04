"""Rule-based extraction of the 18 CT-RATE abnormality labels from chest CT report text.

The engine behind ``training.findings``: sentence splitting, synonym matching, negation scope and
hedges, and per-mention laterality, lobe and size. The vocabulary it applies is in
``training.findings_rules``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from training import findings_rules as rules
from training.findings_rules import LABELS

__all__ = ["LABELS", "Finding", "extract", "extract_detailed"]

_FLAGS = re.IGNORECASE


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    return re.compile("|".join(patterns), _FLAGS) if patterns else None


# (label, synonyms, exclusions) in the order mentions are looked for.
_RULES = [
    (label, _compile(pats), _compile(rules.EXCLUSIONS.get(label, ())))
    for label, pats in rules.SYNONYMS.items()
]
_RULES += [(label, _compile(pats), _compile(excl)) for label, pats, excl in rules.SECONDARY]
# Sentences end at a full stop not inside a number, at quotes and bullets (CT-RATE wraps the
# impression in quotes and lists items with bullets), at line breaks and after "? Capital".
_SENTENCE_END = re.compile(r"\.(?!\d)|[\"“”•\n\r]|(?<=\?)\s+(?=[A-Z])")
_SIZED_LABELS = ("Lung nodule", "Lymphadenopathy")
_LOBE_NAMES = {
    ("right", "upper"): "right upper lobe",
    ("right", "middle"): "right middle lobe",
    ("right", "lower"): "right lower lobe",
    ("left", "upper"): "left upper lobe",
    ("left", "lower"): "left lower lobe",
}
_LOBE_ABBR = {
    "rul": ("right", "upper"),
    "rml": ("right", "middle"),
    "rll": ("right", "lower"),
    "lul": ("left", "upper"),
    "lll": ("left", "lower"),
}
_JOINER = re.compile(r"[\s-]{0,3}")  # what may separate two synonyms of one phrase
_BARE_LOBE = re.compile(r"\b(upper|middle|lower) lobes?\b", _FLAGS)


@dataclass(frozen=True)
class Finding:
    """One affirmed (non-negated) mention of a CT-RATE label.

    Attributes
    ----------
    label : str
        One of ``LABELS``.
    laterality : str or None
        ``"right"``, ``"left"`` or ``"bilateral"`` where the sentence states a side.
    lobes : tuple of str
        Lobes named for this mention, e.g. ``("right upper lobe",)``.
    size_mm : float or None
        Largest stated dimension in millimetres (lung nodules and lymph nodes only).
    uncertain : bool
        The statement is hedged ("possible", "suspicious for", "?"). It still counts as present.
    sentence : str
        The sentence the mention was found in.
    """

    label: str
    laterality: str | None = None
    lobes: tuple[str, ...] = ()
    size_mm: float | None = None
    uncertain: bool = False
    sentence: str = ""


def _sentences(text: str) -> list[str]:
    parts = _SENTENCE_END.split(text)
    return [p.strip() for p in parts if p and p.strip()]


def _blank(text: str, pattern: re.Pattern[str]) -> str:
    """Replace every match by spaces, keeping offsets."""
    return pattern.sub(lambda m: " " * len(m.group(0)), text)


def _is_negated(masked: str, start: int, end: int) -> bool:
    """Whether the mention ``masked[start:end]`` lies in the scope of a negation cue.

    A leading cue ("no", "without") reaches forward until a contrast word or the verb that closes
    its clause ("No effusion was detected, ..."); a trailing cue ("was not observed") reaches back
    over the subject of its clause, i.e. until a contrast word or an affirmative verb.
    """
    for cue in rules.NEGATION_BEFORE.finditer(masked, 0, start):
        between = masked[cue.end() : start]
        if not rules.SCOPE_BREAK.search(between) and not rules.CLAUSE_VERB.search(between):
            return True
    for cue in rules.NEGATION_AFTER.finditer(masked, end):
        between = masked[end : cue.start()]
        if not rules.SCOPE_BREAK.search(between) and not rules.CLAUSE_VERB.search(between):
            return True
        break  # only the nearest trailing cue can belong to this mention's clause
    return False


def _mentions(sentence: str) -> list[tuple[str, int, int]]:
    """Affirmed label mentions in one sentence as ``(label, start, end)``, in text order."""
    masked = _blank(sentence, rules.PSEUDO_NEGATION)
    found: list[tuple[str, int, int]] = []
    for label, pattern, exclusion in _RULES:
        for m in pattern.finditer(sentence):
            if exclusion is not None:
                lo = max(0, m.start() - rules.EXCLUSION_WINDOW)
                if exclusion.search(sentence[lo : m.end() + rules.EXCLUSION_WINDOW]):
                    continue
            if _is_negated(masked, m.start(), m.end()):
                continue
            found.append((label, m.start(), m.end()))
    found.sort(key=lambda t: t[1])
    # One mention per phrase: "ground-glass opacities" or "fibrotic sequelae" hit two synonyms.
    merged: list[tuple[str, int, int]] = []
    for label, start, end in found:
        last = next((i for i in reversed(range(len(merged))) if merged[i][0] == label), None)
        if last is not None and _JOINER.fullmatch(sentence[merged[last][2] : start]):
            merged[last] = (label, merged[last][1], max(merged[last][2], end))
        else:
            merged.append((label, start, end))
    return merged


def extract(text: str) -> dict[str, bool]:
    """Label a chest CT report with the 18 CT-RATE abnormality labels.

    A label is present when the report affirms it at least once anywhere (findings or impression).
    Negated mentions ("no pleural effusion", "pericardial effusion was not observed", "no X or Y")
    do not count. Hedged mentions ("suspicious for", "possible", "?") count as present, as in
    CT-RATE's labels.

    Parameters
    ----------
    text : str
        Free-text report.

    Returns
    -------
    dict of str to bool
        One entry per label in ``LABELS`` order.
    """
    present = dict.fromkeys(LABELS, False)
    for sentence in _sentences(text):
        for label, _, _ in _mentions(sentence):
            present[label] = True
    return present


def _location(window: str) -> tuple[str | None, tuple[str, ...]]:
    """Side and lobes named in a piece of text."""
    lobes: list[str] = []
    for m in rules.LOBE.finditer(window):
        if m.group("side1"):
            key = (m.group("side1").lower(), m.group("level").lower())
        elif m.group("side2"):
            key = (m.group("side2").lower(), m.group("level2").lower())
        elif m.group("abbr"):
            key = _LOBE_ABBR[m.group("abbr").lower()]
        elif m.group("middle"):
            key = ("right", "middle")
        else:
            key = ("left", "upper")  # the lingula belongs to the left upper lobe
        if key in _LOBE_NAMES and _LOBE_NAMES[key] not in lobes:
            lobes.append(_LOBE_NAMES[key])
    for m in rules.BOTH_LOBES.finditer(window):
        level = (m.group("level") or m.group("level2")).lower()
        for side in ("right", "left"):
            if _LOBE_NAMES[(side, level)] not in lobes:
                lobes.append(_LOBE_NAMES[(side, level)])
    sides: set[str] = set()
    for m in rules.SIDE.finditer(window):
        if m.group("bilateral"):
            sides |= {"right", "left"}
        else:
            sides.add(m.lastgroup or "")
    sides.discard("")
    if not lobes and len(sides) == 1:
        # "in the left lung, in the lower lobe": a bare lobe takes the only side named.
        side = next(iter(sides))
        for m in _BARE_LOBE.finditer(window):
            name = _LOBE_NAMES.get((side, m.group(1).lower()))
            if name and name not in lobes:
                lobes.append(name)
    sides |= {lobe.split()[0] for lobe in lobes}
    laterality = None
    if sides == {"right", "left"}:
        laterality = "bilateral"
    elif sides:
        laterality = next(iter(sides))
    return laterality, tuple(lobes)


def _size_mm(window: str, anchor: int) -> float | None:
    """Largest dimension of the size statement nearest to ``anchor``, in millimetres."""
    best: tuple[int, float] | None = None
    for m in rules.SIZE.finditer(window):
        dims = [float(g.replace(",", ".")) for g in (m.group("a"), m.group("b"), m.group("c")) if g]
        scale = 10.0 if m.group("unit").lower().startswith("c") else 1.0
        distance = min(abs(m.start() - anchor), abs(m.end() - anchor))
        if best is None or distance < best[0]:
            best = (distance, max(dims) * scale)
    return None if best is None else best[1]


def extract_detailed(text: str) -> list[Finding]:
    """Affirmed findings with laterality, lobe and (nodules, lymph nodes) size where stated.

    A mention's location is read from the text after it up to the next mention ("nodule in the
    right upper lobe"), else from the text before it back to the previous mention ("in the left
    lower lobe, atelectasis"); where neither names a side, a side that is the only one named in the
    whole sentence is used. A mention is hedged when a hedge cue ("possible", "?") lies between the
    previous mention and it, or after it before the next comma.

    Parameters
    ----------
    text : str
        Free-text report.

    Returns
    -------
    list of Finding
        One entry per affirmed mention, in text order (a label may appear several times).
    """
    out: list[Finding] = []
    for sentence in _sentences(text):
        mentions = _mentions(sentence)
        for i, (label, start, end) in enumerate(mentions):
            lo = mentions[i - 1][2] if i > 0 else 0
            hi = mentions[i + 1][1] if i + 1 < len(mentions) else len(sentence)
            laterality, lobes = _location(sentence[start:hi])
            if laterality is None:
                laterality, lobes = _location(sentence[lo:end])
            if laterality is None:
                whole, _ = _location(sentence)
                laterality = whole if whole in ("right", "left") else None
            size = _size_mm(sentence[lo:hi], start - lo) if label in _SIZED_LABELS else None
            # a hedge after the mention belongs to it only up to the next comma
            after = re.split(r"[,;]", sentence[end:hi], maxsplit=1)[0]
            hedged = bool(rules.UNCERTAINTY.search(sentence[lo:end]) or rules.UNCERTAINTY.search(after))
            out.append(Finding(label, laterality, lobes, size, hedged, sentence))
    return out
