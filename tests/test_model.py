import pytest
import torch

from engine.model import Mu2Config, Mu2ForConditionalGeneration
from engine.text import build_prompt


def _tiny(seed=0):
    torch.manual_seed(seed)
    cfg = Mu2Config.preset("tiny")
    return Mu2ForConditionalGeneration(cfg).eval(), cfg


def _sharpen(model):
    """Make the μ²Tokenizer's attentions and selection sharp so that small conditioning effects show."""
    with torch.no_grad():
        for n, p in model.model.u2tokenizer.named_parameters():
            if n.endswith(("wq.weight", "wk.weight", "score_net.weight")):
                p.mul_(8)
            if n.endswith("relative_bias"):
                p.normal_(0, 2)
        for p in model.model.vision_tower.parameters():
            p.mul_(2)


def _batch(cfg, b=1, q_len=3, extra=0):
    T = cfg.preprocess["image_size"][0] // cfg.preprocess["chunk_depth"]
    d, h, w = cfg.vision_config["img_size"]
    px = torch.rand(b, T, d, h, w)
    ids = torch.cat([
        torch.full((b, 1), 2), torch.full((b, cfg.num_image_tokens), cfg.image_token_id),
        torch.randint(5, 50, (b, q_len + extra)),
    ], 1)
    return px, ids, ids[:, 1 + cfg.num_image_tokens : 1 + cfg.num_image_tokens + q_len]


def test_presets_are_data_and_round_trip(tmp_path):
    for name in ("tiny", "demo", "mu2-1b"):
        cfg = Mu2Config.preset(name)
        cfg.save_pretrained(tmp_path / name)
        again = Mu2Config.from_pretrained(tmp_path / name)
        assert again.to_dict() == cfg.to_dict()
    with pytest.raises(ValueError, match="unknown preset"):
        Mu2Config.preset("huge")


def test_mu2_1b_has_the_official_parameter_count():
    cfg = Mu2Config.preset("mu2-1b")
    with torch.device("meta"):
        model = Mu2ForConditionalGeneration(cfg)
    n = sum(p.numel() for p in model.parameters())  # tied LM head counted once
    assert n == 1_684_240_289
    parts = {k: sum(p.numel() for p in getattr(model.model, k).parameters()) for k in ("vision_tower", "mm_projector", "u2tokenizer")}
    assert parts == {"vision_tower": 87_389_184, "mm_projector": 5_771_264, "u2tokenizer": 355_265_441}


def test_forward_returns_logits_selection_and_full_length_hidden_states():
    model, cfg = _tiny()
    px, ids, q = _batch(cfg, b=2)
    out = model(input_ids=ids, pixel_values=px, question_ids=q)
    assert out.logits.shape == (2, ids.shape[1], cfg.text_config.vocab_size)
    T = px.shape[1]
    assert out.token_importance.shape[:2] == (2, T)
    torch.testing.assert_close(out.token_importance.sum((1, 2)), torch.ones(2), atol=1e-5, rtol=0)
    # trl's fused LM head runs the backbone (base_model_prefix) and needs one hidden state per input id
    hidden = model.base_model(input_ids=ids, pixel_values=px, question_ids=q).last_hidden_state
    assert hidden.shape[:2] == ids.shape


def test_the_volume_changes_the_logits_and_the_question_conditions_the_tokens():
    model, cfg = _tiny()
    px, ids, q = _batch(cfg)
    a = model(input_ids=ids, pixel_values=px, question_ids=q).logits
    b = model(input_ids=ids, pixel_values=px.flip(-1), question_ids=q).logits
    assert not torch.allclose(a, b, atol=1e-4)
    # At random init the SVR (attention without residual) and a near-uniform soft selection make all visual
    # tokens nearly alike, so the question's effect is small but must exist (the text cross-attention is live).
    _sharpen(model)
    t1 = model.get_image_features(px, q)
    t2 = model.get_image_features(px, q + 1)
    assert not torch.equal(t1.tokens, t2.tokens)
    assert not torch.equal(t1.token_importance, t2.token_importance)


def test_padded_question_is_masked_out():
    model, cfg = _tiny()
    _sharpen(model)
    px, ids, q = _batch(cfg)
    padded = torch.cat([q, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones_like(q), torch.zeros(1, 4, dtype=torch.long)], 1)
    ref = model.get_image_features(px, q).tokens
    masked = model.get_image_features(px, padded, mask).tokens
    unmasked = model.get_image_features(px, padded).tokens  # official behaviour: pads are attended to
    torch.testing.assert_close(masked, ref, atol=1e-6, rtol=1e-6)
    assert not torch.equal(unmasked, ref)


def test_placeholder_count_mismatch_is_a_clear_error():
    model, cfg = _tiny()
    px, ids, q = _batch(cfg)
    with pytest.raises(ValueError, match="image placeholder tokens"):
        model(input_ids=ids[:, 2:], pixel_values=px, question_ids=q)


def test_generate_works_with_volume_inputs_and_official_argument_names():
    model, cfg = _tiny()
    px, ids, q = _batch(cfg)
    a = model.generate(input_ids=ids, pixel_values=px, question_ids=q, max_new_tokens=5, do_sample=False)
    b = model.generate(input_ids=ids, images=px, question_ids=q[0], max_new_tokens=5, do_sample=False)
    assert a.shape[1] == ids.shape[1] + 5
    assert torch.equal(a, b)
    # cached decoding gives the same greedy tokens as recomputing everything
    c = model.generate(input_ids=ids, pixel_values=px, question_ids=q, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(a, c)


def test_training_step_with_gradient_checkpointing_and_bf16_autocast():
    model, cfg = _tiny()
    model.train()
    model.gradient_checkpointing_enable()
    px, ids, q = _batch(cfg, extra=4)
    labels = ids.clone()
    labels[:, : ids.shape[1] - 4] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids, pixel_values=px, question_ids=q, labels=labels)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith("model.u2tokenizer.") for n in grads)
    assert any(n.startswith("model.vision_tower.") for n in grads)
    assert torch.isfinite(out.loss)


def test_word_tokenizer_prompt_layout():
    from engine.assemble import BASE_WORDS
    from engine.text import make_word_tokenizer

    tok = make_word_tokenizer(BASE_WORDS, 256)
    p = build_prompt(tok, "no nodule .", 4, tok.convert_tokens_to_ids("<im_patch>"), answer="normal lungs .")
    ids = p["input_ids"].tolist()
    assert ids[0] == tok.bos_token_id and ids[1:5] == [255] * 4 and ids[-1] == tok.eos_token_id
    assert p["prompt_length"] == 1 + 4 + len(p["question_ids"])
    # trl tokenises the prompt string itself: the same layout must come out
    assert tok("<im_patch>" * 4 + "no nodule .")["input_ids"] == ids[: p["prompt_length"]]
