"""μ²Tokenizer: equivalence with the official code (fixture), the fixed defects, importance, training paths."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from engine.errors import Mu2CheckpointError, Mu2Error
from engine.model.attention import RelativeBiasSelfAttention, relative_position_index
from engine.model.kernels import linear
from engine.model.mu2tokenizer import Mu2Tokenizer
from engine.model.svr import DynamicMultiScalePooling, MultiScaleTokens, pool_tokens
from engine.official import u2tokenizer_from_official

REF = Path(__file__).parent / "data" / "official_u2tokenizer_ref.safetensors"
VARIANTS = json.loads(safe_open(str(REF), "pt").metadata()["variants"])


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(str(REF))


def _weights(ref: dict[str, torch.Tensor], variant: str, prefix: str = "") -> dict[str, torch.Tensor]:
    head = f"{variant}/weights/"
    return {prefix + k[len(head) :]: v for k, v in ref.items() if k.startswith(head)}


def _official_args(variant: str) -> dict:
    return {k: v for k, v in VARIANTS[variant].items() if k != "attn_type"} | {
        "enable_rpe": VARIANTS[variant]["attn_type"] == "rma"
    }


def _tiny(**kw) -> Mu2Tokenizer:
    args = dict(embed_size=16, num_heads=2, num_layers=2, top_k=8, num_query_tokens=4) | kw
    torch.manual_seed(0)
    return Mu2Tokenizer(**args).eval()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matches_official_outputs(ref, variant):
    meta = VARIANTS[variant]
    model = u2tokenizer_from_official(
        _weights(ref, variant), attn_type=meta["attn_type"], num_heads=meta["num_heads"], top_k=meta["top_k"],
        use_multi_scale=meta["use_multi_scale"],
    )  # fmt: skip
    with torch.no_grad():
        out = model(ref[f"{variant}/v_token"], ref[f"{variant}/t_token"])
    torch.testing.assert_close(out.tokens, ref[f"{variant}/tokens"], atol=1e-4, rtol=0)
    assert (out.dts_weights is None) == (not meta["enable_diffts"])


def test_official_constructor_arguments_and_prefix(ref):
    sd = _weights(ref, "rma", prefix="model.u2tokenizer.")
    sd["model.embed_tokens.weight"] = torch.zeros(3, 3)  # the rest of a full checkpoint is ignored
    meta = VARIANTS["rma"]
    model = u2tokenizer_from_official(sd, **_official_args("rma"), hidden_size=meta["embed_size"])
    assert not model.training
    with torch.no_grad():
        out = model(ref["rma/v_token"], ref["rma/t_token"])
    torch.testing.assert_close(out.tokens, ref["rma/tokens"], atol=1e-4, rtol=0)


def test_sizes_are_inferred_from_shapes(ref):
    model = u2tokenizer_from_official(_weights(ref, "rma", prefix="u2tokenizer."))
    assert (model.top_k, model.num_heads, model.num_query_tokens, model.embed_size) == (8, 2, 4, 16)


def test_direct_strict_load_uses_official_names(ref):
    meta = VARIANTS["rope"]
    model = _tiny(attn_type="rope")
    model.load_state_dict(_weights(ref, "rope"), strict=True)
    with torch.no_grad():
        out = model(ref["rope/v_token"], ref["rope/t_token"])
    torch.testing.assert_close(out.tokens, ref["rope/tokens"], atol=1e-4, rtol=0)
    assert meta["attn_type"] == "rope"


def test_mismatched_state_dict_lists_keys_and_shapes(ref):
    sd = _weights(ref, "rma")
    del sd["tta_module.layers_vt.0.norm_self.bias"]
    sd["tta_module.extra.weight"] = torch.zeros(2, 2)
    sd["tta_module.layer_linagg.linear_aggregator.wq.weight"] = torch.zeros(16, 8)
    with pytest.raises(Mu2CheckpointError) as err:
        u2tokenizer_from_official(sd, num_heads=2, top_k=8)
    msg = str(err.value)
    assert "tta_module.layers_vt.0.norm_self.bias (16,)" in msg
    assert "tta_module.extra.weight (2, 2)" in msg
    assert "linear_aggregator.wq.weight: checkpoint (16, 8), model (16, 16)" in msg


def test_enable_rpe_false_is_refused(ref):
    with pytest.raises(Mu2CheckpointError, match="MultiheadAttention"):
        u2tokenizer_from_official(_weights(ref, "rma"), enable_rpe=False)


def test_output_shapes_and_selection_weights():
    model = _tiny()
    v, t = torch.randn(2, 3, 6, 16), torch.randn(2, 5, 16)
    out = model(v, t)
    assert out.tokens.shape == (2, 4, 16)
    assert out.dts_weights.shape == (2, 18, 8)
    torch.testing.assert_close(out.dts_weights.sum(1), torch.ones(2, 8))
    assert out.token_importance.shape == (2, 3, 6)
    assert out.token_importance.min() >= 0
    torch.testing.assert_close(out.token_importance.sum((1, 2)), torch.ones(2))


def _capture(model: Mu2Tokenizer, v, t):
    """The DTS weights, DMTP gates and aggregation attention of one forward, via hooks."""
    seen = {}
    h1 = model.svt_module.register_forward_hook(lambda m, i, o: seen.update(visual=o[0], selection=o[1]))
    h2 = model.tta_module.layer_linagg.register_forward_hook(lambda m, i, o: seen.update(probs=o[1]))
    with torch.no_grad():
        out = model(v, t)
    h1.remove()
    h2.remove()
    return out, seen


@pytest.mark.parametrize("diffts", [True, False])
def test_token_importance_follows_its_definition(diffts):
    model = _tiny(top_k=6, enable_diffts=diffts)  # 6: the scale-4 window drops two tokens
    v, t = torch.randn(1, 3, 6, 16), torch.randn(1, 5, 16)
    out, seen = _capture(model, v, t)
    a = seen["probs"].mean(dim=(1, 2))[0]  # (P,) mean over heads and queries
    gates = seen["visual"].gates[0]
    # The multi-scale tokens as a (P, k) matrix of the selected tokens, written out by hand.
    rows = [torch.eye(6)]
    rows.append(torch.stack([torch.eye(6)[2 * j : 2 * j + 2].sum(0) / 2 for j in range(3)]))
    rows.append(torch.eye(6)[0:4].sum(0, keepdim=True) / 4)
    pool = torch.cat([r * g for r, g in zip(rows, gates)])
    per_selected = pool.T @ a
    if diffts:
        w = seen["selection"].weights[0]
    else:
        w = torch.zeros(18, 6)
        w[seen["selection"].indices[0], torch.arange(6)] = 1.0
        assert out.dts_weights is None
    expected = w @ per_selected
    torch.testing.assert_close(
        out.token_importance.flatten(), expected / expected.sum(), atol=1e-6, rtol=1e-5
    )


def test_question_mask_ignores_padding():
    model = _tiny()
    v, t = torch.randn(2, 3, 6, 16), torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with torch.no_grad():
        base = model(v, t).tokens
        torch.testing.assert_close(model(v, t, torch.ones(2, 5, dtype=torch.bool)).tokens, base)
        masked = model(v, t, mask).tokens
        t2 = t.clone()
        t2[1, 3:] = 100.0  # whatever sits in the padding
        torch.testing.assert_close(model(v, t2, mask).tokens, masked)
        short = model(v[1:], t[1:, :3]).tokens  # the same question without padding
        torch.testing.assert_close(masked[1:], short, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(masked[0], base[0])


def test_strict_official_attends_to_padding():
    model = _tiny(strict_official=True)
    v, t = torch.randn(1, 3, 6, 16), torch.randn(1, 5, 16)
    mask = torch.tensor([[True, True, False, False, False]])
    with torch.no_grad():
        torch.testing.assert_close(model(v, t, mask).tokens, model(v, t).tokens)


def test_relative_positions_beyond_table_are_clamped():
    idx = relative_position_index(6, 3)
    assert idx[0].tolist() == [2, 3, 4, 4, 4, 4]  # offsets 0, 1, 2, then clamped to +2
    assert idx[5].tolist() == [0, 0, 0, 0, 1, 2]
    model = _tiny(max_rel_pos=3)  # N = 6 tokens per chunk, Q = 4 queries
    out = model(torch.randn(1, 2, 6, 16), torch.randn(1, 5, 16))
    assert torch.isfinite(out.tokens).all()
    with pytest.raises(Mu2Error, match="relative-position table"):
        _tiny(max_rel_pos=3, strict_official=True)(torch.randn(1, 2, 6, 16), torch.randn(1, 5, 16))


def test_relative_bias_attention_matches_written_out_softmax():
    torch.manual_seed(0)
    att = RelativeBiasSelfAttention(8, 2, max_rel_pos=4)
    torch.nn.init.normal_(att.relative_bias)
    x = torch.randn(3, 5, 8)
    q, k, v = (lin(x).view(3, 5, 2, 4).transpose(1, 2) for lin in (att.wq, att.wk, att.wv))
    idx = (torch.arange(5)[None] - torch.arange(5)[:, None]).clamp(-3, 3) + 3
    scores = q @ k.transpose(-1, -2) / 2.0 + att.relative_bias[idx].permute(2, 0, 1)
    expected = att.dense((scores.softmax(-1) @ v).transpose(1, 2).reshape(3, 5, 8))
    torch.testing.assert_close(att(x), expected)


def test_rope_grows_its_table_unless_strict():
    model = _tiny(attn_type="rope", max_rel_pos=4)
    assert torch.isfinite(model(torch.randn(1, 2, 6, 16), torch.randn(1, 5, 16)).tokens).all()
    with pytest.raises(Mu2Error, match="rotary table"):
        _tiny(attn_type="rope", max_rel_pos=4, strict_official=True)(
            torch.randn(1, 2, 6, 16), torch.randn(1, 5, 16)
        )


def test_pooling_commutes_with_projection():
    torch.manual_seed(0)
    base = torch.randn(2, 7, 16)
    gates = torch.softmax(torch.randn(2, 3), dim=1)
    ms = MultiScaleTokens.build(base, (1, 2, 4), gates)
    assert ms.tokens.shape == (2, 7 + 3 + 1, 16)
    lin = torch.nn.Linear(16, 12)
    torch.testing.assert_close(ms.project(lin), lin(ms.tokens), atol=1e-6, rtol=1e-5)
    expected = F.avg_pool1d(base.transpose(1, 2), 2, 2).transpose(1, 2)
    torch.testing.assert_close(pool_tokens(base, 2), expected)


def test_dmtp_gates_official_constant_and_max_alternative():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 16)  # k = 8 selected tokens
    official = DynamicMultiScalePooling(16, (1, 2, 4), gate="official")
    torch.nn.init.normal_(official.gate_fc.weight)
    # The mean of window averages is the mean of the tokens: every scale gets the same logit (official defect).
    torch.testing.assert_close(official(x).gates, torch.full((2, 3), 1 / 3))
    alternative = DynamicMultiScalePooling(16, (1, 2, 4), gate="max")
    alternative.load_state_dict(official.state_dict())
    out = alternative(x)
    assert (out.gates - 1 / 3).abs().max() > 1e-2
    torch.testing.assert_close(out.gates.sum(1), torch.ones(2))
    expected = torch.cat([x * out.gates[:, :1, None], pool_tokens(x, 2) * out.gates[:, 1:2, None]], dim=1)
    torch.testing.assert_close(out.tokens[:, :12], expected)
    with pytest.raises(ValueError):
        _tiny(dmtp_gate="max", strict_official=True)


def test_bfloat16_forward_is_close_to_float32():
    model = _tiny()
    v, t = torch.randn(1, 3, 6, 16), torch.randn(1, 5, 16)
    with torch.no_grad():
        ref = model(v, t).tokens
        out = model.to(torch.bfloat16)(v.bfloat16(), t.bfloat16())
    assert out.tokens.dtype == torch.bfloat16
    torch.testing.assert_close(out.tokens.float(), ref, atol=0.1, rtol=0.05)


def test_backward_reaches_every_parameter_and_checkpointing_agrees():
    model = _tiny().train()
    v = torch.randn(1, 3, 6, 16, requires_grad=True)
    t = torch.randn(1, 5, 16)
    model(v, t).tokens.square().sum().backward()
    unused = {"tta_module.layer_linagg.linear_aggregator.wv.weight", "tta_module.layer_linagg.linear_aggregator.wv.bias",
              "tta_module.layer_linagg.linear_aggregator.dense.weight", "tta_module.layer_linagg.linear_aggregator.dense.bias"}  # fmt: skip
    for name, p in model.named_parameters():
        if name not in unused:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    grad_v = v.grad.clone()
    model.zero_grad()
    v.grad = None
    model.gradient_checkpointing = True
    model(v, t).tokens.square().sum().backward()
    for n, g in grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[n].grad, g, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(v.grad, grad_v, atol=1e-5, rtol=1e-4)


def test_kernel_linear_matches_f_linear_and_respects_wrappers():
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(linear(lin, x), F.linear(x, lin.weight, lin.bias))
        torch.testing.assert_close(linear(lin, x, bias=False), F.linear(x, lin.weight))
        lin16, x16 = torch.nn.Linear(16, 8).bfloat16(), x.bfloat16()
        torch.testing.assert_close(linear(lin16, x16), lin16(x16), atol=0, rtol=0)
    y = linear(lin, x)  # recording gradients: plain F.linear, differentiable
    y.sum().backward()
    assert lin.weight.grad is not None
    calls = []
    lin.register_forward_hook(lambda m, i, o: calls.append(1))
    with torch.no_grad():
        linear(lin, x)
    assert calls == [1]  # a hooked (e.g. adapter-wrapped) layer is called, not bypassed


def test_kernel_linear_packed_weight_follows_weight_changes():
    torch.manual_seed(0)
    lin, x = torch.nn.Linear(16, 8), torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(linear(lin, x, pack=True), F.linear(x, lin.weight, lin.bias))
        lin.weight.add_(1.0)  # what an optimizer step does: the packed copy must not go stale
        torch.testing.assert_close(linear(lin, x, pack=True), F.linear(x, lin.weight, lin.bias))
        lin.load_state_dict({"weight": torch.zeros(8, 16), "bias": torch.ones(8)})
        torch.testing.assert_close(linear(lin, x, pack=True), torch.ones(2, 5, 8))
    copy.deepcopy(lin)  # the packed copy lives outside the module: models still deep-copy (trl's reference)


def test_kernel_linear_gelu_is_gelu_after_linear():
    torch.manual_seed(0)
    lin, x = torch.nn.Linear(16, 32), torch.randn(3, 16) * 3
    expected = F.gelu(F.linear(x, lin.weight, lin.bias))
    with torch.no_grad():
        torch.testing.assert_close(linear(lin, x, activation="gelu", pack=True), expected)
    torch.testing.assert_close(linear(lin, x, activation="gelu"), expected, atol=0, rtol=0)  # autograd path
    with pytest.raises(ValueError, match="activation"):
        linear(lin, x, activation="relu")
