"""GREEN: score generated reports against references with a local GREEN judge model.

GREEN (Ostmeier et al., 2024; Stanford-AIMI/GREEN) asks a fine-tuned language model (e.g.
GREEN-RadLlama2-7b) to count clinically significant and insignificant errors of a candidate report
against a reference, and scores ``matched / (matched + significant errors)``. This module
reproduces the official pipeline at commit d72c195 -- the prompt verbatim, the chat template, left
padding, EOS appended to the prompt, greedy decoding to 2048 tokens in total, the response cleaning
and the parser (``training.green_parse``) -- with our own code and without ``trust_remote_code``.

Command line::

    python -m training.green --refs refs.txt --hyps hyps.txt --judge /models/GREEN-RadLlama2-7b \\
        [--out green.jsonl] [--batch-size 8] [--field report]

``--refs``/``--hyps`` are read by extension: ``.jsonl`` (one JSON object per line, the report in
``--field`` or in the first of ``report``, ``text``, ``report_text``; a bare JSON string is a
report), ``.csv`` (the column ``--field`` or the first of those names, or the only column), anything
else is plain text with one report per line. Under a multi-process ``accelerate launch`` (or
``torchrun``) the pairs are split between the processes and gathered on the main one, which writes
the results.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.errors import Mu2CheckpointError, Mu2Error, Mu2InputError
from training.green_parse import (
    CHAT_TEMPLATE,
    GreenResult,
    clean_response,
    compute_green,
    make_prompt,
    parse_green,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CHAT_TEMPLATE",
    "GreenJudge",
    "GreenResult",
    "compute_green",
    "make_prompt",
    "parse_green",
    "read_reports",
]

#: Prompt plus generated tokens (official ``max_length`` of both tokenization and ``generate``).
MAX_LENGTH = 2048


def _configure_tokenizer(tokenizer: Any) -> Any:
    """Set the judge tokenizer up exactly as the official code does.

    Official: ``AutoTokenizer.from_pretrained(..., add_eos_token=True, padding_side="left")``, its
    chat template, ``pad_token = eos_token`` and ``clean_up_tokenization_spaces = True``. With a
    Llama tokenizer under transformers 4.x that encodes every prompt as ``<s> ... </s>``. Passing
    ``add_eos_token`` at load time drops the BOS under transformers 5, so the two flags are set
    after loading instead, keeping the BOS behaviour the tokenizer folder has by default.
    """
    probe = tokenizer("a")["input_ids"]
    adds_bos = tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
    try:
        tokenizer.add_bos_token = adds_bos
        tokenizer.add_eos_token = True
    except (AttributeError, ValueError):  # tokenizers without the switch ignore it, as officially
        logger.debug("tokenizer %s has no add_eos_token switch", type(tokenizer).__name__)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.clean_up_tokenization_spaces = True
    tokenizer.padding_side = "left"
    return tokenizer


class GreenJudge:
    """A local GREEN judge model and the official generation and scoring around it.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Causal LM fine-tuned as a GREEN judge (e.g. GREEN-RadLlama2-7b), in eval mode.
    tokenizer : transformers.PreTrainedTokenizerBase
        Its tokenizer; it is configured in place as the official code does.
    max_length : int
        Prompt plus generated tokens; longer prompts are truncated (official: 2048).
    """

    def __init__(self, model: Any, tokenizer: Any, max_length: int = MAX_LENGTH) -> None:
        self.model = model.eval()
        self.tokenizer = _configure_tokenizer(tokenizer)
        self.max_length = max_length

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | Any | None = None,
        dtype: Any | None = None,
        max_length: int = MAX_LENGTH,
    ) -> GreenJudge:
        """Load a judge from a local folder (no downloads, no remote code).

        Parameters
        ----------
        path : str or Path
            Folder with ``config.json``, the weights and the tokenizer files.
        device : str or torch.device, optional
            Default ``"cuda"`` when available, else ``"cpu"``.
        dtype : torch.dtype, optional
            Default ``torch.float16`` on GPU (official) and ``torch.float32`` on CPU, where half
            precision is slow; greedy outputs may then differ slightly from the official ones.
        max_length : int
            See the class.

        Raises
        ------
        Mu2CheckpointError
            When the folder is missing or is not a loadable model folder.
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise Mu2CheckpointError(
                f"GREEN judge folder {path} not found or has no config.json; "
                "download a judge (e.g. StanfordAIMI/GREEN-radllama2-7b) and pass its folder."
            )
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if dtype is None:
            dtype = torch.float16 if device.type == "cuda" else torch.float32
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, padding_side="left")
            model = AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, dtype=dtype, device_map={"": str(device)}
            )
        except (OSError, ValueError, KeyError) as err:
            raise Mu2CheckpointError(f"cannot load a GREEN judge from {path}: {err}") from err
        logger.info("GREEN judge %s on %s (%s)", path.name, device, dtype)
        return cls(model, tokenizer, max_length=max_length)

    def generate(self, prompts: Sequence[str]) -> list[str]:
        """Greedy judge outputs for one batch of GREEN prompts, cleaned as the official code does."""
        import torch

        chats = [
            self.tokenizer.apply_chat_template(
                [{"from": "human", "value": p}, {"from": "gpt", "value": ""}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for p in prompts
        ]
        batch = self.tokenizer(
            chats, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length
        ).to(self.model.device)
        if batch["input_ids"].shape[1] >= self.max_length:
            logger.warning(
                "GREEN prompts fill max_length=%d tokens; the judge has no room to answer", self.max_length
            )
        with torch.inference_mode():
            outputs = self.model.generate(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=self.tokenizer.pad_token_id,
                max_length=self.max_length,
                do_sample=False,
                temperature=None,
                top_p=None,
            )
        # The official code decodes prompt and answer together and cuts the answer out after.
        decoded = self.tokenizer.batch_decode(outputs, skip_special_tokens=True)
        return [clean_response(text) for text in decoded]

    def score(
        self, refs: Sequence[str], hyps: Sequence[str], batch_size: int = 8, progress: bool = True
    ) -> list[GreenResult]:
        """GREEN for each (reference, candidate) pair.

        Parameters
        ----------
        refs, hyps : sequence of str
            References and candidates, pairwise.
        batch_size : int
            Prompts per ``generate`` call (official: 8).
        progress : bool
            Show a progress bar.

        Returns
        -------
        list of GreenResult
            In input order; ``response`` holds the judge's cleaned output.
        """
        if len(refs) != len(hyps):
            raise Mu2InputError(f"{len(refs)} references but {len(hyps)} candidates; they must pair up.")
        from tqdm.auto import tqdm

        prompts = [make_prompt(r, h) for r, h in zip(refs, hyps)]
        starts = range(0, len(prompts), batch_size)
        results: list[GreenResult] = []
        for start in tqdm(starts, desc="GREEN", unit="batch", disable=not progress):
            for text in self.generate(prompts[start : start + batch_size]):
                results.append(parse_green(text))
        return results


_FIELDS = ("report", "text", "report_text")


def _pick(keys: Sequence[str], field: str | None, path: Path) -> str:
    if field is not None:
        if field not in keys:
            raise Mu2InputError(f"{path} has no field {field!r}; it has {list(keys)}.")
        return field
    for name in _FIELDS:
        if name in keys:
            return name
    if len(keys) == 1:
        return keys[0]
    raise Mu2InputError(f"{path}: say which of {list(keys)} holds the report (--field).")


def read_reports(path: str | Path, field: str | None = None) -> list[str]:
    """Read reports from ``.jsonl``, ``.csv`` or plain text (one report per line).

    Parameters
    ----------
    path : str or Path
        The file.
    field : str, optional
        JSONL key or CSV column holding the report; default the first of ``report``, ``text``,
        ``report_text`` present (or a CSV's only column).

    Raises
    ------
    Mu2InputError
        When the file is missing or unreadable as described.
    """
    path = Path(path)
    if not path.is_file():
        raise Mu2InputError(f"report file {path} not found.")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            name = _pick(reader.fieldnames or [], field, path)
            return [row[name] or "" for row in reader]
    lines = path.read_text(encoding="utf-8").splitlines()
    if suffix != ".jsonl":
        return lines
    reports = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise Mu2InputError(f"{path}:{number} is not JSON: {err}") from err
        reports.append(item if isinstance(item, str) else str(item[_pick(list(item), field, path)]))
    return reports


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def _score_pairs(
    args: argparse.Namespace, refs: list[str], hyps: list[str]
) -> tuple[list[GreenResult], bool]:
    """Score all pairs; under a multi-process launch each process scores its share.

    Returns the results (complete on the main process) and whether this is the main process.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        judge = GreenJudge.from_pretrained(args.judge, device=args.device)
        return judge.score(refs, hyps, batch_size=args.batch_size), True
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    # Without cpu=True accelerate ignores a multi-process CPU launch (torchrun, MULTI_CPU).
    use_cpu = args.device == "cpu" or not torch.cuda.is_available() or _env_flag("ACCELERATE_USE_CPU")
    state = PartialState(cpu=use_cpu)
    judge = GreenJudge.from_pretrained(args.judge, device=args.device or state.device)
    with state.split_between_processes(list(range(len(refs)))) as mine:
        local = judge.score(
            [refs[i] for i in mine],
            [hyps[i] for i in mine],
            batch_size=args.batch_size,
            progress=state.is_main_process,
        )
    return gather_object(local), state.is_main_process


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: score reports with a local GREEN judge; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m training.green", description="GREEN with a local judge.")
    parser.add_argument("--refs", required=True, help="reference reports (.txt one per line, .jsonl, .csv)")
    parser.add_argument("--hyps", required=True, help="candidate reports, same order and format rules")
    parser.add_argument("--judge", required=True, help="local judge model folder (e.g. GREEN-RadLlama2-7b)")
    parser.add_argument("--out", default="green_results.jsonl", help="per-pair results (JSONL)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--field", default=None, help="JSONL key / CSV column holding the report")
    parser.add_argument(
        "--device",
        default=None,
        help="default: cuda if available (the own GPU of each launched process), else cpu",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        refs = read_reports(args.refs, args.field)
        hyps = read_reports(args.hyps, args.field)
        if len(refs) != len(hyps):
            raise Mu2InputError(f"{len(refs)} references but {len(hyps)} candidates; they must pair up.")
        if not (Path(args.judge) / "config.json").is_file():
            raise Mu2CheckpointError(
                f"GREEN judge folder {args.judge} not found or has no config.json; pass a local judge folder."
            )
        results, is_main = _score_pairs(args, refs, hyps)
    except Mu2Error as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not is_main:
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for i, (ref, hyp, result) in enumerate(zip(refs, hyps, results)):
            fh.write(json.dumps({"index": i, "reference": ref, "candidate": hyp, **result.to_dict()}) + "\n")
    scores = [r.score for r in results if r.score is not None]
    mean = statistics.fmean(scores) if scores else float("nan")
    std = statistics.pstdev(scores) if scores else float("nan")
    print(f"GREEN mean {mean:.4f} (std {std:.4f}) over {len(scores)} pairs; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
