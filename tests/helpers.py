"""Small builders shared by tests (a tiny checkpoint, a tiny volume)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.volume import Volume


def tiny_checkpoint(folder: Path, seed: int = 0) -> Path:
    from engine.assemble import new_checkpoint

    if not (folder / "config.json").exists():
        new_checkpoint("tiny", folder, seed=seed)
    return folder


def tiny_volume(shape=(20, 40, 36), seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    vox = np.full(shape, -1000.0, dtype=np.float32)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    body = ((y - shape[1] / 2) / (shape[1] * 0.4)) ** 2 + ((x - shape[2] / 2) / (shape[2] * 0.4)) ** 2 <= 1
    vox[:, body[0]] = 40.0
    vox += rng.normal(0, 10, shape).astype(np.float32)
    return Volume(vox, spacing=(2.5, 1.0, 1.2), origin=(-20.0, -30.0, 100.0), case_id="c-test")
