"""Benchmark volume loading and ``prepare()`` against their targets; prints times and ratios.

* Loading the 99-slice chest CT (../shared/realdata): ``load_volume`` vs ``SimpleITK.ImageSeriesReader``
  (with and without GDCM's own file sorting). Target: within 1.2× SimpleITK's time.
* ``prepare()`` of a synthetic 512×512×300 CT to the mu2-1b cube. Targets: under 1.5 s, and peak
  memory under 3× the volume's float32 size.

Times are the median of ``--repeat`` runs (3 by default). Peak memory is the growth of the process's
resident high-water mark (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``), measured in a
fresh child process per case so that earlier runs' freed memory does not hide it.

Usage::

    python benchmarks/bench_io.py [--realdata ../shared/realdata] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERIES = "ct/dicom_chest_cptac_C3N-00247"
SHAPE = (300, 512, 512)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _synthetic_ct():
    import numpy as np

    rng = np.random.default_rng(0)
    vol = np.full(SHAPE, -1024.0, dtype=np.float32)
    yy, xx = np.ogrid[: SHAPE[1], : SHAPE[2]]
    body = ((yy - 250) / 190.0) ** 2 + ((xx - 256) / 235.0) ** 2 < 1
    vol[5:-5, body] = rng.normal(40, 120, (SHAPE[0] - 10, int(body.sum()))).round()
    lungs = (((yy - 240) / 120.0) ** 2 + ((np.abs(xx - 256) - 100) / 70.0) ** 2) < 1
    vol[20:-20, lungs] = -850.0
    return vol


def _case(name: str, realdata: Path):
    """Return a zero-argument callable running benchmark case ``name``."""
    if name == "load-ours":
        from engine.volume import load_volume

        return lambda: load_volume(realdata / SERIES)
    if name in ("load-sitk", "load-sitk-sorted"):
        import SimpleITK as sitk

        folder = str(realdata / SERIES)
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder)

        def run():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(
                sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder) if name == "load-sitk" else names
            )
            return sitk.GetArrayViewFromImage(reader.Execute())

        return run
    if name == "prepare":
        from engine.preprocess import PrepSpec, prepare
        from engine.volume import Volume

        vol = Volume(_synthetic_ct(), spacing=(1.0, 0.7, 0.7))
        spec = PrepSpec()
        return lambda: prepare(vol, spec)
    raise ValueError(name)


def child(name: str, realdata: Path, repeat: int) -> dict:
    """Run one case in this (fresh) process: median time and peak resident-memory growth."""
    run = _case(name, realdata)
    run()  # warm-up: imports, file cache, thread pools
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
        del out
    peak_mib = None
    if _reset_peak():
        base = _rss_kib("VmRSS")
        out = run()
        peak_mib = (_rss_kib("VmHWM") - base) / 1024
        del out
    return {"median_s": statistics.median(times), "min_s": min(times), "peak_mib": peak_mib}


def _in_child(name: str, realdata: Path, repeat: int) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--realdata", str(realdata), "--repeat", str(repeat)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--realdata",
        type=Path,
        default=Path(os.environ.get("MU2_SHARED", REPO.parent / "shared")) / "realdata",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.realdata, args.repeat)))
        return 0

    print(f"CPU cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f} (timings are wall clock)")
    if (args.realdata / SERIES).is_dir():
        ours = _in_child("load-ours", args.realdata, args.repeat)
        sitk_all = _in_child("load-sitk", args.realdata, args.repeat)
        sitk_read = _in_child("load-sitk-sorted", args.realdata, args.repeat)
        print("\nload 99-slice chest CT (512×512)")
        print(
            f"  Mu2 load_volume                       {ours['median_s']:.3f} s   peak +{ours['peak_mib']:.0f} MiB"
        )
        print(
            f"  SimpleITK ImageSeriesReader (+ sort)  {sitk_all['median_s']:.3f} s   peak +{sitk_all['peak_mib']:.0f} MiB"
        )
        print(f"  SimpleITK ImageSeriesReader (sorted)  {sitk_read['median_s']:.3f} s")
        print(
            f"  time ratio  Mu2 / SimpleITK(+sort)   {ours['median_s'] / sitk_all['median_s']:.2f}×  (target ≤ 1.20×)"
        )
        print(f"  time ratio  Mu2 / SimpleITK(sorted)  {ours['median_s'] / sitk_read['median_s']:.2f}×")
        print(
            f"  memory ratio Mu2 / SimpleITK         {ours['peak_mib'] / sitk_all['peak_mib']:.2f}×  "
            "(Mu2 returns float32, SimpleITK int16)"
        )
    else:
        print(f"\n(no {SERIES} under {args.realdata}: loading benchmark skipped)")

    prep = _in_child("prepare", args.realdata, args.repeat)
    size_mib = 4 * SHAPE[0] * SHAPE[1] * SHAPE[2] / 2**20
    print(
        f"\nprepare() of a synthetic {SHAPE[2]}×{SHAPE[1]}×{SHAPE[0]} CT ({size_mib:.0f} MiB float32) → 8×32×256×256"
    )
    print(
        f"  time   {prep['median_s']:.3f} s (min {prep['min_s']:.3f} s)   ratio to 1.5 s target {prep['median_s'] / 1.5:.2f}×"
    )
    print(
        f"  peak   +{prep['peak_mib']:.0f} MiB = {prep['peak_mib'] / size_mib:.2f}× the volume (target < 3×)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
