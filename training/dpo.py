"""DPO on preference sets: ``python -m training.dpo --prefs PATH [--prefs PATH ...] --model DIR --out DIR``.

``PATH`` is a reviews folder (pairs are built from its records) or a preference JSONL. Any ``DPOConfig``
option may follow (``--max-steps``, ``--beta``, ``--learning-rate`` …). Defaults from the paper's code:
β 0.1, learning rate 4e-6. Reference log-probs are precomputed (no second model in memory). Runs unchanged
under ``accelerate launch``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.errors import Mu2Error, Mu2InputError

log = logging.getLogger(__name__)


@dataclass
class DPOScriptArguments:
    model: str = field(default="", metadata={"help": "Mu2 checkpoint folder to improve (default: bundled demo)"})
    out: str = field(default="dpo-out", metadata={"help": "folder for the new checkpoint"})
    prefs: list[str] = field(default_factory=list, metadata={"help": "reviews folder(s) or preference JSONL(s)"})


def collect_pairs(paths: list[str]) -> tuple[list[dict], list[Path]]:
    """All pairs of ``paths`` plus the folders where their input fingerprints live; fails before training."""
    from training.prefs import pairs_from_reviews, read_pairs

    pairs, search = [], []
    if not paths:
        raise Mu2InputError("no --prefs given: pass a reviews folder or a preference JSONL")
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            if not (p / "reviews.jsonl").exists():
                raise Mu2InputError(f"{p} is a folder without reviews.jsonl: not a reviews folder")
            pairs += pairs_from_reviews(p)
            search.append(p / "inputs")
        elif p.is_file():
            pairs += read_pairs(p)
            search += [p.parent / "inputs", p.parent]
        else:
            raise Mu2InputError(f"--prefs {p} does not exist")
    if not pairs:
        raise Mu2InputError(
            f"no preference pairs in {', '.join(paths)}: edited or corrected-and-rejected reviews make pairs; "
            "accepted drafts need ranked samples"
        )
    for pair in pairs:
        ref = pair["input"]
        if not any((Path(d) / f"{ref}.npz").exists() for d in search) and not Path(ref).exists():
            raise Mu2InputError(f"the input {ref!r} of a preference pair is missing (looked in {', '.join(map(str, search))})")
    return pairs, search


def to_dataset(pairs: list[dict], config):
    """trl's standard prompt/chosen/rejected columns; the prompt is the official image + question layout."""
    from datasets import Dataset

    from engine.text import IMAGE_TOKEN

    rows = {"prompt": [], "chosen": [], "rejected": [], "input": [], "question": []}
    for p in pairs:
        rows["prompt"].append(IMAGE_TOKEN * config.num_image_tokens + p["question"])
        rows["chosen"].append(" " + p["chosen"].strip())
        rows["rejected"].append(" " + p["rejected"].strip())
        rows["input"].append(p["input"])
        rows["question"].append(p["question"])
    return Dataset.from_dict(rows)


def make_config(out: str, **overrides):
    from trl import DPOConfig

    cpu = not torch.cuda.is_available()
    kw = dict(
        output_dir=str(Path(out) / "trainer"),
        beta=0.1,
        learning_rate=4e-6,
        per_device_train_batch_size=1,
        precompute_ref_log_probs=True,
        remove_unused_columns=False,
        logging_steps=1,
        save_strategy="steps",
        save_steps=50,
        save_total_limit=2,
        report_to=[],
        bf16=not cpu and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=False,
        use_cpu=cpu,
        dataloader_num_workers=0,
    )
    kw.update(overrides)
    return DPOConfig(**kw)


def train_dpo(model, tokenizer, pairs, search, args, out: str | Path):
    """Run trl's DPOTrainer with Mu2's collator and save a Mu2 checkpoint folder to ``out``."""
    from transformers.trainer_utils import get_last_checkpoint
    from trl import DPOTrainer

    from engine.checkpoint import save_checkpoint
    from engine.preprocess import PrepSpec
    from training.data import PreferenceCollator

    collator = PreferenceCollator(
        pad_token_id=tokenizer.pad_token_id, tokenizer=tokenizer,
        spec=PrepSpec.from_dict(model.config.preprocess), search=search, max_length=args.max_length,
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=to_dataset(pairs, model.config),
        processing_class=tokenizer,
        data_collator=collator,
    )
    resume = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    trainer.train(resume_from_checkpoint=resume)
    if trainer.is_world_process_zero():
        save_checkpoint(trainer.model, tokenizer, out, notes=f"DPO on {len(pairs)} preference pairs (`python -m training.dpo`).")
    return trainer


def _split_prefs(argv: list[str]) -> tuple[list[str], list[str]]:
    prefs, rest, i = [], [], 0
    while i < len(argv):
        if argv[i] == "--prefs":
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                prefs.append(argv[i])
                i += 1
        else:
            rest.append(argv[i])
            i += 1
    return prefs, rest


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser
    from trl import DPOConfig

    from engine.checkpoint import load_tokenizer
    from engine.model import Mu2ForConditionalGeneration

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    prefs, rest = _split_prefs(argv)
    parser = HfArgumentParser((DPOScriptArguments, DPOConfig))
    defaults = make_config("dpo-out")
    parser.set_defaults(**{k: getattr(defaults, k) for k in (
        "beta", "learning_rate", "precompute_ref_log_probs", "remove_unused_columns", "logging_steps", "save_steps",
        "save_total_limit", "report_to", "bf16", "gradient_checkpointing", "use_cpu", "per_device_train_batch_size")})
    if "--output_dir" not in rest and "--output-dir" not in rest:
        out = rest[rest.index("--out") + 1] if "--out" in rest else "dpo-out"
        rest += ["--output_dir", str(Path(out) / "trainer")]
    script, args = parser.parse_args_into_dataclasses(args=rest)
    args.remove_unused_columns = False
    try:
        pairs, search = collect_pairs(prefs)
        if script.model:
            model_dir = script.model
        else:
            from engine.weights import demo_weights_dir

            model_dir = demo_weights_dir()
        model = Mu2ForConditionalGeneration.from_pretrained(model_dir)
        tokenizer = load_tokenizer(model_dir)
    except Mu2Error as err:
        print(f"training.dpo: {err}", file=sys.stderr)
        return 2
    counts = {}
    for p in pairs:
        counts[p["source"]] = counts.get(p["source"], 0) + 1
    log.info("training on %d pairs: %s", len(pairs), counts)
    train_dpo(model, tokenizer, pairs, search, args, script.out)
    print(f"saved {script.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
