"""ReviewRecord / ReviewStore: decisions, pseudonyms, corrections, torn lines, stored inputs, no PHI."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from engine.draft import Draft
from engine.errors import Mu2Error
from engine.review import SCHEMA_VERSION, ReviewRecord, ReviewStore, pseudonymise_reviewer

TEXT = "FINDINGS: Small left pleural effusion.\nIMPRESSION: Pleural effusion."


def make_input(fingerprint: str, seed: int = 0) -> SimpleNamespace:
    """Stand-in for ``engine.preprocess.ModelInput`` with the attributes the store uses."""
    pixels = np.random.default_rng(seed).random((2, 4, 8, 8), dtype=np.float32)
    return SimpleNamespace(
        pixels=pixels,
        grid_map=SimpleNamespace(to_dict=lambda: {"crop": [0, 4, 0, 8, 0, 8], "scale": [1.0, 1.0, 1.0]}),
        spec=SimpleNamespace(to_dict=lambda: {"size": [8, 8, 8], "chunks": 2, "percentiles": [0.5, 99.5]}),
        fingerprint=fingerprint,
    )


def make_draft(text: str = TEXT, fingerprint: str = "fp0123", case_id: str = "c-0001", **kw) -> Draft:
    findings, _, impression = text.partition("\nIMPRESSION:")
    return Draft(
        text=text,
        findings=findings,
        impression=impression.strip(),
        question="Describe the findings of the chest CT.",
        sampling={"do_sample": False, "temperature": np.float32(1.0), "seed": np.int64(3)},
        model_id="tiny",
        weights_hash="abc123",
        fingerprint=fingerprint,
        case_id=case_id,
        selection=np.ones((2, 4), dtype=np.float32),
        heatmap=np.zeros((4, 8, 8), dtype=np.float32),
        model_input=kw.pop("model_input", make_input(fingerprint)),
        **kw,
    )


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ReviewStore:
    monkeypatch.delenv("MU2_REVIEWER_KEY", raising=False)
    return ReviewStore(tmp_path / "reviews")


def test_record_is_appended_and_read_back(store: ReviewStore) -> None:
    assert store.records() == [] and len(store) == 0
    assert not store.root.exists()  # reading never creates the folder
    draft = make_draft()
    rec = store.record(draft, TEXT, "accepted", reviewer="r-login7", comment="fine")

    assert re.fullmatch(r"[0-9a-f]{32}", rec.review_id)
    when = datetime.fromisoformat(rec.time)
    assert when.utcoffset().total_seconds() == 0
    assert abs((datetime.now(timezone.utc) - when).total_seconds()) < 60
    assert (rec.case_id, rec.fingerprint, rec.model_id, rec.weights_hash) == (
        "c-0001",
        "fp0123",
        "tiny",
        "abc123",
    )
    assert rec.question == draft.question and rec.draft_text == TEXT and rec.final_text == TEXT
    assert rec.sampling == {"do_sample": False, "temperature": 1.0, "seed": 3}
    assert (rec.decision, rec.reviewer, rec.comment, rec.supersedes) == ("accepted", "r-login7", "fine", None)
    assert rec.schema == SCHEMA_VERSION == 1

    assert store.records() == [rec]
    assert list(store) == [rec] and len(store) == 1
    assert ReviewStore(store.root).records() == [rec]  # another viewer of the folder sees it
    lines = store.path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == rec.to_dict()


def test_decisions_are_checked_against_the_text(store: ReviewStore) -> None:
    draft = make_draft()
    with pytest.raises(Mu2Error, match="unknown review decision"):
        store.record(draft, TEXT, "approved")
    with pytest.raises(Mu2Error, match="'edited'"):
        store.record(draft, TEXT + " Also a nodule.", "accepted")
    with pytest.raises(Mu2Error, match="'accepted' if unchanged"):
        store.record(draft, TEXT, "edited")

    with pytest.raises(Mu2Error, match="invalid characters"):
        store.record(draft, TEXT + " \ud800", "edited")  # a lone surrogate cannot be stored as UTF-8
    assert not store.root.exists()  # refused reviews write nothing, not even the folder

    store.record(draft, TEXT + "\n", "accepted")  # trailing whitespace is not an edit
    store.record(draft, TEXT.replace("Small", "Moderate"), "edited")
    store.record(draft, "", "rejected", comment="wrong side")
    assert [r.decision for r in store] == ["accepted", "edited", "rejected"]


def test_reviewer_is_pseudonymised_with_the_site_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    draft = make_draft()
    keyed = ReviewStore(tmp_path / "a", reviewer_key="site-secret")
    rec = keyed.record(draft, TEXT, "accepted", reviewer="Dr Jane Doe")
    expected = "r-" + hmac.new(b"site-secret", b"dr jane doe", hashlib.sha256).hexdigest()[:12]
    assert rec.reviewer == expected == pseudonymise_reviewer(" DR JANE DOE ", "site-secret")
    assert pseudonymise_reviewer("Dr Jane Doe", "other-site") != expected
    assert "Jane" not in keyed.path.read_text()
    # An id that already is a pseudonym is not hashed again.
    assert keyed.record(draft, TEXT, "accepted", reviewer=expected).reviewer == expected

    monkeypatch.setenv("MU2_REVIEWER_KEY", "site-secret")
    assert (
        ReviewStore(tmp_path / "b").record(draft, TEXT, "accepted", reviewer="Dr Jane Doe").reviewer
        == expected
    )

    monkeypatch.delenv("MU2_REVIEWER_KEY")
    plain = ReviewStore(tmp_path / "c")
    assert plain.record(draft, TEXT, "accepted", reviewer="rad-17").reviewer == "rad-17"
    assert plain.record(draft, TEXT, "accepted").reviewer is None


def test_corrections_append_and_latest_honours_them(store: ReviewStore) -> None:
    a = make_draft(fingerprint="fpA", case_id="c-A")
    b = make_draft(fingerprint="fpB", case_id="c-B")
    first = store.record(a, TEXT, "accepted")
    store.record(b, "", "rejected")
    fix = store.record(a, TEXT.replace("left", "right"), "edited", supersedes=first.review_id, comment="side")
    before = store.path.read_bytes()

    assert [r.review_id for r in store.records()][0] == first.review_id  # nothing rewritten
    assert first not in store.current() and fix in store.current()
    latest = store.latest_by_case()
    assert set(latest) == {"fpA", "fpB"} and latest["fpA"] == fix
    assert store.latest_by_case(by="case_id")["c-A"] == fix

    later = store.record(a, TEXT, "accepted")  # a plain re-review is newer still
    assert store.latest_by_case()["fpA"] == later
    assert store.path.read_bytes().startswith(before)

    with pytest.raises(Mu2Error, match="no such record"):
        store.record(a, TEXT, "accepted", supersedes="0" * 32)
    with pytest.raises(Mu2Error, match="same input"):
        store.record(b, TEXT, "accepted", supersedes=first.review_id)
    with pytest.raises(Mu2Error, match="32 hex"):
        store.record(a, TEXT, "accepted", supersedes="../x")
    with pytest.raises(Mu2Error, match="fingerprint"):
        store.latest_by_case(by="reviewer")


def test_input_is_stored_once_and_loads(store: ReviewStore) -> None:
    draft = make_draft()
    store.record(draft, TEXT, "accepted")
    path = store.inputs / "fp0123.npz"
    stat = path.stat()
    store.record(make_draft(model_input=make_input("fp0123", seed=9)), TEXT, "accepted")
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_ino == stat.st_ino

    pixels, meta = store.load_input("fp0123")
    assert pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels, draft.model_input.pixels)
    assert meta == {
        "fingerprint": "fp0123",
        "grid_map": draft.model_input.grid_map.to_dict(),
        "spec": draft.model_input.spec.to_dict(),
    }
    assert sorted(p.name for p in store.inputs.iterdir()) == ["fp0123.npz"]  # no temporaries left

    with pytest.raises(Mu2Error, match="no stored model input"):
        store.load_input("fp-unknown")
    with pytest.raises(Mu2Error, match="invalid input fingerprint"):
        store.load_input("../../etc/passwd")
    with pytest.raises(Mu2Error, match="does not match"):
        store.record(make_draft(fingerprint="fpX", model_input=make_input("fpY")), TEXT, "accepted")


def test_draft_without_input_is_recorded_with_a_warning(store: ReviewStore, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="engine.review"):
        rec = store.record(make_draft(model_input=None), TEXT, "accepted")
    assert "no model input" in caplog.text
    assert store.records() == [rec]
    with pytest.raises(Mu2Error):
        store.load_input(rec.fingerprint)


def test_torn_and_corrupt_lines_are_skipped_never_rewritten(store: ReviewStore, caplog) -> None:
    draft = make_draft()
    first = store.record(draft, TEXT, "accepted")
    second = store.record(draft, "", "rejected")
    good = dict(first.to_dict(), review_id="1" * 32, decision="maybe")
    with store.path.open("ab") as fh:
        fh.write(b"\xff\xfe not json\n")  # line 3: garbage bytes
        fh.write(json.dumps(good).encode() + b"\n")  # line 4: JSON but an invalid record
        fh.write(json.dumps(second.to_dict()).encode() + b"\n")  # line 5: a duplicated id
        fh.write(json.dumps(first.to_dict()).encode()[:57])  # line 6: torn by a crash mid-write
    damaged = store.path.read_bytes()

    with caplog.at_level(logging.WARNING):
        assert store.records() == [first, second]
    for n in (3, 4, 5, 6):
        assert f"line {n} " in caplog.text
    assert "incomplete" in caplog.text

    third = store.record(draft, TEXT, "accepted")
    data = store.path.read_bytes()
    assert data.startswith(damaged) and data.endswith(b"\n")  # appended after a newline, nothing rewritten
    assert store.records() == [first, second, third]


def test_record_dict_validation() -> None:
    rec = ReviewRecord(
        review_id="a" * 32,
        time="2025-01-02T03:04:05.000+00:00",
        case_id="c-1",
        fingerprint="fp",
        model_id="m",
        weights_hash="h",
        question="q",
        sampling={"do_sample": True},
        draft_text="d",
        final_text="f",
        decision="edited",
        reviewer="r-0123456789ab",
        supersedes="b" * 32,
    )
    assert ReviewRecord.from_dict(rec.to_dict()) == rec
    assert ReviewRecord.from_dict({**rec.to_dict(), "future_field": 1}) == rec
    bad = {
        "review_id": "not-hex",
        "decision": "ok",
        "final_text": None,
        "sampling": [],
        "time": "yesterday",
        "fingerprint": "../x",
        "comment": 3,
        "supersedes": "zz",
        "schema": True,
    }
    for key, value in bad.items():
        with pytest.raises(Mu2Error):
            ReviewRecord.from_dict({**rec.to_dict(), key: value})
    without = rec.to_dict()
    del without["question"]
    with pytest.raises(Mu2Error, match="question"):
        ReviewRecord.from_dict(without)
    with pytest.raises(Mu2Error, match="update Mu2"):
        ReviewRecord.from_dict({**rec.to_dict(), "schema": SCHEMA_VERSION + 1})


def _folder_bytes(root: Path) -> list[bytes]:
    """Every file's raw bytes, and for .npz archives also each decompressed member."""
    blobs = []
    for path in root.rglob("*"):
        if path.is_file():
            blobs.append(path.read_bytes())
            if path.suffix == ".npz":
                with zipfile.ZipFile(path) as z:
                    blobs += [z.read(name) for name in z.namelist()]
    return blobs


def test_no_dicom_patient_data_reaches_the_reviews_folder(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PatientName = "Doe^Johnathan"
    ds.PatientID = "MRN99887766"
    ds.PatientBirthDate = "19580214"
    ds.AccessionNumber = "ACC5544332"
    ds.InstitutionName = "St Elsewhere General"
    ds.StudyDate = "20230917"
    ds.StudyTime = "101112"
    case_id = "c-" + hmac.new(b"site-key", str(ds.PatientID).encode(), hashlib.sha256).hexdigest()[:16]

    store = ReviewStore(tmp_path / "reviews", reviewer_key="site-key")
    draft = make_draft(case_id=case_id, fingerprint="f" * 64)
    store.record(draft, TEXT, "accepted", reviewer="jdoe")
    store.record(draft, TEXT + " Small nodule.", "edited", reviewer="jdoe")

    blobs = _folder_bytes(store.root)
    assert any(case_id.encode() in b for b in blobs)  # the pseudonym is what identifies the case
    phi = [
        "Doe^Johnathan",
        "Johnathan",
        "MRN99887766",
        "19580214",
        "1958-02-14",
        "ACC5544332",
        "St Elsewhere",
        "20230917",
        "2023-09-17",
        "jdoe",
    ]
    for value in phi:
        for encoded in {value.encode("utf-8"), value.encode("utf-32-le")}:  # numpy stores str as UTF-32
            assert not any(encoded in b for b in blobs), f"{value!r} leaked into the reviews folder"
