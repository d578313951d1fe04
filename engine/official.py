"""Build a :class:`~engine.model.mu2tokenizer.Mu2Tokenizer` from an official u2Tokenizer state dict.

The official checkpoints (Siyou-Li/u2Tokenizer) store the tokenizer under ``model.u2tokenizer.``;
the official constructor takes ``embed_size, num_heads, num_layers, top_k, use_multi_scale,
num_3d_query_token, hidden_size, enable_diffts, enable_dmtp`` and either ``attn_type`` ("rma" |
"rope", src/) or ``enable_rpe`` (bool, the remote-code copy; True means "rma").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from engine.errors import Mu2CheckpointError
from engine.model.mu2tokenizer import Mu2Tokenizer

__all__ = ["load_checked", "u2tokenizer_from_official"]

_PREFIXES = ("model.u2tokenizer.", "u2tokenizer.")
_OWN_ARGS = ("max_rel_pos", "scales", "tau", "strict_official", "dmtp_gate")


def _strip_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return dict(state_dict)


def _infer(sd: Mapping[str, torch.Tensor], kw: dict[str, Any]) -> dict[str, Any]:
    """Fill the sizes the caller left out from the tensor shapes; complain about what cannot be inferred."""
    out = dict(kw)
    q = sd.get("query_tokens")
    if q is not None:
        out.setdefault("num_3d_query_token", q.shape[1])
        out.setdefault("hidden_size", q.shape[2])
    if "embed_size" not in out:
        w = sd.get("svt_module.attention_network.layers.0.spatial_attention.wq.weight")
        if w is not None:
            out["embed_size"] = w.shape[0]
        elif "hidden_size" in out:
            out["embed_size"] = out["hidden_size"]
    if "num_layers" not in out:
        layers = {k.split(".")[3] for k in sd if k.startswith("svt_module.attention_network.layers.")}
        if layers:
            out["num_layers"] = len(layers)
    bias = sd.get("svt_module.attention_network.layers.0.spatial_attention.relative_bias")
    if bias is not None:
        out.setdefault("num_heads", bias.shape[1])
        out.setdefault("max_rel_pos", (bias.shape[0] + 1) // 2)
    score = sd.get("svt_module.token_selection.score_net.weight")
    if score is not None:
        out.setdefault("enable_diffts", score.shape[0] != 1)
        if score.shape[0] != 1:
            out.setdefault("top_k", score.shape[0])
    out.setdefault("enable_dmtp", "svt_module.dynamic_pool.gate_fc.weight" in sd)
    if "attn_type" not in out:
        rpe = out.pop("enable_rpe", None)
        if rpe is None:
            out["attn_type"] = "rma" if bias is not None or not sd else "rope"
        elif not rpe:
            raise Mu2CheckpointError(
                "enable_rpe=False builds torch.nn.MultiheadAttention in the official code, which Mu2 does not "
                "support; only relative-bias ('rma') and rotary ('rope') attention are available."
            )
        else:
            out["attn_type"] = "rma"
    else:
        out.pop("enable_rpe", None)
    missing = [
        k for k in ("embed_size", "num_heads", "num_layers", "top_k", "num_3d_query_token") if k not in out
    ]
    if missing:
        raise Mu2CheckpointError(
            f"cannot infer {', '.join(missing)} from the state dict; pass them as keyword arguments"
        )
    return out


def u2tokenizer_from_official(state_dict: Mapping[str, torch.Tensor], **kwargs: Any) -> Mu2Tokenizer:
    """A :class:`Mu2Tokenizer` in eval mode holding the weights of an official u2Tokenizer.

    Parameters
    ----------
    state_dict : the official tokenizer's parameters, optionally under ``model.u2tokenizer.`` or
        ``u2tokenizer.`` (other keys, e.g. the rest of a full checkpoint, are then ignored).
    **kwargs : the official constructor arguments (``embed_size, num_heads, num_layers, top_k,
        use_multi_scale, num_3d_query_token, hidden_size, enable_diffts, enable_dmtp, enable_rpe``,
        ``attn_type``) and Mu2's own (``max_rel_pos, scales, tau, strict_official, dmtp_gate``).
        Sizes left out are read from the tensor shapes; ``use_multi_scale`` defaults to True (it
        leaves no trace in the weights), and a RoPE state dict has no tensor that reveals
        ``num_heads``, so pass it. Without ``attn_type``/``enable_rpe`` the kind is read from the
        presence of ``relative_bias`` tensors. Parameters are float32 whatever the file's dtype.

    Raises
    ------
    Mu2CheckpointError
        When the arguments cannot be completed, or the state dict does not match the module
        (listing missing, unexpected and mis-shaped keys with their shapes).
    """
    sd = _strip_prefix(state_dict)
    args = _infer(sd, kwargs)
    embed, hidden = args.pop("embed_size"), args.pop("hidden_size", None)
    if hidden is not None and hidden != embed:
        raise Mu2CheckpointError(
            f"hidden_size {hidden} differs from embed_size {embed}; the official model needs them equal"
        )
    unknown = set(args) - {
        "num_heads", "num_layers", "top_k", "num_3d_query_token", "use_multi_scale",
        "enable_diffts", "enable_dmtp", "attn_type", *_OWN_ARGS,
    }  # fmt: skip
    if unknown:
        raise TypeError(f"unknown arguments: {', '.join(sorted(unknown))}")
    model = Mu2Tokenizer(
        embed_size=embed,
        num_heads=args.pop("num_heads"),
        num_layers=args.pop("num_layers"),
        top_k=args.pop("top_k"),
        num_query_tokens=args.pop("num_3d_query_token"),
        use_multi_scale=args.pop("use_multi_scale", True),
        enable_diffts=args.pop("enable_diffts", True),
        enable_dmtp=args.pop("enable_dmtp", True),
        **args,
    )
    load_checked(model, sd, "the state dict", what="an official u2Tokenizer of this configuration")
    return model.eval()


def load_checked(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, what: str = ""
) -> None:
    """``load_state_dict(strict=True)`` raising :class:`Mu2CheckpointError` that lists missing,
    unexpected and mis-shaped keys with their shapes."""
    expected = model.state_dict()
    missing = [f"{k} {tuple(v.shape)}" for k, v in expected.items() if k not in state_dict]
    unexpected = [f"{k} {tuple(v.shape)}" for k, v in state_dict.items() if k not in expected]
    misshaped = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or misshaped:
        parts = [
            f"{title} ({len(items)}): " + "; ".join(items[:20]) + (" …" if len(items) > 20 else "")
            for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
            if items
        ]
        target = what or type(model).__name__
        raise Mu2CheckpointError(f"{source} does not match {target} — " + " | ".join(parts))
    model.load_state_dict(state_dict, strict=True)
