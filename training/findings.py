"""Offline finding extractor over the 18 CT-RATE labels, and a GREEN-style finding score on it.

For machines without a 7B GREEN judge. ``extract`` turns a free-text chest CT report into the 18
CT-RATE abnormality labels with rules (synonyms, negation scope, hedges; the vocabulary lives in
``training.findings_rules``); ``extract_detailed`` adds laterality, lobe and, for nodules and
lymph nodes, size. ``findings_score`` compares a candidate report with a reference the way GREEN
counts (matched findings against clinically significant errors) but with the extractor in place
of the language-model judge. It is a **GREEN-style finding score**, not GREEN: it sees only the
18 labels, their side, lobe and nodule size.

Run ``python -m training.findings --eval train.csv`` to validate the extractor against a CSV with
``report_text`` and the 18 label columns (CT-RATE's format).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import Mu2Error, Mu2InputError
from training.findings_extract import LABELS, Finding, extract, extract_detailed
from training.green_parse import compute_green

logger = logging.getLogger(__name__)

__all__ = [
    "LABELS",
    "Finding",
    "FindingsScore",
    "evaluate",
    "extract",
    "extract_detailed",
    "findings_score",
    "read_labelled_csv",
]


@dataclass(frozen=True)
class FindingsScore:
    """Result of ``findings_score``: a GREEN-style finding score and its error counts.

    ``significant`` has GREEN's six categories (a)-(f); this scorer fills (a) false findings,
    (b) missing findings, (c) misplaced findings and (d) nodule size misassessment, and leaves
    (e) and (f) (comparisons with prior studies) at 0.
    """

    score: float
    matched_findings: int
    significant: tuple[int, int, int, int, int, int]
    matched: tuple[str, ...] = ()
    false: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    misplaced: tuple[str, ...] = ()
    misassessed: tuple[str, ...] = ()
    reference_findings: tuple[Finding, ...] = field(default=(), repr=False)
    candidate_findings: tuple[Finding, ...] = field(default=(), repr=False)


def _sides(laterality: str | None) -> frozenset[str]:
    if laterality == "bilateral":
        return frozenset({"right", "left"})
    return frozenset({laterality}) if laterality else frozenset()


def _aggregate(findings: Iterable[Finding]) -> dict[str, tuple[frozenset[str], frozenset[str], list[float]]]:
    """Per label: sides, lobes and sizes over all its mentions."""
    agg: dict[str, tuple[set[str], set[str], list[float]]] = {}
    for f in findings:
        sides, lobes, sizes = agg.setdefault(f.label, (set(), set(), []))
        sides |= _sides(f.laterality)
        lobes.update(f.lobes)
        if f.size_mm is not None:
            sizes.append(f.size_mm)
    return {k: (frozenset(s), frozenset(lo), sz) for k, (s, lo, sz) in agg.items()}


def _size_differs(ref: list[float], cand: list[float]) -> bool:
    """Sizes disagree: the largest stated sizes differ by more than 3 mm and by more than 30 %."""
    if not ref or not cand:
        return False
    a, b = max(ref), max(cand)
    return abs(a - b) > max(3.0, 0.3 * max(a, b))


def findings_score(reference: str, candidate: str) -> FindingsScore:
    """GREEN-style finding score of a candidate report against a reference report.

    Both reports go through ``extract_detailed``; the findings are compared per CT-RATE label and
    counted in GREEN's categories of clinically significant errors:

    * matched: the label is affirmed in both reports;
    * (a) false report of a finding: affirmed in the candidate only (hallucinated);
    * (b) missing a finding: affirmed in the reference only;
    * (c) misidentified anatomic location: affirmed in both, both state a side and the sides
      differ (e.g. left vs. right, or bilateral vs. left), or both name lobes and no lobe is shared.
      The finding also counts as matched, as GREEN's judge counts a finding it found in both;
    * (d) misassessed severity: a lung nodule or lymph node in both whose largest stated sizes
      differ by more than 3 mm and 30 %;
    * (e), (f) comparisons with prior studies are not assessed (always 0).

    The score is GREEN's formula, ``matched / (matched + sum of significant errors)``, with GREEN's
    convention that 0 matched findings give 0 -- except when neither report affirms any finding: two
    normal reports agree completely and score 1 (GREEN's judge counts the shared normal statements,
    e.g. "no pleural effusion", as matched findings; a rule-based extractor has only the 18 labels).

    Parameters
    ----------
    reference, candidate : str
        Free-text reports.

    Returns
    -------
    FindingsScore
    """
    ref_findings = extract_detailed(reference)
    cand_findings = extract_detailed(candidate)
    ref, cand = _aggregate(ref_findings), _aggregate(cand_findings)
    matched = [label for label in LABELS if label in ref and label in cand]
    false = [label for label in LABELS if label in cand and label not in ref]
    missing = [label for label in LABELS if label in ref and label not in cand]
    misplaced, misassessed = [], []
    for label in matched:
        (rs, rl, rsz), (cs, cl, csz) = ref[label], cand[label]
        if (rs and cs and rs != cs) or (rl and cl and not rl & cl):
            misplaced.append(label)
        if _size_differs(rsz, csz):
            misassessed.append(label)
    significant = (len(false), len(missing), len(misplaced), len(misassessed), 0, 0)
    if not ref and not cand:
        score = 1.0
    else:
        score = compute_green(len(matched), sum(significant))
    return FindingsScore(
        score=float(score),
        matched_findings=len(matched),
        significant=significant,
        matched=tuple(matched),
        false=tuple(false),
        missing=tuple(missing),
        misplaced=tuple(misplaced),
        misassessed=tuple(misassessed),
        reference_findings=tuple(ref_findings),
        candidate_findings=tuple(cand_findings),
    )


def evaluate(reports: Sequence[str], labels: Sequence[dict[str, bool]]) -> dict[str, dict[str, float]]:
    """Per-label precision, recall, F1 and support of ``extract`` against reference labels.

    Parameters
    ----------
    reports : sequence of str
        Report texts.
    labels : sequence of dict
        Reference labels for each report (``LABELS`` as keys).

    Returns
    -------
    dict
        ``{label: {"precision", "recall", "f1", "support"}}`` plus ``"macro"`` with the unweighted
        means of precision, recall and F1 over the 18 labels.
    """
    table: dict[str, dict[str, float]] = {}
    predictions = [extract(text) for text in reports]
    for label in LABELS:
        tp = sum(p[label] and y[label] for p, y in zip(predictions, labels))
        fp = sum(p[label] and not y[label] for p, y in zip(predictions, labels))
        fn = sum(not p[label] and y[label] for p, y in zip(predictions, labels))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        table[label] = {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}
    table["macro"] = {
        key: sum(table[label][key] for label in LABELS) / len(LABELS) for key in ("precision", "recall", "f1")
    }
    return table


def read_labelled_csv(path: str | Path) -> tuple[list[str], list[dict[str, bool]]]:
    """Read a CT-RATE-style CSV: a ``report_text`` column and the 18 label columns (0/1).

    Raises
    ------
    Mu2InputError
        When the file is missing or lacks a required column.
    """
    path = Path(path)
    if not path.is_file():
        raise Mu2InputError(f"{path} does not exist; pass a CSV with report_text and the 18 label columns.")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    needed = ("report_text", *LABELS)
    missing = [c for c in needed if rows and c not in rows[0]]
    if not rows or missing:
        raise Mu2InputError(f"{path} lacks the columns {missing or list(needed)}; expected CT-RATE's format.")
    texts = [row["report_text"] for row in rows]
    labels = [{label: float(row[label] or 0) > 0.5 for label in LABELS} for row in rows]
    return texts, labels


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.findings --eval CSV`` or ``--reference FILE --candidate FILE``."""
    parser = argparse.ArgumentParser(prog="python -m training.findings", description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval", metavar="CSV", help="CT-RATE-style CSV: report_text + 18 label columns")
    parser.add_argument("--reference", metavar="FILE", help="reference report (text file)")
    parser.add_argument("--candidate", metavar="FILE", help="candidate report (text file)")
    args = parser.parse_args(argv)
    try:
        if args.eval:
            texts, labels = read_labelled_csv(args.eval)
            table = evaluate(texts, labels)
            print(f"{'label':36s} {'prec':>6s} {'rec':>6s} {'F1':>6s} {'n':>5s}")
            for label in LABELS:
                row = table[label]
                scores = f"{row['precision']:6.3f} {row['recall']:6.3f} {row['f1']:6.3f}"
                print(f"{label:36s} {scores} {int(row['support']):5d}")
            macro = table["macro"]
            scores = f"{macro['precision']:6.3f} {macro['recall']:6.3f} {macro['f1']:6.3f}"
            print(f"{'macro':36s} {scores} {len(texts):5d}")
            return 0
        if args.reference and args.candidate:
            ref = Path(args.reference).read_text(encoding="utf-8")
            cand = Path(args.candidate).read_text(encoding="utf-8")
            result = findings_score(ref, cand)
            print(f"GREEN-style finding score: {result.score:.4f}")
            print(f"matched: {', '.join(result.matched) or '-'}")
            for name in ("false", "missing", "misplaced", "misassessed"):
                print(f"{name}: {', '.join(getattr(result, name)) or '-'}")
            return 0
    except (Mu2Error, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    parser.print_usage(sys.stderr)
    print("error: give --eval CSV, or --reference FILE and --candidate FILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
