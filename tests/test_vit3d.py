"""ViT3D and the spatial pooling projector against the official (MONAI) outputs, and weight loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.errors import Mu2CheckpointError
from engine.model.kernels import attention
from engine.model.projector import SpatialPoolingProjector, pool_grid
from engine.model.vit3d import PatchFlatten, ViT3D, convert_m3d_clip_state_dict

REF = Path(__file__).parent / "data" / "official_vit3d_ref.safetensors"
CFG = json.loads(safe_open(str(REF), "pt").metadata()["config"])


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(str(REF))


def _vit() -> ViT3D:
    keys = ("in_channels", "img_size", "patch_size", "hidden_size", "mlp_dim", "num_layers", "num_heads")
    return ViT3D(**{k: CFG[k] for k in keys}).eval()


def _part(ref: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in ref.items() if k.startswith(prefix)}


def test_vit_matches_official(ref):
    vit = _vit()
    vit.load_state_dict(_part(ref, "vit/"), strict=True)
    with torch.no_grad():
        feats = vit(ref["x"])
    torch.testing.assert_close(feats, ref["features"], atol=1e-5, rtol=1e-5)


def test_projector_matches_official(ref):
    proj = SpatialPoolingProjector(CFG["hidden_size"], CFG["out_dim"], _vit().patch_grid, CFG["pool"]).eval()
    proj.load_state_dict(_part(ref, "projector/"), strict=True)
    with torch.no_grad():
        tokens = proj(ref["features"])
    assert proj.num_tokens == tokens.shape[1] == 12
    torch.testing.assert_close(tokens, ref["tokens"], atol=1e-5, rtol=1e-5)


def test_patch_order_is_depth_row_col_then_channels_last():
    x = torch.arange(2 * 4 * 4 * 6, dtype=torch.float32).view(1, 2, 4, 4, 6)  # (B, C, D, H, W)
    patches = PatchFlatten((2, 2, 3))(x)
    assert patches.shape == (1, 2 * 2 * 2, 2 * 2 * 3 * 2)
    # Patch 1 is (d=0, h=0, w=1); its entry 1 is voxel (p1=0, p2=0, p3=0) of channel 1.
    assert patches[0, 1, 0] == x[0, 0, 0, 0, 3]
    assert patches[0, 1, 1] == x[0, 1, 0, 0, 3]
    assert patches[0, 1, 2] == x[0, 0, 0, 0, 4]
    assert patches[0, 2, 0] == x[0, 0, 0, 2, 0]  # patch 2 is (d=0, h=1, w=0)
    assert patches[0, 4, 0] == x[0, 0, 2, 0, 0]  # patch 4 is (d=1, h=0, w=0)


def test_pool_grid_is_avg_pool3d_and_works_in_bfloat16():
    x = torch.randn(2, 4 * 6 * 5, 3)
    expected = F.avg_pool3d(x.transpose(1, 2).reshape(2, 3, 4, 6, 5), 2).flatten(2).transpose(1, 2)
    torch.testing.assert_close(pool_grid(x, (4, 6, 5), 2), expected)
    torch.testing.assert_close(pool_grid(x.bfloat16(), (4, 6, 5), 2).float(), expected, atol=0.02, rtol=0.02)


def test_attention_matches_written_out_softmax():
    torch.manual_seed(0)
    vit = ViT3D(1, (4, 8, 8), (2, 4, 4), hidden_size=16, mlp_dim=32, num_layers=1, num_heads=4)
    attn = vit.blocks[0].attn
    x = torch.randn(2, 9, 16)
    q, k, v = attn.qkv(x).view(2, 9, 3, 4, 4).permute(2, 0, 3, 1, 4)
    expected = attn.out_proj(
        ((q @ k.transpose(-1, -2)) * 0.5).softmax(-1).matmul(v).transpose(1, 2).reshape(2, 9, 16)
    )
    torch.testing.assert_close(attn(x), expected)


def test_bfloat16_inference_attention_is_monai_sablock_in_bfloat16():
    # 300 queries: two full blocks of 128 and a partial one.
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 300, 32).bfloat16() for _ in range(3))
    scores = torch.einsum("bhxd,bhyd->bhxy", q, k) * 32**-0.5  # MONAI SABlock, all in bfloat16
    monai = torch.einsum("bhxy,bhyd->bhxd", scores.softmax(-1), v)
    with torch.no_grad():
        out = attention(q, k, v)
    torch.testing.assert_close(out, monai, atol=0, rtol=0)
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    torch.testing.assert_close(out.float(), exact, atol=0.02, rtol=0.02)
    torch.testing.assert_close(attention(q.float(), k.float(), v.float()), exact)  # float32: SDPA


def test_bfloat16_forward_runs():
    vit = _vit().to(torch.bfloat16)
    out = vit(torch.randn(1, CFG["in_channels"], *CFG["img_size"], dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (1, 96, CFG["hidden_size"])


@pytest.mark.parametrize("prefix", ["", "vision_encoder.", "model.vision_tower.vision_tower."])
def test_convert_m3d_clip_state_dict(ref, prefix):
    sd = {prefix + k: v for k, v in _part(ref, "vit/").items()}
    sd["text_encoder.embeddings.weight"] = torch.zeros(2)  # other parts of a full M3D-CLIP model
    if not prefix:
        del sd["text_encoder.embeddings.weight"]
    converted = convert_m3d_clip_state_dict(sd)
    assert set(converted) == set(_part(ref, "vit/"))


def test_load_m3d_clip_bin_and_safetensors(ref, tmp_path):
    sd = _part(ref, "vit/")
    torch.save(sd, tmp_path / "pretrained_ViT.bin")
    save_file(sd, tmp_path / "vit.safetensors")
    kwargs = {k: CFG[k] for k in ("in_channels", "img_size", "patch_size", "num_heads")}
    for name in ("pretrained_ViT.bin", "vit.safetensors"):
        vit = ViT3D.load_m3d_clip(tmp_path / name, **kwargs).eval()
        assert len(vit.blocks) == CFG["num_layers"]
        with torch.no_grad():
            torch.testing.assert_close(vit(ref["x"]), ref["features"], atol=1e-5, rtol=1e-5)


def test_load_m3d_clip_reports_mismatch(ref, tmp_path):
    sd = _part(ref, "vit/")
    del sd["norm.bias"]
    torch.save(sd, tmp_path / "bad.bin")
    with pytest.raises(Mu2CheckpointError, match=r"norm\.bias \(32,\)"):
        ViT3D.load_m3d_clip(
            tmp_path / "bad.bin",
            **{k: CFG[k] for k in ("in_channels", "img_size", "patch_size", "num_heads")},
        )
    with pytest.raises(Mu2CheckpointError, match="does not exist"):
        ViT3D.load_m3d_clip(tmp_path / "missing.bin")


def test_inference_chunk_by_chunk_equals_batched_training_path():
    torch.manual_seed(0)
    vit = _vit().eval()
    x = torch.randn(3, vit.in_channels, *vit.img_size)
    with torch.no_grad():
        fast = vit(x)  # chunk by chunk, oneDNN kernels, packed weights
        one = vit(x[1:2])
    batched = vit(x)  # recording gradients: one batched pass through plain F.linear / F.gelu
    torch.testing.assert_close(fast, batched.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast[1:2], one, atol=0, rtol=0)
