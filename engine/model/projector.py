"""The official 'spp' projector: average-pool the ViT patch grid, then a GELU MLP into the LM width.

Official (``SpatialPoolingProjector`` with ``proj_pooling_type='spatial'``): the patch sequence is
read as a row-major ``(d, h, w)`` grid, average-pooled by ``pool`` in every axis (``avg_pool3d``,
kernel = stride), flattened row-major again, then ``Linear → GELU → Linear``. With the mu2-1b
grid 8×16×16 and pool 2 that gives 4×8×8 = 256 tokens. Parameter names ``projector.0`` and
``projector.2`` are the official ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from engine.model.kernels import linear

__all__ = ["SpatialPoolingProjector", "pool_grid"]


def pool_grid(x: torch.Tensor, grid: Sequence[int], pool: int) -> torch.Tensor:
    """Average over non-overlapping ``pool³`` blocks of a row-major patch grid.

    ``(B, d·h·w, C) -> (B, (d//pool)·(h//pool)·(w//pool), C)``. Same as the official ``avg_pool3d``
    (incomplete trailing blocks are dropped) but made of reshape + mean, which have bfloat16
    kernels on CPU.
    """
    b, n, c = x.shape
    d, h, w = grid
    if d * h * w != n:
        raise ValueError(f"{n} patches do not form the grid {tuple(grid)}")
    if pool == 1:
        return x
    dp, hp, wp = d // pool, h // pool, w // pool
    x = x.view(b, d, h, w, c)[:, : dp * pool, : hp * pool, : wp * pool]
    x = x.reshape(b, dp, pool, hp, pool, wp, pool, c).mean(dim=(2, 4, 6))
    return x.reshape(b, dp * hp * wp, c)


class SpatialPoolingProjector(nn.Module):
    """Spatial pooling then an MLP: ``(B, n_patches, in_dim) -> (B, n_patches / pool³, out_dim)``.

    Parameters
    ----------
    in_dim, out_dim : ViT width (768) and LM width (2048 for Llama-3.2-1B).
    patch_grid : (d, h, w) patches per chunk (img_size // patch_size, e.g. (8, 16, 16)).
    pool : pooling window in every axis (official 2).
    num_layers : Linear layers in the MLP, GELU between them (official 2).
    """

    def __init__(
        self, in_dim: int, out_dim: int, patch_grid: Sequence[int], pool: int = 2, num_layers: int = 2
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.patch_grid = tuple(int(g) for g in patch_grid)
        self.pool = pool
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(1, num_layers):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        self.projector = nn.Sequential(*layers)

    @property
    def num_tokens(self) -> int:
        """Output tokens per chunk."""
        d, h, w = (g // self.pool for g in self.patch_grid)
        return d * h * w

    def forward(self, x: torch.Tensor, grid: Sequence[int] | None = None) -> torch.Tensor:
        """``(B, n_patches, in_dim) -> (B, num_tokens, out_dim)``; ``grid`` overrides ``patch_grid``."""
        x = pool_grid(x, self.patch_grid if grid is None else grid, self.pool)
        for layer in self.projector:
            x = linear(layer, x) if isinstance(layer, nn.Linear) else layer(x)
        return x
