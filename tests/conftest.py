from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# ../shared sits beside the clone (CI) or beside the work tree (sessions).
_REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MU2_SHARED", _REPO.parent / "shared"))
REALDATA = SHARED / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.skip("../shared/realdata is not present")
    return REALDATA
