"""training.demo (phantom training of the demo model), training.simulated_radiologist and the bundled model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.phantom import Finding, report_for
from training.findings import extract_detailed, findings_score
from training.simulated_radiologist import review_text

TRUTH = [
    Finding("Lung nodule", lobe="right upper lobe", size_mm=12.0),
    Finding("Pleural effusion", side="left", size_mm=25.0),
]


def _labels(text: str) -> dict[str, set]:
    out: dict[str, set] = {}
    for f in extract_detailed(text):
        out.setdefault(f.label, set()).add(f.laterality)
    return out


def test_radiologist_removes_false_adds_missed_and_fixes_the_side():
    rng = np.random.default_rng(1)
    draft = report_for(
        [
            Finding("Pleural effusion", side="right", size_mm=25.0),
            Finding("Consolidation", lobe="left lower lobe"),
        ],
        rng,
    )
    review = review_text(draft, TRUTH, rng=3)
    assert review.decision == "edited"
    assert review.false == ("Consolidation",)
    assert review.missing == ("Lung nodule",)
    assert review.misplaced == ("Pleural effusion",)
    final = _labels(review.final_text)
    assert set(final) == {"Lung nodule", "Pleural effusion"}
    assert final["Pleural effusion"] == {"left"}
    assert findings_score(report_for(TRUTH, np.random.default_rng(9)), review.final_text).score == 1.0


def test_radiologist_accepts_a_correct_draft_and_a_normal_one_unchanged():
    draft = report_for(TRUTH, np.random.default_rng(5))  # other wording, same findings
    review = review_text(draft, TRUTH, rng=0)
    assert (review.decision, review.final_text) == ("accepted", draft)
    normal = report_for([], np.random.default_rng(2))
    assert review_text(normal, [], rng=0).decision == "accepted"
    # a finding on a normal study is false: the normal report replaces the draft
    wrong = review_text(draft, [], rng=0)
    assert wrong.decision == "edited" and not any(_labels(wrong.final_text))


def test_radiologist_fixes_a_nodule_size():
    draft = report_for(
        [
            Finding("Lung nodule", lobe="right upper lobe", size_mm=28.0),
            Finding("Pleural effusion", side="left", size_mm=25.0),
        ],
        np.random.default_rng(0),
    )
    review = review_text(draft, TRUTH, rng=0)
    assert review.decision == "edited" and review.misassessed == ("Lung nodule",)


def test_lesion_target_points_at_the_lesion_cells():
    from tests.test_evaluate import _grid_map
    from training.demo import lesion_target, token_coverage

    gm = _grid_map(shape=(16, 32, 32), cell=(4, 8, 8))  # token grid (4, 4, 4), chunks of 8 slices
    mask = np.zeros((16, 32, 32), dtype=bool)
    mask[9:11, 2:4, 26:28] = True  # cell (2, 0, 3)
    cover = token_coverage(mask, gm)
    assert cover.shape == (gm.n_chunks, gm.tokens_per_chunk)
    assert gm.as_grid(cover)[2, 0, 3] == pytest.approx(8 / (4 * 8 * 8))
    assert cover.sum() == pytest.approx(cover.max())
    target = lesion_target(
        [Finding("Lung nodule", lobe="right upper lobe", size_mm=5.0)], [mask], gm, lesion_share=0.7
    )
    assert target.sum() == pytest.approx(1.0, abs=1e-6)
    grid = gm.as_grid(target)
    assert grid[2, 0, 3] == grid.max() and grid[3, 1, 2] == grid.max()  # the cell and its neighbours
    assert grid[0, 3, 0] == pytest.approx(0.3 / 64)
    assert lesion_target([Finding("Cardiomegaly")], [mask], gm) is None  # diffuse findings: no target


def test_demo_training_smoke_writes_a_loadable_demo_checkpoint(tmp_path):
    from engine.draft import Drafter
    from training.demo import DemoConfig, train_demo

    out = tmp_path / "demo"
    stats = train_demo(
        out, DemoConfig(n_train=3, vision_steps=2, epochs=1, batch_size=2, max_steps=2, workers=1)
    )
    assert stats["steps"] == 2
    assert set(stats["vision_final"]) >= {"probe", "depth", "study"}
    drafter = Drafter.from_pretrained(out, device="cpu")
    assert drafter.demo_model  # the card says "synthetic phantoms only"
    assert "token selection supervised with phantom lesion masks" in drafter.model_card.lower()
    cfg = drafter.model.config
    assert drafter.tokenizer.convert_ids_to_tokens(cfg.image_token_id) == "<im_patch>"
    from engine.phantom import make_phantom

    draft = drafter.draft(make_phantom(10_000_000).volume, max_new_tokens=4)
    assert draft.heatmap.shape == (64, 128, 128) and draft.heatmap.max() == pytest.approx(1.0)


def test_demo_sft_stage_keeps_the_vit_and_projector_frozen(tmp_path):
    import torch
    from safetensors.torch import load_file

    from training.demo import DemoConfig, build_demo_model, train_demo

    cfg = DemoConfig(n_train=2, vision_steps=0, epochs=1, batch_size=2, max_steps=2, workers=1, seed=3)
    fresh, _ = build_demo_model(cfg.seed)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    train_demo(tmp_path / "demo", cfg)
    after = load_file(str(tmp_path / "demo" / "model.safetensors"))
    frozen = [k for k in after if ".vision_tower." in k or ".mm_projector." in k]
    trained = [k for k in after if ".language_model." in k]
    assert frozen and trained
    for k in frozen:
        assert torch.equal(after[k], before[k]), k
    assert any(not torch.equal(after[k], before[k]) for k in trained)


def test_bundled_demo_model_is_labelled_and_small():
    from engine.weights import DEMO_DIR

    if not (DEMO_DIR / "config.json").exists():
        pytest.skip("no bundled demo model in engine/weights/demo")
    card = (DEMO_DIR / "README.md").read_text()
    assert "synthetic phantoms only" in card
    assert "not for clinical use" in card
    size = sum(f.stat().st_size for f in DEMO_DIR.glob("*.safetensors"))
    assert 0 < size <= 40 * 1024 * 1024


def test_balanced_probe_loss_weighs_rare_lesion_cells_like_the_rest():
    from training.demo import probe_loss

    kinds = torch.zeros(1, 100, 2)
    kinds[0, 0, 0] = 1.0  # one lesion cell of kind 0 among 100; kind 1 absent
    missed, found = torch.zeros(1, 100, 2), torch.zeros(1, 100, 2)
    missed[0, 0, 0], found[0, 0, 0] = -5.0, 5.0

    def cost_of_missing(balanced: bool) -> float:
        return float(probe_loss(missed, kinds, balanced) - probe_loss(found, kinds, balanced))

    # Balanced, the one lesion cell has a mean term of its own: missing it costs 2.5 here.
    assert cost_of_missing(True) > 2.0
    assert cost_of_missing(True) > 5 * cost_of_missing(False)


def test_green_ranked_pairs_are_scored_against_the_signed_off_report(tmp_path, monkeypatch):
    import training.prefs
    from engine.phantom import make_phantom
    from training.simulated_radiologist import _green_ranked_pairs

    seen = {}

    def fake_green_pairs(rows, drafter, n, temperature, top_p, scorer, seed, out_inputs=None):
        seen["answers"] = [r["answer"] for r in rows]
        return [{"input": "x", "question": "q", "chosen": "a", "rejected": "b", "source": "green"}]

    monkeypatch.setattr(training.prefs, "green_pairs", fake_green_pairs)
    phantoms = [make_phantom(s, shape=(16, 32, 32)) for s in (1, 2)]
    signed = ["the radiologist's first report", "the radiologist's second report"]
    path = _green_ranked_pairs(None, phantoms, signed, tmp_path, n=4, seed=0)
    # The department's reference is what the radiologist signed, never the phantom's ground-truth report.
    assert seen["answers"] == signed and signed[0] != phantoms[0].report
    assert path is not None and path.exists()
