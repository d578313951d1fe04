import json
import threading

import numpy as np
import pytest
import torch

from engine.draft import Drafter, Sampling, split_sections
from tests.helpers import tiny_checkpoint, tiny_volume


@pytest.fixture(scope="module")
def drafter(tmp_path_factory):
    return Drafter.from_pretrained(tiny_checkpoint(tmp_path_factory.mktemp("d") / "tiny"))


def test_draft_holds_text_selection_heatmap_timings(drafter):
    vol = tiny_volume()
    streamed: list[str] = []
    d = drafter.draft(vol, max_new_tokens=10, on_token=streamed.append)
    assert d.n_tokens == 10 or d.n_tokens < 10  # EOS may come early
    assert "".join(streamed) == d.text
    assert d.heatmap.shape == vol.shape and d.heatmap.dtype == np.float32
    assert d.heatmap.max() == pytest.approx(1.0)
    T = drafter.spec.n_chunks
    assert d.selection.shape == (T, drafter.spec.tokens_per_chunk)
    assert d.selection.sum() == pytest.approx(1.0, abs=1e-5)
    assert {"load", "prepare", "encode", "prefill", "decode", "tokens_per_s"} <= set(d.timings)
    assert d.weights_hash == drafter.weights_hash and d.model_id
    blob = json.dumps(d.to_json())
    assert "heatmap" in blob and "selection" not in json.loads(blob)


def test_greedy_is_deterministic_and_seeded_sampling_repeats(drafter):
    vol = tiny_volume()
    a, b = drafter.draft(vol, max_new_tokens=8), drafter.draft(vol, max_new_tokens=8)
    assert a.text == b.text and a.fingerprint == b.fingerprint
    s = Sampling(do_sample=True, temperature=1.5, top_p=1.0, seed=3)
    c, d = drafter.draft(vol, max_new_tokens=8, sampling=s), drafter.draft(vol, max_new_tokens=8, sampling=s)
    assert c.text == d.text


def test_cancel_stops_generation_promptly(drafter):
    cancel = threading.Event()
    n = []

    def on_token(_t):
        n.append(1)
        if len(n) == 3:
            cancel.set()

    d = drafter.draft(tiny_volume(), max_new_tokens=50, min_new_tokens=50, on_token=on_token, cancel=cancel)
    assert d.cancelled and d.n_tokens <= 5


def test_forced_selection_lands_in_the_tokens_region(drafter, monkeypatch):
    """Put all selection weight on one token: the heatmap's mass must lie in that token's voxel box."""
    vol = tiny_volume(shape=(24, 48, 40))
    spec = drafter.spec
    t, n = spec.n_chunks - 1, spec.tokens_per_chunk - 1
    real = drafter.model.get_image_features

    def forced(*args, **kwargs):
        out = real(*args, **kwargs)
        imp = torch.zeros_like(out.token_importance)
        imp[:, t, n] = 1.0
        out.token_importance = imp
        return out

    monkeypatch.setattr(drafter.model, "get_image_features", forced)
    d = drafter.draft(vol, max_new_tokens=2)
    from engine.preprocess import prepare

    bounds = prepare(vol, spec).grid_map.token_bounds_voxels(t, n)
    assert all(hi > lo for lo, hi in bounds), "the chosen token should cover part of the volume"
    idx = np.argwhere(d.heatmap > 0)
    assert idx.size
    for axis, (lo, hi) in enumerate(bounds):
        assert idx[:, axis].min() > lo and idx[:, axis].max() < hi
    # and outside the box there is nothing
    box = np.zeros(vol.shape, bool)
    sl = tuple(slice(int(np.ceil(lo)), int(np.floor(hi)) + 1) for lo, hi in bounds)
    box[sl] = True
    assert d.heatmap[~box].sum() == 0


def test_sections_are_split():
    f, i = split_sections("FINDINGS: Lungs clear.\nIMPRESSION: Normal.")
    assert (f, i) == ("Lungs clear.", "Normal.")
    assert split_sections("just text") == ("just text", "")


def test_mu2_draft_cli_writes_report_and_heatmap_on_the_input_grid(tmp_path, drafter):
    import SimpleITK as sitk

    from engine.cli import main

    vol = tiny_volume()
    src = tmp_path / "ct.nii.gz"
    sitk.WriteImage(vol.to_sitk(), str(src))
    out = tmp_path / "out"
    assert main(["draft", str(src), "--weights", str(drafter.weights_dir), "--out", str(out), "--max-new-tokens", "4"]) == 0
    assert (out / "report.txt").read_text().strip() == json.loads((out / "report.json").read_text())["text"].strip()
    ref, heat = sitk.ReadImage(str(src)), sitk.ReadImage(str(out / "heatmap.nii.gz"))
    assert heat.GetSize() == ref.GetSize()
    np.testing.assert_allclose(heat.GetSpacing(), ref.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(heat.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(heat.GetDirection(), ref.GetDirection(), atol=1e-6)


def test_mu2_draft_cli_on_bad_input_is_one_line(tmp_path, capsys, drafter):
    from engine.cli import main

    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    rc = main(["draft", str(tmp_path / "missing.nii.gz"), "--weights", str(drafter.weights_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("mu2:")
    rc = main(["draft", str(tmp_path), "--weights", str(tmp_path / "nowhere")])
    assert rc == 2 and capsys.readouterr().err.startswith("mu2:")
