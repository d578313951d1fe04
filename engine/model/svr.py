"""μ²Tokenizer, visual side: spatio-temporal refinement (SVR), token selection (DTS) and multi-scale pooling.

Module and parameter names follow the official ``svt_module`` so that official weights load:
``attention_network.layers.{i}.{spatial,temporal}_attention``, ``token_selection.score_net``,
``dynamic_pool.gate_fc``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.attention import RelativeBiasSelfAttention, RotarySelfAttention
from engine.model.kernels import is_plain_linear, linear

__all__ = [
    "DifferentiableTokenSelection",
    "DynamicMultiScalePooling",
    "MultiScaleTokens",
    "SpatioTemporalLayer",
    "SpatioTemporalRefiner",
    "TokenSelection",
    "VisualTokenRefiner",
    "make_self_attention",
    "pool_tokens",
]


def make_self_attention(
    attn_type: str, d_model: int, num_heads: int, max_rel_pos: int, strict_official: bool
) -> RelativeBiasSelfAttention | RotarySelfAttention:
    """The self-attention of the configured kind: "rma" (relative bias) or "rope" (rotary)."""
    if attn_type == "rma":
        return RelativeBiasSelfAttention(d_model, num_heads, max_rel_pos, strict_official)
    if attn_type == "rope":
        return RotarySelfAttention(d_model, num_heads, max_rel_pos, strict_official)
    raise ValueError(f"attn_type must be 'rma' or 'rope', got {attn_type!r}")


def pool_tokens(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Average of non-overlapping windows along the token axis: ``(B, K, E) -> (B, K // scale, E)``.

    Same result as ``avg_pool1d(kernel=stride=scale)`` (a trailing incomplete window is dropped),
    but made of reshape + mean, which have bfloat16 kernels on CPU.
    """
    if scale == 1:
        return x
    n = x.shape[1] // scale
    return x[:, : n * scale].unflatten(1, (n, scale)).mean(dim=2)


class SpatioTemporalLayer(nn.Module):
    """One SVR layer: attention over the N tokens of each chunk, then over the T chunks of each
    token position. No residual, norm or MLP (as in the official code).

    ``(B, T, N, E) -> (B, T, N, E)``
    """

    def __init__(self, embed_size: int, num_heads: int, attn_type: str, max_rel_pos: int, strict: bool):
        super().__init__()
        self.spatial_attention = make_self_attention(attn_type, embed_size, num_heads, max_rel_pos, strict)
        self.temporal_attention = make_self_attention(attn_type, embed_size, num_heads, max_rel_pos, strict)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, n, e = x.shape
        x = self.spatial_attention(x.reshape(b * t, n, e)).view(b, t, n, e)
        # contiguous() matters: with B = 1 the reshape alone is a strided view, and F.linear on a
        # strided 3-D input falls back to a batched matmul that copies the weight once per row.
        x = x.transpose(1, 2).contiguous().view(b * n, t, e)
        x = self.temporal_attention(x).view(b, n, t, e)
        return x.transpose(1, 2).contiguous()


class SpatioTemporalRefiner(nn.Module):
    """The SVR stack (official ``attention_network``): ``(B, T, N, E) -> (B, T, N, E)``."""

    def __init__(
        self, embed_size: int, num_heads: int, num_layers: int, attn_type: str, max_rel_pos: int, strict: bool
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            SpatioTemporalLayer(embed_size, num_heads, attn_type, max_rel_pos, strict)
            for _ in range(num_layers)
        )
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return x


@dataclass
class Selection:
    """What a token selector returns.

    tokens : (B, k, E) selected tokens.
    weights : (B, M, k) soft selection weights (each column sums to 1 over the M = T·N tokens),
        or None for hard selection.
    indices : (B, k) flat token index of each selected token (hard selection), else None.
    """

    tokens: torch.Tensor
    weights: torch.Tensor | None = None
    indices: torch.Tensor | None = None


class DifferentiableTokenSelection(nn.Module):
    """DTS: k soft selections, each a softmax over all M = T·N tokens (official, ``enable_diffts``).

    ``weights = softmax(score_net(x) / tau, over M)``, ``selected = weightsᵀ · x``.
    ``(B, T, N, E) -> Selection(tokens (B, k, E), weights (B, M, k))``
    """

    def __init__(self, embed_size: int, top_k: int, tau: float = 1.0):
        super().__init__()
        self.score_net = nn.Linear(embed_size, top_k)
        self.top_k = top_k
        self.tau = tau

    def forward(self, x: torch.Tensor) -> Selection:
        b, t, n, e = x.shape
        flat = x.reshape(b, t * n, e)
        weights = F.softmax(linear(self.score_net, flat) / self.tau, dim=1)
        return Selection(tokens=torch.bmm(weights.transpose(1, 2), flat), weights=weights)


class TokenSelection(nn.Module):
    """Hard top-k selection by a scalar score per token (official, without ``enable_diffts``).

    ``(B, T, N, E) -> Selection(tokens (B, k, E), indices (B, k))``, in descending score order.
    """

    def __init__(self, embed_size: int, top_k: int):
        super().__init__()
        self.score_net = nn.Linear(embed_size, 1)
        nn.init.zeros_(self.score_net.bias)
        self.top_k = top_k

    def forward(self, x: torch.Tensor) -> Selection:
        b, t, n, e = x.shape
        flat = x.reshape(b, t * n, e)
        scores = linear(self.score_net, flat).squeeze(-1)
        indices = torch.topk(scores, self.top_k, dim=1).indices
        tokens = torch.gather(flat, 1, indices.unsqueeze(-1).expand(-1, -1, e))
        return Selection(tokens=tokens, indices=indices)


def spread_to_tokens(selection: Selection, per_selected: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """A weight per selected token, carried back to the M input tokens: ``(B, k) -> (B, M)``."""
    if selection.weights is not None:
        w = selection.weights.to(per_selected.dtype)
        return torch.bmm(w, per_selected.unsqueeze(-1)).squeeze(-1)
    out = per_selected.new_zeros(per_selected.shape[0], num_tokens)
    return out.scatter_add(1, selection.indices, per_selected)


@dataclass
class MultiScaleTokens:
    """The visual tokens the aggregator sees: ``cat_s(gate_s · pool_s(base))`` over the scales.

    base : (B, k, E) selected tokens.
    scales : window sizes actually used (those not larger than k).
    gates : (B, S) weight of each scale (DMTP), or None for weight 1.
    tokens : (B, P, E) the materialised concatenation, P = Σ_s k // s.
    """

    base: torch.Tensor
    scales: tuple[int, ...]
    gates: torch.Tensor | None
    tokens: torch.Tensor

    @classmethod
    def build(cls, base: torch.Tensor, scales: Sequence[int], gates: torch.Tensor | None) -> MultiScaleTokens:
        parts = [pool_tokens(base, s) for s in scales]
        if gates is not None:
            parts = [p * gates[:, i, None, None] for i, p in enumerate(parts)]
        tokens = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return cls(base=base, scales=tuple(scales), gates=gates, tokens=tokens)

    def project(self, module: nn.Linear) -> torch.Tensor:
        """``module(tokens)`` computed on the k base tokens: ``-> (B, P, E_out)``.

        Pooling and gating are linear along the token axis, so they commute with the projection:
        ``W (g · pool(x)) + b = g · pool(W x) + b``; projecting k tokens instead of P (1024 vs
        1792 in mu2-1b) saves 43% of the aggregator's key/value work.
        """
        if self.scales == (1,) and self.gates is None:
            return linear(module, self.base)
        if not is_plain_linear(module):  # a wrapped layer (hooks, adapters) sees the real tokens
            return module(self.tokens)
        out = MultiScaleTokens.build(linear(module, self.base, bias=False), self.scales, self.gates).tokens
        # In place is safe for autograd (neither cat nor mul keeps its output) and saves a copy.
        return out.add_(module.bias)

    def to_base(self, per_token: torch.Tensor) -> torch.Tensor:
        """Carry a weight per multi-scale token back to the base tokens: ``(B, P) -> (B, k)``.

        Base token r receives ``gate_s / s`` of the weight of the window ``r // s`` it falls in, at
        every scale whose window is complete (the linear coefficient of base token r in that window).
        """
        b, k = per_token.shape[0], self.base.shape[1]
        out = per_token.new_zeros(b, k)
        start = 0
        for i, s in enumerate(self.scales):
            n = k // s
            w = per_token[:, start : start + n] / s
            if self.gates is not None:
                w = w * self.gates[:, i, None].to(w.dtype)
            out[:, : n * s] += w.repeat_interleave(s, dim=1)
            start += n
        return out


class DynamicMultiScalePooling(nn.Module):
    """DMTP: average pools at several scales, weighted by a softmax over scales (official).

    Each scale's gate logit is ``gate_fc(descriptor)``: the mean of its pooled tokens
    (``gate="official"``), or their element-wise max (``gate="max"``). The official mean makes every
    gate 1/S whenever k is divisible by every scale (the mean of window averages is the mean of
    the tokens); ``"max"`` keeps the gates input dependent, but weights trained with the official
    gate expect 1/S.

    ``(B, k, E) -> MultiScaleTokens (B, P, E)``, P = Σ_s k // s.
    """

    def __init__(self, embed_size: int, scales: Sequence[int] = (1, 2, 4), gate: str = "official"):
        super().__init__()
        if gate not in ("official", "max"):
            raise ValueError(f"dmtp_gate must be 'official' or 'max', got {gate!r}")
        self.scales = tuple(scales)
        self.gate = gate
        self.gate_fc = nn.Linear(embed_size, 1)

    def forward(self, x: torch.Tensor) -> MultiScaleTokens:
        scales = [s for s in self.scales if x.shape[1] >= s]
        pooled = [pool_tokens(x, s) for s in scales]
        desc = [p.mean(dim=1) if self.gate == "official" else p.amax(dim=1) for p in pooled]
        gates = F.softmax(torch.cat([self.gate_fc(d) for d in desc], dim=1), dim=1)
        tokens = torch.cat([p * gates[:, i, None, None] for i, p in enumerate(pooled)], dim=1)
        return MultiScaleTokens(base=x, scales=tuple(scales), gates=gates, tokens=tokens)


class VisualTokenRefiner(nn.Module):
    """The visual half of the μ²Tokenizer (official ``svt_module``): SVR → selection → pooling.

    ``(B, T, N, E) -> (MultiScaleTokens (B, P, E), Selection)``
    """

    def __init__(
        self,
        embed_size: int,
        num_heads: int,
        num_layers: int,
        top_k: int,
        *,
        use_multi_scale: bool = True,
        enable_diffts: bool = True,
        enable_dmtp: bool = True,
        attn_type: str = "rma",
        max_rel_pos: int = 512,
        scales: Sequence[int] = (1, 2, 4),
        tau: float = 1.0,
        strict_official: bool = False,
        dmtp_gate: str = "official",
    ):
        super().__init__()
        self.attention_network = SpatioTemporalRefiner(
            embed_size, num_heads, num_layers, attn_type, max_rel_pos, strict_official
        )
        if enable_diffts:
            self.token_selection: nn.Module = DifferentiableTokenSelection(embed_size, top_k, tau)
        else:
            self.token_selection = TokenSelection(embed_size, top_k)
        if enable_dmtp:
            self.dynamic_pool = DynamicMultiScalePooling(embed_size, scales, dmtp_gate)
        self.use_multi_scale = use_multi_scale
        self.enable_dmtp = enable_dmtp
        self.scales = tuple(scales)

    def forward(self, x: torch.Tensor) -> tuple[MultiScaleTokens, Selection]:
        selection = self.token_selection(self.attention_network(x))
        base = selection.tokens
        if not self.use_multi_scale:
            return MultiScaleTokens(base=base, scales=(1,), gates=None, tokens=base), selection
        if self.enable_dmtp:
            return self.dynamic_pool(base), selection
        scales = [s for s in self.scales if base.shape[1] >= s]
        return MultiScaleTokens.build(base, scales, None), selection
