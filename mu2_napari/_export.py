"""Export of the reviewed report from the widget: text, JSON and DICOM SR through ``engine.export``.

What is exported is what the radiologist signed off when the editor still shows the reviewed text;
otherwise the editor's current text as an unreviewed draft. The SR is ``VERIFIED`` only for a report
that was accepted or edited (and not changed since), with the reviewer id as verifying observer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

KINDS = ("text", "json", "sr")


def _signed_off(record: Any, text: str) -> bool:
    return (
        record is not None
        and record.decision in ("accepted", "edited")
        and record.final_text.split() == text.split()
    )


def export_report(
    kind: str,
    path: Path,
    draft: Any,
    editor_text: str,
    record: Any | None,
    volume: Any | None,
    reviewer: str | None,
) -> Path:
    """Write ``kind`` (``text``, ``json`` or ``sr``) to ``path``; raises ``Mu2Error`` on user errors."""
    from engine.errors import Mu2Error
    from engine.export import export_dicom_sr, export_json, export_text

    if kind not in KINDS:
        raise Mu2Error(f"unknown export kind {kind!r}; use one of {', '.join(KINDS)}")
    verified = _signed_off(record, editor_text)
    text = record.final_text if verified else editor_text
    if not text.strip():
        raise Mu2Error("the report is empty; nothing to export")
    if kind == "text":
        return export_text(text, path)
    if kind == "json":
        data = draft.to_json() | {"final_text": text, "verified": verified}
        if record is not None:
            data |= {"decision": record.decision, "review_id": record.review_id, "reviewer": record.reviewer}
        return export_json(data, path)
    if volume is None:
        raise Mu2Error("the CT of this draft is no longer available; draft again to export a DICOM SR")
    observer = (record.reviewer if record is not None and record.reviewer else None) or reviewer
    if verified and not observer:
        raise Mu2Error("enter your reviewer id: a verified DICOM SR names the radiologist who signed it off")
    return export_dicom_sr(text, volume, path, verified=verified, observer=observer, model_id=draft.model_id)
