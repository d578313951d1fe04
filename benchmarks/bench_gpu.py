"""GPU drafting speed for `mu2-1b` (random weights, bf16): decode tokens/s and a full 256-token draft's latency,
eager and with the static KV cache + torch.compile path.

    python benchmarks/bench_gpu.py [--workdir DIR] [--tokens 256]

Targets on an H100: >= 250 tokens/s decode and <= 1.5 s for a full draft. Prints one JSON line per mode.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import numpy as np
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU here; nothing measured", file=sys.stderr)
        return 1
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--tokens", type=int, default=256)
    args = ap.parse_args()
    from engine.assemble import new_checkpoint
    from engine.draft import Drafter
    from engine.volume import Volume

    ckpt = Path(args.workdir or tempfile.mkdtemp()) / "mu2-1b"
    if not (ckpt / "config.json").exists():
        new_checkpoint("mu2-1b", ckpt)
    vol = Volume(np.random.default_rng(0).normal(-500, 300, (200, 512, 512)).astype(np.float32),
                 spacing=(1.5, 0.7, 0.7), case_id="c-gpu")
    for compiled in (False, True):
        drafter = Drafter.from_pretrained(ckpt, device="cuda", dtype="bfloat16", compile_decode=compiled)
        for _ in range(2):  # warm-up (and compilation)
            drafter.draft(vol, max_new_tokens=16, min_new_tokens=16)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        d = drafter.draft(vol, max_new_tokens=args.tokens, min_new_tokens=args.tokens)
        torch.cuda.synchronize()
        total = time.perf_counter() - t0
        print(json.dumps({"mode": "compiled" if compiled else "eager", "still_compiled": drafter.compile_decode,
                          "tokens": d.n_tokens, "draft_s": round(total, 3), "decode_tok_s": round(d.timings["tokens_per_s"], 1),
                          "timings": d.timings, "gpu": torch.cuda.get_device_name(),
                          "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 2)}), flush=True)
        del drafter
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
