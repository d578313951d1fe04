"""napari sample data: the synthetic chest CT phantom (no patient data at all)."""

from __future__ import annotations

from mu2_napari.layers import ct_layer_data


def phantom_sample() -> list:
    """The bundled synthetic chest CT phantom as one windowed CT layer."""
    from engine.phantom import load_phantom_sample

    return [ct_layer_data(load_phantom_sample())]
