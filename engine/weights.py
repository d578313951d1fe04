"""Where the bundled demo model lives (inside the installed package, so `pip install .` carries it)."""

from __future__ import annotations

from pathlib import Path

from engine.errors import Mu2CheckpointError

DEMO_DIR = Path(__file__).resolve().parent / "weights" / "demo"


def demo_weights_dir() -> Path:
    """The bundled demo checkpoint (trained on synthetic phantoms only; not for clinical use)."""
    if not (DEMO_DIR / "config.json").exists():
        raise Mu2CheckpointError(
            f"the bundled demo model is missing from {DEMO_DIR}; train it with `python -m training.demo --out "
            f"{DEMO_DIR}` or choose a checkpoint folder"
        )
    return DEMO_DIR
