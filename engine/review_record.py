"""The ``ReviewRecord``: one line of ``reviews.jsonl`` (DESIGN.md §4), its schema and its validation."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from engine.errors import Mu2Error

SCHEMA_VERSION = 1
DECISIONS = ("accepted", "edited", "rejected")

HEX_ID = re.compile(r"^[0-9a-f]{32}$")
# Fingerprints become file names under inputs/, so nothing that could climb out of the folder.
_FINGERPRINT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_TEXT_FIELDS = (
    "time",
    "case_id",
    "fingerprint",
    "model_id",
    "weights_hash",
    "question",
    "draft_text",
    "final_text",
    "decision",
)
_OPTIONAL_FIELDS = ("comment", "reviewer", "supersedes")


def check_fingerprint(fingerprint: object) -> str:
    """Return ``fingerprint`` if it is usable as a file name under ``inputs/``, else raise ``Mu2Error``."""
    if not isinstance(fingerprint, str) or not _FINGERPRINT.match(fingerprint) or ".." in fingerprint:
        raise Mu2Error(f"invalid input fingerprint {fingerprint!r}: expected letters, digits, '_', '-', '.'")
    return fingerprint


@dataclass(frozen=True)
class ReviewRecord:
    """One review decision on one draft (a line of ``reviews.jsonl``).

    ``time`` is the UTC ISO 8601 time of the review. ``decision`` is ``accepted`` (final text is the
    draft), ``edited`` (final text is the radiologist's correction) or ``rejected`` (the draft is unusable;
    ``final_text`` may hold the radiologist's own report or be empty). ``supersedes`` is the
    ``review_id`` of an earlier record of the same input that this one corrects.
    """

    review_id: str
    time: str
    case_id: str
    fingerprint: str
    model_id: str
    weights_hash: str
    question: str
    sampling: dict
    draft_text: str
    final_text: str
    decision: str
    comment: str | None = None
    reviewer: str | None = None
    supersedes: str | None = None
    schema: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, the on-disk form (``schema`` first)."""
        d = asdict(self)
        return {"schema": d.pop("schema"), **d}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReviewRecord:
        """Validate and build a record from its on-disk dict; keys this schema does not know are ignored.

        Raises
        ------
        Mu2Error
            When a field is missing or has the wrong type or value, or the record was written by a newer
            schema than this Mu2 understands.
        """
        if not isinstance(data, dict):
            raise Mu2Error(f"a review record must be a JSON object, not {type(data).__name__}")
        schema = data.get("schema")
        if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
            raise Mu2Error(f"review record has no valid schema version (got {schema!r})")
        if schema > SCHEMA_VERSION:
            raise Mu2Error(
                f"review record has schema {schema}; this Mu2 reads up to {SCHEMA_VERSION} — update Mu2"
            )
        review_id = data.get("review_id")
        if not isinstance(review_id, str) or not HEX_ID.match(review_id):
            raise Mu2Error(f"review record has an invalid review_id {review_id!r}")
        for name in _TEXT_FIELDS:
            if not isinstance(data.get(name), str):
                raise Mu2Error(f"review record {review_id} has no text field {name!r}")
        for name in _OPTIONAL_FIELDS:
            if data.get(name) is not None and not isinstance(data[name], str):
                raise Mu2Error(f"review record {review_id}: {name!r} must be text or null")
        if data["decision"] not in DECISIONS:
            raise Mu2Error(
                f"review record {review_id} has decision {data['decision']!r}; expected {DECISIONS}"
            )
        if not isinstance(data.get("sampling"), dict):
            raise Mu2Error(f"review record {review_id} has no sampling settings object")
        check_fingerprint(data["fingerprint"])
        supersedes = data.get("supersedes")
        if supersedes is not None and not HEX_ID.match(supersedes):
            raise Mu2Error(f"review record {review_id} supersedes an invalid id {supersedes!r}")
        try:
            datetime.fromisoformat(data["time"])
        except ValueError as err:
            raise Mu2Error(f"review record {review_id} has an invalid time {data['time']!r}") from err
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
