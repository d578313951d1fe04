"""``Mu2Config``: the whole architecture, preprocessing spec and prompt format as data.

Named presets are constructors of that data (``Mu2Config.preset("tiny" | "demo" | "mu2-1b")``), never
code branches in the model.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

# Official μ²LLM-1B facts (Siyou-Li/u2Tokenizer @ b9fb37a8, config.json + training scripts).
LLAMA_3_2_1B = {
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "max_position_embeddings": 131072,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "pad_token_id": 128015,
}

DEFAULT_QUESTION = "Please generate a radiology report for this chest CT scan."

_PRESETS: dict[str, dict[str, Any]] = {
    "mu2-1b": {
        "vision_config": {
            "in_channels": 1,
            "img_size": [32, 256, 256],
            "patch_size": [4, 16, 16],
            "hidden_size": 768,
            "mlp_dim": 3072,
            "num_layers": 12,
            "num_heads": 12,
        },
        "projector_config": {"pool": 2, "hidden_size": 2048},
        "mu2tokenizer_config": {
            "num_heads": 8,
            "num_layers": 4,
            "top_k": 1024,
            "num_query_tokens": 256,
            "use_multi_scale": True,
            "enable_diffts": True,
            "enable_dmtp": True,
            "attn_type": "rma",
            "max_rel_pos": 512,
            "scales": [1, 2, 4],
            "tau": 1.0,
            "dmtp_gate": "official",
        },
        "text_config": LLAMA_3_2_1B,
        "preprocess": {
            "image_size": [256, 256, 256],
            "chunk_depth": 32,
            "patch_size": [4, 16, 16],
            "pool": 2,
            "percentiles": [0.5, 99.5],
            "hu_window": None,
        },
        "image_token_id": 128011,
    },
    "demo": {
        # One ViT patch per token cell (8×16×16 voxels, pool 1): the same 8×8×8 token grid as patch 4×8×8 with
        # pool 2, at about a sixth of the ViT cost, which is what lets the demo model train on a 2-core CPU.
        "vision_config": {
            "in_channels": 1,
            "img_size": [8, 128, 128],
            "patch_size": [8, 16, 16],
            "hidden_size": 128,
            "mlp_dim": 256,
            "num_layers": 2,
            "num_heads": 4,
        },
        "projector_config": {"pool": 1, "hidden_size": 128},
        "mu2tokenizer_config": {
            "num_heads": 4,
            "num_layers": 2,
            "top_k": 128,
            "num_query_tokens": 32,
            "use_multi_scale": True,
            "enable_diffts": True,
            "enable_dmtp": True,
            "attn_type": "rma",
            "max_rel_pos": 512,
            "scales": [1, 2, 4],
            # Sharp soft selections (τ 0.1): at τ 1 a freshly initialised DTS averages all 512 tokens, so
            # a lesion reaches the LM diluted 1/512 and a model trained from scratch on a CPU learned to
            # ignore the image; at τ 0.1 each selection starts close to one token.
            "tau": 0.1,
            "dmtp_gate": "official",
        },
        "text_config": {
            "model_type": "llama",
            "vocab_size": 1024,
            "hidden_size": 128,
            "intermediate_size": 384,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "max_position_embeddings": 1024,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": True,
        },
        "preprocess": {
            "image_size": [64, 128, 128],
            "chunk_depth": 8,
            "patch_size": [8, 16, 16],
            "pool": 1,
            "percentiles": [0.5, 99.5],
            "hu_window": None,
        },
        "image_token_id": None,
    },
    "tiny": {
        "vision_config": {
            "in_channels": 1,
            "img_size": [4, 32, 32],
            "patch_size": [2, 8, 8],
            "hidden_size": 32,
            "mlp_dim": 64,
            "num_layers": 1,
            "num_heads": 2,
        },
        "projector_config": {"pool": 2, "hidden_size": 32},
        "mu2tokenizer_config": {
            "num_heads": 2,
            "num_layers": 1,
            "top_k": 8,
            "num_query_tokens": 4,
            "use_multi_scale": True,
            "enable_diffts": True,
            "enable_dmtp": True,
            "attn_type": "rma",
            "max_rel_pos": 512,
            "scales": [1, 2, 4],
            "tau": 1.0,
            "dmtp_gate": "official",
        },
        "text_config": {
            "model_type": "llama",
            "vocab_size": 256,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 512,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": True,
        },
        "preprocess": {
            "image_size": [8, 32, 32],
            "chunk_depth": 4,
            "patch_size": [2, 8, 8],
            "pool": 2,
            "percentiles": [0.5, 99.5],
            "hu_window": None,
        },
        "image_token_id": None,
    },
}


class Mu2Config(PretrainedConfig):
    """Configuration of a Mu2 model: ViT3D → projector → μ²Tokenizer → causal LM.

    Parameters
    ----------
    vision_config, projector_config, mu2tokenizer_config : dict
        Architecture of the three vision-side parts (plain dicts: they are ours, not ``transformers`` models).
    text_config : dict or PretrainedConfig
        Any ``AutoModelForCausalLM`` decoder config (Llama-3.2-1B-Instruct for ``mu2-1b``; Qwen3 works too).
    preprocess : dict
        The ``engine.preprocess.PrepSpec`` the checkpoint was trained with.
    image_token_id : int
        Placeholder id in ``input_ids`` whose embeddings are replaced by the visual tokens.
    default_question : str
        Question used when the user gives none.
    strict_official : bool
        Reproduce the official code's known defects exactly (see DESIGN.md §3), for parity checks.
    """

    model_type = "mu2"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    vision_config: dict | None = None
    projector_config: dict | None = None
    mu2tokenizer_config: dict | None = None
    text_config: dict | PretrainedConfig | None = None
    preprocess: dict | None = None
    image_token_id: int | None = None
    default_question: str = DEFAULT_QUESTION
    strict_official: bool = False
    # Official prompt: BOS, then the image placeholders, then the raw question (no chat template).
    prompt_format: str = "official"
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        base = copy.deepcopy(_PRESETS["tiny"])
        for key in ("vision_config", "projector_config", "mu2tokenizer_config", "preprocess"):
            if getattr(self, key) is None:
                setattr(self, key, base[key])
        if self.text_config is None:
            self.text_config = base["text_config"]
        super().__post_init__(**kwargs)
        if self.image_token_id is None:
            self.image_token_id = self.text_config.vocab_size - 1
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", True))

    @property
    def num_image_tokens(self) -> int:
        return int(self.mu2tokenizer_config["num_query_tokens"])

    @property
    def hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Mu2Config:
        """Build a named configuration: ``"tiny"`` (tests), ``"demo"`` (CPU-trainable) or ``"mu2-1b"``."""
        if name not in _PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(_PRESETS)}")
        data = copy.deepcopy(_PRESETS[name])
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        return cls(**data)


def preset_names() -> list[str]:
    return list(_PRESETS)
