"""Read an official μ²LLM checkpoint folder (model_type ``u2llama``) without its remote code.

The official ``config.json`` is a LlamaConfig with extra attributes; it does not record the ViT's depth, MLP
width or heads (the official code fixes 12 heads), so depth and MLP width are read from the weights.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from engine.checkpoint import _read_json, load_state_dict_files, load_strict
from engine.errors import Mu2CheckpointError

log = logging.getLogger(__name__)

_VISION_KEYS = {
    "image_channel", "image_size", "patch_size", "mm_hidden_size", "vision_tower", "vision_select_layer",
    "vision_select_feature", "mm_projector_type", "proj_layer_type", "proj_layer_num", "proj_pooling_type",
    "proj_pooling_size", "enable_u2tokenizer", "u2t_num_heads", "u2t_num_layers", "u2t_top_k", "use_multi_scale",
    "num_3d_query_token", "enable_rpe", "enable_diffts", "enable_dmtp", "seg_token_id", "segmentation_module",
    "attn_type", "auto_map", "architectures", "model_type", "transformers_version", "torch_dtype", "dtype",
}

OFFICIAL_IMAGE_TOKEN_ID = 128011
VIT_HEADS = 12  # fixed in the official code, not in its config


def rename_official_key(key: str) -> str:
    """Official state-dict key → Mu2 key."""
    for old, new in (
        ("model.vision_tower.vision_tower.", "model.vision_tower."),
        ("model.mm_projector.", "model.mm_projector."),
        ("model.u2tokenizer.", "model.u2tokenizer."),
    ):
        if key.startswith(old):
            return new + key[len(old):]
    if key.startswith("model."):
        return "model.language_model." + key[len("model."):]
    return key


def config_from_official(cfg: dict, state: dict[str, torch.Tensor]):
    """Build a ``Mu2Config`` from an official ``config.json`` and the weights' shapes."""
    from engine.model.config import Mu2Config

    blocks = {int(m.group(1)) for k in state if (m := re.match(r"model\.vision_tower\.vision_tower\.blocks\.(\d+)\.", k))}
    if not blocks:
        raise Mu2CheckpointError("the official checkpoint has no vision tower weights (model.vision_tower.vision_tower.*)")
    mlp_dim = state["model.vision_tower.vision_tower.blocks.0.mlp.linear1.weight"].shape[0]
    img_size = list(cfg.get("image_size", [32, 256, 256]))
    patch = list(cfg.get("patch_size", [4, 16, 16]))
    hidden = int(cfg["hidden_size"])
    attn_type = cfg.get("attn_type") or ("rma" if cfg.get("enable_rpe", True) else "mha")
    if attn_type not in ("rma", "rope"):
        raise Mu2CheckpointError(f"official attention type {attn_type!r} is not supported (only 'rma' and 'rope')")
    text = {k: v for k, v in cfg.items() if k not in _VISION_KEYS}
    text["model_type"] = "llama"
    chunk_depth = min(img_size)  # official chunks are 32 slices deep whichever order the config lists
    # The cube is 8 chunks deep in the official pipeline (images are B × 8 × 32 × 256 × 256).
    return Mu2Config(
        vision_config={
            "in_channels": int(cfg.get("image_channel", 1)),
            "img_size": img_size,
            "patch_size": patch,
            "hidden_size": int(cfg.get("mm_hidden_size", 768)),
            "mlp_dim": int(mlp_dim),
            "num_layers": max(blocks) + 1,
            "num_heads": VIT_HEADS,
        },
        projector_config={"pool": int(cfg.get("proj_pooling_size", 2)), "hidden_size": hidden},
        mu2tokenizer_config={
            "num_heads": int(cfg.get("u2t_num_heads", 8)),
            "num_layers": int(cfg.get("u2t_num_layers", 4)),
            "top_k": int(cfg.get("u2t_top_k", 1024)),
            "num_query_tokens": int(cfg.get("num_3d_query_token", 256)),
            "use_multi_scale": bool(cfg.get("use_multi_scale", True)),
            "enable_diffts": bool(cfg.get("enable_diffts", True)),
            "enable_dmtp": bool(cfg.get("enable_dmtp", True)),
            "attn_type": attn_type,
        },
        text_config=text,
        preprocess={
            "image_size": [chunk_depth * 8, 256, 256],
            "chunk_depth": chunk_depth,
            "patch_size": [4, 16, 16],
            "pool": int(cfg.get("proj_pooling_size", 2)),
            "percentiles": [0.5, 99.5],
            "hu_window": None,
        },
        image_token_id=OFFICIAL_IMAGE_TOKEN_ID,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
    )


def load_official_folder(cls, folder: Path, dtype: torch.dtype | str | None = None):
    """Load an official u2 checkpoint folder into ``cls`` (``Mu2ForConditionalGeneration``)."""
    from transformers.initialization import no_init_weights

    cfg = _read_json(folder / "config.json")
    raw = load_state_dict_files(folder)
    state = {rename_official_key(k): v for k, v in raw.items()}
    config = config_from_official(cfg, raw)
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    if dtype in (None, "auto"):
        dtype = torch.float32
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    # Built without initialisation: every parameter is about to be replaced by the checkpoint's.
    with no_init_weights():
        model = cls(config)
    model.to(dtype)
    load_strict(model, state, f"official checkpoint {folder} does not match the μ²LLM architecture")
    model.eval()
    model.config.name_or_path = str(folder)
    log.info("loaded official μ²LLM checkpoint from %s", folder)
    return model
