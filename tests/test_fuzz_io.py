"""Damaged copies of real files: load_volume returns a Volume or raises Mu2InputError — nothing else, no hang."""

from __future__ import annotations

import random
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from engine.errors import Mu2InputError
from engine.volume import Volume, load_volume

SOURCES = [
    "ct/dicom_chest_cptac_C3N-00247/000000.dcm",  # explicit VR, native
    "ct/totalsegmentator/example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016580",  # J2K
    "ct/dicom_edge_cases/pydicom_data/eCT_Supplemental.dcm",  # Enhanced CT multi-frame
    "ct/dicom_edge_cases/dcmqi_ct3slice_with_seg/02.dcm",  # implicit VR, padding value
    "ct/dicom_edge_cases/nema_wg04_via_dwv/nema-ct1_jpll.dcm",  # JPEG Lossless
    "ct/totalsegmentator/example_ct_sm.nii.gz",
]
N_VARIANTS = 50
BUDGET_S = 20  # per load; a hang is a failure


@contextmanager
def time_limit(seconds: int):
    def _timeout(signum, frame):
        raise TimeoutError(f"load_volume did not finish within {seconds} s")

    old = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    kind = rng.choice(["truncate", "flip", "flip_header", "zero_block"])
    if kind == "truncate":
        return data[: rng.randrange(0, len(data))], kind
    buf = bytearray(data)
    if kind == "zero_block":
        start = rng.randrange(0, len(buf))
        buf[start : start + rng.randrange(1, 4096)] = bytes(min(4096, len(buf) - start))
        return bytes(buf[: len(data)]), kind
    # Headers hold the lengths, VRs and geometry: flip bits there more often than in the pixels.
    span = min(len(buf), 4096) if kind == "flip_header" else len(buf)
    for _ in range(rng.randrange(1, 24)):
        pos = rng.randrange(0, span)
        buf[pos] ^= 1 << rng.randrange(8)
    return bytes(buf), kind


def check(path: Path) -> str:
    with time_limit(BUDGET_S):
        try:
            vol = load_volume(path)
        except Mu2InputError as err:
            assert str(err) and "\n" not in str(err)
            return "refused"
    assert isinstance(vol, Volume) and vol.voxels.ndim == 3 and np.isfinite(vol.voxels).all()
    return "loaded"


def test_damaged_files_load_or_are_refused(realdata, tmp_path):
    rng = random.Random(20250703)
    outcomes: dict[str, int] = {}
    for i in range(N_VARIANTS):
        src = realdata / SOURCES[i % len(SOURCES)]
        data, kind = mutate(src.read_bytes(), rng)
        case = tmp_path / f"case{i:02d}"
        case.mkdir()
        name = "ct.nii.gz" if src.name.endswith(".nii.gz") else "slice.dcm"
        (case / name).write_bytes(data)
        if name == "slice.dcm" and i % 2 == 0:
            # In a series: an intact sibling one slice further along, so the damaged file must be decoded.
            sibling = _shifted_copy(src, case / "sibling.dcm")
            target = case if sibling else case / name
        else:
            target = case / name
        try:
            result = check(target)
        except Exception as exc:  # pragma: no cover - the failure report
            pytest.fail(f"variant {i} ({kind} of {src.name}) raised {type(exc).__name__}: {exc}")
        outcomes[result] = outcomes.get(result, 0) + 1
    assert sum(outcomes.values()) == N_VARIANTS
    assert outcomes.get("refused", 0) > 0


def _shifted_copy(src: Path, dst: Path) -> bool:
    import pydicom

    try:
        ds = pydicom.dcmread(src)
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        normal = np.cross(*np.array(ds.ImageOrientationPatient, float).reshape(2, 3))
    except (AttributeError, ValueError, TypeError):
        shutil.copy(src, dst)  # no classic geometry (Enhanced CT): an identical copy still exercises it
        return True
    ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp + 2.0 * normal]
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(dst)
    return True
