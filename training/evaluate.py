"""Evaluate a Mu2 checkpoint on phantoms or on a manifest.

``python -m training.evaluate [--model DIR] (--phantoms N [--seed S] | --data MANIFEST) [--json]
[--max-new-tokens N]``

Metrics (``evaluate_model``):

* ``finding_precision`` / ``finding_recall`` / ``finding_f1``: ``training.findings.extract`` on the
  reference and on the draft, micro-averaged over the 18 CT-RATE labels;
* ``green_style``: the mean offline GREEN-style finding score (``training.findings.findings_score``;
  not GREEN). GREEN scores a pair without matched findings 0, so two normal reports would score 0 and
  the 20% normal phantoms would cap the mean at 0.8; here a normal draft of a normal study scores 1
  instead (a false finding on a normal study still scores 0). ``green_style_abnormal`` is the plain
  mean over studies whose reference has a finding, ``normal_agreement`` the share of normal studies
  drafted normal;
* ``bleu1`` / ``rouge_l``: as the paper's scripts compute them (``training.metrics``), in [0, 1];
* phantoms only, ``heatmap_hit_rate``: the share of focal findings (``FOCAL_KINDS``) whose heatmap
  maximum (the argmax of ``Draft.heatmap``) lies in the finding's mask dilated by one token cell.

Phantom seeds come from disjoint ranges (``phantom_seeds``): training ``S·100000 + i``, evaluation
``10_000_000 + S·100000 + i``, closed-loop reviews ``20_000_000 + S·100000 + i``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.errors import Mu2Error

log = logging.getLogger(__name__)

#: Findings with a local lesion (the heatmap hit rate counts these); cardiomegaly and emphysema are diffuse.
FOCAL_KINDS = frozenset(
    {
        "Lung nodule",
        "Consolidation",
        "Atelectasis",
        "Lymphadenopathy",
        "Pleural effusion",
        "Pericardial effusion",
        "Arterial wall calcification",
        "Coronary artery wall calcification",
    }
)
SPLIT_BASES = {"train": 0, "eval": 10_000_000, "review": 20_000_000}
SPLIT_STRIDE = 100_000


def phantom_seeds(split: str, n: int, seed: int = 0) -> list[int]:
    """``n`` phantom seeds of ``split`` (``train`` | ``eval`` | ``review``); the splits never overlap."""
    if split not in SPLIT_BASES:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(SPLIT_BASES)}")
    if not 0 <= n <= SPLIT_STRIDE or not 0 <= seed < 100:
        raise ValueError(f"need 0 <= n <= {SPLIT_STRIDE} and 0 <= seed < 100, got n={n}, seed={seed}")
    start = SPLIT_BASES[split] + seed * SPLIT_STRIDE
    return list(range(start, start + n))


def cell_voxels(grid_map) -> tuple[int, int, int]:
    """Size of one token cell in voxels of the original volume, per volume axis ``(z, y, x)``."""
    out = [1, 1, 1]
    for a in range(3):
        cells = grid_map.cell_index(a)
        cells = cells[cells >= 0]
        out[grid_map.axes[a]] = int(np.bincount(cells).max()) if cells.size else 1
    return tuple(out)  # type: ignore[return-value]


def heatmap_hit(heatmap: np.ndarray, mask: np.ndarray, cell: Sequence[int]) -> bool:
    """Whether the heatmap's maximum lies in ``mask`` dilated by one token cell (``cell`` voxels per axis)."""
    if heatmap.shape != mask.shape:
        raise ValueError(f"heatmap {heatmap.shape} and mask {mask.shape} differ in shape")
    peak = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    # Dilating the mask by a box of ±cell and testing the peak = looking for mask voxels within ±cell of it.
    box = tuple(slice(max(p - c, 0), p + c + 1) for p, c in zip(peak, cell))
    return bool(mask[box].any())


def _is_normal(labels: dict[str, bool]) -> bool:
    return not any(labels.values())


def score_reports(references: Sequence[str], drafts: Sequence[str]) -> dict:
    """Text metrics of drafts against references (everything but the heatmap hit rate)."""
    from training.findings import extract, findings_score
    from training.metrics import mean_bleu1, mean_rouge_l

    tp = fp = fn = 0
    green, abnormal, normal_ok, n_normal = [], [], 0, 0
    for ref, hyp in zip(references, drafts):
        r, h = extract(ref), extract(hyp)
        tp += sum(r[k] and h[k] for k in r)
        fp += sum(h[k] and not r[k] for k in r)
        fn += sum(r[k] and not h[k] for k in r)
        if _is_normal(r):
            n_normal += 1
            normal_ok += _is_normal(h)
            green.append(1.0 if _is_normal(h) else 0.0)
        else:
            s = findings_score(ref, hyp).score
            green.append(s)
            abnormal.append(s)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "n": len(green),
        "green_style": float(np.mean(green)) if green else 0.0,
        "green_style_abnormal": float(np.mean(abnormal)) if abnormal else None,
        "normal_agreement": normal_ok / n_normal if n_normal else None,
        "finding_precision": precision,
        "finding_recall": recall,
        "finding_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "bleu1": mean_bleu1(references, drafts),
        "rouge_l": mean_rouge_l(references, drafts),
    }


def evaluate_model(drafter, items: Sequence, max_new_tokens: int = 256, return_cases: bool = False) -> dict:
    """Draft every item and score the drafts.

    Parameters
    ----------
    drafter : engine.draft.Drafter
    items : sequence of ``engine.phantom.Phantom`` or manifest rows (``volume`` path, ``answer``, optional
        ``question``). Phantoms also give the heatmap hit rate.
    max_new_tokens : int
        Decoding budget per draft (greedy decoding).
    return_cases : bool
        Add ``cases``: per item the reference, the draft and the hits.

    Returns
    -------
    dict
        ``score_reports``' metrics plus ``heatmap_hit_rate`` (None without phantoms) and ``n_focal``.
    """
    from tqdm import tqdm

    from engine.volume import load_volume

    refs, drafts, cases = [], [], []
    hits = n_focal = 0
    for item in tqdm(items, desc="drafting", disable=len(items) < 4):
        if isinstance(item, dict):
            volume, ref, question = load_volume(item["volume"]), item["answer"], item.get("question")
        else:
            volume, ref, question = item.volume, item.report, None
        d = drafter.draft(volume, question, max_new_tokens=max_new_tokens)
        refs.append(ref)
        drafts.append(d.text)
        case = {"case_id": volume.case_id, "reference": ref, "draft": d.text, "hits": []}
        if not isinstance(item, dict):
            cell = cell_voxels(d.model_input.grid_map)
            for f, m in zip(item.findings, item.masks):
                if f.kind in FOCAL_KINDS:
                    hit = heatmap_hit(d.heatmap, m, cell)
                    hits += hit
                    n_focal += 1
                    case["hits"].append((f.kind, hit))
        cases.append(case)
    out = score_reports(refs, drafts)
    out["heatmap_hit_rate"] = hits / n_focal if n_focal else None
    out["n_focal"] = n_focal
    if return_cases:
        out["cases"] = cases
    return out


def eval_phantoms(n: int, seed: int = 0):
    """The held-out evaluation phantoms (``phantom_seeds('eval', n, seed)``)."""
    from engine.phantom import make_phantom

    return [make_phantom(s) for s in phantom_seeds("eval", n, seed)]


def format_table(
    rows: dict[str, dict],
    keys: Sequence[str] = (
        "green_style",
        "green_style_abnormal",
        "finding_f1",
        "finding_precision",
        "finding_recall",
        "heatmap_hit_rate",
        "bleu1",
        "rouge_l",
        "n",
    ),
) -> str:
    """A Markdown table: one column per result in ``rows`` (name → metrics)."""
    names = list(rows)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k in keys:
        vals = []
        for name in names:
            v = rows[name].get(k)
            vals.append("–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)))
        lines.append(f"| {k} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="Mu2 checkpoint folder (default: the bundled demo model)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--phantoms", type=int, metavar="N", help="evaluate on N held-out phantoms")
    src.add_argument(
        "--data", metavar="MANIFEST", help="JSONL/CSV manifest: volume, answer, question (optional)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="which block of held-out phantom seeds (default 0)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: at most 2)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO, format="%(message)s")
    try:
        import torch

        from engine.draft import Drafter

        torch.set_num_threads(args.threads or min(2, torch.get_num_threads()))
        drafter = Drafter.from_pretrained(args.model, device=args.device)
        if args.phantoms is not None:
            items = eval_phantoms(args.phantoms, args.seed)
        else:
            from training.data import read_manifest

            items = read_manifest(args.data)
        result = evaluate_model(drafter, items, max_new_tokens=args.max_new_tokens)
    except (Mu2Error, ValueError) as err:
        print(f"training.evaluate: {err}", file=sys.stderr)
        return 2
    result["model"] = str(Path(drafter.weights_dir))
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table({drafter.model_id: result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
