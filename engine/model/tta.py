"""μ²Tokenizer, text side: text-conditioned token aggregation (TTA) and the final aggregation.

Module and parameter names follow the official ``tta_module`` so that official weights load:
``layers_vt.{i}.{self_attention,visual_cross_attention,text_cross_attention,norm_self,norm_cross_v,
norm_cross_t}`` and ``layer_linagg.linear_aggregator.{wq,wk,wv,dense}``.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.model.attention import CrossAttention, merge_heads, split_heads
from engine.model.svr import MultiScaleTokens, make_self_attention

__all__ = ["Aggregation", "QueryLayer", "TextConditionedAggregator"]


class QueryLayer(nn.Module):
    """One TTA layer over the learned queries, post-norm, no MLP (official ``TextConditionTokenAttMap``):

    ``x = norm_self(q + SelfAttn(q))``; ``x = norm_cross_v(x + CrossAttn(x, visual))``;
    ``x = norm_cross_t(x + CrossAttn(x, text))``.

    ``(B, Q, E), visual (B, P, E), text (B, L, E) -> (B, Q, E)``
    """

    def __init__(self, d_model: int, num_heads: int, attn_type: str, max_rel_pos: int, strict: bool):
        super().__init__()
        self.visual_cross_attention = CrossAttention(d_model, num_heads)
        self.text_cross_attention = CrossAttention(d_model, num_heads)
        self.norm_cross_v = nn.LayerNorm(d_model)
        self.norm_cross_t = nn.LayerNorm(d_model)
        self.self_attention = make_self_attention(attn_type, d_model, num_heads, max_rel_pos, strict)
        self.norm_self = nn.LayerNorm(d_model)

    def forward(
        self,
        query: torch.Tensor,
        visual: MultiScaleTokens,
        text: torch.Tensor,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.norm_self(query + self.self_attention(query))
        vca = self.visual_cross_attention
        ca = vca(x, keys=visual.project(vca.wk), values=visual.project(vca.wv))
        x = self.norm_cross_v(x + ca)
        x = self.norm_cross_t(x + self.text_cross_attention(x, text, text_mask))
        return x


class Aggregation(nn.Module):
    """Final aggregation (official ``LinearAggregation``): attention of the queries onto the visual
    tokens whose values are the visual tokens themselves (no value or output projection, so the LM
    receives convex mixtures of visual tokens per head). ``wv`` and ``dense`` exist only so that
    official state dicts load; they are unused, as in the official code.

    ``(B, Q, E), visual (B, P, E) -> (B, Q, E), attention (B, H, Q, P)``
    """

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        self.linear_aggregator = CrossAttention(d_model, num_heads)

    def forward(self, query: torch.Tensor, visual: MultiScaleTokens) -> tuple[torch.Tensor, torch.Tensor]:
        agg = self.linear_aggregator
        probs = agg.scores(query, visual.project(agg.wk))
        out = torch.matmul(probs, split_heads(visual.tokens, agg.num_heads))
        return merge_heads(out), probs


class TextConditionedAggregator(nn.Module):
    """The TTA stack then the final aggregation (official ``tta_module``).

    ``queries (B, Q, E), visual (B, P, E), text (B, L, E) -> (B, Q, E), attention (B, H, Q, P)``
    """

    def __init__(
        self,
        d_model: int,
        num_layers: int,
        num_heads: int,
        attn_type: str = "rma",
        max_rel_pos: int = 512,
        strict_official: bool = False,
    ):
        super().__init__()
        self.layers_vt = nn.ModuleList(
            QueryLayer(d_model, num_heads, attn_type, max_rel_pos, strict_official) for _ in range(num_layers)
        )
        self.layer_linagg = Aggregation(d_model, num_heads)
        self.gradient_checkpointing = False

    def forward(
        self,
        query: torch.Tensor,
        visual: MultiScaleTokens,
        text: torch.Tensor,
        text_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.layers_vt:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                query = torch.utils.checkpoint.checkpoint(
                    layer, query, visual, text, text_mask, use_reentrant=False
                )
            else:
                query = layer(query, visual, text, text_mask)
        return self.layer_linagg(query, visual)
