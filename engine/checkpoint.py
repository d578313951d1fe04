"""Checkpoint folders: our format (safetensors only) and converters for the published formats.

* Mu2 folder: ``config.json`` (model_type ``mu2``), ``model.safetensors`` (sharded allowed), tokenizer files,
  ``generation_config.json``, ``README.md`` (model card).
* Official μ²LLM folder (model_type ``u2llama``, official key names): read without remote code.
* Fresh model from M3D-CLIP ViT weights (``pretrained_ViT.bin``) plus a local Llama/Qwen HF folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from engine.errors import Mu2CheckpointError
from engine.official import u2tokenizer_from_official  # noqa: F401  (public re-export)

log = logging.getLogger(__name__)

MODEL_CARD = """---
license: other
tags: [mu2, radiology, ct, report-generation]
---
# {name}

Mu2 checkpoint (ViT3D → μ²Tokenizer → {lm}), preset `{preset}`.

{notes}

Not a medical device. Drafts must be reviewed by a radiologist.
"""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise Mu2CheckpointError(f"cannot read {path}: {err}") from err


def check_folder(path: str | Path) -> Path:
    """Validate that ``path`` looks like a checkpoint folder; raise a helpful error otherwise."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise Mu2CheckpointError(f"weights folder {folder} does not exist; choose a Mu2 checkpoint folder")
    if not folder.is_dir():
        raise Mu2CheckpointError(f"{folder} is a file; choose the checkpoint folder that holds config.json")
    if not (folder / "config.json").exists():
        raise Mu2CheckpointError(
            f"{folder} has no config.json: it is not a Mu2 or μ²LLM checkpoint folder "
            "(make one with `mu2 new-checkpoint` or train one with `python -m training.sft`)"
        )
    if list(folder.glob("*.pkl")) or (list(folder.glob("*.bin")) and not list(folder.glob("*.safetensors"))):
        if _read_json(folder / "config.json").get("model_type") == "mu2":
            raise Mu2CheckpointError(f"{folder} holds pickled weights; Mu2 folders use safetensors only")
    return folder


def load_state_dict_files(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder: safetensors (memory-mapped) or, for published formats, ``.bin`` read safely."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    if files:
        for f in files:
            state.update(load_file(str(f)))
        return state
    bins = sorted(folder.glob("*.bin"))
    if not bins:
        raise Mu2CheckpointError(f"{folder} has no *.safetensors or *.bin weight files")
    for f in bins:
        state.update(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
    return state


def load_pretrained(cls, path, *args, **kwargs):
    """``Mu2ForConditionalGeneration.from_pretrained``: our folders, and official ``u2llama`` folders."""
    from transformers import PreTrainedModel

    folder = check_folder(path)
    model_type = _read_json(folder / "config.json").get("model_type")
    kwargs.setdefault("local_files_only", True)
    if model_type == "u2llama":
        from engine.official_folder import load_official_folder

        return load_official_folder(cls, folder, dtype=kwargs.get("dtype") or kwargs.get("torch_dtype"))
    if model_type != "mu2":
        raise Mu2CheckpointError(
            f"{folder}/config.json has model_type {model_type!r}; expected 'mu2' (Mu2) or 'u2llama' (official μ²LLM)"
        )
    try:
        model, info = PreTrainedModel.from_pretrained.__func__(cls, str(folder), *args, output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError) as err:
        raise Mu2CheckpointError(f"cannot load the checkpoint in {folder}: {err}") from err
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        raise Mu2CheckpointError(f"checkpoint {folder} does not match its config: {format_key_problems(problems)}")
    return model


def format_key_problems(problems: dict) -> str:
    parts = []
    for kind, keys in problems.items():
        keys = sorted(map(str, keys))
        shown = ", ".join(keys[:12]) + (f" … (+{len(keys) - 12})" if len(keys) > 12 else "")
        parts.append(f"{kind.replace('_', ' ')} ({len(keys)}): {shown}")
    return "; ".join(parts)


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``module`` or raise one error listing missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    tied = {k for k in own if k == "lm_head.weight"} if getattr(module.config, "tie_word_embeddings", False) else set()
    missing = [k for k in own if k not in state and k not in tied]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    problems = {"missing_keys": missing, "unexpected_keys": unexpected, "mismatched_keys": mismatched}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        raise Mu2CheckpointError(f"{what}: {format_key_problems(problems)}")
    module.load_state_dict(state, strict=False, assign=True)
    if tied:
        module.tie_weights()


def weights_hash(folder: str | Path) -> str:
    """Identity of the weights in ``folder``: sha256 over each weight file's size, header and sampled blocks.

    Reading a multi-GB checkpoint in full on every load would cost seconds, so large files are sampled; two
    different trainings practically never share size, header and 64 sampled 64 KiB blocks.
    """
    h = hashlib.sha256()
    block = 1 << 16
    for f in sorted(Path(folder).glob("*.safetensors")) + sorted(Path(folder).glob("*.bin")):
        size = f.stat().st_size
        h.update(f.name.encode() + size.to_bytes(8, "little"))
        with open(f, "rb") as fh:
            if size <= 64 * block * 4:
                h.update(fh.read())
                continue
            for i in range(64):
                fh.seek(size * i // 64)
                h.update(fh.read(block))
    return "sha256:" + h.hexdigest()[:16]


def save_checkpoint(model, tokenizer, out: str | Path, notes: str = "", preset: str = "custom") -> Path:
    """Write a Mu2 checkpoint folder (safetensors, tokenizer, generation config, model card)."""
    from transformers import GenerationConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.config.architectures = ["Mu2ForConditionalGeneration"]
    # The decoder config must name the tokenizer's special ids, or generate() and trl realign them noisily.
    text = model.config.text_config
    text.bos_token_id, text.eos_token_id, text.pad_token_id = (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=256,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    lm = model.config.text_config.model_type
    (out / "README.md").write_text(MODEL_CARD.format(name=out.name, lm=lm, preset=preset, notes=notes))
    return out


def load_tokenizer(folder: str | Path):
    from transformers import AutoTokenizer

    import engine.model  # noqa: F401  (registers model_type "mu2" with AutoConfig)

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise Mu2CheckpointError(f"{folder} has no usable tokenizer files: {err}") from err
