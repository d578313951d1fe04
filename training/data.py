"""Datasets and collators that feed prepared volumes + token ids to Mu2 (SFT and DPO).

A training example is a prepared model input (``pixels`` (T, D, H, W) in [0, 1]), a question and an answer.
Inputs come from a manifest (volume path, question, answer), from ``reviews/inputs/<fingerprint>.npz``, or
from memory (phantoms). The official layout is kept: ``[BOS] + <im_patch> × Q + question + answer + EOS`` —
with BOS kept in training too (the official training overwrote it with the first image token).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import Mu2InputError

log = logging.getLogger(__name__)


@dataclass
class Example:
    pixels: np.ndarray | None
    question: str
    answer: str
    source: str = ""  # path or fingerprint, for error messages


def read_manifest(path: str | Path) -> list[dict]:
    """Rows of a manifest: JSONL or CSV with columns ``volume`` (path), ``question`` (optional), ``answer``."""
    path = Path(path)
    if not path.exists():
        raise Mu2InputError(f"manifest {path} does not exist")
    rows: list[dict] = []
    if path.suffix == ".csv":
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise Mu2InputError(f"{path} line {i} is not valid JSON: {err.msg}") from err
    for i, row in enumerate(rows, 1):
        if not row.get("volume") or not row.get("answer"):
            raise Mu2InputError(f"{path} row {i} needs 'volume' and 'answer'")
        vol = Path(row["volume"])
        if not vol.is_absolute():
            row["volume"] = str(path.parent / vol)
    if not rows:
        raise Mu2InputError(f"manifest {path} has no rows")
    return rows


def load_pixels(ref: str | Path, spec, search: list[Path] | None = None) -> np.ndarray:
    """Prepared pixels for ``ref``: a ``.npz`` from a review store, a fingerprint in ``search`` folders, or a volume."""
    from engine.preprocess import prepare
    from engine.volume import load_volume

    ref_s = str(ref)
    for folder in search or []:
        cand = Path(folder) / f"{ref_s}.npz"
        if cand.exists():
            ref_s = str(cand)
            break
    p = Path(ref_s)
    if p.suffix == ".npz":
        if not p.exists():
            raise Mu2InputError(f"prepared input {p} does not exist")
        with np.load(p, allow_pickle=False) as data:
            return np.asarray(data["pixels"], dtype=np.float32)
    if not p.exists():
        raise Mu2InputError(f"input {ref_s!r} is neither a file nor a known input fingerprint")
    return prepare(load_volume(p), spec).pixels


def pad_stack(seqs: list[torch.Tensor], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D sequences: (ids (B, L), mask (B, L))."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


class SFTDataset(torch.utils.data.Dataset):
    """Tokenised SFT examples; the loss covers the answer and EOS only."""

    def __init__(self, examples: list[Example], tokenizer, config):
        self.examples, self.tokenizer, self.config = examples, tokenizer, config

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        from engine.text import build_prompt

        ex = self.examples[i]
        p = build_prompt(self.tokenizer, ex.question, self.config.num_image_tokens, self.config.image_token_id, ex.answer)
        labels = p["input_ids"].clone()
        labels[: p["prompt_length"]] = -100
        return {
            "input_ids": p["input_ids"],
            "labels": labels,
            "question_ids": p["question_ids"],
            "pixel_values": torch.from_numpy(np.ascontiguousarray(ex.pixels, dtype=np.float32)),
        }


@dataclass
class SFTCollator:
    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        ids, mask = pad_stack([f["input_ids"] for f in features], self.pad_token_id)
        labels, _ = pad_stack([f["labels"] for f in features], -100)
        q, qmask = pad_stack([f["question_ids"] for f in features], self.pad_token_id)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "question_ids": q,
            "question_mask": qmask,
            "pixel_values": torch.stack([f["pixel_values"] for f in features]),
        }


@dataclass
class PreferenceCollator:
    """trl's preference collator plus the prepared volumes and questions (chosen half, then rejected half).

    Each example carries ``input`` (fingerprint or path) and ``question`` columns next to trl's token ids.
    """

    pad_token_id: int
    tokenizer: object
    spec: object
    search: list[Path]
    max_length: int | None = None

    def __post_init__(self):
        from trl.trainer.dpo_trainer import DataCollatorForPreference

        self.base = DataCollatorForPreference(pad_token_id=self.pad_token_id, max_length=self.max_length)
        self._cache: dict[str, torch.Tensor] = {}

    def _pixels(self, ref: str) -> torch.Tensor:
        if ref not in self._cache:
            self._cache[ref] = torch.from_numpy(load_pixels(ref, self.spec, self.search))
        return self._cache[ref]

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        out = self.base([{k: ex[k] for k in ex if k.endswith("_ids") or k.startswith("ref_")} for ex in examples])
        px = torch.stack([self._pixels(ex["input"]) for ex in examples])
        qs = [torch.tensor(self.tokenizer(ex["question"], add_special_tokens=False)["input_ids"]) for ex in examples]
        q, qmask = pad_stack(qs, self.pad_token_id)
        out["pixel_values"] = torch.cat([px, px])
        out["question_ids"] = torch.cat([q, q])
        out["question_mask"] = torch.cat([qmask, qmask])
        return out
