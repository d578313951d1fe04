"""The numerical kernels of ``prepare``: exact percentiles and the official anti-aliased resize, made fast.

The official pipeline (u2Tokenizer ``u2Transform`` on MONAI 1.3) resizes with
``monai.transforms.spatial.functional.resize(mode='bilinear'→trilinear, align_corners=True,
anti_aliasing=True)``: when an axis shrinks, a Gaussian with ``sigma = max(0, (in/out - 1) / 2)``
(MONAI's ``erf`` kernel, truncated at 4 sigma, not normalised, zero padding) blurs every axis, then
``torch.nn.functional.interpolate`` samples it. Both are linear and act on one axis at a time, so the
whole operation is one banded matrix per axis. Applying those matrices slab by slab gives the same
numbers with a fraction of the memory and time of a full 3-D blur.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

log = logging.getLogger(__name__)

_SAMPLE = 1 << 20  # voxels sampled to bracket each order statistic


def _lerp(a: float, b: float, t: float) -> float:
    # numpy.percentile's linear interpolation, including its symmetric form for t >= 0.5.
    diff = b - a
    return b - diff * (1.0 - t) if t >= 0.5 else a + diff * t


_CHUNK = 1 << 21  # voxels per pass step: keeps every comparison of a step in cache


def _select(flat: np.ndarray, ranks: list[int], lo: float, hi: float) -> list[float] | None:
    """The ``ranks``-th smallest values of ``flat``, provided they lie in ``[lo, hi]`` (else ``None``).

    One pass counts the values below ``lo``, equal to ``lo`` and to ``hi`` and copies the few strictly
    inside; ties at the bracket ends (CT has millions of voxels at exactly -1024) are never copied.
    """
    below = n_lo = n_hi = 0
    inner_parts = []
    for i in range(0, flat.size, _CHUNK):
        part = flat[i : i + _CHUNK]
        below += int(np.count_nonzero(part < lo))
        n_lo += int(np.count_nonzero(part == lo))
        if hi != lo:
            n_hi += int(np.count_nonzero(part == hi))
            inner_parts.append(part[(part > lo) & (part < hi)])
    inner = np.concatenate(inner_parts) if inner_parts else np.empty(0, flat.dtype)
    out = []
    for k in ranks:
        r = k - below
        if r < 0:
            return None
        if r < n_lo:
            out.append(float(lo))
        elif r - n_lo < inner.size:
            out.append(float(np.partition(inner, r - n_lo)[r - n_lo]))
        elif r - n_lo - inner.size < n_hi:
            out.append(float(hi))
        else:
            return None
    return out


def percentiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """``np.percentile(values, qs)`` (linear method), exactly, without sorting the whole array.

    A strided sample brackets each needed order statistic; one pass over the data per percentile then
    finds it exactly. Falls back to ``np.percentile`` when a bracket misses, which only costs time.
    """
    flat = values.reshape(-1)
    n = flat.size
    if n <= 4 * _SAMPLE:
        return [float(v) for v in np.percentile(flat, qs)]
    sample = np.sort(flat[:: max(1, n // _SAMPLE)])
    margin = int(8 * math.sqrt(sample.size)) + 64
    out = []
    for q in qs:
        pos = q / 100.0 * (n - 1)
        k = int(math.floor(pos))
        s = int(k / max(n - 1, 1) * (sample.size - 1))
        lo = float(sample[s - margin]) if s - margin > 0 else -np.inf
        hi = float(sample[s + margin + 1]) if s + margin + 1 < sample.size else np.inf
        got = _select(flat, [k, min(k + 1, n - 1)], lo, hi)
        if got is None:
            log.debug("percentile bracket missed; falling back to np.percentile")
            return [float(v) for v in np.percentile(flat, qs)]
        out.append(_lerp(got[0], got[1], pos - k))
    return out


def gaussian_kernel(sigma: float) -> np.ndarray:
    """MONAI's ``gaussian_1d(sigma, truncated=4.0, approx='erf')`` (float32, not normalised)."""
    sig = torch.tensor(sigma, dtype=torch.float32)
    tail = int(max(float(sig) * 4.0, 0.5) + 0.5)
    x = torch.arange(-tail, tail + 1, dtype=torch.float32)
    t = 0.70710678 / torch.abs(sig)
    k = 0.5 * ((t * (x + 0.5)).erf() - (t * (x - 0.5)).erf())
    return k.clamp(min=0).numpy()


def antialias_sigmas(in_size: tuple[int, ...], out_size: tuple[int, ...]) -> list[float]:
    """MONAI's default anti-aliasing sigmas (computed in float32 like ``torch.Tensor`` division)."""
    if not any(o < i for i, o in zip(in_size, out_size)):
        return [0.0] * len(in_size)
    factors = np.asarray(in_size, np.float32) / np.asarray(out_size, np.float32)
    return [float(s) for s in np.maximum(np.float32(0), (factors - np.float32(1)) / np.float32(2))]


def axis_matrix(n: int, m: int, sigma: float) -> np.ndarray:
    """(m, n) float32 matrix: zero-padded Gaussian blur then align-corners linear sampling, n → m."""
    w = np.zeros((m, n), dtype=np.float64)
    # torch computes the source index in float32 for float32 images.
    scale = np.float32(n - 1) / np.float32(m - 1) if m > 1 else np.float32(0)
    src = scale * np.arange(m, dtype=np.float32)
    i0 = np.minimum(src.astype(np.int64), n - 1)
    frac = (src - i0.astype(np.float32)).astype(np.float64)
    i1 = np.minimum(i0 + 1, n - 1)
    rows = np.arange(m)
    np.add.at(w, (rows, i0), 1.0 - frac)
    np.add.at(w, (rows, i1), frac)
    if sigma > 0:
        k = gaussian_kernel(sigma).astype(np.float64)
        tail = (k.size - 1) // 2
        blur = np.zeros((n, n), dtype=np.float64)
        for off in range(-tail, tail + 1):
            idx = np.arange(max(0, -off), min(n, n - off))
            blur[idx, idx + off] = k[off + tail]
        w = w @ blur
    return w.astype(np.float32)


class AxisResampler:
    """An (m, n) banded matrix applied along the FIRST axis of a C-contiguous array: ``(n, ...) -> (m, ...)``.

    A sparse (CSR) product in scipy: single-threaded and proportional to the band width, so it neither
    wastes work on the zeros of a dense product nor stalls on thread synchronisation when the machine is
    busy (many small multi-threaded products did, by a factor of several).
    """

    def __init__(self, w: np.ndarray):
        from scipy import sparse

        self.m, self.n = w.shape
        self.identity = self.m == self.n and np.array_equal(w, np.eye(self.n, dtype=np.float32))
        self.matrix = None if self.identity else sparse.csr_matrix(w)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.identity:
            return x
        out = self.matrix @ x.reshape(self.n, -1)
        return np.asarray(out, dtype=np.float32).reshape(self.m, *x.shape[1:])
