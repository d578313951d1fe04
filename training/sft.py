"""Supervised fine-tuning: ``python -m training.sft --data MANIFEST --model DIR --out DIR [TrainingArguments]``.

Runs unchanged under ``accelerate launch`` (transformers' Trainer handles DDP/FSDP/DeepSpeed).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.errors import Mu2Error

log = logging.getLogger(__name__)


@dataclass
class SFTScriptArguments:
    data: str = field(metadata={"help": "manifest (JSONL/CSV: volume, question, answer)"})
    model: str = field(metadata={"help": "Mu2 checkpoint folder to start from"})
    out: str = field(metadata={"help": "folder for the fine-tuned checkpoint"})
    freeze_vision: bool = field(default=False, metadata={"help": "freeze ViT3D + projector"})
    freeze_llm: bool = field(default=False, metadata={"help": "freeze the language model (train the vision side)"})
    lora: bool = field(default=False, metadata={"help": "LoRA on the LM attention/MLP (needs peft)"})
    lora_r: int = 16


def freeze(model, vision: bool = False, llm: bool = False) -> None:
    if vision:
        model.model.vision_tower.requires_grad_(False)
        model.model.mm_projector.requires_grad_(False)
    if llm:
        model.model.language_model.requires_grad_(False)
        model.lm_head.requires_grad_(False)


def apply_lora(model, r: int = 16):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise Mu2Error("--lora needs peft: pip install 'mu2-napari[lora]'") from err
    cfg = LoraConfig(
        r=r, lora_alpha=2 * r, lora_dropout=0.05,
        target_modules=r"model\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        modules_to_save=["u2tokenizer", "mm_projector"],
    )
    return get_peft_model(model, cfg)


def train_sft(model, tokenizer, examples, args, out: str | Path, eval_examples=None):
    """Train ``model`` on ``examples`` with transformers' Trainer; save a Mu2 folder to ``out``."""
    from transformers import Trainer

    from engine.checkpoint import save_checkpoint
    from training.data import SFTCollator, SFTDataset

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=SFTDataset(examples, tokenizer, model.config),
        eval_dataset=SFTDataset(eval_examples, tokenizer, model.config) if eval_examples else None,
        data_collator=SFTCollator(tokenizer.pad_token_id),
    )
    trainer.train(resume_from_checkpoint=_last_checkpoint(args.output_dir))
    if trainer.is_world_process_zero():
        final = trainer.model
        if hasattr(final, "merge_and_unload"):
            final = final.merge_and_unload()
        save_checkpoint(final, tokenizer, out, notes="Fine-tuned with `python -m training.sft`.")
    return trainer


def _last_checkpoint(output_dir: str):
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None


def default_training_args(out: str, **overrides):
    from transformers import TrainingArguments

    cpu = not torch.cuda.is_available()
    kw = dict(
        output_dir=str(Path(out) / "trainer"),
        per_device_train_batch_size=1,
        learning_rate=2e-5,
        num_train_epochs=1,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        bf16=not cpu and torch.cuda.is_bf16_supported(),
        use_cpu=cpu,
        dataloader_num_workers=0,
    )
    kw.update(overrides)
    return TrainingArguments(**kw)


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser, TrainingArguments

    from engine.checkpoint import load_tokenizer
    from engine.model import Mu2ForConditionalGeneration
    from engine.preprocess import PrepSpec, prepare
    from engine.volume import load_volume
    from training.data import Example, read_manifest

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if "--output_dir" not in argv and "--output-dir" not in argv:
        out_i = argv.index("--out") + 1 if "--out" in argv else None
        argv = argv + ["--output_dir", str(Path(argv[out_i]) / "trainer") if out_i else "sft-trainer"]
    parser = HfArgumentParser((SFTScriptArguments, TrainingArguments))
    defaults = default_training_args("sft-out")
    parser.set_defaults(**{k: getattr(defaults, k) for k in (
        "per_device_train_batch_size", "learning_rate", "logging_steps", "save_strategy", "report_to", "bf16",
        "use_cpu", "dataloader_num_workers")})
    script, targs = parser.parse_args_into_dataclasses(args=argv)
    targs.remove_unused_columns = False
    try:
        rows = read_manifest(script.data)
        model = Mu2ForConditionalGeneration.from_pretrained(script.model)
        tokenizer = load_tokenizer(script.model)
        spec = PrepSpec.from_dict(model.config.preprocess)
        examples = [
            Example(prepare(load_volume(r["volume"]), spec).pixels, r.get("question") or model.config.default_question,
                    r["answer"], r["volume"])
            for r in rows
        ]
    except Mu2Error as err:
        print(f"training.sft: {err}", file=sys.stderr)
        return 2
    freeze(model, script.freeze_vision, script.freeze_llm)
    if script.lora:
        model = apply_lora(model, script.lora_r)
    train_sft(model, tokenizer, examples, targs, script.out)
    print(f"saved {script.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
