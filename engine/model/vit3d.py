"""ViT3D: the M3D-CLIP 3D vision transformer, compatible with its weights.

Facts from MONAI 1.3 (``ViT`` with ``pos_embed='perceptron'``, ``classification=True``, as the
official code builds it): each chunk ``(C, D, H, W)`` is cut into ``p1×p2×p3`` patches, each patch
flattened in ``(p1, p2, p3, C)`` order (einops ``b c (h p1) (w p2) (d p3) -> b (h w d) (p1 p2 p3 c)``)
and mapped by a Linear; a learned position embedding is added; a CLS token (without position
embedding) is prepended; pre-norm blocks ``x + Attn(LN(x))``, ``x + MLP(LN(x))`` with a bias-free
qkv, exact-erf GELU, LayerNorm eps 1e-5; a final LayerNorm. The official tower then drops the
CLS token (``vision_select_feature='patch'``); so does :meth:`ViT3D.forward`.

Parameter names are MONAI's (``patch_embedding.patch_embeddings.1``, ``blocks.{i}.attn.qkv``, …),
so ``pretrained_ViT.bin`` loads as is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from engine.errors import Mu2CheckpointError
from engine.model.kernels import attention, linear

__all__ = ["ViT3D", "convert_m3d_clip_state_dict"]

log = logging.getLogger(__name__)


class PatchFlatten(nn.Module):
    """Cut a volume into patches: ``(B, C, D, H, W) -> (B, n_patches, p1·p2·p3·C)``.

    Patches in row-major (d, h, w) order; inside a patch the values in ``(p1, p2, p3, C)`` order.
    """

    def __init__(self, patch_size: Sequence[int]) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        p1, p2, p3 = self.patch_size
        x = x.reshape(b, c, d // p1, p1, h // p2, p2, w // p3, p3).permute(0, 2, 4, 6, 3, 5, 7, 1)
        return x.reshape(b, (d // p1) * (h // p2) * (w // p3), p1 * p2 * p3 * c)


class PatchEmbedding(nn.Module):
    """Patch flattening + Linear + learned position embedding: ``(B, C, D, H, W) -> (B, n_patches, E)``."""

    def __init__(
        self, in_channels: int, img_size: Sequence[int], patch_size: Sequence[int], hidden_size: int
    ):
        super().__init__()
        for i, p in zip(img_size, patch_size):
            if i % p:
                raise ValueError(
                    f"img_size {tuple(img_size)} is not divisible by patch_size {tuple(patch_size)}"
                )
        n_patches = 1
        for i, p in zip(img_size, patch_size):
            n_patches *= i // p
        patch_dim = in_channels * patch_size[0] * patch_size[1] * patch_size[2]
        self.patch_embeddings = nn.Sequential(PatchFlatten(patch_size), nn.Linear(patch_dim, hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, n_patches, hidden_size))
        nn.init.trunc_normal_(self.position_embeddings, std=0.02, a=-2.0, b=2.0)
        nn.init.trunc_normal_(self.patch_embeddings[1].weight, std=0.02, a=-2.0, b=2.0)
        nn.init.zeros_(self.patch_embeddings[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat, proj = self.patch_embeddings
        return linear(proj, flat(x)) + self.position_embeddings


class SelfAttention(nn.Module):
    """MONAI ``SABlock``: bias-free fused qkv, softmax attention, output projection. ``(B, L, E) -> (B, L, E)``."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, e = x.shape
        qkv = (
            linear(self.qkv, x, pack=True)
            .view(b, n, 3, self.num_heads, e // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        # One copy into (3, B, H, L, d): PyTorch's CPU flash attention runs ~6% faster on contiguous
        # heads than on the strided views (measured at M3D-CLIP's 2049 tokens, bf16 and fp32), and the
        # blocked bf16 kernel would otherwise copy each of q, k, v itself.
        q, k, v = qkv.contiguous()
        ctx = attention(q, k, v)
        return linear(self.out_proj, ctx.transpose(1, 2).reshape(b, n, e), pack=True)


class MLP(nn.Module):
    """``linear2(GELU(linear1(x)))`` with exact GELU. ``(B, L, E) -> (B, L, E)``."""

    def __init__(self, hidden_size: int, mlp_dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(hidden_size, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.linear2, linear(self.linear1, x, activation="gelu", pack=True), pack=True)


class Block(nn.Module):
    """Pre-norm transformer block: ``(B, L, E) -> (B, L, E)``."""

    def __init__(self, hidden_size: int, mlp_dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.attn = SelfAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.mlp = MLP(hidden_size, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT3D(nn.Module):
    """M3D-CLIP's ViT: ``(B, C, D, H, W) -> (B, n_patches, hidden_size)`` (CLS token dropped).

    Parameters
    ----------
    in_channels : image channels (1 for CT).
    img_size : (D, H, W) of one chunk, e.g. (32, 256, 256).
    patch_size : (p1, p2, p3), e.g. (4, 16, 16) → 8×16×16 = 2048 patches.
    hidden_size, mlp_dim, num_layers, num_heads : transformer sizes (768, 3072, 12, 12 for M3D-CLIP).
    """

    def __init__(
        self,
        in_channels: int = 1,
        img_size: Sequence[int] = (32, 256, 256),
        patch_size: Sequence[int] = (4, 16, 16),
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.img_size = tuple(img_size)
        self.patch_size = tuple(patch_size)
        self.hidden_size = hidden_size
        self.patch_embedding = PatchEmbedding(in_channels, img_size, patch_size, hidden_size)
        self.blocks = nn.ModuleList(Block(hidden_size, mlp_dim, num_heads) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.gradient_checkpointing = False

    @property
    def patch_grid(self) -> tuple[int, int, int]:
        """Patches per axis, ``img_size // patch_size``."""
        return tuple(i // p for i, p in zip(self.img_size, self.patch_size))  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W) -> (B, n_patches, hidden_size)``."""
        if tuple(x.shape[1:]) != (self.in_channels, *self.img_size):
            raise ValueError(
                f"expected chunks of shape (B, {self.in_channels}, {', '.join(map(str, self.img_size))}), "
                f"got {tuple(x.shape)}"
            )
        if x.shape[0] > 1 and not torch.is_grad_enabled():
            # Inference, one chunk at a time (every op is per sample, so the result is the same bit for
            # bit): a chunk's activations (13 MB for the MLP of M3D-CLIP's ViT) are reused from the heap,
            # where a batch of 8 chunks needs 100 MB blocks that the allocator maps afresh on each call
            # (measured 424k page faults per 4-chunk forward batched, none chunk by chunk).
            first = self._features(x[:1])
            out = first.new_empty(x.shape[0], *first.shape[1:])
            out[:1] = first
            for i in range(1, x.shape[0]):
                out[i : i + 1] = self._features(x[i : i + 1])
            return out
        return self._features(x)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        for blk in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        # LayerNorm is per token, so dropping CLS before the final norm gives the same patch features.
        return self.norm(x[:, 1:])

    @classmethod
    def load_m3d_clip(cls, path: str | Path, **kwargs) -> ViT3D:
        """A ViT3D holding M3D-CLIP's ``pretrained_ViT.bin`` (or a ``.safetensors`` of it).

        Sizes not given in ``kwargs`` are read from the tensor shapes (``img_size``/``patch_size``
        default to M3D-CLIP's (32, 256, 256)/(4, 16, 16)). Raises :class:`Mu2CheckpointError`.
        """
        path = Path(path)
        if not path.is_file():
            raise Mu2CheckpointError(f"{path} does not exist; download M3D-CLIP's pretrained_ViT.bin first")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                raw = load_file(str(path))
            else:
                raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise Mu2CheckpointError(f"cannot read {path} as a weights file: {err}") from err
        if not isinstance(raw, Mapping):
            raise Mu2CheckpointError(f"{path} does not hold a state dict")
        sd = convert_m3d_clip_state_dict(raw)
        kwargs.setdefault("hidden_size", sd["cls_token"].shape[-1] if "cls_token" in sd else 768)
        if "blocks.0.mlp.linear1.weight" in sd:
            kwargs.setdefault("mlp_dim", sd["blocks.0.mlp.linear1.weight"].shape[0])
        layers = {k.split(".")[1] for k in sd if k.startswith("blocks.")}
        if layers:
            kwargs.setdefault("num_layers", len(layers))
        model = cls(**kwargs)
        from engine.official import load_checked  # late: engine.official imports engine.model

        load_checked(model, sd, str(path))
        return model


_VIT_PREFIXES = (
    "model.vision_tower.vision_tower.",
    "vision_tower.vision_tower.",
    "vision_tower.",
    "vision_encoder.",
    "module.vision_encoder.",
    "module.",
)


def convert_m3d_clip_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ViT3D keys from an M3D-CLIP ViT state dict.

    ``pretrained_ViT.bin`` has MONAI's keys without prefix (the official code loads it into the
    ViT with ``strict=True``); a full M3D-CLIP model has them under ``vision_encoder.``; an official
    u2 checkpoint under ``model.vision_tower.vision_tower.``. Keys outside the prefix are dropped.
    """
    for prefix in _VIT_PREFIXES:
        if any(k.startswith(prefix + "patch_embedding.") for k in state_dict):
            return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return dict(state_dict)
