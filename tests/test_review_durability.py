"""The reviews folder under concurrent writers and under writers killed mid-write (POSIX only)."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from engine.review import ReviewStore

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL and fcntl locks are POSIX")

REPO = Path(__file__).resolve().parents[1]


def _draft(worker: int, i: int, fingerprint: str) -> SimpleNamespace:
    """A minimal stand-in for ``engine.draft.Draft``: what ``ReviewStore.record`` reads."""
    model_input = SimpleNamespace(
        pixels=np.full((1, 2, 4, 4), 0.5, dtype=np.float32),
        grid_map=SimpleNamespace(to_dict=lambda: {"grid": [1, 2, 2]}),
        spec=SimpleNamespace(to_dict=lambda: {"chunks": 1}),
        fingerprint=fingerprint,
    )
    return SimpleNamespace(
        text=f"FINDINGS: writer {worker} record {i}. " + "x" * 200,
        question="Describe the findings.",
        sampling={"do_sample": False},
        model_id="tiny",
        weights_hash="0" * 16,
        fingerprint=fingerprint,
        case_id=f"c-{worker:04d}",
        model_input=model_input,
    )


def _writer(root: str, worker: int, n: int) -> list[str]:
    store = ReviewStore(root)
    ids = []
    for i in range(n):
        draft = _draft(worker, i, "shared-fp")
        ids.append(store.record(draft, draft.text, "accepted", reviewer=f"w{worker}").review_id)
    return ids


def test_four_processes_append_1000_intact_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MU2_REVIEWER_KEY", raising=False)  # the spawned writers inherit the environment
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        per_worker = pool.starmap(_writer, [(str(tmp_path), w, 250) for w in range(4)])

    records = ReviewStore(tmp_path).records()
    assert len(records) == 1000
    ids = [r.review_id for r in records]
    assert len(set(ids)) == 1000
    assert set(ids) == {i for ids_w in per_worker for i in ids_w}
    lines = (tmp_path / "reviews.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 1001  # one object per line, nothing torn or merged
    for w, ids_w in enumerate(per_worker):
        # Each writer's records keep its own order in the shared file.
        assert [r.review_id for r in records if r.reviewer == f"w{w}"] == ids_w
    assert ReviewStore(tmp_path).load_input("shared-fp")[0].shape == (1, 2, 4, 4)


def test_threads_of_one_viewer_share_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MU2_REVIEWER_KEY", raising=False)
    with ThreadPoolExecutor(4) as pool:
        per_thread = list(pool.map(lambda w: _writer(str(tmp_path), w, 50), range(4)))
    ids = [r.review_id for r in ReviewStore(tmp_path).records()]
    assert len(ids) == 200 and set(ids) == {i for ids_w in per_thread for i in ids_w}


_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from types import SimpleNamespace
    from engine.review import ReviewStore

    store = ReviewStore(sys.argv[1])
    run = int(sys.argv[2])
    rng = np.random.default_rng(run)
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    sys.stdin.read(1)  # "go": the parent starts each writer while the previous one runs, then releases it
    i = 0
    while True:
        # A new fingerprint every few records, so some kills land while an input .npz is written.
        fp = f"run{run}-fp{i // 4}"
        mi = SimpleNamespace(pixels=rng.random((2, 4, 16, 16), dtype=np.float32),
                             grid_map={"run": run}, spec={"chunks": 2}, fingerprint=fp)
        draft = SimpleNamespace(text="FINDINGS: " + "µ" * rng.integers(10, 4000), question="q",
                                sampling={"seed": i}, model_id="tiny", weights_hash="h", fingerprint=fp,
                                case_id="c-kill", model_input=mi)
        rec = store.record(draft, "IMPRESSION: edited " + str(i), "edited", comment="killed run")
        sys.stdout.write(rec.review_id + "\\n")
        sys.stdout.flush()
        i += 1
    """
)


def test_writer_killed_mid_write_never_loses_a_returned_record(tmp_path: Path) -> None:
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    def start(run: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(tmp_path), str(run)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )

    returned: list[str] = []
    expected = 0
    following: subprocess.Popen | None = start(0)
    try:
        for run in range(50):
            proc, following = following, (start(run + 1) if run < 49 else None)
            out = b""
            try:
                assert proc.stdout.readline() == b"ready\n"
                proc.stdin.write(b"g")
                proc.stdin.flush()
                # Kill after a random number of records plus a random delay: tied to the writer's progress,
                # not to wall time, so the kills land mid-record even on a loaded machine.
                wait_for = rng.randint(0, 6)
                out = b"".join(proc.stdout.readline() for _ in range(wait_for))
                expected += wait_for
                time.sleep(rng.uniform(0.0, 0.02))
            finally:
                proc.send_signal(signal.SIGKILL)
                out += proc.stdout.read()
                proc.wait()
                proc.stdin.close()
            assert proc.returncode == -signal.SIGKILL
            # Only complete lines: the id of a record whose record() returned.
            returned += [ln.decode() for ln in out.split(b"\n")[:-1]]

            records = ReviewStore(tmp_path).records()  # never raises, whatever the kill left behind
            by_id = {r.review_id: r for r in records}
            missing = [i for i in returned if i not in by_id]
            assert not missing, f"run {run}: returned records lost: {missing}"
    finally:
        if following is not None:  # a failed assertion must not leave a writer running
            following.kill()
            following.wait()

    store = ReviewStore(tmp_path)
    records = store.records()
    assert len(returned) >= expected > 50
    assert len({r.review_id for r in records}) == len(records)
    for rec in records:
        assert rec.decision == "edited" and rec.final_text.startswith("IMPRESSION: edited")
    for fp in {r.fingerprint for r in records}:
        pixels, meta = store.load_input(fp)  # every referenced input is complete
        assert pixels.shape == (2, 4, 16, 16) and meta["fingerprint"] == fp
