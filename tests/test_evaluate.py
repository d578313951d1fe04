"""training.evaluate and training.metrics: paper-style BLEU-1 / ROUGE-L, the heatmap hit rate, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.helpers import tiny_checkpoint
from training.evaluate import cell_voxels, heatmap_hit, phantom_seeds, score_reports
from training.metrics import bleu1, porter_stem, rouge_l


def test_bleu1_is_brevity_penalty_times_clipped_unigram_precision():
    # hyp: the×2 (ref has 2), cat×2 (ref has 1) -> 3 of 4 unigrams match; c=4 < r=6 -> BP = exp(1 - 6/4)
    assert bleu1("the cat is on the mat", "the cat the cat") == pytest.approx(0.75 * math.exp(-0.5))
    assert bleu1("No pleural effusion.", "no PLEURAL   effusion.") == pytest.approx(
        1.0
    )  # lower-cased, spaces
    assert bleu1("a b c", "x y") == 0.0
    assert bleu1("a b c", "") == 0.0
    # a longer hypothesis has no brevity penalty: 2 of 4 unigrams match
    assert bleu1("a b", "a b c d") == pytest.approx(0.5)


def test_rouge_l_is_the_lcs_f_measure_on_stemmed_tokens():
    # LCS(the cat sat on the mat, the cat on a mat) = the cat on mat = 4; P = 4/5, R = 4/6
    p, r = 4 / 5, 4 / 6
    assert rouge_l("the cat sat on the mat", "the cat on a mat") == pytest.approx(2 * p * r / (p + r))
    # punctuation is dropped and words longer than 3 letters are Porter-stemmed
    assert rouge_l("Nodules observed.", "nodule, observing") == pytest.approx(1.0)
    assert rouge_l("", "anything") == 0.0


@pytest.mark.parametrize(
    ("word", "stem"),
    [
        ("caresses", "caress"),
        ("ponies", "poni"),
        ("relational", "relat"),
        ("generalizations", "gener"),
        ("running", "run"),
        ("happy", "happi"),
        ("dying", "die"),
        ("hopeful", "hope"),
        ("effusion", "effus"),
        ("consolidation", "consolid"),
        ("controlling", "control"),
        ("agreed", "agre"),
    ],
)
def test_porter_stem_matches_nltk(word, stem):
    assert porter_stem(word) == stem


def _grid_map(shape=(16, 32, 32), cell=(4, 8, 8)):
    from engine.gridmap import GridMap

    return GridMap(
        volume_shape=shape,
        axes=(0, 1, 2),
        flips=(False, False, False),
        crop_start=(0, 0, 0),
        crop_stop=shape,
        resized=shape,
        cube=shape,
        chunk_depth=8,
        cell=cell,
    )


def test_heatmap_hit_counts_a_peak_within_one_token_cell_of_the_lesion():
    gm = _grid_map()
    cell = cell_voxels(gm)
    assert cell == (4, 8, 8)
    mask = np.zeros((16, 32, 32), dtype=bool)
    mask[5:7, 10:12, 20:22] = True
    heat = np.zeros(mask.shape, dtype=np.float32)
    heat[6, 11, 21] = 1.0  # inside
    assert heatmap_hit(heat, mask, cell)
    heat[:] = 0
    heat[6, 11, 21 + 7] = 1.0  # 7 voxels beyond the lesion's last column: within one cell (8)
    assert heatmap_hit(heat, mask, cell)
    heat[:] = 0
    heat[6, 11, 30] = 1.0  # 9 voxels away: outside the dilated mask
    assert not heatmap_hit(heat, mask, cell)
    heat[:] = 0
    heat[15, 0, 0] = 1.0
    assert not heatmap_hit(heat, mask, cell)


def test_score_reports_counts_findings_and_treats_normal_agreement_as_one():
    from engine.phantom import Finding, report_for

    rng = np.random.default_rng(0)
    normal = report_for([], rng)
    effusion = report_for([Finding("Pleural effusion", side="left", size_mm=20.0)], rng)
    both = report_for(
        [
            Finding("Pleural effusion", side="left", size_mm=20.0),
            Finding("Lung nodule", lobe="right upper lobe", size_mm=10.0),
        ],
        rng,
    )
    out = score_reports([normal, effusion, both], [report_for([], rng), both, effusion])
    # case 1 normal/normal = 1; case 2: 1 matched + 1 false = 0.5; case 3: 1 matched + 1 missing = 0.5
    assert out["green_style"] == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    assert out["green_style_abnormal"] == pytest.approx(0.5)
    assert out["normal_agreement"] == 1.0
    # tp = 2 (effusion twice), fp = 1 (nodule in case 2), fn = 1 (nodule in case 3)
    assert out["finding_precision"] == pytest.approx(2 / 3)
    assert out["finding_recall"] == pytest.approx(2 / 3)
    assert out["finding_f1"] == pytest.approx(2 / 3)
    assert out["n"] == 3


def test_phantom_seed_splits_never_overlap():
    train, held_out, review = (set(phantom_seeds(s, 1000, 3)) for s in ("train", "eval", "review"))
    assert not train & held_out and not train & review and not held_out & review
    assert min(held_out) >= 10_000_000
    with pytest.raises(ValueError):
        phantom_seeds("test", 3)


def test_cli_json_on_a_tiny_checkpoint(tmp_path, capsys):
    from training.evaluate import main

    ckpt = tiny_checkpoint(tmp_path / "tiny")
    assert main(["--model", str(ckpt), "--phantoms", "2", "--json", "--max-new-tokens", "6"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in (
        "green_style",
        "finding_f1",
        "finding_precision",
        "finding_recall",
        "heatmap_hit_rate",
        "bleu1",
        "rouge_l",
        "n",
    ):
        assert key in out
    assert out["n"] == 2
    assert out["heatmap_hit_rate"] is None or 0.0 <= out["heatmap_hit_rate"] <= 1.0


def test_cli_rejects_a_missing_model(tmp_path, capsys):
    from training.evaluate import main

    assert main(["--model", str(tmp_path / "nope"), "--phantoms", "1", "--json"]) == 2
    assert "does not exist" in capsys.readouterr().err
