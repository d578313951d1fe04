"""BLEU-1 and ROUGE-L computed the way the μ²Tokenizer paper's evaluation scripts compute them.

The official scripts (``Siyou-Li/u2Tokenizer``, ``evalscipt/ourmodel_{ctrate,amos,atlas}.py``,
``evaluate_captions``) score every report on its own and average the scores:

* text preprocessing: ``' '.join(text.lower().split())``;
* BLEU-1: ``nltk.translate.bleu_score.corpus_bleu([[ref.split()]], [hyp.split()], weights=(1, 0, 0, 0),
  smoothing_function=SmoothingFunction().method3)``. With unigram weights only this is the brevity
  penalty times the clipped unigram precision (method 3 only touches zero higher-order counts, whose
  weight is 0), and 0 when no unigram matches;
* ROUGE-L: ``rouge_score.rouge_scorer.RougeScorer(['rougeL'], use_stemmer=True).score(ref, hyp)``'s
  F-measure: lower-case, non-alphanumerics to spaces, Porter-stem words longer than 3 letters (nltk's
  ``PorterStemmer()``, i.e. its ``NLTK_EXTENSIONS`` mode), then the longest common subsequence.

The scripts multiply by 100; these functions return fractions in [0, 1]. nltk and rouge_score are not
dependencies of Mu2: the formulas above, and nltk's Porter stemmer, are re-implemented here.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

__all__ = ["bleu1", "rouge_l", "porter_stem", "rouge_tokens", "mean_bleu1", "mean_rouge_l"]


def _words(text: str) -> list[str]:
    return " ".join(text.lower().split()).split()


def bleu1(reference: str, hypothesis: str) -> float:
    """BLEU-1 of one hypothesis against one reference (official per-report nltk call), in [0, 1]."""
    ref, hyp = _words(reference), _words(hypothesis)
    if not hyp:
        return 0.0
    ref_counts = Counter(ref)
    clipped = sum(min(c, ref_counts[w]) for w, c in Counter(hyp).items())
    if clipped == 0:
        return 0.0
    c, r = len(hyp), len(ref)
    bp = 1.0 if c > r else math.exp(1.0 - r / c)
    return bp * clipped / c


def rouge_l(reference: str, hypothesis: str) -> float:
    """ROUGE-L F-measure (rouge_score with the Porter stemmer), in [0, 1]."""
    ref, hyp = rouge_tokens(reference), rouge_tokens(hypothesis)
    if not ref or not hyp:
        return 0.0
    lcs = _lcs_length(ref, hyp)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hyp), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def mean_bleu1(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Mean of per-report BLEU-1 (as the official scripts average their per-case scores)."""
    scores = [bleu1(r, h) for r, h in zip(references, hypotheses)]
    return sum(scores) / len(scores) if scores else 0.0


def mean_rouge_l(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Mean of per-report ROUGE-L F-measures."""
    scores = [rouge_l(r, h) for r, h in zip(references, hypotheses)]
    return sum(scores) / len(scores) if scores else 0.0


def _lcs_length(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_VALID = re.compile(r"^[a-z0-9]+$")


def rouge_tokens(text: str) -> list[str]:
    """rouge_score's default tokenizer with ``use_stemmer=True``."""
    tokens = _NON_ALNUM.sub(" ", text.lower()).split()
    tokens = [porter_stem(t) if len(t) > 3 else t for t in tokens]
    return [t for t in tokens if _VALID.match(t)]


# --- nltk's PorterStemmer (NLTK_EXTENSIONS mode), re-implemented ----------------------------------------

_IRREGULAR = {
    "skies": "sky",
    "sky": "sky",
    "dying": "die",
    "lying": "lie",
    "tying": "tie",
    "news": "news",
    "innings": "inning",
    "inning": "inning",
    "outings": "outing",
    "outing": "outing",
    "cannings": "canning",
    "canning": "canning",
    "howe": "howe",
    "proceed": "proceed",
    "exceed": "exceed",
    "succeed": "succeed",
}


def _cons(w: str, i: int) -> bool:
    if w[i] in "aeiou":
        return False
    if w[i] == "y":
        return i == 0 or not _cons(w, i - 1)
    return True


def _m(stem: str) -> int:
    return "".join("c" if _cons(stem, i) else "v" for i in range(len(stem))).count("vc")


def _has_vowel(stem: str) -> bool:
    return any(not _cons(stem, i) for i in range(len(stem)))


def _double_cons(w: str) -> bool:
    return len(w) >= 2 and w[-1] == w[-2] and _cons(w, len(w) - 1)


def _cvc(w: str) -> bool:
    if len(w) >= 3 and _cons(w, len(w) - 3) and not _cons(w, len(w) - 2) and _cons(w, len(w) - 1):
        return w[-1] not in "wxy"
    return len(w) == 2 and not _cons(w, 0) and _cons(w, 1)


def _rules(word: str, rules) -> str:
    """The first rule whose suffix matches decides: applied if its condition holds, else the word stays."""
    for suffix, repl, cond in rules:
        if suffix == "*d":
            if _double_cons(word):
                stem = word[:-2]
                return stem + repl if cond is None or cond(stem) else word
            continue
        if word.endswith(suffix):
            stem = word[: len(word) - len(suffix)]
            return stem + repl if cond is None or cond(stem) else word
    return word


def _pos(stem: str) -> bool:
    return _m(stem) > 0


def _gt1(stem: str) -> bool:
    return _m(stem) > 1


def _step1b(w: str) -> str:
    if w.endswith("ied"):
        return w[:-3] + ("ie" if len(w) == 4 else "i")
    if w.endswith("eed"):
        return w[:-1] if _m(w[:-3]) > 0 else w
    for suffix in ("ed", "ing"):
        if w.endswith(suffix) and _has_vowel(w[: -len(suffix)]):
            s = w[: -len(suffix)]
            keep_double = s[-1] in "lsz"  # hiss(ing), fall(ing), fizz(ed) keep both letters
            return _rules(
                s,
                [
                    ("at", "ate", None),
                    ("bl", "ble", None),
                    ("iz", "ize", None),
                    ("*d", s[-1], lambda _, keep=keep_double: not keep),
                    ("", "e", lambda st: _m(st) == 1 and _cvc(st)),
                ],
            )
    return w


_STEP2 = [
    ("ational", "ate"),
    ("tional", "tion"),
    ("enci", "ence"),
    ("anci", "ance"),
    ("izer", "ize"),
    ("bli", "ble"),
    ("alli", "al"),
    ("entli", "ent"),
    ("eli", "e"),
    ("ousli", "ous"),
    ("ization", "ize"),
    ("ation", "ate"),
    ("ator", "ate"),
    ("alism", "al"),
    ("iveness", "ive"),
    ("fulness", "ful"),
    ("ousness", "ous"),
    ("aliti", "al"),
    ("iviti", "ive"),
    ("biliti", "ble"),
    ("fulli", "ful"),
]
_STEP3 = [
    ("icate", "ic"),
    ("ative", ""),
    ("alize", "al"),
    ("iciti", "ic"),
    ("ical", "ic"),
    ("ful", ""),
    ("ness", ""),
]
_STEP4 = [
    "al",
    "ance",
    "ence",
    "er",
    "ic",
    "able",
    "ible",
    "ant",
    "ement",
    "ment",
    "ent",
    "ion",
    "ou",
    "ism",
    "ate",
    "iti",
    "ous",
    "ive",
    "ize",
]


def _step2(w: str) -> str:
    if w.endswith("alli") and _pos(w[:-4]):
        return _step2(w[:-4] + "al")
    rules = [(s, r, _pos) for s, r in _STEP2]
    rules.append(("logi", "log", lambda _: _pos(w[:-3])))
    return _rules(w, rules)


def _step4(w: str) -> str:
    rules = [(s, "", (lambda st: _gt1(st) and st[-1:] in ("s", "t")) if s == "ion" else _gt1) for s in _STEP4]
    return _rules(w, rules)


def _step5(w: str) -> str:
    if w.endswith("e"):
        stem = w[:-1]
        if _m(stem) > 1 or (_m(stem) == 1 and not _cvc(stem)):
            w = stem
    return _rules(w, [("ll", "l", lambda _: _m(w[:-1]) > 1)])


def porter_stem(word: str) -> str:
    """nltk's ``PorterStemmer().stem(word)`` (NLTK_EXTENSIONS mode)."""
    w = word.lower()
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if len(w) <= 2:
        return w
    if w.endswith("ies") and len(w) == 4:
        w = w[:-3] + "ie"
    else:
        w = _rules(w, [("sses", "ss", None), ("ies", "i", None), ("ss", "ss", None), ("s", "", None)])
    w = _step1b(w)
    w = _rules(w, [("y", "i", lambda st: len(st) > 1 and _cons(st, len(st) - 1))])
    w = _step2(w)
    w = _rules(w, [(s, r, _pos) for s, r in _STEP3])
    w = _step4(w)
    return _step5(w)
