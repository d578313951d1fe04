"""GREEN: official prompt, official parser on real judge outputs, generation path with a tiny judge."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import pytest

from training.green import CHAT_TEMPLATE, GreenJudge, main, make_prompt, read_reports
from training.green_parse import (
    CATEGORIES,
    GreenResult,
    clean_response,
    compute_green,
    parse_error_counts,
    parse_green,
)

# sha256 of make_prompt("REF", "CAND"), checked equal to the official make_prompt @ d72c195.
OFFICIAL_PROMPT_SHA256 = "4e621f21f3a8802263136333c20f59e6b103d87179c675cea196e36e81cf6eb0"


def _output(sig: str = "", insig: str = "", matched: str = "2. A; B.") -> str:
    letters = "abcdef"
    sig = sig or "\n".join(f"({c}) x: 0." for c in letters)
    insig = insig or "\n".join(f"({c}) x: 0." for c in letters)
    return (
        f"\n[Explanation]:\nsome text\n\n[Clinically Significant Errors]:\n{sig}\n\n"
        f"[Clinically Insignificant Errors]:\n{insig}\n\n[Matched Findings]:\n{matched}"
    )


def test_prompt_is_the_official_prompt() -> None:
    prompt = make_prompt("REF", "CAND")
    assert hashlib.sha256(prompt.encode()).hexdigest() == OFFICIAL_PROMPT_SHA256
    assert "2. Reference Report:\n    REF\n" in prompt and "3. Candidate Report:\n    CAND\n" in prompt


def test_prompt_keeps_300_words_and_normalises_whitespace() -> None:
    reference = " ".join(f"w{i}" for i in range(400))
    prompt = make_prompt(reference, "a \n\t b {curly}")
    assert "w299 " not in prompt and "w299\n" in prompt and "w300" not in prompt
    assert "\n    a b {curly}\n" in prompt


def test_parser_matches_official_on_221_real_judge_outputs(realdata: Path) -> None:
    green = realdata / "green"
    texts: dict[str, list[str]] = {}
    with (green / "responses_test.csv").open(newline="", encoding="utf-8") as fh:
        texts["responses_test.csv"] = [r["generated response to prompt"] for r in csv.DictReader(fh)]
    for name in ("results_GREEN-Mistral-7b.csv", "results_GREEN-Phi2.csv"):
        with (green / name).open(newline="", encoding="utf-8") as fh:
            texts[name] = [r["evaluation"] for r in csv.DictReader(fh)]
    rows = json.loads((green / "test_repro_expected_outputs.json").read_text(encoding="utf-8"))["rows"]
    texts["test_repro_expected_outputs.json"] = [r["expected_green_analysis"] for r in rows]
    with (green / "official_parser_expected_counts.csv").open(newline="", encoding="utf-8") as fh:
        expected = list(csv.DictReader(fh))
    assert len(expected) == 221
    mismatches = []
    for row in expected:
        raw = texts[row["source_file"]][int(row["row"])]
        for text in (raw, clean_response(raw)):
            got = parse_green(text)
            ok = (
                got.matched_findings == int(row["matched_findings"])
                and got.significant == tuple(int(row[f"sig_{c}"]) for c in "abcdef")
                and got.insignificant == tuple(int(row[f"insig_{c}"]) for c in "abcdef")
                and math.isclose(got.score, float(row["green_score"]), abs_tol=1e-12)
            )
            if not ok:
                mismatches.append((row["source_file"], row["row"], got))
    assert mismatches == []


def test_parser_official_quirks() -> None:
    # 0 matched findings -> 0 whatever the errors; unparsable -> all zeros and 0
    assert parse_green(_output(matched="0.")).score == 0.0
    assert parse_green(_output(matched="No matched findings.")).score == 0.0
    empty = parse_green("the judge rambled")
    assert (empty.matched_findings, empty.significant, empty.score) == (0, (0,) * 6, 0.0)
    # the official for_reward path: missing sections give None
    strict = parse_green("the judge rambled", strict=True)
    assert (strict.matched_findings, strict.significant, strict.score) == (None, None, None)
    assert parse_error_counts(_output(), CATEGORIES[0], strict=True) == (0, [0] * 6)
    # a section starting with "No" counts 0; a matched count must lead its section
    assert parse_green(_output(sig="No errors.\n(a) x: 3.")).significant == (0,) * 6
    assert parse_green(_output(matched="Two. A; B.")).matched_findings == 0
    # counts, then the score formula on the significant ones only
    result = parse_green(_output(sig="(a) x: 1. A\n(b) x: 2. B; C", insig="(d) x: 4. D", matched="3. a"))
    assert result.significant == (1, 2, 0, 0, 0, 0) and result.insignificant == (0, 0, 0, 4, 0, 0)
    assert result.score == pytest.approx(3 / 6)
    # (1)-(6) labels are the fallback; sorted lines, the later duplicate wins
    assert parse_green(_output(sig="(2) x: 5.")).significant == (0, 5, 0, 0, 0, 0)
    assert parse_green(_output(sig="(a) x: 1.\n(a) x: 2.")).significant == (2, 0, 0, 0, 0, 0)
    assert compute_green(0, 5) == 0.0 and compute_green(None, 1) is None and compute_green(1, None) is None
    assert compute_green(2, 2) == 0.5


def test_clean_response_as_official() -> None:
    prompt_part = (
        "<|user|>\n... [Explanation]:\n    <Explanation>\n ...</s>\n<|assistant|>\n</s>\n<|assistant|>\n"
    )
    answer = "[Explanation]:\nwhy</s>"
    assert clean_response(prompt_part + answer) == "\nwhy"
    assert clean_response("a<|assistant|>b</s><unk>") == "b"
    assert clean_response("plain") == "plain"


def test_result_serialises_to_json() -> None:
    data = parse_green(_output(sig="(c) x: 1. left", matched="1. A")).to_dict()
    assert data["green"] == 0.5 and data["significant_total"] == 1
    assert (
        json.loads(json.dumps(data))["significant"][
            "(c) Misidentification of a finding's anatomic location/position"
        ]
        == 1
    )


# --- generation path with a tiny random judge ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_judge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 1-layer Llama and a word-level tokenizer, saved like a judge folder (offline)."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("judge")
    words = sorted(set(make_prompt("a", "b").split()) | {"<|user|>", "<|assistant|>", "[Explanation]:"})
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _judge(folder: Path, refs: list[str], hyps: list[str], new_tokens: int = 4) -> GreenJudge:
    judge = GreenJudge.from_pretrained(folder, device="cpu")
    # keep the test fast: room for a few generated tokens after the longest prompt
    longest = max(
        len(
            judge.tokenizer(
                judge.tokenizer.apply_chat_template(
                    [{"from": "human", "value": make_prompt(r, h)}, {"from": "gpt", "value": ""}],
                    tokenize=False,
                    add_generation_prompt=True,
                )
            )["input_ids"]
        )
        for r, h in zip(refs, hyps)
    )
    judge.max_length = longest + new_tokens
    return judge


def test_tiny_judge_scores_in_batches_greedily(tiny_judge_dir: Path) -> None:
    refs = ["a b", "a b c d e f g", "b"]
    hyps = ["a", "b", "a b"]
    judge = _judge(tiny_judge_dir, refs, hyps)
    tok = judge.tokenizer
    assert (
        tok.padding_side == "left" and tok.pad_token == tok.eos_token and tok.chat_template == CHAT_TEMPLATE
    )
    batch = tok(["a b", "a"], padding=True)
    assert batch["input_ids"][0][-1] == tok.eos_token_id  # EOS appended, as add_eos_token=True officially
    assert batch["attention_mask"][1][0] == 0  # the shorter one is padded on the left

    calls = []
    generate = judge.model.generate

    def spy(**kwargs):
        calls.append(kwargs)
        return generate(**kwargs)

    judge.model.generate = spy
    results = judge.score(refs, hyps, batch_size=2, progress=False)
    assert len(results) == 3 and all(isinstance(r, GreenResult) for r in results)
    assert [len(c["input_ids"]) for c in calls] == [2, 1]
    assert all(c["do_sample"] is False and c["max_length"] == judge.max_length for c in calls)
    assert all(c["pad_token_id"] == tok.eos_token_id for c in calls)
    again = judge.score(refs, hyps, batch_size=2, progress=False)
    assert [r.response for r in again] == [r.response for r in results]  # greedy: deterministic


def test_llama_tokenizer_gets_bos_and_eos_as_officially(tmp_path: Path) -> None:
    """transformers 4.x + add_eos_token=True encoded GREEN prompts as <s> ... </s>; so do we."""
    from transformers import AutoTokenizer, LlamaTokenizer

    from training.green import _configure_tokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, "a": 4, "b": 5, "▁a": 6, "▁b": 7}
    llama = LlamaTokenizer(vocab=vocab, merges=[("▁", "a"), ("▁", "b")], add_bos_token=True)
    llama.save_pretrained(tmp_path)
    tok = _configure_tokenizer(AutoTokenizer.from_pretrained(tmp_path, local_files_only=True))
    assert tok(["a b", "a"], padding=True)["input_ids"] == [[1, 6, 7, 2], [2, 1, 6, 2]]


def test_cli_scores_and_writes_jsonl(tiny_judge_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    refs, hyps = tmp_path / "refs.txt", tmp_path / "hyps.jsonl"
    refs.write_text("a b\nb a\n", encoding="utf-8")
    hyps.write_text('{"report": "a"}\n"b"\n', encoding="utf-8")
    judge = _judge(tiny_judge_dir, ["a b", "b a"], ["a", "b"], new_tokens=2)
    monkeypatch.setattr(GreenJudge, "from_pretrained", classmethod(lambda cls, *a, **k: judge))
    out = tmp_path / "res" / "green.jsonl"
    rc = main(["--refs", str(refs), "--hyps", str(hyps), "--judge", str(tiny_judge_dir), "--out", str(out)])
    assert rc == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(x["index"], x["reference"], x["candidate"]) for x in lines] == [(0, "a b", "a"), (1, "b a", "b")]
    assert all("green" in x and "matched_findings" in x for x in lines)
    assert "GREEN mean" in capsys.readouterr().out


def test_cli_missing_judge_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    refs = tmp_path / "r.txt"
    refs.write_text("a\n", encoding="utf-8")
    rc = main(["--refs", str(refs), "--hyps", str(refs), "--judge", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: GREEN judge folder") and err.count("\n") == 1


def test_from_pretrained_missing_folder_raises(tmp_path: Path) -> None:
    from engine.errors import Mu2CheckpointError

    with pytest.raises(Mu2CheckpointError, match="not found"):
        GreenJudge.from_pretrained(tmp_path / "nope")


def test_read_reports_formats(tmp_path: Path) -> None:
    txt = tmp_path / "a.txt"
    txt.write_text("one\ntwo, with comma\n", encoding="utf-8")
    assert read_reports(txt) == ["one", "two, with comma"]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"text": "one"}\n\n{"text": "two"}\n', encoding="utf-8")
    assert read_reports(jsonl) == ["one", "two"]
    table = tmp_path / "a.csv"
    table.write_text('id,findings\n1,"x, y"\n2,z\n', encoding="utf-8")
    assert read_reports(table, field="findings") == ["x, y", "z"]
    from engine.errors import Mu2InputError

    with pytest.raises(Mu2InputError, match="--field"):
        read_reports(table)
