"""Render docs/screenshot.png: napari with a phantom chest CT, the Mu2 widget, a draft and its heatmap.

Run under a display (``xvfb-run -a`` on a headless machine)::

    xvfb-run -a python scripts/screenshot.py [--out docs/screenshot.png]

Uses ``--weights DIR``, else the bundled demo model when ``engine/weights/demo`` exists, else a
random-weight tiny checkpoint (whose heatmap is flat and whose text is noise).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("screenshot")
REPO = Path(__file__).resolve().parents[1]


def pick_weights(tmp: Path) -> Path | None:
    """``None`` (the widget's bundled demo model) when it exists, else a fresh tiny checkpoint."""
    from engine.weights import DEMO_DIR

    if (DEMO_DIR / "config.json").exists():
        return None
    from engine.assemble import new_checkpoint

    log.warning("no bundled demo model in %s; using a random-weight tiny checkpoint", DEMO_DIR)
    return new_checkpoint("tiny", tmp / "tiny")


def close_toasts(viewer) -> None:
    """Close napari's notification pop-ups (e.g. its PyQt5 deprecation notice) so they do not cover the CT."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    napari_app = __import__("napari").qt.get_qapp()
    napari_app.processEvents()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshot.png"))
    parser.add_argument("--size", default="1600x1000", help="window size WxH")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--weights", help="checkpoint folder to draft with instead of the bundled demo model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import napari

    from engine.phantom import load_phantom_sample
    from mu2_napari._widget import Mu2Widget
    from mu2_napari.layers import ct_layer_data, strongest_slice

    tmp = Path(tempfile.mkdtemp(prefix="mu2-shot-"))
    data, kwargs, _ = ct_layer_data(load_phantom_sample())
    viewer = napari.Viewer(title="Mu2", show=True)
    viewer.add_image(data, **kwargs)
    widget = Mu2Widget(viewer)
    viewer.window.add_dock_widget(widget, name="Mu2 report", area="right")
    widget.weights_dir = Path(args.weights) if args.weights else pick_weights(tmp)
    widget.review_dir = tmp / "reviews"
    widget.questions.max_new_tokens.setValue(args.tokens)
    width, height = (int(v) for v in args.size.split("x"))
    viewer.window._qt_window.resize(width, height)

    draft = widget.draft(wait=True)
    if draft is None:
        log.error("draft failed: %s", widget.drafting.error.text())
        return 1
    z = strongest_slice(draft.heatmap)
    viewer.dims.set_current_step(0, z)
    viewer.reset_view()
    app = napari.qt.get_qapp()
    for _ in range(5):
        app.processEvents()
    close_toasts(viewer)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(path=str(out), canvas_only=False, flash=False)
    log.info("slice %d of %d; wrote %s", z, draft.heatmap.shape[0], out)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
