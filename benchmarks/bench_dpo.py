"""DPO step time and peak memory: reference log-probs precomputed (Mu2's default) vs. a reference-model copy.

    python benchmarks/bench_dpo.py [--presets tiny mid] [--steps 6] [--threads 2]

`mid` is the `demo` architecture with a 4-layer, 512-wide decoder (about 40 M parameters). Each cell runs in a
fresh process; peak RSS is that process's high-water mark, the step time the median of the timed steps.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MID_TEXT = {
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 64,
}


def _make(preset: str, root: Path) -> tuple[Path, Path]:
    import numpy as np

    from engine.assemble import BASE_WORDS, new_checkpoint
    from engine.draft import Drafter
    from engine.model import Mu2Config
    from engine.review import ReviewStore
    from engine.text import make_word_tokenizer
    from engine.volume import Volume

    ckpt = root / preset
    if preset == "mid":
        import engine.model.config as cfgmod

        base = copy.deepcopy(cfgmod._PRESETS["demo"])
        base["text_config"].update(MID_TEXT)
        cfgmod._PRESETS["mid"] = base
    tok = make_word_tokenizer(BASE_WORDS, Mu2Config.preset(preset).text_config.vocab_size)
    new_checkpoint(preset, ckpt, tokenizer=tok)
    drafter = Drafter.from_pretrained(ckpt)
    store = ReviewStore(root / f"reviews-{preset}")
    rng = np.random.default_rng(0)
    for i in range(8):
        vol = Volume(
            rng.normal(-400, 300, (40, 96, 96)).astype(np.float32), spacing=(5, 3, 3), case_id=f"c-{i}"
        )
        d = drafter.draft(vol, max_new_tokens=24)
        store.record(d, "FINDINGS: no nodule , no pleural effusion . IMPRESSION: normal chest ct .", "edited")
    return ckpt, root / f"reviews-{preset}"


def _cell(ckpt: str, reviews: str, precompute: bool, steps: int, threads: int, q) -> None:
    import torch
    from transformers import TrainerCallback

    torch.set_num_threads(threads)
    from engine.checkpoint import load_tokenizer
    from engine.model import Mu2ForConditionalGeneration
    from training.dpo import collect_pairs, make_config, train_dpo

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    model = Mu2ForConditionalGeneration.from_pretrained(ckpt)
    tok = load_tokenizer(ckpt)
    pairs, search = collect_pairs([reviews])
    out = tempfile.mkdtemp()
    args = make_config(
        out, max_steps=steps, precompute_ref_log_probs=precompute, save_strategy="no", logging_steps=100
    )
    import trl

    orig_init = trl.DPOTrainer.__init__

    def init(self, *a, **kw):
        if not precompute:
            kw["ref_model"] = copy.deepcopy(kw["model"]).eval()
        orig_init(self, *a, **kw)
        self.add_callback(Timer())

    trl.DPOTrainer.__init__ = init
    train_dpo(model, tok, pairs, search, args, Path(out) / "final")
    timed = sorted(times[1:]) or times
    q.put(
        {
            "step_s": timed[len(timed) // 2],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "mid"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mu2-bench-dpo-"))
    ctx = mp.get_context("spawn")
    for preset in args.presets:
        ckpt, reviews = _make(preset, root)
        res = {}
        for precompute in (True, False):
            q = ctx.Queue()
            p = ctx.Process(
                target=_cell, args=(str(ckpt), str(reviews), precompute, args.steps, args.threads, q)
            )
            p.start()
            res[precompute] = q.get()
            p.join()
        a, b = res[True], res[False]
        print(f"[{preset}] {a['params_m']:.1f} M parameters")
        print(f"  precomputed ref log-probs: step {a['step_s']:.3f} s, peak RSS {a['peak_rss_gb']:.2f} GB")
        print(f"  reference-model copy:      step {b['step_s']:.3f} s, peak RSS {b['peak_rss_gb']:.2f} GB")
        print(
            f"  ratio precomputed/copy:    time {a['step_s'] / b['step_s']:.2f}x, memory {a['peak_rss_gb'] / b['peak_rss_gb']:.2f}x"
        )


if __name__ == "__main__":
    main()
