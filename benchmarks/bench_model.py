"""Time and peak memory of the μ²Tokenizer and ViT3D at the mu2-1b size, against the official code.

Cells (each in a fresh spawned process, so that one cell's memory never counts in another's):

- ``tok-fwd-{fp32,bf16}``: μ²Tokenizer forward (inference mode), v_token 1×8×256×2048, 32 question tokens;
- ``tok-fwdbwd-{fp32,bf16}``: forward + backward of ``tokens.sum()`` (training mode);
- ``vit-fwd-{fp32,bf16}``: ViT3D over 8 chunks, 8×1×32×256×256 (inference mode).

Time is the median of ``--repeats`` runs after one warm-up. Peak memory is the rise of the process's
resident-set high-water mark, over the warm-up and the timed runs, above its resident set once model
and inputs exist (the mark is reset through ``/proc/self/clear_refs`` when allowed; models are built
directly in the cell's dtype so a construction peak cannot hide the run's). Parameter gradients count
(fwdbwd). bf16 means module and inputs in bfloat16.

With ``MU2_OFFICIAL_SRC`` (or ``--official-src``) pointing at an extracted Siyou-Li/u2Tokenizer tree
(the folder holding ``src/``; the ViT needs ``monai`` and ``einops`` importable), the official modules
run in the same session and the ratios compare like with like. Otherwise the ratios use the official
numbers the project measured on the reference 2-core machine (``OFFICIAL``)::

    python benchmarks/bench_model.py                      # everything, mu2-1b size, 2 threads
    python benchmarks/bench_model.py --cells tok-fwd-fp32 tok-fwd-bf16 --repeats 1
    MU2_OFFICIAL_SRC=/tmp/u2off PYTHONPATH=/tmp/pydeps python benchmarks/bench_model.py
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # spawned cells import engine too

# Official μ²Tokenizer / ViT3D on the project's 2-core reference machine: (seconds, peak GB).
OFFICIAL: dict[str, tuple[float, float | None]] = {
    "tok-fwd-fp32": (5.6, 0.4),
    "tok-fwd-bf16": (7.6, 8.2),
    "tok-fwdbwd-fp32": (33.8, 14.9),
    "tok-fwdbwd-bf16": (20.0, 8.8),
    "vit-fwd-fp32": (46.7, None),
    "vit-fwd-bf16": (22.3, None),
}
TARGET_TIME, TARGET_MEM = 0.7, 0.5
CELLS = list(OFFICIAL)
SIZES = {  # E, heads, layers, k, Q, T, N, L ; ViT chunks, img, patch, width, mlp, layers, heads
    "mu2-1b": dict(
        tok=(2048, 8, 4, 1024, 256, 8, 256, 32), vit=(8, (32, 256, 256), (4, 16, 16), 768, 3072, 12, 12)
    ),
    "tiny": dict(tok=(64, 2, 2, 32, 8, 4, 16, 8), vit=(2, (8, 32, 32), (4, 8, 8), 32, 64, 2, 2)),
}


def _rss_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_kb() -> int:
    hwm = _rss_kb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _official_tokenizer(src: str, cfg: tuple):
    sys.path.insert(0, src)
    from src.model.u2tokenizer.u2Tokenizer import u2Tokenizer

    e, h, layers, k, q = cfg[:5]
    return u2Tokenizer(e, h, layers, k, True, q, e, attn_type="rma", enable_diffts=True, enable_dmtp=True)


def _official_vit(src: str, cfg: tuple):
    sys.path.insert(0, src)
    from src.model.multimodal_encoder.vit import ViT

    _, img, patch, width, mlp, layers, heads = cfg

    class Tower(ViT):  # the official tower: last layer, CLS dropped
        def forward(self, x):
            return super().forward(x)[0][:, 1:]

    return Tower(1, img, patch, width, mlp, layers, heads, pos_embed="perceptron", classification=True)


def _run_cell(cell: str, impl: str, size: str, repeats: int, threads: int, src: str | None, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    kind, mode, dt = cell.split("-")
    dtype = torch.bfloat16 if dt == "bf16" else torch.float32
    torch.set_default_dtype(dtype)  # build in the cell's dtype: no fp32 copy inflates the baseline
    try:
        if kind == "tok":
            cfg = SIZES[size]["tok"]
            e, h, layers, k, q, t, n, length = cfg
            if impl == "official":
                model = _official_tokenizer(src, cfg)
            else:
                from engine.model.mu2tokenizer import Mu2Tokenizer

                model = Mu2Tokenizer(
                    embed_size=e, num_heads=h, num_layers=layers, top_k=k, num_query_tokens=q
                )
            inputs = (torch.randn(1, t, n, e), torch.randn(1, length, e))
        else:
            cfg = SIZES[size]["vit"]
            chunks, img, patch, width, mlp, layers, heads = cfg
            if impl == "official":
                model = _official_vit(src, cfg)
            else:
                from engine.model.vit3d import ViT3D

                model = ViT3D(1, img, patch, width, mlp, layers, heads)
            inputs = (torch.rand(chunks, 1, *img),)
    except Exception as err:  # noqa: BLE001 - report and go on with the other cells
        queue.put((None, None, f"{type(err).__name__}: {err}", None))
        return

    def step():
        if mode == "fwd":
            with torch.inference_mode():
                out = model(*inputs)
        else:
            out = model(*inputs)
            out = out if isinstance(out, torch.Tensor) else out.tokens
            out.float().sum().backward()
            model.zero_grad(set_to_none=True)
        return out

    model.train(mode == "fwdbwd")
    # Baseline before the warm-up: memory the allocator keeps after the warm-up is memory the cell needed.
    base = _rss_kb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if not _reset_peak():
        base = _peak_kb()  # best available: rise of the high-water mark over everything before
    step()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = max(_peak_kb() - base, 0) / 2**20
    queue.put((statistics.median(times), peak, None, _gemm_rate(dtype)))


def _gemm_rate(dtype) -> float:
    """F.linear 2048³ throughput now, GFLOP/s: tells a busy machine from a slow implementation."""
    import torch
    import torch.nn.functional as F

    a, w = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    F.linear(a, w)
    t0 = time.perf_counter()
    for _ in range(5):
        F.linear(a, w)
    return 5 * 2 * 2048**3 / (time.perf_counter() - t0) / 1e9


def wait_idle(limit_s: float, idle: float = 0.85) -> float:
    """Wait (up to ``limit_s``) until the CPUs are ≥ ``idle`` idle over 2 s; return the idle fraction seen."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)

    deadline = time.monotonic() + limit_s
    frac = 0.0
    while True:
        i0, t0 = sample()
        time.sleep(2.0)
        i1, t1 = sample()
        frac = (i1 - i0) / max(t1 - t0, 1)
        if frac >= idle or time.monotonic() > deadline:
            return frac


def measure(cell: str, impl: str, size: str, repeats: int, threads: int, src: str | None):
    """(seconds, peak GB, error, GEMM GFLOP/s right after) of one cell in a fresh spawned process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run_cell, args=(cell, impl, size, repeats, threads, src, queue))
    proc.start()
    proc.join()
    if queue.empty():
        return None, None, f"process exited with code {proc.exitcode}", None
    return queue.get()


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _fmt(x: float | None, unit: str) -> str:
    return "—" if x is None else f"{x:.2f}{unit}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", nargs="+", default=CELLS, choices=CELLS)
    parser.add_argument("--size", default="mu2-1b", choices=sorted(SIZES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--official-src", default=os.environ.get("MU2_OFFICIAL_SRC"))
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each measurement wait up to S seconds for the CPUs to be ≥85%% idle (shared machines)",
    )
    args = parser.parse_args(argv)
    src = args.official_src
    if src and (Path(src) / "model").is_dir() and not (Path(src) / "src").is_dir():
        src = str(Path(src).parent)  # MU2_OFFICIAL_SRC may name the src/ folder itself

    print(f"size {args.size}, {args.threads} threads, median of {args.repeats} after a warm-up")
    print(
        f"official numbers: {'measured now from ' + src if src else 'the project reference (2-core machine)'}"
    )
    ref_ok = args.size == "mu2-1b"  # the project's reference numbers are for mu2-1b only
    header = (
        f"{'cell':<17}{'GF/s':>6}{'ours s':>8}{'ours GB':>8}{'off s':>8}{'off GB':>8}{'time ×':>8}{'mem ×':>7}"
        f"{'ref s':>7}{'ref GB':>7}{'time ×':>8}{'mem ×':>7}"
    )
    print(" " * 39 + "official measured now" + " " * 12 + "official reference")
    print(header)
    print("-" * len(header))
    all_met = True
    for cell in args.cells:
        if args.wait_idle:
            wait_idle(args.wait_idle)
        t, m, err, rate = measure(cell, "ours", args.size, args.repeats, args.threads, src)
        if err:
            print(f"{cell:<17} ours failed: {err}")
            all_met = False
            continue
        ot = om = None
        if src:
            if args.wait_idle:
                wait_idle(args.wait_idle)
            ot, om, oerr, _ = measure(cell, "official", args.size, args.repeats, args.threads, src)
            if oerr:
                print(f"{cell:<17} official failed now ({oerr})")
        rt_ref, rm_ref = OFFICIAL[cell] if ref_ok else (None, None)
        row = f"{cell:<17}{rate:>6.0f}{_fmt(t, 's'):>8}{_fmt(m, ''):>8}{_fmt(ot, 's'):>8}{_fmt(om, ''):>8}"
        row += f"{_fmt(_ratio(t, ot), ''):>8}{_fmt(_ratio(m, om), ''):>7}"
        row += f"{_fmt(rt_ref, 's'):>7}{_fmt(rm_ref, ''):>7}"
        row += f"{_fmt(_ratio(t, rt_ref), ''):>8}{_fmt(_ratio(m, rm_ref), ''):>7}"
        verdicts = []
        for label, (bt, bm) in (("now", (ot, om)), ("ref", (rt_ref, rm_ref))):
            if bt is None:
                continue
            met = _ratio(t, bt) <= TARGET_TIME and (bm is None or _ratio(m, bm) <= TARGET_MEM)
            verdicts.append(f"{label} {'met' if met else 'MISSED'}")
            all_met &= met
        print(row + "  " + ", ".join(verdicts), flush=True)
    print(f"targets: time ≤ {TARGET_TIME}× and peak memory ≤ {TARGET_MEM}× the official, per cell")
    print(
        "GF/s: F.linear 2048³ throughput in the cell's dtype right after our run (a quiet 2-core "
        "EPYC gives ~150-180 fp32, ~400-430 bf16); lower means the machine was busy"
    )
    return 0 if all_met else 1


if __name__ == "__main__":
    sys.exit(main())
