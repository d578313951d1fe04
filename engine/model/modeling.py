"""``Mu2ForConditionalGeneration``: ViT3D → projector → μ²Tokenizer → causal LM, the LLaVA way.

The visual tokens enter the LM through placeholder ids in ``input_ids`` (``config.image_token_id``): their
embeddings are replaced with ``masked_scatter``, so ``generate()`` and trl work unmodified. The forward also
returns what the μ²Tokenizer selected (``token_importance``), which the heatmap is made of.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from engine.model.config import Mu2Config
from engine.model.mu2tokenizer import Mu2Tokenizer
from engine.model.projector import SpatialPoolingProjector
from engine.model.vit3d import ViT3D


@dataclass
class Mu2ModelOutputWithPast(BaseModelOutputWithPast):
    """Backbone output plus what the μ²Tokenizer selected.

    token_importance : (B, T, N) weight of every projector token in the visual tokens the LM received.
    dts_weights : (B, T*N, k) differentiable token-selection weights.
    """

    token_importance: torch.FloatTensor | None = None
    dts_weights: torch.FloatTensor | None = None


@dataclass
class Mu2CausalLMOutputWithPast(CausalLMOutputWithPast):
    token_importance: torch.FloatTensor | None = None
    dts_weights: torch.FloatTensor | None = None


class Mu2PreTrainedModel(PreTrainedModel):
    config: Mu2Config
    config_class = Mu2Config
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["LlamaDecoderLayer", "Qwen3DecoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        # The vision side keeps its own initialisation (official xavier/zeros); only the LM uses the config's std.
        if getattr(module, "_mu2_own_init", False):
            return
        super()._init_weights(module)


class Mu2Model(Mu2PreTrainedModel):
    """The backbone without LM head; its hidden states are as long as ``input_ids`` (trl relies on it)."""

    def __init__(self, config: Mu2Config):
        super().__init__(config)
        vc, pc, tc = config.vision_config, config.projector_config, config.mu2tokenizer_config
        hidden = config.text_config.hidden_size
        self.vision_tower = ViT3D(**vc)
        self.mm_projector = SpatialPoolingProjector(
            in_dim=vc["hidden_size"],
            out_dim=hidden,
            patch_grid=[i // p for i, p in zip(vc["img_size"], vc["patch_size"])],
            pool=pc["pool"],
        )
        self.u2tokenizer = Mu2Tokenizer(embed_size=hidden, **tc)
        for part in (self.vision_tower, self.mm_projector, self.u2tokenizer):
            for sub in part.modules():
                sub._mu2_own_init = True
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def encode_volume(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projector tokens of each chunk: ``(B, T, D, H, W) -> (B, T, N, E)``."""
        if pixel_values.dim() != 5:
            raise ValueError(f"pixel_values must be (batch, chunks, depth, height, width), got {tuple(pixel_values.shape)}")
        b, t = pixel_values.shape[:2]
        x = pixel_values.reshape(b * t, 1, *pixel_values.shape[2:]).to(self.vision_tower.cls_token.dtype)
        feats = self.mm_projector(self.vision_tower(x))
        return feats.reshape(b, t, feats.shape[-2], feats.shape[-1])

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        question_ids: torch.LongTensor,
        question_mask: torch.Tensor | None = None,
    ):
        """The visual tokens the LM receives, with the selection weights: ``(B, T, D, H, W) -> (B, Q, E)``."""
        v_tokens = self.encode_volume(pixel_values)
        t_tokens = self.get_input_embeddings()(question_ids).to(v_tokens.dtype)
        if question_mask is not None:
            question_mask = question_mask.bool()
        return self.u2tokenizer(v_tokens, t_tokens, question_mask)

    def _question_from_prompt(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.LongTensor, torch.Tensor]:
        # Without explicit question_ids the question is the text after the image block. Callers that append
        # an answer (training) must pass question_ids, or the answer would condition the visual tokens.
        is_img = input_ids == self.config.image_token_id
        last = torch.where(is_img.any(1), input_ids.shape[1] - 1 - is_img.flip(1).int().argmax(1), -1)
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        mask = pos > last[:, None]
        if attention_mask is not None and attention_mask.dim() == 2:
            mask &= attention_mask.bool()
        return input_ids, mask

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        question_ids: torch.LongTensor | None = None,
        question_mask: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> Mu2ModelOutputWithPast:
        if images is not None:  # the official argument name
            pixel_values = images if pixel_values is None else pixel_values
        if "past_key_values" in kwargs and cache is None:
            cache = kwargs.pop("past_key_values")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        selection = None
        if pixel_values is not None:
            if input_ids is None:
                raise ValueError("pixel_values need input_ids with image placeholder tokens")
            if question_ids is None:
                question_ids, question_mask = self._question_from_prompt(input_ids, attention_mask)
            elif question_ids.dim() == 1:  # official eval passes an unbatched question
                question_ids = question_ids[None].expand(input_ids.shape[0], -1)
            selection = self.get_image_features(pixel_values, question_ids, question_mask)
            features = selection.tokens.to(inputs_embeds.dtype)
            mask = input_ids == self.config.image_token_id
            n_tokens, n_feats = int(mask.sum()), features.shape[0] * features.shape[1]
            if n_tokens != n_feats:
                raise ValueError(
                    f"the prompt holds {n_tokens} image placeholder tokens (id {self.config.image_token_id}) but "
                    f"the μ²Tokenizer produced {n_feats} visual tokens ({features.shape[0]} × "
                    f"{features.shape[1]}); build the prompt with engine.text.build_prompt"
                )
            inputs_embeds = inputs_embeds.masked_scatter(mask.unsqueeze(-1), features)

        out = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return Mu2ModelOutputWithPast(
            last_hidden_state=out.last_hidden_state,
            cache=getattr(out, "cache", None),
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            token_importance=None if selection is None else selection.token_importance,
            dts_weights=None if selection is None else selection.dts_weights,
        )


class Mu2ForConditionalGeneration(Mu2PreTrainedModel, GenerationMixin):
    """Mu2 with its LM head. ``from_pretrained`` also reads official u2 (``u2llama``) checkpoint folders."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: Mu2Config):
        super().__init__(config)
        self.model = Mu2Model(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def get_image_features(self, pixel_values, question_ids, question_mask=None):
        return self.model.get_image_features(pixel_values, question_ids, question_mask)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        from engine.checkpoint import load_pretrained

        return load_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        question_ids: torch.LongTensor | None = None,
        question_mask: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> Mu2CausalLMOutputWithPast:
        out = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            question_ids=question_ids,
            question_mask=question_mask,
            images=images,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size)
        return Mu2CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=out.cache,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            token_importance=out.token_importance,
            dts_weights=out.dts_weights,
        )

    def prepare_inputs_for_generation(
        self, input_ids, *args, inputs_embeds=None, is_first_iteration: bool = False, **kwargs
    ):
        # The volume and the question condition the prompt once; decode steps reuse the KV cache.
        vision_inputs = {k: kwargs.pop(k, None) for k in ("pixel_values", "images", "question_ids", "question_mask")}
        inputs = super().prepare_inputs_for_generation(
            input_ids, *args, inputs_embeds=inputs_embeds, is_first_iteration=is_first_iteration, **kwargs
        )
        use_cache = kwargs.get("use_cache", True)
        if is_first_iteration or not use_cache:
            inputs.update({k: v for k, v in vision_inputs.items() if v is not None})
        return inputs
