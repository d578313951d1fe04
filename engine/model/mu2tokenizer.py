"""The μ²Tokenizer (arXiv 2507.00316): turns the projector tokens of a CT volume and the question into
the Q visual tokens the language model receives.

Stages (each its own module, see ``svr.py`` and ``tta.py``)::

    v_token (B, T, N, E) ─SVR─▶ (B, T, N, E) ─DTS─▶ (B, k, E) ─DMTP─▶ (B, P, E) ─┐
    query_tokens (1, Q, E) ─TTA (self-attn, cross-attn to visual and question)─▶ (B, Q, E)
                           ─aggregation (values = the P visual tokens)─▶ tokens (B, Q, E)

Numerically the same float32 computation as the official ``u2Tokenizer`` (Siyou-Li/u2Tokenizer at
b9fb37a8) on official weights, and the module/parameter names are the official ones, so an
official state dict loads with ``load_state_dict(strict=True)``. Deliberate differences, all
inactive with ``strict_official=True``:

- ``t_mask`` removes padded question tokens from the text cross-attention (the official code
  attends to padding). With ``t_mask=None`` or all True the result is the official one.
- Sequences longer than the relative-position table (``max_rel_pos``) use the outermost bias
  instead of failing; RoPE tables grow instead of failing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from engine.model.svr import VisualTokenRefiner, spread_to_tokens
from engine.model.tta import TextConditionedAggregator

__all__ = ["Mu2Tokenizer", "Mu2TokenizerOutput"]


@dataclass
class Mu2TokenizerOutput(ModelOutput):
    """What the μ²Tokenizer returns.

    tokens : (B, Q, E) the visual tokens for the language model.
    dts_weights : (B, M, k), M = T·N: the differentiable token selection's softmax weights (each of
        the k columns sums to 1 over the M tokens, flat index m = t·N + n); None for hard top-k.
    token_importance : (B, T, N) float32, detached: the weight each visual token carries into the
        Q output tokens (see ``Mu2Tokenizer.forward``); sums to 1 per sample.
    """

    tokens: torch.Tensor | None = None
    dts_weights: torch.Tensor | None = None
    token_importance: torch.Tensor | None = None


class Mu2Tokenizer(nn.Module):
    """The μ²Tokenizer with the official submodule names (``query_tokens``, ``svt_module``, ``tta_module``).

    Parameters
    ----------
    embed_size : E, width of the visual tokens, the question embeddings and the output (the LM width).
    num_heads, num_layers : heads of every attention; layers of the SVR and of the TTA.
    top_k : k, the number of selected tokens (soft selections with DTS).
    num_query_tokens : Q, the number of learned queries = output tokens.
    use_multi_scale : pool the k selected tokens at ``scales`` and concatenate (official flag).
    enable_diffts : differentiable soft selection (else hard top-k by a scalar score).
    enable_dmtp : gate the pooled scales with a softmax (else plain concatenation).
    attn_type : "rma" (relative position bias) or "rope" (rotary) for the self-attentions.
    max_rel_pos : size of the relative-position table (and RoPE table): offsets up to ``max_rel_pos - 1``.
    scales : pooling windows of the multi-scale stage; official (1, 2, 4).
    tau : DTS softmax temperature.
    strict_official : reproduce the official behaviour exactly, defects included (no question
        mask; long sequences raise).
    dmtp_gate : "official" (mean-pooled descriptors; the gates are constant 1/S whenever k is
        divisible by every scale) or "max" (max-pooled descriptors, input dependent; not what
        official weights were trained with).
    """

    def __init__(
        self,
        embed_size: int,
        num_heads: int,
        num_layers: int,
        top_k: int,
        num_query_tokens: int,
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
        if attn_type not in ("rma", "rope"):
            raise ValueError(f"attn_type must be 'rma' or 'rope', got {attn_type!r}")
        if strict_official and dmtp_gate != "official":
            raise ValueError("strict_official=True needs dmtp_gate='official'")
        self.embed_size = embed_size
        self.num_heads = num_heads
        self.top_k = top_k
        self.num_query_tokens = num_query_tokens
        self.strict_official = strict_official
        self.svt_module = VisualTokenRefiner(
            embed_size,
            num_heads,
            num_layers,
            top_k,
            use_multi_scale=use_multi_scale,
            enable_diffts=enable_diffts,
            enable_dmtp=enable_dmtp,
            attn_type=attn_type,
            max_rel_pos=max_rel_pos,
            scales=scales,
            tau=tau,
            strict_official=strict_official,
            dmtp_gate=dmtp_gate,
        )
        self.tta_module = TextConditionedAggregator(
            embed_size, num_layers, num_heads, attn_type, max_rel_pos, strict_official
        )
        self.query_tokens = nn.Parameter(torch.empty(1, num_query_tokens, embed_size).normal_(0.0, 0.02))

    @property
    def gradient_checkpointing(self) -> bool:
        """Recompute each SVR and TTA layer in backward instead of keeping its activations."""
        return self.svt_module.attention_network.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self.svt_module.attention_network.gradient_checkpointing = bool(value)
        self.tta_module.gradient_checkpointing = bool(value)

    def _text_mask(self, t_mask: torch.Tensor | None) -> torch.Tensor | None:
        """The key padding mask for SDPA, or None when it would change nothing."""
        if t_mask is None or self.strict_official:
            return None
        t_mask = t_mask.bool()
        if bool(t_mask.all()):
            return None
        # A question with no real token would leave its softmax empty; attend to everything then,
        # as the official code does.
        return t_mask | ~t_mask.any(dim=1, keepdim=True)

    def forward(
        self, v_token: torch.Tensor, t_token: torch.Tensor, t_mask: torch.Tensor | None = None
    ) -> Mu2TokenizerOutput:
        """``v_token (B, T, N, E), t_token (B, L, E), t_mask (B, L) bool | None -> Mu2TokenizerOutput``.

        ``token_importance[b, t, n]`` is defined as follows. Let ``x_m`` be the SVR output at
        m = t·N + n, ``W[m, r]`` the DTS weight of token m in selection r (1 for the chosen token of
        a hard top-k selection, 0 otherwise), ``g_s`` the DMTP gate of scale s (1 without DMTP),
        and ``A[h, q, j]`` the final aggregation's attention of head h and query q on multi-scale
        token j. Output token q, head h, is ``Σ_j A[h,q,j] · (g_s(j) / s(j)) · Σ_{r ∈ window j} Σ_m
        W[m, r] · x_m``, so the coefficient of ``x_m`` averaged over heads and queries is::

            I[m] = Σ_r W[m, r] · Σ_{s : r in a complete window j = r // s} (g_s / s) · mean_{h,q} A[h, q, j]

        ``token_importance`` is I normalised to sum to 1 per sample. The mixing inside the SVR
        and the TTA's earlier cross-attentions (which shape the queries, not the values) are not traced.
        """
        b, t, n, _ = v_token.shape
        text_mask = self._text_mask(t_mask)
        visual, selection = self.svt_module(v_token)
        queries = self.query_tokens.expand(b, -1, -1)
        tokens, probs = self.tta_module(queries, visual, t_token, text_mask)
        with torch.no_grad():
            per_visual = probs.float().mean(dim=(1, 2))
            importance = spread_to_tokens(selection, visual.to_base(per_visual), t * n)
            importance = importance / importance.sum(dim=1, keepdim=True).clamp_min(1e-30)
        return Mu2TokenizerOutput(
            tokens=tokens, dts_weights=selection.weights, token_importance=importance.view(b, t, n)
        )
