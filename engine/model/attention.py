"""Attention blocks of the μ²Tokenizer.

Three kinds, with the official parameter names (``wq``, ``wk``, ``wv``, ``dense`` and, for the
relative-bias kind, ``relative_bias``) so that official state dicts load unchanged:

- :class:`RelativeBiasSelfAttention` — self-attention with a learned bias per head and relative
  offset ``j - i`` added to the scores (the official ``RelativeMultiheadAttention``, "rma").
- :class:`RotarySelfAttention` — self-attention with rotary position embeddings on queries and
  keys (the official ``RotaryMultiheadAttention``, "rope").
- :class:`CrossAttention` — plain multi-head cross-attention, optionally with a key padding mask.

All attention products go through ``torch.nn.functional.scaled_dot_product_attention``; the
scale is the official ``1 / sqrt(head_dim)``. There is no dropout anywhere (the official code has
none either).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import Mu2Error
from engine.model.kernels import linear

__all__ = [
    "CrossAttention",
    "RelativeBiasSelfAttention",
    "RotarySelfAttention",
    "relative_position_index",
    "rotate_half",
]


def _xavier_linear(dim: int) -> nn.Linear:
    # The official init: xavier-uniform weights, zero biases.
    lin = nn.Linear(dim, dim)
    nn.init.xavier_uniform_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(B, L, E) -> (B, H, L, E / H)``."""
    b, n, e = x.shape
    return x.view(b, n, num_heads, e // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, L, d) -> (B, L, H * d)``."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def relative_position_index(
    length: int, max_rel_pos: int, *, strict_official: bool = False, device: torch.device | None = None
) -> torch.Tensor:
    """Row of the bias table used for every (query ``i``, key ``j``) pair: ``(L, L)`` long.

    The official index is ``(j - i) + max_rel_pos - 1``; it only exists for ``|j - i| < max_rel_pos``.
    Longer sequences are clamped to the outermost offsets ``±(max_rel_pos - 1)`` (a token 600
    positions away is treated like one 511 away). ``strict_official=True`` raises instead, as the
    official code cannot run them.
    """
    if strict_official and length > max_rel_pos:
        raise Mu2Error(
            f"sequence of {length} tokens is longer than the relative-position table ({max_rel_pos}); "
            "the official code cannot run it. Use strict_official=False to clamp distant offsets."
        )
    pos = torch.arange(length, device=device)
    rel = (pos[None, :] - pos[:, None]).clamp(-(max_rel_pos - 1), max_rel_pos - 1)
    return rel + (max_rel_pos - 1)


class _Projections(nn.Module):
    """The four official projections ``wq``, ``wk``, ``wv``, ``dense`` (official init: xavier, zero bias)."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.wq = _xavier_linear(d_model)
        self.wk = _xavier_linear(d_model)
        self.wv = _xavier_linear(d_model)
        self.dense = _xavier_linear(d_model)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, L, E) -> 3 × (B, H, L, d)``.

        Three GEMMs: fusing them (concatenating the weights per call) measured no faster on CPU
        and costs a weight-sized copy in forward and backward.
        """
        return tuple(split_heads(linear(lin, x), self.num_heads) for lin in (self.wq, self.wk, self.wv))  # type: ignore[return-value]


class RelativeBiasSelfAttention(_Projections):
    """Self-attention with a per-head relative position bias (official "rma").

    ``softmax(q kᵀ / sqrt(d) + relative_bias[(j - i) + max_rel_pos - 1]) v`` per head, then ``dense``.

    Parameters
    ----------
    d_model, num_heads : width and heads; ``head_dim = d_model / num_heads``.
    max_rel_pos : the table holds offsets ``-(max_rel_pos - 1) .. max_rel_pos - 1`` (official 512).
    strict_official : raise for sequences longer than the table instead of clamping offsets.
    """

    def __init__(self, d_model: int, num_heads: int, max_rel_pos: int = 512, strict_official: bool = False):
        super().__init__(d_model, num_heads)
        self.max_rel_pos = max_rel_pos
        self.strict_official = strict_official
        self.relative_bias = nn.Parameter(torch.zeros(2 * max_rel_pos - 1, num_heads))

    def position_bias(self, length: int) -> torch.Tensor:
        """The additive score bias ``(1, H, L, L)``, built once per call from the table."""
        idx = relative_position_index(
            length, self.max_rel_pos, strict_official=self.strict_official, device=self.relative_bias.device
        )
        return self.relative_bias[idx].permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, E) -> (B, L, E)``."""
        q, k, v = self._qkv(x)
        bias = self.position_bias(x.shape[1]).to(q.dtype)
        ctx = merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=bias))
        del q, k, v  # lowers the inference peak; autograd keeps what it needs
        return linear(self.dense, ctx)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``(..., d) -> (..., d)``: ``[x1, x2] -> [-x2, x1]`` over the two halves of the last axis."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RotarySelfAttention(_Projections):
    """Self-attention with rotary position embeddings (official "rope").

    Positions ``0 .. L-1``, base 10000, rotate-half convention; cos/sin tables are computed in
    float32 up to ``max_seq_len`` (official 512, non-persistent buffers) and cast to the
    activation dtype, as the official code does. Longer sequences extend the tables
    (``strict_official=True`` raises instead: the official code cannot run them).
    """

    def __init__(self, d_model: int, num_heads: int, max_seq_len: int = 512, strict_official: bool = False):
        super().__init__(d_model, num_heads)
        self.max_seq_len = max_seq_len
        self.strict_official = strict_official
        cos, sin = self._tables(max_seq_len, torch.device("cpu"))
        self.register_buffer("cos_cached", cos, persistent=False)
        self.register_buffer("sin_cached", sin, persistent=False)

    def _tables(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``(1, 1, length, d)`` in float32."""
        d = self.head_dim
        inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d))
        t = torch.arange(length, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos()[None, None], emb.sin()[None, None]

    def rotary(self, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``(1, 1, L, d)`` in ``dtype``."""
        if length > self.cos_cached.shape[2]:
            if self.strict_official:
                raise Mu2Error(
                    f"sequence of {length} tokens is longer than the rotary table ({self.max_seq_len}); "
                    "the official code cannot run it. Use strict_official=False to extend the table."
                )
            cos, sin = self._tables(length, self.cos_cached.device)
        else:
            cos, sin = self.cos_cached[:, :, :length], self.sin_cached[:, :, :length]
        return cos.to(dtype), sin.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, E) -> (B, L, E)``."""
        q, k, v = self._qkv(x)
        cos, sin = self.rotary(x.shape[1], q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        ctx = merge_heads(F.scaled_dot_product_attention(q, k, v))
        del q, k, v
        return linear(self.dense, ctx)


class CrossAttention(_Projections):
    """Multi-head cross-attention of queries onto a context (official ``MultiHeadCrossAttention``).

    The keys and values may be given already projected (``keys=``/``values=``, ``(B, Lk, E)``),
    which lets the caller derive them more cheaply (see ``MultiScaleTokens.project``).
    """

    def forward(
        self,
        query: torch.Tensor,
        context: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        *,
        keys: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, Lq, E), (B, Lk, E) -> (B, Lq, E)``.

        ``key_padding_mask`` ``(B, Lk)`` bool, True where the context token is real; ``None``
        attends to every context token (the official behaviour).
        """
        q = split_heads(linear(self.wq, query), self.num_heads)
        k = split_heads(linear(self.wk, context) if keys is None else keys, self.num_heads)
        v = split_heads(linear(self.wv, context) if values is None else values, self.num_heads)
        mask = None
        if key_padding_mask is not None:
            mask = key_padding_mask[:, None, None, :]
        ctx = merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        del q, k, v
        return linear(self.dense, ctx)

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Attention probabilities ``(B, Lq, E), (B, Lk, E) projected keys -> (B, H, Lq, Lk)``.

        Written out (not SDPA) because the caller needs the weights themselves.
        """
        q = split_heads(linear(self.wq, query), self.num_heads)
        k = split_heads(keys, self.num_heads)
        logits = torch.matmul(q, k.transpose(-2, -1)).div_(math.sqrt(self.head_dim))
        return logits.softmax(dim=-1)
