"""Preference sets (DESIGN.md §4) from reviews and from GREEN-ranked samples.

``python -m training.prefs reviews --reviews DIR --out FILE``
``python -m training.prefs green --data MANIFEST --model DIR --n 8 --temperature 1.0 --top-p 0.9
(--judge DIR | --scorer findings) --out FILE``

Each output line: ``input`` (fingerprint or path), ``question``, ``chosen``, ``rejected``, ``source``
(``review-edit`` | ``review-reject`` | ``review-accept`` | ``green``), and ``scores``/``margin`` when ranked.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path

from engine.errors import Mu2Error, Mu2InputError

log = logging.getLogger(__name__)


def pairs_from_reviews(root: str | Path, samples: dict[str, list[tuple[str, float]]] | None = None) -> list[dict]:
    """Pairs from the newest review of each case (corrections supersede older records).

    * ``edited``: chosen = the radiologist's final text, rejected = the draft (``review-edit``);
    * ``rejected`` with a corrected text: the same (``review-reject``); without one there is nothing to prefer;
    * ``accepted``: chosen = the draft against the worst GREEN-ranked sample of that input, when ``samples``
      (fingerprint → [(text, score)]) has some (``review-accept``).
    """
    from engine.review import ReviewStore

    store = ReviewStore(root)
    pairs = []
    for rec in store.latest_by_case().values():
        final, draft = (rec.final_text or "").strip(), (rec.draft_text or "").strip()
        base = {"input": rec.fingerprint, "question": rec.question, "review_id": rec.review_id}
        if rec.decision in ("edited", "rejected") and final and final != draft:
            source = "review-edit" if rec.decision == "edited" else "review-reject"
            pairs.append(base | {"chosen": final, "rejected": draft, "source": source})
        elif rec.decision == "accepted" and samples and samples.get(rec.fingerprint):
            worst_text, worst_score = min(samples[rec.fingerprint], key=lambda s: s[1])
            if worst_text.strip() != draft:
                pairs.append(base | {"chosen": draft, "rejected": worst_text, "source": "review-accept",
                                     "scores": {"rejected": worst_score}})
    return pairs


def rank_samples(samples: list[str], scores: list[float]) -> tuple[int, int] | None:
    """(best, worst) indices, or None when the best score is 0 or best and worst tie (the official filter)."""
    if not samples:
        return None
    best = max(range(len(scores)), key=lambda i: scores[i])
    worst = min(range(len(scores)), key=lambda i: scores[i])
    if scores[best] <= 0 or scores[best] == scores[worst]:
        return None
    return best, worst


def write_pairs(pairs: list[dict], out: str | Path) -> Counter:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as fh:
        for p in pairs:
            fh.write(json.dumps(p, ensure_ascii=False) + "\n")
    return Counter(p["source"] for p in pairs)


def read_pairs(path: str | Path) -> list[dict]:
    """Read a preference JSONL, naming the line of any malformed entry."""
    path = Path(path)
    pairs = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise Mu2InputError(f"{path} line {i} is not valid JSON ({err.msg})") from err
        missing = [k for k in ("input", "question", "chosen", "rejected") if not isinstance(row.get(k), str) or not row[k]]
        if missing:
            raise Mu2InputError(f"{path} line {i} lacks {', '.join(missing)}")
        if row["chosen"].strip() == row["rejected"].strip():
            raise Mu2InputError(f"{path} line {i}: chosen and rejected are identical")
        row.setdefault("source", "unknown")
        pairs.append(row)
    return pairs


def green_pairs(rows: list[dict], drafter, n: int, temperature: float, top_p: float, scorer, seed: int = 0,
                out_inputs: Path | None = None) -> list[dict]:
    """Sample ``n`` drafts per case, score them against the reference, keep best vs. worst."""
    from engine.draft import Sampling
    from engine.volume import load_volume

    pairs = []
    for r_i, row in enumerate(rows):
        volume = load_volume(row["volume"])
        question = row.get("question") or drafter.default_question
        texts, fingerprint = [], None
        for k in range(n):
            d = drafter.draft(volume, question, sampling=Sampling(True, temperature, top_p, seed=seed + 1000 * r_i + k))
            texts.append(d.text)
            fingerprint = d.fingerprint
            if out_inputs is not None and k == 0:
                _save_input(d.model_input, out_inputs)
        scores = scorer([row["answer"]] * n, texts)
        picked = rank_samples(texts, scores)
        if picked is None:
            continue
        b, w = picked
        ref = fingerprint if out_inputs is not None else row["volume"]
        pairs.append({"input": ref, "question": question, "chosen": texts[b], "rejected": texts[w], "source": "green",
                      "scores": {"chosen": scores[b], "rejected": scores[w]}, "margin": scores[b] - scores[w]})
    return pairs


def _save_input(model_input, folder: Path) -> None:
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{model_input.fingerprint}.npz"
    if not path.exists():
        np.savez_compressed(path, pixels=model_input.pixels)


def findings_scorer(refs: list[str], hyps: list[str]) -> list[float]:
    from training.findings import findings_score

    return [findings_score(r, h).score for r, h in zip(refs, hyps)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.prefs", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    rv = sub.add_parser("reviews", help="pairs from a review folder")
    rv.add_argument("--reviews", required=True)
    rv.add_argument("--out", required=True)
    gr = sub.add_parser("green", help="pairs from GREEN-ranked samples")
    gr.add_argument("--data", required=True, help="manifest (volume, question, answer)")
    gr.add_argument("--model", help="Mu2 checkpoint folder (default: bundled demo)")
    gr.add_argument("--n", type=int, default=8)
    gr.add_argument("--temperature", type=float, default=1.0)
    gr.add_argument("--top-p", type=float, default=0.9)
    gr.add_argument("--seed", type=int, default=0)
    who = gr.add_mutually_exclusive_group(required=True)
    who.add_argument("--judge", help="local GREEN judge model folder")
    who.add_argument("--scorer", choices=["findings"], help="offline GREEN-style finding score (not GREEN)")
    gr.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.cmd == "reviews":
            pairs = pairs_from_reviews(args.reviews)
        else:
            from engine.draft import Drafter
            from training.data import read_manifest

            rows = read_manifest(args.data)
            drafter = Drafter.from_pretrained(args.model)
            if args.judge:
                from training.green import GreenJudge

                judge = GreenJudge.from_pretrained(args.judge)

                def scorer(refs, hyps):
                    return [r.score if r.score is not None else 0.0 for r in judge.score(refs, hyps)]
            else:
                scorer = findings_scorer
            pairs = green_pairs(rows, drafter, args.n, args.temperature, args.top_p, scorer, args.seed,
                                out_inputs=Path(args.out).parent / "inputs")
        counts = write_pairs(pairs, args.out)
    except Mu2Error as err:
        print(f"training.prefs: {err}", file=sys.stderr)
        return 2
    print(f"wrote {sum(counts.values())} pairs to {args.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
