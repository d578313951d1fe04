"""Radiologist reviews: the ``ReviewRecord``, the append-only ``ReviewStore`` and reviewer pseudonyms.

A reviews folder (DESIGN.md §4) holds

* ``reviews.jsonl`` — one JSON object per line, only ever appended to (see ``engine.review_store``), so
  several viewers and processes may share the folder; a correction is a new record whose ``supersedes``
  names the record it replaces.
* ``inputs/<fingerprint>.npz`` — the prepared model input of each reviewed volume (``pixels`` float32
  ``(T, D, H, W)`` in [0, 1], plus the grid map and preprocessing spec as JSON), written once per
  fingerprint. It is what DPO trains on, and it holds no PHI: it is derived from the ``Volume``, which
  carries none.

What a record holds is PHI-free by construction: the case id is the ``Volume``'s pseudonym, the reviewer
is pseudonymised with a site key when one is configured, and the only time is the review's own. Free
text — the report, the question and the reviewer's comment — is stored as typed and is not scrubbed:
whatever a user writes there (a name, a date) is kept, so sites must tell reviewers not to type PHI.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import Mu2Error
from engine.review_record import DECISIONS, HEX_ID, SCHEMA_VERSION, ReviewRecord, check_fingerprint
from engine.review_store import (
    append_line,
    folder_lock,
    json_default,
    read_jsonl,
    read_npz,
    remove_stale_temporaries,
    write_npz_atomic,
)

if TYPE_CHECKING:  # engine.draft pulls in torch; the store itself never needs it
    from engine.draft import Draft

__all__ = [
    "DECISIONS",
    "REVIEWER_KEY_ENV",
    "SCHEMA_VERSION",
    "ReviewRecord",
    "ReviewStore",
    "check_fingerprint",
    "pseudonymise_reviewer",
]

log = logging.getLogger(__name__)

REVIEWER_KEY_ENV = "MU2_REVIEWER_KEY"
_PSEUDONYM = re.compile(r"^r-[0-9a-f]{12}$")


def pseudonymise_reviewer(reviewer: str, key: str | bytes) -> str:
    """The site-keyed pseudonym ``'r-<12 hex>'`` of a reviewer name or login.

    The name is stripped and case-folded first so that ``"Dr Smith"`` and ``"dr smith "`` map to one
    pseudonym. Without the key the pseudonym cannot be reversed or recomputed.

    Parameters
    ----------
    reviewer : str
        The reviewer's name or login.
    key : str or bytes
        The site's secret key.

    Returns
    -------
    str
        ``'r-'`` followed by the first 12 hex digits of HMAC-SHA256(key, name).
    """
    key_bytes = key.encode("utf-8") if isinstance(key, str) else key
    digest = hmac.new(key_bytes, reviewer.strip().casefold().encode("utf-8"), hashlib.sha256).hexdigest()
    return f"r-{digest[:12]}"


class ReviewStore:
    """The append-only reviews folder, shareable by several viewers and processes (created on first write).

    Parameters
    ----------
    root : str or Path
        The reviews folder.
    reviewer_key : str, optional
        Site key for reviewer pseudonyms; defaults to the ``MU2_REVIEWER_KEY`` environment variable. With
        a key, reviewer names are stored as ``'r-<12 hex>'`` pseudonyms; without one they are stored as
        given (so pass a pseudonymous login there).
    """

    def __init__(self, root: str | Path, reviewer_key: str | None = None):
        self.root = Path(root)
        self.inputs = self.root / "inputs"
        self.path = self.root / "reviews.jsonl"
        self._lock_path = self.root / ".reviews.lock"
        key = reviewer_key if reviewer_key is not None else os.environ.get(REVIEWER_KEY_ENV)
        self._key = key or None
        remove_stale_temporaries(self.inputs)

    def _make_folders(self) -> None:
        # Only writers create the folder, so a mistyped path given to a reader is not silently created.
        try:
            self.inputs.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise Mu2Error(f"cannot create the reviews folder {self.root}: {err}") from err

    # ---- writing -------------------------------------------------------------------------------------

    def record(
        self,
        draft: Draft,
        final_text: str,
        decision: str,
        reviewer: str | None = None,
        comment: str | None = None,
        supersedes: str | None = None,
    ) -> ReviewRecord:
        """Append the radiologist's decision on ``draft`` and store its prepared input.

        When this returns, the record and its input are on disk (fsync-ed).

        Parameters
        ----------
        draft : engine.draft.Draft
            The reviewed draft; its ``model_input`` is stored under ``inputs/`` unless already there.
        final_text : str
            The report the radiologist signs off: the draft text when ``accepted``, the corrected text
            when ``edited``, the radiologist's own report (or ``""``) when ``rejected``.
        decision : {'accepted', 'edited', 'rejected'}
            Compared with stripped whitespace: ``accepted`` needs the draft text, ``edited`` a change.
        reviewer : str, optional
            Reviewer id; pseudonymised when a site key is configured.
        comment : str, optional
            Free text, stored as typed (not scrubbed: it must not contain PHI).
        supersedes : str, optional
            ``review_id`` of an earlier record of the same input that this record corrects.

        Raises
        ------
        Mu2Error
            On an unknown decision, text that contradicts the decision, an unknown ``supersedes`` id, or
            a folder that cannot be written.
        """
        if decision not in DECISIONS:
            raise Mu2Error(f"unknown review decision {decision!r}; use one of {', '.join(DECISIONS)}")
        if not isinstance(final_text, str):
            raise Mu2Error("the final report text must be a string")
        draft_text = str(draft.text)
        same = final_text.strip() == draft_text.strip()
        if decision == "accepted" and not same:
            raise Mu2Error(
                "the final text differs from the draft: record the decision as 'edited', not 'accepted'"
            )
        if decision == "edited" and (same or not final_text.strip()):
            raise Mu2Error(
                "an 'edited' review needs a changed, non-empty final text; use 'accepted' if unchanged"
            )
        fingerprint = check_fingerprint(draft.fingerprint)
        try:
            # Round-trip through JSON now so the returned record equals the one read back later.
            sampling = json.loads(json.dumps(dict(draft.sampling or {}), default=json_default))
        except (TypeError, ValueError) as err:
            raise Mu2Error(f"the draft's sampling settings cannot be stored as JSON: {err}") from err
        rec = ReviewRecord(
            review_id=uuid.uuid4().hex,
            time=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            case_id=str(draft.case_id),
            fingerprint=fingerprint,
            model_id=str(draft.model_id),
            weights_hash=str(draft.weights_hash),
            question=str(draft.question),
            sampling=sampling,
            draft_text=draft_text,
            final_text=final_text,
            decision=decision,
            comment=comment or None,
            reviewer=self._reviewer_id(reviewer),
            supersedes=supersedes,
        )
        line = json.dumps(rec.to_dict(), ensure_ascii=False, separators=(",", ":"), default=json_default)
        try:
            data = line.encode("utf-8") + b"\n"
        except UnicodeEncodeError as err:
            raise Mu2Error(
                f"the review text holds invalid characters ({err.reason}); retype the text"
            ) from err
        self._make_folders()
        # Input first: a crash between the two leaves an unreferenced .npz, never a record without input.
        self.save_input(draft.model_input, fingerprint)
        try:
            with folder_lock(self._lock_path):
                if supersedes is not None:
                    self._check_supersedes(supersedes, fingerprint)
                append_line(self.path, data)
        except OSError as err:
            raise Mu2Error(f"cannot write the review to {self.path}: {err}") from err
        log.info("recorded review %s (%s) for case %s", rec.review_id, decision, rec.case_id)
        return rec

    def _reviewer_id(self, reviewer: str | None) -> str | None:
        if reviewer is None or not reviewer.strip():
            return None
        if self._key is None or _PSEUDONYM.match(reviewer):
            return reviewer
        return pseudonymise_reviewer(reviewer, self._key)

    def _check_supersedes(self, review_id: str, fingerprint: str) -> None:
        if not HEX_ID.match(review_id):
            raise Mu2Error(f"supersedes must be a review id (32 hex digits), got {review_id!r}")
        target = next((r for r in self.records() if r.review_id == review_id), None)
        if target is None:
            raise Mu2Error(f"cannot correct review {review_id}: no such record in {self.path}")
        if target.fingerprint != fingerprint:
            raise Mu2Error(
                f"review {review_id} is of another input ({target.fingerprint}); a correction must "
                "review the same input"
            )

    def save_input(self, model_input: Any, fingerprint: str | None = None) -> Path | None:
        """Store a prepared model input as ``inputs/<fingerprint>.npz`` once (idempotent, atomic).

        Returns the file, or ``None`` (with a warning) when there is no input to store.
        """
        if model_input is None:
            log.warning(
                "draft has no model input; review of %s is kept without it (DPO cannot use it)", fingerprint
            )
            return None
        fp = check_fingerprint(fingerprint or model_input.fingerprint)
        if getattr(model_input, "fingerprint", fp) != fp:
            raise Mu2Error(
                f"the draft's fingerprint {fp} does not match its model input "
                f"({model_input.fingerprint}); draft the case again"
            )
        self._make_folders()
        path = self.inputs / f"{fp}.npz"
        if path.exists():
            return path
        arrays = {
            "pixels": np.ascontiguousarray(model_input.pixels, dtype=np.float32),
            "grid_map": np.array(json.dumps(_as_dict(model_input.grid_map), default=json_default)),
            "spec": np.array(json.dumps(_as_dict(model_input.spec), default=json_default)),
            "fingerprint": np.array(fp),
            "schema": np.array(SCHEMA_VERSION),
        }
        try:
            write_npz_atomic(path, arrays)
        except OSError as err:
            raise Mu2Error(f"cannot store the model input in {self.inputs}: {err}") from err
        return path

    # ---- reading -------------------------------------------------------------------------------------

    def records(self) -> list[ReviewRecord]:
        """Every intact record in append order; damaged lines are skipped with a logged warning."""
        out: list[ReviewRecord] = []
        seen: set[str] = set()
        for number, obj in read_jsonl(self.path):
            try:
                rec = ReviewRecord.from_dict(obj)
            except Mu2Error as err:
                log.warning("%s line %d skipped: %s", self.path.name, number, err)
                continue
            if rec.review_id in seen:
                log.warning(
                    "%s line %d repeats review %s; the first is kept", self.path.name, number, rec.review_id
                )
                continue
            seen.add(rec.review_id)
            out.append(rec)
        return out

    def __iter__(self) -> Iterator[ReviewRecord]:
        return iter(self.records())

    def __len__(self) -> int:
        return len(self.records())

    def current(self) -> list[ReviewRecord]:
        """The records no later record supersedes (corrections applied), in append order."""
        recs = self.records()
        replaced = {r.supersedes for r in recs if r.supersedes}
        return [r for r in recs if r.review_id not in replaced]

    def latest_by_case(self, by: str = "fingerprint") -> dict[str, ReviewRecord]:
        """The newest non-superseded record per input ``fingerprint`` (or per ``case_id``).

        "Newest" is append order, which the lock makes a total order across processes; the ``time``
        fields of different machines' clocks are not trusted for it.
        """
        if by not in ("fingerprint", "case_id"):
            raise Mu2Error(f"latest_by_case groups by 'fingerprint' or 'case_id', not {by!r}")
        latest: dict[str, ReviewRecord] = {}
        for rec in self.current():
            latest[getattr(rec, by)] = rec
        return latest

    def load_input(self, fingerprint: str) -> tuple[np.ndarray, dict]:
        """The stored prepared input: ``(pixels float32 (T, D, H, W), meta)``.

        ``meta`` holds ``fingerprint``, ``grid_map`` and ``spec`` (dicts as ``to_dict()`` gave them).

        Raises
        ------
        Mu2Error
            When no input with that fingerprint is stored or the file is unreadable.
        """
        z = read_npz(self.inputs / f"{check_fingerprint(fingerprint)}.npz")
        try:
            meta = {
                "fingerprint": str(z["fingerprint"][()]),
                "grid_map": json.loads(str(z["grid_map"][()])),
                "spec": json.loads(str(z["spec"][()])),
            }
            return z["pixels"], meta
        except (KeyError, ValueError) as err:
            raise Mu2Error(
                f"stored model input {fingerprint} is incomplete ({err}); draft that case again"
            ) from err


def _as_dict(obj: Any) -> dict:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return obj
    return obj.to_dict()
