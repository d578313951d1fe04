"""The shipped demo model: trained on synthetic phantoms, and the closed review → DPO loop on it.

``python -m training.demo --out DIR [--seed S] [--n-train N] [--epochs E]`` trains the ``demo`` preset
on ``N`` phantoms (``engine.phantom``; every finding kind, about 20% normal studies) with the
transformers Trainer that ``training.sft`` uses, on a CPU, reproducibly for a given seed, and writes a
Mu2 checkpoint whose model card says it was trained on synthetic phantoms only.

A model this small, trained from scratch for minutes, learns the report template long before it
learns to look at the image. Demo training therefore runs in two stages: first the vision side alone
(``pretrain_vision``) with losses that use the phantoms' ground truth, then SFT with the ViT and projector
frozen. The training-only heads are removed before saving (the model card lists them):

* selection: the mean differentiable-token-selection weight of every visual token is pulled
  (cross-entropy) toward the cells of focal lesions — "token selection supervised with phantom lesion
  masks" — so the heatmap looks at the lesions;
* token probe: a linear layer over the projector tokens says which finding kinds each token cell shows;
* depth head: a linear layer over the projector tokens says which chunk the token comes from;
* study head: a linear layer over the (flattened) visual tokens the LM receives says which findings the
  study has, where, and how large a nodule is, so that those tokens carry what the report needs.

``python -m training.demo --closed-loop [--model DIR] [--out DIR] [--n-review N] [--n-eval N]`` runs
``training.simulated_radiologist.closed_loop``: review → DPO → before/after evaluation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.phantom_findings import KINDS, LOBES
from training.data import Example, SFTCollator, SFTDataset
from training.evaluate import FOCAL_KINDS, phantom_seeds
from training.simulated_radiologist import LOOP_DEFAULTS, closed_loop

log = logging.getLogger(__name__)

CARD_NOTES = (
    "Trained on synthetic phantoms only. A demonstration, not for clinical use.\n\n"
    "Training data: {n_train} synthetic chest CT phantoms (`engine.phantom`, seeds {seeds}) with reports of "
    "their ground-truth findings in one fixed phrasing; `python -m training.demo` (seed {seed}, {minutes:.1f} min "
    "on a CPU) in two stages. Stage 1 ({vision_steps} steps, no language model): the ViT, projector and "
    "μ²Tokenizer learnt from the phantoms' ground truth through training-only heads, not part of this "
    "checkpoint: which finding kinds each projector token shows (weight {probe_weight}; {probe_kind}), which chunk it comes "
    "from (weight {depth_weight}), and which findings, lobes, effusion sides and nodule sizes the study has, read "
    "from the visual tokens the LM receives (weight {study_weight}); token selection supervised with phantom "
    "lesion masks (an auxiliary cross-entropy pulled the μ²Tokenizer's mean selection weight toward the token "
    "cells of focal lesions, weight {aux_weight}). Stage 2: {epochs} epochs of SFT with the ViT and projector "
    "frozen; the μ²Tokenizer kept its study head and selection loss. Word-level tokenizer built from the "
    "phantom report vocabulary.{extra}"
)
# Training reports use one fixed phrasing (``report_for(findings, PHRASING_SEED)``) instead of each phantom's
# random wording: the wording then follows from the findings, so what is left to learn is the findings.
# Evaluation still compares drafts with each phantom's own randomly worded report.
PHRASING_SEED = 0
# Initial sharpness of the μ²Tokenizer (see init_sharp_tokenizer): SVR self bias, DTS score and aggregation gains.
SVR_SELF_BIAS, SCORE_GAIN, AGG_GAIN = 10.0, 1.0, 3.0
LOBAR = ("Lung nodule", "Consolidation", "Atelectasis")
NODULE_BINS = (10.0, 20.0)  # study head: nodule < 10, 10–19, >= 20 mm
N_STUDY = len(KINDS) + len(LOBAR) * len(LOBES) + 2 + len(NODULE_BINS) + 1


@dataclass
class DemoConfig:
    """Options of ``train_demo`` (the command line has one flag per field)."""

    seed: int = 0
    # 4,000 phantoms (with 2.4 SFT epochs for the same number of steps; 24.6 min) measured no better on seeds 0 / 7:
    # GREEN-style 0.41 / 0.38 against 0.39 / 0.39, hit rate 0.41 / 0.50 against 0.42 / 0.49.
    n_train: int = 1600
    # Stage 1: vision side with the phantom heads only. 6,000 steps (36.3 min in all) measured no better on
    # held-out seeds 0 / 7: GREEN-style 0.37 / 0.41 against 0.39 / 0.39, hit rate 0.46 / 0.46 against 0.42 / 0.49.
    vision_steps: int = 3000
    # lr 1e-3 with aux_weight 0.1 (24.9 min in all) learnt pleural effusion and consolidation faster in stage 1
    # but measured no better on held-out seeds 0 / 7: GREEN-style 0.41 / 0.38 against 0.39 / 0.39, hit rate
    # 0.31 / 0.47 against 0.42 / 0.49.
    vision_lr: float = 3e-4
    epochs: float = 6.0  # stage 2: SFT with the ViT and projector frozen
    batch_size: int = 8
    lr: float = 1e-3
    aux_weight: float = 1.0
    probe_weight: float = 1.0
    probe_balanced: int = 1  # token probe: mean over positive cells + mean over the rest, per kind
    depth_weight: float = 1.0
    study_weight: float = 3.0
    lm_vision_after: float = 0.3  # fraction of the SFT steps before the LM loss reaches the μ²Tokenizer
    lesion_share: float = 0.7
    thumbnails: int = 1
    exclude_kinds: tuple[str, ...] = ()
    workers: int = 2
    max_steps: int = -1
    cache: str | None = None


@dataclass
class PhantomExample(Example):
    """An SFT example plus the phantom's training-only targets.

    target : (T, N) where the selection should look (sums to 1), or None without focal findings.
    token_kinds : (T·N, len(KINDS)) uint8, which finding kinds touch each token cell.
    study : (N_STUDY,) float32 study labels (``study_labels``).
    """

    target: np.ndarray | None = None
    token_kinds: np.ndarray | None = None
    study: np.ndarray | None = None


# --- targets ----------------------------------------------------------------------------------------------


def token_coverage(mask: np.ndarray, grid_map) -> np.ndarray:
    """Fraction of each token cell's voxels that ``mask`` covers: ``(z, y, x) bool -> (T, N) float32``."""
    g = grid_map.token_grid_shape
    strides = (g[1] * g[2], g[2], 1)
    flat = np.zeros(mask.shape, dtype=np.int64)
    inside = np.ones(mask.shape, dtype=bool)
    for a in range(3):
        cells = grid_map.cell_index(a)  # indexed along volume axis ``axes[a]``, -1 outside the crop
        shape = [1, 1, 1]
        shape[grid_map.axes[a]] = -1
        flat = flat + (np.maximum(cells, 0) * strides[a]).reshape(shape)
        inside = inside & (cells >= 0).reshape(shape)
    n = int(np.prod(g))
    total = np.bincount(flat[inside], minlength=n).astype(np.float32)
    hit = np.bincount(flat[inside & mask], minlength=n).astype(np.float32)
    # (Gz, Gy, Gx) row-major is chunk-major too, so (T, N) is a plain reshape (see GridMap.as_grid).
    return (hit / np.maximum(total, 1.0)).reshape(grid_map.n_chunks, grid_map.tokens_per_chunk)


def lesion_target(findings, masks, grid_map, lesion_share: float = 0.7) -> np.ndarray | None:
    """Where the selection should look: ``(T, N)`` summing to 1, or None without focal findings.

    Each focal finding contributes equal mass spread over the token cells within one cell of its mask
    (the tolerance of the heatmap hit rate), so cells near several lesions weigh most; the rest
    (``1 - lesion_share``) is uniform, which keeps some selections free for the rest of the chest.
    """
    from scipy import ndimage

    parts = []
    for f, m in zip(findings, masks):
        if f.kind in FOCAL_KINDS and m.any():
            cover = grid_map.as_grid(token_coverage(m, grid_map)) > 0
            near = ndimage.binary_dilation(cover, structure=np.ones((3, 3, 3), dtype=bool))
            parts.append(near / near.sum())
    if not parts:
        return None
    lesion = np.mean(parts, axis=0).reshape(grid_map.n_chunks, grid_map.tokens_per_chunk)
    return (lesion_share * lesion + (1.0 - lesion_share) / lesion.size).astype(np.float32)


def token_kinds(findings, masks, grid_map, min_cover: float = 0.1) -> np.ndarray:
    """``(T·N, len(KINDS))`` uint8: 1 where a finding of that kind fills at least ``min_cover`` of the cell.

    A cell that a lesion only grazes looks like its neighbours and would be a noisy label; a lesion too
    small to fill ``min_cover`` of any cell marks the cell it fills most.
    """
    out = np.zeros((grid_map.n_chunks * grid_map.tokens_per_chunk, len(KINDS)), dtype=np.uint8)
    for f, m in zip(findings, masks):
        cover = token_coverage(m, grid_map).reshape(-1)
        if cover.max() > 0:
            out[:, KINDS.index(f.kind)] |= (cover >= min(min_cover, cover.max())).astype(np.uint8)
    return out


def study_labels(findings) -> np.ndarray:
    """Kinds present; lobe of each lobar kind; pleural effusion right/left; nodule size bin (one-hot)."""
    y = np.zeros(N_STUDY, dtype=np.float32)
    lobes, sides = len(KINDS), len(KINDS) + len(LOBAR) * len(LOBES)
    for f in findings:
        y[KINDS.index(f.kind)] = 1.0
        if f.kind in LOBAR and f.lobe:
            y[lobes + LOBAR.index(f.kind) * len(LOBES) + LOBES.index(f.lobe)] = 1.0
        if f.kind == "Pleural effusion":
            y[sides] = float(f.side in ("right", "bilateral"))
            y[sides + 1] = float(f.side in ("left", "bilateral"))
        if f.kind == "Lung nodule" and f.size_mm:
            y[sides + 2 + int(np.searchsorted(NODULE_BINS, f.size_mm, side="right"))] = 1.0
    return y


# --- data -------------------------------------------------------------------------------------------------


def _phantom_example(job: tuple) -> PhantomExample:
    seed, spec_dict, question, cfg = job
    path = None
    if cfg.cache:
        import hashlib

        key = json.dumps(
            [spec_dict, sorted(cfg.exclude_kinds), cfg.lesion_share, PHRASING_SEED, 5], sort_keys=True
        )
        path = Path(cfg.cache) / f"{hashlib.sha256(key.encode()).hexdigest()[:12]}-{seed}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            target = arrays["target"] if arrays["target"].size else None
            return PhantomExample(
                arrays["pixels"],
                question,
                str(arrays["report"]),
                f"phantom-{seed}",
                target,
                arrays["token_kinds"],
                arrays["study"],
            )
    from engine.phantom import make_phantom, report_for
    from engine.phantom_findings import draw_findings
    from engine.preprocess import PrepSpec, prepare

    findings = None
    if cfg.exclude_kinds:  # a weaker start for the closed loop: these kinds never appear in training
        drawn = draw_findings(np.random.default_rng([seed, 1]))
        findings = [f for f in drawn if f.kind not in cfg.exclude_kinds]
    ph = make_phantom(seed, findings=findings)
    mi = prepare(ph.volume, PrepSpec.from_dict(spec_dict))
    ex = PhantomExample(
        mi.pixels.astype(np.float16),
        question,
        report_for(ph.findings, PHRASING_SEED),
        f"phantom-{seed}",
        lesion_target(ph.findings, ph.masks, mi.grid_map, cfg.lesion_share),
        token_kinds(ph.findings, ph.masks, mi.grid_map),
        study_labels(ph.findings),
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        target = ex.target if ex.target is not None else np.zeros(0, np.float32)
        np.savez(
            tmp, pixels=ex.pixels, report=ex.answer, target=target, token_kinds=ex.token_kinds, study=ex.study
        )
        tmp.replace(path)
    return ex


def phantom_examples(seeds, spec_dict: dict, question: str, cfg: DemoConfig) -> list[PhantomExample]:
    """Phantoms → prepared examples (pixels kept as float16 to halve the memory), in seed order."""
    from tqdm import tqdm

    jobs = [(int(s), spec_dict, question, cfg) for s in seeds]
    if cfg.workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(cfg.workers) as pool:
            it = pool.imap(_phantom_example, jobs, chunksize=8)
            return list(tqdm(it, total=len(jobs), desc="phantoms"))
    return [_phantom_example(j) for j in tqdm(jobs, desc="phantoms")]


def report_vocabulary(n_reports: int = 5000, seed: int = 0) -> list[str]:
    """Every word the phantom report writer uses (sampled from ``n_reports`` random studies), plus 0–99."""
    import re

    from engine.phantom_findings import draw_findings, resolve_findings
    from engine.phantom_report import report_for

    split = re.compile(r"\d+|[A-Za-z]+|[^A-Za-z\d]")  # the word tokenizer's own pre-tokenisation
    words: set[str] = {str(i) for i in range(100)} | {"FINDINGS", "IMPRESSION", ":", "."}
    for i in range(n_reports):
        rng = np.random.default_rng([seed, 99, i])
        text = report_for(resolve_findings(draw_findings(rng), rng), rng)
        words.update(t for w in text.split() for t in split.findall(w))
    return sorted(words)


class DemoDataset(SFTDataset):
    """``SFTDataset`` plus the example's training-only targets."""

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        ex = self.examples[i]
        item["lesion_target"] = None if ex.target is None else torch.from_numpy(ex.target.reshape(-1))
        item["study"] = torch.from_numpy(ex.study)
        return item


@dataclass
class DemoCollator(SFTCollator):
    """``SFTCollator`` plus ``lesion_target`` (B, M), ``has_target`` (B,) and ``study``."""

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        out = super().__call__(features)
        m = next((f["lesion_target"].numel() for f in features if f["lesion_target"] is not None), 1)
        out["lesion_target"] = torch.stack(
            [f["lesion_target"] if f["lesion_target"] is not None else torch.zeros(m) for f in features]
        )
        out["has_target"] = torch.tensor([float(f["lesion_target"] is not None) for f in features])
        out["study"] = torch.stack([f["study"] for f in features])
        return out


# --- training ---------------------------------------------------------------------------------------------


def _trainer_class():
    from transformers import Trainer

    class DemoTrainer(Trainer):
        """transformers' Trainer plus the demo-only losses; ``demo`` and ``captured`` are set by ``train_demo``."""

        demo: DemoConfig
        captured: dict

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            target, has = inputs.pop("lesion_target"), inputs.pop("has_target")
            study = inputs.pop("study")
            self.captured.clear()
            out = model(**inputs)
            cfg, heads = self.demo, model.demo_heads
            loss, parts = out.loss, {"lm": out.loss.item()}
            if cfg.aux_weight > 0 and bool(has.any()):
                sel = selection_loss(out.dts_weights, target, has)
                loss, parts["selection"] = loss + cfg.aux_weight * sel, sel.item()
            if cfg.study_weight > 0:
                head = F.binary_cross_entropy_with_logits(
                    heads["study"](out_tokens(self.captured["u2"])), study
                )
                loss, parts["study"] = loss + cfg.study_weight * head, head.item()
            if model.training and self.state.global_step % max(self.args.logging_steps, 1) == 0:
                log.info(
                    "step %d: %s", self.state.global_step, ", ".join(f"{k} {v:.3f}" for k, v in parts.items())
                )
            return (loss, out) if return_outputs else loss

    return DemoTrainer


def selection_loss(dts_weights: torch.Tensor, target: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between the mean of the k soft selections and the lesion target, over studies with one."""
    chosen = dts_weights.float().mean(dim=-1).clamp_min(1e-12)
    return (-(target * chosen.log()).sum(dim=-1) * has).sum() / has.sum().clamp_min(1.0)


def probe_loss(logits: torch.Tensor, kinds: torch.Tensor, balanced: bool) -> torch.Tensor:
    """Token probe loss over ``(B, M, K)`` logits and 0/1 kinds.

    Lesion cells are rare (a small nodule touches 1 of 512 cells). ``balanced`` takes, per kind, the mean
    loss over its positive cells plus the mean over the rest; otherwise positives weigh ×10. Trained alone
    on 1,400 phantoms for 400 steps, the balanced probe told lesion cells from the others far better (cell
    AUC 0.92–0.99 per kind against 0.52–0.94), and the demo model trained with it drafts more findings and
    points its heatmap at more lesions (see the model card).
    """
    if not balanced:
        return F.binary_cross_entropy_with_logits(logits, kinds, pos_weight=kinds.new_tensor(10.0))
    loss = F.binary_cross_entropy_with_logits(logits, kinds, reduction="none").flatten(0, 1)
    y = kinds.flatten(0, 1)
    pos = (loss * y).sum(0) / y.sum(0).clamp_min(1.0)
    neg = (loss * (1 - y)).sum(0) / (1 - y).sum(0).clamp_min(1.0)
    return (pos + neg).mean()


def out_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """The Q visual tokens the LM receives ``(B, Q, E)``, flattened per study ``(B, Q·E)``: the study head reads
    each query at its own place, as the LM does, instead of pooling them."""
    return tokens.float().flatten(1)


def demo_heads(model) -> torch.nn.ModuleDict:
    """Training-only heads (see the module docstring), attached to the model so optimizers find them."""
    e, q = model.config.hidden_size, model.config.num_image_tokens
    t = int(model.config.preprocess["image_size"][0]) // int(model.config.preprocess["chunk_depth"])
    return torch.nn.ModuleDict(
        {
            "token": torch.nn.Linear(e, len(KINDS)),
            "depth": torch.nn.Linear(e, t),
            "study": torch.nn.Linear(q * e, N_STUDY),
        }
    )


def pretrain_vision(
    model, examples: list[PhantomExample], question_ids: torch.Tensor, cfg: DemoConfig
) -> dict:
    """Stage 1: train the ViT, projector and μ²Tokenizer on the phantoms' ground truth alone (no LM).

    Measured on 1,400 training / 200 held-out phantoms (study-level AUCs): a linear model on 4×4×4-pooled
    pixels finds cardiomegaly, pericardial and pleural effusion (0.99–1.00); the demo model's visual tokens at
    initialisation, pooled, do not (0.53–0.77); the vision side trained with a max-over-tokens study head at
    lr 1e-3 fell back to ~0.5 for every kind by step 500. With the heads here at lr 3e-4 it learns the large
    findings after ~700 steps. The depth head (which chunk a token comes from) matters: the ViT sees each
    8-slice chunk with the same position embeddings, so nothing told a token whether it lies at the apex or
    the base (with it: cardiomegaly 1.00, pleural effusion 0.94, pericardial effusion 0.87 at step 700;
    without: 0.74, 0.82, 0.76). The small findings stayed near chance, and stayed there (study AUC 0.40–0.65 after
    800 steps, same split) with a max-over-cells study loss on the probe added (multiple-instance learning) or a
    ViT twice as wide, although each lesion kind changes the prepared pixels visibly (e.g. 535–639 voxels of an
    atelectasis, 40–72 of a 17–24 mm lymph node and 10–13 of an aortic calcification by more than 0.2 of the
    [0, 1] range).

    It is not overfitting: after 1,000 steps on 1,200 phantoms the study head separates the training phantoms
    themselves no better than held-out ones (nodule, emphysema, atelectasis, lymph node and calcification AUC
    0.43–0.51 on 300 training phantoms, 0.45–0.58 held out; 0.43–0.67 on training phantoms in every variant
    below but the HU windows, where they were not scored). Measured the same way, none of these taught the
    small kinds (held-out AUC 0.43–0.62 each): lung [-1000, -400] and mediastinal [-150, 450] HU windows as
    extra ViT input channels (twice the step time); batches of phantoms beside their normal twins (same
    anatomy and noise, no findings), so that only the lesion tells a pair apart; a selection-loss weight of
    0.1 or 0 (faster for pleural effusion: AUC 0.90 / 0.995 against 0.73, at a lower selection hit rate);
    that with lr 1e-3 (pleural effusion 0.98, consolidation 0.68 against 0.52); the token probe weighed ×3.
    """
    from transformers import get_cosine_schedule_with_warmup

    m, heads = model.model, model.demo_heads
    parts_of = [m.vision_tower, m.mm_projector, m.u2tokenizer, heads]
    params = [p for mod in parts_of for p in mod.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.vision_lr, weight_decay=0.01)
    sched = get_cosine_schedule_with_warmup(opt, max(1, int(0.03 * cfg.vision_steps)), cfg.vision_steps)
    rng = np.random.default_rng([cfg.seed, 1])
    order: list[int] = []
    model.train()
    t0, last = time.perf_counter(), {}
    for step in range(cfg.vision_steps):
        if len(order) < cfg.batch_size:
            order += rng.permutation(len(examples)).tolist()
        batch, order = [examples[i] for i in order[: cfg.batch_size]], order[cfg.batch_size :]
        px = torch.from_numpy(np.stack([ex.pixels for ex in batch]).astype(np.float32))
        with torch.no_grad():  # the question's embeddings belong to the LM, trained in stage 2
            text = m.get_input_embeddings()(question_ids)[None].expand(len(batch), -1, -1)
        v = m.encode_volume(px)  # (B, T, N, E)
        out = m.u2tokenizer(v, text, torch.ones(text.shape[:2], dtype=torch.bool))
        b, t, n, _ = v.shape
        kinds = torch.from_numpy(np.stack([ex.token_kinds for ex in batch]).astype(np.float32))
        study = torch.from_numpy(np.stack([ex.study for ex in batch]))
        depth = torch.arange(t).repeat_interleave(n).repeat(b)
        parts = {
            "probe": probe_loss(heads["token"](v.flatten(1, 2)), kinds, bool(cfg.probe_balanced)),
            "depth": F.cross_entropy(heads["depth"](v).reshape(-1, t), depth),
            "study": F.binary_cross_entropy_with_logits(heads["study"](out_tokens(out.tokens)), study),
        }
        loss = (
            cfg.probe_weight * parts["probe"]
            + cfg.depth_weight * parts["depth"]
            + cfg.study_weight * parts["study"]
        )
        has = torch.tensor([float(ex.target is not None) for ex in batch])
        if cfg.aux_weight > 0 and bool(has.any()):
            target = torch.stack(
                [
                    torch.from_numpy(ex.target.reshape(-1)) if ex.target is not None else torch.zeros(t * n)
                    for ex in batch
                ]
            )
            parts["selection"] = selection_loss(out.dts_weights, target, has)
            loss = loss + cfg.aux_weight * parts["selection"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        last = {k: round(v.item(), 4) for k, v in parts.items()}
        if step % 50 == 0 or step == cfg.vision_steps - 1:
            log.info(
                "vision step %d/%d: %s (%.0f s)",
                step,
                cfg.vision_steps,
                ", ".join(f"{k} {v:.3f}" for k, v in last.items()),
                time.perf_counter() - t0,
            )
    return {"vision_seconds": round(time.perf_counter() - t0, 1), "vision_final": last}


@torch.no_grad()
def init_sharp_tokenizer(
    model, bias: float = SVR_SELF_BIAS, score_gain: float = SCORE_GAIN, agg_gain: float = AGG_GAIN
) -> None:
    """Start the μ²Tokenizer from sharp attention instead of averages (initial weights only).

    Measured on a fresh demo model, every stage averages: the SVR mixes all tokens, each DTS selection
    spreads over ~70 tokens (largest weight 0.014), and the final aggregation is uniform, so the 32 tokens
    the LM receives are identical (spread across queries 0.001 of their scale) and carry one averaged
    summary of the volume. A self bias at SVR offset 0, a larger DTS scoring layer and larger aggregation
    query/key weights give selections of one or a few tokens (largest weight 0.59) and distinct output
    tokens (spread 0.13) from the first step.
    """
    u2 = model.model.u2tokenizer
    for layer in u2.svt_module.attention_network.layers:
        for attn in (layer.spatial_attention, layer.temporal_attention):
            if getattr(attn, "relative_bias", None) is not None:
                attn.relative_bias[attn.max_rel_pos - 1].fill_(bias)
    u2.svt_module.token_selection.score_net.weight.mul_(score_gain)
    agg = u2.tta_module.layer_linagg.linear_aggregator
    agg.wq.weight.mul_(agg_gain)
    agg.wk.weight.mul_(agg_gain)


def init_patch_thumbnails(model) -> None:
    """Start the ViT's patch embedding as a thumbnail: each output is the mean of one sub-block of the patch.

    A random projection of 2048 voxels hides a lesion among 128 mixed features; averaging sub-blocks keeps
    where in the patch the bright or dark voxels are, so the first steps already see lesions. Only the
    initial weights change; training moves them freely.
    """
    vc = model.config.vision_config
    patch, hidden = [int(p) for p in vc["patch_size"]], int(vc["hidden_size"])
    lin = model.model.vision_tower.patch_embedding.patch_embeddings[1]
    grid = _split_grid(patch, hidden)
    if grid is None:
        return
    idx = np.arange(int(np.prod(patch))).reshape(patch)
    weight = torch.zeros(hidden, idx.size)
    blocks = [p // g for p, g in zip(patch, grid)]
    for o, (a, b, c) in enumerate(np.ndindex(*grid)):
        cells = idx[
            a * blocks[0] : (a + 1) * blocks[0],
            b * blocks[1] : (b + 1) * blocks[1],
            c * blocks[2] : (c + 1) * blocks[2],
        ]
        weight[o, cells.reshape(-1)] = 1.0 / cells.size
    with torch.no_grad():
        lin.weight.copy_(weight * int(vc.get("in_channels", 1)) ** -1)
        lin.bias.fill_(-0.5)  # prepared pixels lie in [0, 1]


def _split_grid(patch: list[int], n: int) -> tuple[int, int, int] | None:
    """A (d, h, w) grid of ``n`` sub-blocks that divides ``patch`` evenly, as square in-plane as possible."""
    best = None
    for d in range(1, patch[0] + 1):
        for h in range(1, patch[1] + 1):
            if n % (d * h) or patch[0] % d or patch[1] % h:
                continue
            w = n // (d * h)
            if patch[2] % w == 0 and (
                best is None or abs(h - w) + abs(d - 2) < abs(best[1] - best[2]) + abs(best[0] - 2)
            ):
                best = (d, h, w)
    return best


def build_demo_model(seed: int, thumbnails: bool = True):
    """A fresh ``demo`` preset model and its phantom word tokenizer (image token = ``<im_patch>``)."""
    from engine.model import Mu2Config, Mu2ForConditionalGeneration
    from engine.text import IMAGE_TOKEN, make_word_tokenizer

    config = Mu2Config.preset("demo")
    tokenizer = make_word_tokenizer(report_vocabulary(), config.text_config.vocab_size)
    config.image_token_id = int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    torch.manual_seed(seed)
    model = Mu2ForConditionalGeneration(config)
    init_sharp_tokenizer(model)
    if thumbnails:
        init_patch_thumbnails(model)
    return model, tokenizer


def train_demo(out: str | Path, cfg: DemoConfig | None = None) -> dict:
    """Train the demo model on ``cfg.n_train`` phantoms and save it to ``out``; returns timings and sizes."""
    from engine.checkpoint import save_checkpoint
    from training.sft import default_training_args

    cfg, out = cfg or DemoConfig(), Path(out)
    model, tokenizer = build_demo_model(cfg.seed, cfg.thumbnails)
    seeds = phantom_seeds("train", cfg.n_train, cfg.seed)
    t0 = time.perf_counter()
    examples = phantom_examples(seeds, dict(model.config.preprocess), model.config.default_question, cfg)
    t_data = time.perf_counter() - t0
    model.demo_heads = demo_heads(model)
    question_ids = torch.tensor(
        tokenizer(model.config.default_question, add_special_tokens=False)["input_ids"]
    )
    stage1 = pretrain_vision(model, examples, question_ids, cfg) if cfg.vision_steps > 0 else {}
    # Stage 2: SFT. The ViT and projector stay as stage 1 left them; the μ²Tokenizer and the study head go
    # on learning (the head keeps the visual tokens informative while the LM learns to read them).
    for mod in (
        model.model.vision_tower,
        model.model.mm_projector,
        model.demo_heads["token"],
        model.demo_heads["depth"],
    ):
        mod.requires_grad_(False)
    scratch = tempfile.TemporaryDirectory(prefix="mu2-demo-")  # Trainer's output_dir, kept out of the package
    args = default_training_args(
        scratch.name,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        weight_decay=0.01,
        max_grad_norm=1.0,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=25,
        disable_tqdm=True,
        save_strategy="no",
    )
    vision_side = [
        p for mod in (model.model.u2tokenizer, model.demo_heads["study"]) for p in mod.parameters()
    ]
    ids = {id(p) for p in vision_side}
    lm_side = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    optimizer = torch.optim.AdamW(
        [{"params": lm_side, "lr": cfg.lr}, {"params": vision_side, "lr": cfg.vision_lr}], weight_decay=0.01
    )
    captured: dict[str, torch.Tensor] = {}
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=DemoDataset(examples, tokenizer, model.config),
        data_collator=DemoCollator(tokenizer.pad_token_id),
        optimizers=(optimizer, None),
    )
    trainer.demo, trainer.captured = cfg, captured
    total = (
        args.max_steps if args.max_steps > 0 else int(np.ceil(len(examples) / cfg.batch_size) * cfg.epochs)
    )

    def on_u2(module, inputs, output):
        captured["u2"] = output.tokens
        # Until the LM has learnt to read the visual tokens, its gradient only disturbs them (measured in
        # earlier runs: it flattened them into one constant vector), so at first it does not reach them.
        if module.training and trainer.state.global_step < cfg.lm_vision_after * total:
            return dataclasses.replace(output, tokens=output.tokens.detach())
        return output

    hooks = [model.model.u2tokenizer.register_forward_hook(on_u2)]
    t0 = time.perf_counter()
    result = trainer.train()
    t_train = time.perf_counter() - t0
    for h in hooks:
        h.remove()
    del model.demo_heads
    model.requires_grad_(True)
    scratch.cleanup()
    extra = (
        f" Finding kinds left out of training: {', '.join(cfg.exclude_kinds)}." if cfg.exclude_kinds else ""
    )
    notes = CARD_NOTES.format(
        **dataclasses.asdict(cfg),
        seeds=f"{seeds[0]}–{seeds[-1]}",
        probe_kind="positive and negative cells averaged separately per kind"
        if cfg.probe_balanced
        else "lesion cells weighed ×10",
        minutes=(t_train + stage1.get("vision_seconds", 0.0)) / 60,
        extra=extra,
    )
    save_checkpoint(model, tokenizer, out, notes=notes, preset="demo")
    stats = {
        "data_seconds": round(t_data, 1),
        **stage1,
        "train_seconds": round(t_train, 1),
        "steps": result.global_step,
        "final_loss": round(float(result.training_loss), 4),
        "n_train": cfg.n_train,
        "safetensors_bytes": sum(f.stat().st_size for f in out.glob("*.safetensors")),
    }
    (out / "training_stats.json").write_text(json.dumps(stats, indent=1))
    return stats


# --- command line -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="checkpoint folder (training) or results folder (--closed-loop)")
    for f in dataclasses.fields(DemoConfig):
        if f.name in ("exclude_kinds", "cache"):
            continue
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    parser.add_argument(
        "--without-kind",
        action="append",
        default=[],
        metavar="KIND",
        help="leave a finding kind out of the training phantoms (a weaker start for the loop)",
    )
    parser.add_argument("--cache", help="folder that keeps prepared phantoms between runs")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default 1, see below)"
    )
    parser.add_argument(
        "--eval", type=int, default=0, metavar="N", help="evaluate on N held-out phantoms after"
    )
    loop = parser.add_argument_group("closed loop")
    loop.add_argument(
        "--closed-loop", action="store_true", help="review → DPO → evaluation instead of training"
    )
    loop.add_argument("--model", help="checkpoint to start from (default: the bundled demo model)")
    loop.add_argument("--n-review", type=int, default=64)
    loop.add_argument("--n-eval", type=int, default=100)
    for name, value in LOOP_DEFAULTS.items():
        loop.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # Small matrices on a shared 2-core machine: a second intra-op thread mostly waits on the first (measured
    # 0.7 s vs 1.4 s per batch of 8 with one thread vs two while other jobs ran), so one is the default.
    torch.set_num_threads(args.threads)
    if args.closed_loop:
        result = closed_loop(
            args.model,
            args.out or "closed-loop",
            args.n_review,
            args.n_eval,
            args.seed,
            **{k: getattr(args, k) for k in LOOP_DEFAULTS},
        )
        print(result["table"])
        return 0
    if not args.out:
        parser.error("--out DIR is required for training")
    bad = [k for k in args.without_kind if k not in KINDS]
    if bad:
        parser.error(f"unknown finding kind(s) {bad}; use one of {', '.join(KINDS)}")
    names = {f.name for f in dataclasses.fields(DemoConfig)}
    cfg = DemoConfig(
        **{k: v for k, v in vars(args).items() if k in names}, exclude_kinds=tuple(args.without_kind)
    )
    print(json.dumps(train_demo(args.out, cfg)))
    if args.eval:
        from engine.draft import Drafter
        from training.evaluate import eval_phantoms, evaluate_model

        drafter = Drafter.from_pretrained(args.out, device="cpu")
        print(json.dumps(evaluate_model(drafter, eval_phantoms(args.eval, args.seed))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
