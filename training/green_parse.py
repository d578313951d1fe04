"""GREEN's text protocol: the official prompt going in, the judge's answer parsed coming out.

Reproduces the behaviour of the official GREEN code (Stanford-AIMI/GREEN @ d72c195,
``green_score/utils.py`` ``make_prompt`` and ``clean_responses``, ``green_score/green.py`` chat
template, ``parse_error_counts`` and ``compute_green``), written anew; the prompt and the chat
template are the official text verbatim. The official quirks are kept on purpose, because GREEN
numbers are only comparable when parsed the same way:

* a section is the text after ``[<Category>]:`` up to the first blank line (or the end);
* a section that starts with ``"No"`` counts 0 everywhere;
* a missing section counts 0 (``strict=False``, the official scoring path) or ``None``
  (``strict=True``, the official ``for_reward`` path);
* the matched-findings count is a number at the very start of its section followed by ``.``;
  anything else counts 0;
* each error line ``(a) ...: N.`` gives sub-count N; the lines are taken in sorted order and a later
  line with the same letter overrides an earlier one; ``(1)``..``(6)`` labels are the fallback when
  no ``(a)``..``(f)`` line exists;
* the score is 0 when 0 findings matched (whatever the errors), ``None`` when a count is missing,
  else ``matched / (matched + sum of the six clinically significant error counts)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "CATEGORIES",
    "CHAT_TEMPLATE",
    "MAX_REPORT_WORDS",
    "SUB_CATEGORIES",
    "GreenResult",
    "clean_response",
    "compute_green",
    "make_prompt",
    "parse_error_counts",
    "parse_green",
]

#: The three sections of a GREEN judge output.
CATEGORIES: tuple[str, str, str] = (
    "Clinically Significant Errors",
    "Clinically Insignificant Errors",
    "Matched Findings",
)

#: GREEN's six error categories, in order (a)-(f).
SUB_CATEGORIES: tuple[str, ...] = (
    "(a) False report of a finding in the candidate",
    "(b) Missing a finding present in the reference",
    "(c) Misidentification of a finding's anatomic location/position",
    "(d) Misassessment of the severity of a finding",
    "(e) Mentioning a comparison that isn't in the reference",
    "(f) Omitting a comparison detailing a change from a prior study",
)

#: Words of each report kept in the prompt (official ``max_len``).
MAX_REPORT_WORDS = 300
#: The chat template the official code sets on the judge's tokenizer (verbatim).
CHAT_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['from'] == 'human' %}\n"
    "{{ '<|user|>\n' + message['value'] + eos_token }}\n"
    "{% elif message['from'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['value'] + eos_token }}\n"
    "{% elif message['from'] == 'gpt' %}\n"
    "{{ '<|assistant|>\n'  + message['value'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}"
)

# The official GREEN prompt (green_score/utils.py make_prompt @ d72c195), verbatim.
_PROMPT = (
    "Objective: Evaluate the accuracy of a candidate radiology report in comparison to a reference radiology report composed by expert radiologists.\n"
    "\n"
    "    Process Overview: You will be presented with:\n"
    "\n"
    "    1. The criteria for making a judgment.\n"
    "    2. The reference radiology report.\n"
    "    3. The candidate radiology report.\n"
    "    4. The desired format for your assessment.\n"
    "\n"
    "    1. Criteria for Judgment:\n"
    "\n"
    "    For each candidate report, determine:\n"
    "\n"
    "    The count of clinically significant errors.\n"
    "    The count of clinically insignificant errors.\n"
    "\n"
    "    Errors can fall into one of these categories:\n"
    "\n"
    "    a) False report of a finding in the candidate.\n"
    "    b) Missing a finding present in the reference.\n"
    "    c) Misidentification of a finding's anatomic location/position.\n"
    "    d) Misassessment of the severity of a finding.\n"
    "    e) Mentioning a comparison that isn't in the reference.\n"
    "    f) Omitting a comparison detailing a change from a prior study.\n"
    "    Note: Concentrate on the clinical findings rather than the report's writing style. Evaluate only the findings that appear in both reports.\n"
    "\n"
    "    2. Reference Report:\n"
    "    {reference}\n"
    "\n"
    "    3. Candidate Report:\n"
    "    {candidate}\n"
    "\n"
    "    4. Reporting Your Assessment:\n"
    "\n"
    "    Follow this specific format for your output, even if no errors are found:\n"
    "    ```\n"
    "    [Explanation]:\n"
    "    <Explanation>\n"
    "\n"
    "    [Clinically Significant Errors]:\n"
    "    (a) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>\n"
    "    ....\n"
    "    (f) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>\n"
    "\n"
    "    [Clinically Insignificant Errors]:\n"
    "    (a) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>\n"
    "    ....\n"
    "    (f) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>\n"
    "\n"
    "    [Matched Findings]:\n"
    "    <The number of matched findings>. <Finding 1>; <Finding 2>; ...; <Finding n>\n"
    "    ```\n"
)


def make_prompt(reference: str, candidate: str, max_words: int = MAX_REPORT_WORDS) -> str:
    """The official GREEN prompt for one pair.

    Each report is cut to its first ``max_words`` whitespace-separated words and re-joined with
    single spaces, as the official code does.

    Parameters
    ----------
    reference : str
        Reference report (written by a radiologist).
    candidate : str
        Candidate (generated) report.
    max_words : int
        Words kept per report.

    Returns
    -------
    str
    """
    reference = " ".join(reference.split()[:max_words])
    candidate = " ".join(candidate.split()[:max_words])
    return _PROMPT.format(reference=reference, candidate=candidate)


_LETTER_LINE = re.compile(r"\([a-f]\) .*")
_DIGIT_LINE = re.compile(r"\([1-6]\) .*")
_LETTER_PREFIXES = tuple(f"({c}) " for c in "abcdef")
_DIGIT_PREFIXES = tuple(f"({i}) " for i in range(1, 7))
_SUB_COUNT = re.compile(r"(?<=: )\b\d+\b(?=\.)")
_MATCHED_COUNT = re.compile(r"^\b\d+\b(?=\.)")
_SECTIONS = {c: re.compile(rf"\[{re.escape(c)}\]:\s*(.*?)(?:\n\s*\n|\Z)", re.DOTALL) for c in CATEGORIES}


@dataclass(frozen=True)
class GreenResult:
    """GREEN counts and score for one reference/candidate pair.

    Attributes
    ----------
    matched_findings : int or None
        Number of matched findings (``None`` only with ``strict=True`` and no such section).
    significant : tuple of int, or None
        Clinically significant error counts for categories (a)-(f).
    insignificant : tuple of int, or None
        Clinically insignificant error counts for categories (a)-(f).
    score : float or None
        GREEN score in [0, 1]; ``None`` only with ``strict=True`` when a section is missing.
    response : str
        The (cleaned) judge output the counts were read from.
    """

    matched_findings: int | None
    significant: tuple[int, ...] | None
    insignificant: tuple[int, ...] | None
    score: float | None
    response: str = ""

    def to_dict(self) -> dict[str, object]:
        """Plain-JSON form: counts per named category, totals and score."""
        out: dict[str, object] = {"green": self.score, "matched_findings": self.matched_findings}
        for prefix, counts in (("significant", self.significant), ("insignificant", self.insignificant)):
            out[prefix] = None if counts is None else dict(zip(SUB_CATEGORIES, counts))
            out[f"{prefix}_total"] = None if counts is None else sum(counts)
        out["response"] = self.response
        return out


def clean_response(response: str) -> str:
    """Cut a decoded judge output down to its assessment, as the official pipeline does.

    Keeps the text after the last ``<|assistant|>`` tag and after ``[Explanation]:`` (the first
    occurrence when the text still contains the prompt's format template, else the last), and
    drops ``</s>`` and ``<unk>``.
    """
    if "[Explanation]:" in response:
        if "<|assistant|>" in response:
            response = response.split("<|assistant|>")[-1]
        # The official condition is `("A" or "B") in response`, which only ever tests "A".
        if "[Explanation]:\n    <Explanation>\n" in response:
            response = response.split("[Explanation]:")[1]
        else:
            response = response.split("[Explanation]:")[-1]
    if "<|assistant|>" in response:
        response = response.split("<|assistant|>")[-1]
    return response.replace("</s>", "").replace("<unk>", "")


def parse_error_counts(text: str, category: str, strict: bool = False) -> tuple[int | None, list[int] | None]:
    """Read one section of a judge output.

    Parameters
    ----------
    text : str
        Judge output.
    category : str
        One of ``CATEGORIES``.
    strict : bool
        ``True`` returns ``(None, None)`` for a missing section (the official ``for_reward`` mode);
        ``False`` returns zeros.

    Returns
    -------
    (int, list of int)
        For the error sections the total and the six sub-counts; for "Matched Findings" the count
        and six zeros.
    """
    if category not in CATEGORIES:
        raise ValueError(f"Category {category!r} is not one of {CATEGORIES}.")
    zeros = [0] * 6
    section = _SECTIONS[category].search(text)
    if section is None:
        return (None, None) if strict else (0, zeros)
    body = section.group(1)
    if body.startswith("No"):
        return 0, zeros
    if category == CATEGORIES[2]:
        count = _MATCHED_COUNT.findall(body)
        return (int(count[0]) if count else 0), zeros
    lines = sorted(_LETTER_LINE.findall(body))
    prefixes = _LETTER_PREFIXES
    if not lines:
        lines = sorted(_DIGIT_LINE.findall(body))
        prefixes = _DIGIT_PREFIXES
    counts = list(zeros)
    for position, prefix in enumerate(prefixes):
        for line in lines:
            if line.startswith(prefix):
                found = _SUB_COUNT.findall(line)
                if found:
                    counts[position] = int(found[0])
    return sum(counts), counts


def compute_green(matched: int | None, significant_errors_sum: int | None) -> float | None:
    """GREEN's formula: ``matched / (matched + significant errors)``.

    0 matched findings give 0 regardless of the errors (GREEN's convention); a missing count
    (``None``) gives ``None``.
    """
    if matched == 0:
        return 0.0
    if matched is None or significant_errors_sum is None:
        return None
    return matched / (matched + significant_errors_sum)


def parse_green(text: str, strict: bool = False) -> GreenResult:
    """Parse one judge output into GREEN counts and score.

    Parameters
    ----------
    text : str
        The judge's output (cleaned with ``clean_response`` or raw; the sections are found either way).
    strict : bool
        See ``parse_error_counts``; ``False`` is the official scoring behaviour.

    Returns
    -------
    GreenResult
    """
    sig_total, sig = parse_error_counts(text, CATEGORIES[0], strict)
    _, insig = parse_error_counts(text, CATEGORIES[1], strict)
    matched, _ = parse_error_counts(text, CATEGORIES[2], strict)
    return GreenResult(
        matched_findings=matched,
        significant=None if sig is None else tuple(sig),
        insignificant=None if insig is None else tuple(insig),
        score=compute_green(matched, sig_total),
        response=text,
    )
