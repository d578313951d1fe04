"""Mu2 engine: everything that is not UI. Importable on a headless server; never imports Qt."""

from engine.errors import Mu2CheckpointError, Mu2Error, Mu2InputError

__all__ = ["Mu2Error", "Mu2InputError", "Mu2CheckpointError"]
__version__ = "0.1.0"
