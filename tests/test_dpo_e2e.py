"""Reviews → preference pairs → trl DPO → a checkpoint the Drafter loads, on a tiny model."""

import json

import pytest

from engine.draft import Drafter
from engine.review import ReviewStore
from tests.helpers import tiny_checkpoint, tiny_volume


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    ckpt = tiny_checkpoint(root / "tiny")
    drafter = Drafter.from_pretrained(ckpt)
    store = ReviewStore(root / "reviews")
    for i in range(3):
        vol = tiny_volume(seed=i)
        vol.case_id = f"c-{i}"
        draft = drafter.draft(vol, max_new_tokens=8)
        final = "FINDINGS: no nodule . IMPRESSION: normal lungs ."
        store.record(draft, final, "edited" if draft.text.strip() != final else "accepted", reviewer="dr-a")
    return root, ckpt


def test_pairs_from_reviews(reviewed):
    from training.prefs import pairs_from_reviews

    root, _ = reviewed
    pairs = pairs_from_reviews(root / "reviews")
    assert len(pairs) == 3
    assert {p["source"] for p in pairs} == {"review-edit"}
    assert all(p["chosen"].startswith("FINDINGS") and p["chosen"] != p["rejected"] for p in pairs)


def test_dpo_trains_on_reviews_and_the_drafter_loads_the_result(reviewed):
    from training.dpo import main

    root, ckpt = reviewed
    out = root / "dpo"
    rc = main(["--prefs", str(root / "reviews"), "--model", str(ckpt), "--out", str(out), "--max_steps", "2",
               "--learning_rate", "1e-3", "--save_strategy", "no"])
    assert rc == 0
    assert (out / "model.safetensors").exists() and json.loads((out / "config.json").read_text())["model_type"] == "mu2"
    before = Drafter.from_pretrained(ckpt)
    after = Drafter.from_pretrained(out)
    assert before.weights_hash != after.weights_hash
    draft = after.draft(tiny_volume(seed=9), max_new_tokens=6)
    assert draft.n_tokens > 0


def test_dpo_refuses_bad_input_before_training(tmp_path, reviewed, capsys):
    from training.dpo import main

    _, ckpt = reviewed
    bad = tmp_path / "prefs.jsonl"
    bad.write_text('{"input": "x", "question": "q", "chosen": "a", "rejected": "b"}\nnot json\n')
    assert main(["--prefs", str(bad), "--model", str(ckpt), "--out", str(tmp_path / "o")]) == 2
    assert "line 2" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["--prefs", str(empty), "--model", str(ckpt), "--out", str(tmp_path / "o")]) == 2
    assert "no preference pairs" in capsys.readouterr().err
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"input": "deadbeef", "question": "q", "chosen": "a", "rejected": "b"}\n')
    assert main(["--prefs", str(missing), "--model", str(ckpt), "--out", str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err
