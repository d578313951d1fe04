import json

import pytest
import torch

from engine.checkpoint import check_folder, weights_hash
from engine.errors import Mu2CheckpointError
from engine.model import Mu2ForConditionalGeneration
from engine.official_folder import rename_official_key
from tests.helpers import tiny_checkpoint


def _inputs(model):
    cfg = model.config
    T = cfg.preprocess["image_size"][0] // cfg.preprocess["chunk_depth"]
    torch.manual_seed(1)
    px = torch.rand(1, T, *cfg.vision_config["img_size"])
    ids = torch.tensor([[2] + [cfg.image_token_id] * cfg.num_image_tokens + [7, 8, 9]])
    return px, ids, ids[:, -3:]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def test_new_checkpoint_folder_is_safetensors_only_and_reloads(tiny_dir):
    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md", "tokenizer.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    assert json.loads((tiny_dir / "config.json").read_text())["model_type"] == "mu2"
    a = Mu2ForConditionalGeneration.from_pretrained(tiny_dir).eval()
    b = Mu2ForConditionalGeneration.from_pretrained(tiny_dir).eval()
    px, ids, q = _inputs(a)
    torch.testing.assert_close(a(input_ids=ids, pixel_values=px, question_ids=q).logits,
                               b(input_ids=ids, pixel_values=px, question_ids=q).logits)
    assert weights_hash(tiny_dir).startswith("sha256:")


def test_bad_folders_give_clear_errors(tmp_path, tiny_dir):
    with pytest.raises(Mu2CheckpointError, match="does not exist"):
        check_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Mu2CheckpointError, match="no config.json"):
        Mu2ForConditionalGeneration.from_pretrained(tmp_path / "empty")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(Mu2CheckpointError, match="model_type 'bert'"):
        Mu2ForConditionalGeneration.from_pretrained(odd)


def test_official_folder_loads_without_remote_code(tmp_path, tiny_dir):
    """An official-format folder (u2llama config, official key names) gives the same logits."""
    from safetensors.torch import save_file

    ours = Mu2ForConditionalGeneration.from_pretrained(tiny_dir).eval()
    cfg = ours.config
    inverse = {}
    for key, value in ours.state_dict().items():
        if key == "lm_head.weight":
            continue
        if key.startswith("model.vision_tower."):
            off = "model.vision_tower.vision_tower." + key[len("model.vision_tower."):]
        elif key.startswith(("model.mm_projector.", "model.u2tokenizer.")):
            off = key
        else:
            off = "model." + key[len("model.language_model."):]
        assert rename_official_key(off) == key
        inverse[off] = value.contiguous().clone()
    folder = tmp_path / "official"
    folder.mkdir()
    save_file(inverse, str(folder / "model.safetensors"))
    text = cfg.text_config.to_dict()
    official = {k: v for k, v in text.items() if not k.startswith("_")} | {
        "model_type": "u2llama", "architectures": ["u2LlamaForCausalLM"], "image_channel": 1,
        "image_size": cfg.vision_config["img_size"], "patch_size": cfg.vision_config["patch_size"],
        "mm_hidden_size": cfg.vision_config["hidden_size"], "proj_pooling_size": cfg.projector_config["pool"],
        "u2t_num_heads": cfg.mu2tokenizer_config["num_heads"], "u2t_num_layers": cfg.mu2tokenizer_config["num_layers"],
        "u2t_top_k": cfg.mu2tokenizer_config["top_k"], "num_3d_query_token": cfg.mu2tokenizer_config["num_query_tokens"],
        "use_multi_scale": True, "enable_rpe": True, "enable_diffts": True, "enable_dmtp": True,
        "tie_word_embeddings": True,
    }
    (folder / "config.json").write_text(json.dumps(official))
    # the official ViT config has no head count: the tiny test model has 2, the official code fixes 12
    import engine.official_folder as of

    old = of.VIT_HEADS
    of.VIT_HEADS = cfg.vision_config["num_heads"]
    try:
        loaded = Mu2ForConditionalGeneration.from_pretrained(folder)
    finally:
        of.VIT_HEADS = old
    loaded.config.image_token_id = cfg.image_token_id
    px, ids, q = _inputs(ours)
    torch.testing.assert_close(loaded(images=px, input_ids=ids, question_ids=q).logits,
                               ours(pixel_values=px, input_ids=ids, question_ids=q).logits, atol=2e-5, rtol=1e-5)


def test_mismatched_weights_are_listed(tmp_path, tiny_dir):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in tiny_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    state = load_file(str(bad / "model.safetensors"))
    state.pop("model.u2tokenizer.query_tokens")
    state["model.bogus.weight"] = torch.zeros(2)
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(Mu2CheckpointError) as err:
        Mu2ForConditionalGeneration.from_pretrained(bad)
    assert "query_tokens" in str(err.value) and "bogus" in str(err.value)
