"""Drafting: Volume → ``Draft`` (report text, token selection, heatmap on the volume's grid, timings).

The heatmap is the μ²Tokenizer's ``token_importance`` (see ``engine.model.mu2tokenizer``): the share of
the visual tokens the LM received that each projector token contributed, through the differentiable token
selection, the multi-scale pooling and the final aggregation. ``GridMap.to_volume`` carries it back onto
the original voxel grid (crop, resize and padding undone). It shows what the model used, not where disease is.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.errors import Mu2CheckpointError, Mu2Error
from engine.volume import Volume

log = logging.getLogger(__name__)

HEATMAP_LABEL = "tokens selected by μ²Tokenizer"
_SECTION = re.compile(r"(?im)^\s*(findings|impression)\s*:\s*")


@dataclass
class Sampling:
    """Decoding settings; ``do_sample=False`` is greedy and deterministic."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None


@dataclass
class Draft:
    text: str
    findings: str
    impression: str
    question: str
    sampling: dict
    model_id: str
    weights_hash: str
    fingerprint: str
    case_id: str
    selection: np.ndarray  # (T, N) token importance on the token grid
    heatmap: np.ndarray  # float32, the original volume's (z, y, x) grid, max 1
    timings: dict = field(default_factory=dict)
    n_tokens: int = 0
    cancelled: bool = False
    demo_model: bool = False
    model_input: object | None = field(default=None, repr=False)  # engine.preprocess.ModelInput (PHI-free)

    def to_json(self) -> dict:
        """Everything but the arrays, JSON-ready."""
        d = {k: v for k, v in asdict(self).items() if k not in ("selection", "heatmap", "model_input")}
        d["heatmap_label"] = HEATMAP_LABEL
        d["token_grid"] = list(self.selection.shape)
        return d


def split_sections(text: str) -> tuple[str, str]:
    """(findings, impression) when the model wrote ``FINDINGS:`` / ``IMPRESSION:`` headers, else (text, "")."""
    parts = _SECTION.split(text)
    found = {parts[i].lower(): parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
    if not found:
        return text.strip(), ""
    return found.get("findings", parts[0].strip()), found.get("impression", "")


def tidy_text(text: str) -> str:
    """Undo word-level detokenisation spacing (``"mm ."`` → ``"mm."``) without touching content."""
    text = re.sub(r"\s+([.,:;%)])", r"\1", text)
    text = re.sub(r"([(])\s+", r"\1", text)
    return re.sub(r"[ \t]+", " ", text).strip()


class _Streamer:
    """Feeds ``on_token`` with new text as tokens arrive, and times the first token (end of prefill)."""

    def __init__(self, tokenizer, on_token: Callable[[str], None] | None):
        self.tokenizer, self.on_token = tokenizer, on_token
        self.ids: list[int] = []
        self.sent = ""
        self.first_token_time: float | None = None

    def put(self, value: torch.Tensor) -> None:
        ids = value.reshape(-1).tolist()
        if not ids:
            return
        if self.first_token_time is None:
            self.first_token_time = time.perf_counter()
        self.ids.extend(ids)
        if self.on_token is not None:
            text = tidy_text(self.tokenizer.decode(self.ids, skip_special_tokens=True))
            if text.startswith(self.sent) and len(text) > len(self.sent):
                self.on_token(text[len(self.sent) :])
                self.sent = text

    def end(self) -> None:
        pass


class _Cancel:
    def __init__(self, event: threading.Event | None):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        stop = self.event is not None and self.event.is_set()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise Mu2Error(f"unknown device {device!r}; use auto, cpu or cuda") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise Mu2Error("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return dev


def _pick_dtype(dtype: str | torch.dtype, device: torch.device, n_params: int) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # Large models in bf16 on a CPU: fp32 would double the memory of a 1B model (over 6 GB).
        return torch.bfloat16 if n_params > 300_000_000 else torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise Mu2Error(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return names[dtype]


class Drafter:
    """Drafts reports with one loaded checkpoint. Thread-safe for one draft at a time."""

    def __init__(self, model, tokenizer, weights_dir: str | Path, compile_decode: bool = False):
        from engine.checkpoint import weights_hash
        from engine.preprocess import PrepSpec

        self.model, self.tokenizer = model, tokenizer
        self.weights_dir = Path(weights_dir)
        self.spec = PrepSpec.from_dict(model.config.preprocess)
        self.model_id = self.weights_dir.name
        self.weights_hash = weights_hash(self.weights_dir)
        self.compile_decode = compile_decode
        card = self.weights_dir / "README.md"
        self.model_card = card.read_text() if card.exists() else ""
        self.demo_model = "synthetic phantoms only" in self.model_card
        self.load_seconds = 0.0
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def default_question(self) -> str:
        return self.model.config.default_question

    @classmethod
    def from_pretrained(
        cls, weights_dir: str | Path | None = None, device: str = "auto", dtype: str | torch.dtype = "auto",
        compile_decode: bool = False,
    ) -> Drafter:
        """Load a checkpoint folder (default: the bundled demo model), weights memory-mapped from safetensors."""
        from engine.checkpoint import check_folder, load_tokenizer
        from engine.model import Mu2ForConditionalGeneration

        t0 = time.perf_counter()
        if weights_dir is None:
            from engine.weights import demo_weights_dir

            weights_dir = demo_weights_dir()
        folder = check_folder(weights_dir)
        dev = _pick_device(device)
        size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        dt = _pick_dtype(dtype, dev, n_params=size // 2)
        model = Mu2ForConditionalGeneration.from_pretrained(folder, dtype=dt)
        model.to(dev).eval()
        tok = load_tokenizer(folder)
        drafter = cls(model, tok, folder, compile_decode=compile_decode)
        drafter.load_seconds = time.perf_counter() - t0
        log.info("loaded %s on %s (%s) in %.1f s", folder.name, dev, dt, drafter.load_seconds)
        return drafter

    def draft(
        self,
        volume: Volume,
        question: str | None = None,
        max_new_tokens: int = 256,
        sampling: Sampling | dict | None = None,
        on_token: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
        on_stage: Callable[[str], None] | None = None,
        min_new_tokens: int = 0,
    ) -> Draft:
        """Draft a report for ``volume``; ``on_token`` streams text, ``cancel`` (an Event) stops promptly."""
        from engine.preprocess import prepare

        if isinstance(sampling, dict):
            sampling = Sampling(**sampling)
        sampling = sampling or Sampling()
        question = (question or self.default_question).strip()
        stage = on_stage or (lambda name: None)
        with self._lock:
            timings = {"load": round(self.load_seconds, 4)}
            t0 = time.perf_counter()
            stage("prepare")
            model_input = prepare(volume, self.spec)
            timings["prepare"] = time.perf_counter() - t0
            if cancel is not None and cancel.is_set():
                raise Mu2Error("the draft was cancelled")

            stage("encode")
            t0 = time.perf_counter()
            embeds, attn, selection = self._encode(model_input.pixels, question)
            timings["encode"] = time.perf_counter() - t0

            stage("generate")
            ids, streamer, t_gen, cancelled = self._generate(
                embeds, attn, max_new_tokens, sampling, on_token, cancel, min_new_tokens
            )
            t_first = streamer.first_token_time or time.perf_counter()
            timings["prefill"] = t_first - t_gen
            timings["decode"] = time.perf_counter() - t_first
            n = len(ids)
            timings["tokens_per_s"] = (n - 1) / timings["decode"] if n > 1 and timings["decode"] > 0 else 0.0

            stage("heatmap")
            t0 = time.perf_counter()
            sel = selection.float().cpu().numpy()[0]
            heat = model_input.grid_map.to_volume(sel).astype(np.float32)
            peak = float(heat.max()) if heat.size else 0.0
            if peak > 0:
                heat /= peak
            timings["heatmap"] = time.perf_counter() - t0

        text = tidy_text(self.tokenizer.decode(ids, skip_special_tokens=True))
        findings, impression = split_sections(text)
        return Draft(
            text=text,
            findings=findings,
            impression=impression,
            question=question,
            sampling=asdict(sampling) | {"max_new_tokens": max_new_tokens},
            model_id=self.model_id,
            weights_hash=self.weights_hash,
            fingerprint=model_input.fingerprint,
            case_id=volume.case_id,
            selection=sel,
            heatmap=heat,
            timings={k: round(v, 4) for k, v in timings.items()},
            n_tokens=n,
            cancelled=cancelled,
            demo_model=self.demo_model,
            model_input=model_input,
        )

    @torch.inference_mode()
    def _encode(self, pixels: np.ndarray, question: str):
        from engine.text import build_prompt

        cfg = self.model.config
        prompt = build_prompt(self.tokenizer, question, cfg.num_image_tokens, cfg.image_token_id)
        dev = self.device
        px = torch.from_numpy(np.ascontiguousarray(pixels))[None].to(dev, self.model.dtype)
        q = prompt["question_ids"][None].to(dev)
        out = self.model.get_image_features(px, q, prompt["question_mask"][None].to(dev))
        ids = prompt["input_ids"][None].to(dev)
        embeds = self.model.get_input_embeddings()(ids)
        mask = (ids == cfg.image_token_id).unsqueeze(-1)
        embeds = embeds.masked_scatter(mask, out.tokens.to(embeds.dtype))
        return embeds, prompt["attention_mask"][None].to(dev), out.token_importance

    @torch.inference_mode()
    def _generate(self, embeds, attn, max_new_tokens, sampling: Sampling, on_token, cancel, min_new_tokens=0):
        from transformers import StoppingCriteriaList

        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        streamer = _Streamer(self.tokenizer, on_token)
        kwargs = dict(
            inputs_embeds=embeds,
            attention_mask=attn,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            do_sample=sampling.do_sample,
            repetition_penalty=sampling.repetition_penalty,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_Cancel(cancel)]),
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        if sampling.do_sample:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if self.compile_decode:
            kwargs["cache_implementation"] = "static"
        t0 = time.perf_counter()
        try:
            out = self.model.generate(**kwargs)
        except Exception as err:  # noqa: BLE001 - any failure of the compiled path falls back to eager
            if not self.compile_decode:
                raise
            log.warning("static-cache/compiled decoding failed (%s); falling back to eager decoding", err)
            self.compile_decode = False
            kwargs.pop("cache_implementation")
            streamer.__init__(self.tokenizer, on_token)
            out = self.model.generate(**kwargs)
        ids = out[0].tolist()
        eos = self.tokenizer.eos_token_id
        if ids and ids[-1] == eos:
            ids = ids[:-1]
        cancelled = cancel is not None and cancel.is_set()
        return ids, streamer, t0, cancelled


def load_drafter_or_error(weights_dir, device="auto", dtype="auto") -> Drafter:
    try:
        return Drafter.from_pretrained(weights_dir, device=device, dtype=dtype)
    except Mu2CheckpointError:
        raise
    except (OSError, ValueError, RuntimeError) as err:
        raise Mu2CheckpointError(f"cannot load weights from {weights_dir}: {err}") from err
