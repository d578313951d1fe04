"""The drafting job that runs off the GUI thread, and the per-folder cache of loaded models.

The job never touches napari layers or Qt widgets: it reads a ``Volume`` (a plain object), calls
``engine.draft.Drafter`` and reports progress through ``DraftSignals``, a QObject that lives on the GUI
thread; Qt queues signals emitted from the worker thread, so every slot runs on the GUI thread.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, Signal

log = logging.getLogger(__name__)

STAGES = ("load", "prepare", "encode", "generate", "heatmap")

_cache: dict[str, Any] = {}
_cache_lock = threading.Lock()
_import_lock = threading.Lock()


def _key(weights_dir: Path | None) -> str:
    return "<demo>" if weights_dir is None else str(Path(weights_dir).expanduser().resolve())


def cached_drafter(weights_dir: Path | None) -> Any | None:
    """The already-loaded Drafter for ``weights_dir`` (``None`` = the bundled demo), if any."""
    with _cache_lock:
        return _cache.get(_key(weights_dir))


def get_drafter(weights_dir: Path | None, device: str = "auto") -> Any:
    """Load (once per folder, then reuse) the Drafter of ``weights_dir``. Call off the GUI thread."""
    from engine.draft import load_drafter_or_error

    key = _key(weights_dir)
    # One lock for the whole load: two widgets asking for the same folder must not load it twice.
    with _cache_lock:
        drafter = _cache.get(key)
        if drafter is None:
            drafter = load_drafter_or_error(weights_dir, device=device)
            _cache[key] = drafter
            # napari + torch + transformers + the model are millions of long-lived objects; a full
            # collection over them holds the GIL for ~0.3 s and freezes napari mid-draft. Moving them to
            # the permanent generation keeps later collections short (they are never freed anyway).
            gc.freeze()
        return drafter


def preload_engine() -> None:
    """Import the drafting stack (torch, transformers, the model code) ahead of the first draft.

    The import takes seconds and, in a worker thread, still holds the GIL for up to ~0.4 s at a time;
    doing it before the first click keeps those hitches out of the draft itself. Serialised by a lock:
    two threads importing the same circular package at once can see it half-initialised.
    """
    with _import_lock:
        try:
            import engine.draft  # noqa: F401
            import engine.model  # noqa: F401
            import engine.preprocess  # noqa: F401
        except Exception:  # noqa: BLE001 - a broken install is reported by the draft that needs it
            log.debug("preloading the engine failed", exc_info=True)


def engine_loaded() -> bool:
    import sys

    return all(m in sys.modules for m in ("engine.draft", "engine.model", "engine.preprocess"))


def forget_drafters() -> None:
    """Drop every cached model (frees their memory once no draft holds them)."""
    with _cache_lock:
        _cache.clear()


def model_card_warning(weights_dir: Path | None) -> str:
    """The model card's "synthetic phantoms only … not for clinical use" line, or "" when it has none."""
    if weights_dir is None:
        try:
            from engine.weights import demo_weights_dir

            weights_dir = demo_weights_dir()
        except Exception:  # noqa: BLE001 - a missing demo model is reported when drafting
            return ""
    card = Path(weights_dir) / "README.md"
    try:
        text = card.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        if "synthetic phantoms only" in line:
            return line.strip().lstrip("#>*- ").strip()
    return ""


def default_question(weights_dir: Path | None) -> str:
    """The checkpoint's default question, read from its config without loading the model ("" if unknown)."""
    import json

    try:
        if weights_dir is None:
            from engine.weights import demo_weights_dir

            weights_dir = demo_weights_dir()
        cfg = json.loads((Path(weights_dir) / "config.json").read_text())
    except Exception:  # noqa: BLE001 - no question shown is fine; drafting reports the real problem
        return ""
    question = cfg.get("default_question")
    if not question:
        from engine.model.config import DEFAULT_QUESTION

        question = DEFAULT_QUESTION
    return str(question)


class DraftSignals(QObject):
    """Progress of one draft, emitted from the worker thread and delivered on the GUI thread."""

    stage = Signal(str)
    token = Signal(str)


@dataclass
class DraftRequest:
    """Everything the job needs, captured on the GUI thread before it starts."""

    weights_dir: Path | None
    question: str
    max_new_tokens: int
    sampling: dict
    load_volume: Callable[[], Any]  # reads the layer's data; runs in the worker
    cancel: threading.Event = field(default_factory=threading.Event)
    device: str = "auto"


def run_draft(request: DraftRequest, signals: DraftSignals) -> tuple[Any, Any]:
    """The worker body: load the model (cached), read the volume, draft. Returns ``(Draft, Volume)``."""
    from engine.errors import Mu2Error

    signals.stage.emit("load")
    preload_engine()  # waits for a background preload still importing, instead of racing it
    drafter = get_drafter(request.weights_dir, device=request.device)
    if request.cancel.is_set():
        raise Mu2Error("the draft was cancelled")
    volume = request.load_volume()
    draft = drafter.draft(
        volume,
        question=request.question or None,
        max_new_tokens=request.max_new_tokens,
        sampling=request.sampling,
        on_token=signals.token.emit,
        cancel=request.cancel,
        on_stage=signals.stage.emit,
    )
    return draft, volume


def describe_error(err: BaseException) -> str:
    """A one-line message a radiologist can act on; no tracebacks in the UI."""
    from engine.errors import Mu2Error

    if isinstance(err, Mu2Error):
        return str(err)
    if isinstance(err, MemoryError) or "out of memory" in str(err).lower():
        return (
            "out of memory while drafting: close other programs, choose a smaller checkpoint, "
            "or lower max new tokens"
        )
    return f"unexpected error: {type(err).__name__}: {err}"
