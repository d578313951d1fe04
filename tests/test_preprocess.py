"""prepare(), PrepSpec and GridMap: the official arithmetic, orientation handling and the token ↔ voxel map."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.errors import Mu2InputError
from engine.gridmap import GridMap
from engine.prep_math import percentiles
from engine.preprocess import ModelInput, PrepSpec, prepare
from engine.volume import Volume

SMALL = PrepSpec(image_size=(16, 32, 32), chunk_depth=8, patch_size=(2, 8, 8), pool=2)


def ct_like(shape, seed=0) -> np.ndarray:
    """Air around an elliptic body of noisy soft tissue, off-centre so that the crop matters."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    vol = np.full(shape, -1024.0, dtype=np.float32)
    yy, xx = np.ogrid[:y, :x]
    body = ((yy - 0.45 * y) / (0.33 * y)) ** 2 + ((xx - 0.55 * x) / (0.4 * x)) ** 2 < 1
    vol[1 : z - 1, body] = rng.normal(40, 300, (z - 2, int(body.sum()))).round()
    return vol


def reference_prepare(vox_kij: np.ndarray, spec: PrepSpec) -> np.ndarray:
    """The official steps written plainly on the whole (k, i, j) array: full percentile sort, a dense
    3-D blur and ``F.interpolate``; slow, but independent of ``prepare``'s banded slab arithmetic."""
    data = torch.tensor(vox_kij, dtype=torch.float64)
    lo, hi = np.percentile(vox_kij, spec.percentiles)
    data = ((data - lo) / (hi - lo)).clamp(0, 1).float()
    nz = torch.nonzero(data > 0)
    s, e = nz.min(0).values, nz.max(0).values + 1
    data = data[s[0] : e[0], s[1] : e[1], s[2] : e[2]]
    n = data.shape
    d, h, w = spec.image_size
    ratio = min(h / n[1], w / n[2])
    m = (n[0] if d >= n[0] else d, int(n[1] * ratio), int(n[2] * ratio))
    if m != tuple(n):
        x = data[None, None]
        if any(mo < ni for mo, ni in zip(m, n)):
            for a in range(3):
                sigma = max(0.0, (n[a] / m[a] - 1) / 2)
                if sigma == 0:
                    continue
                tail = int(max(sigma * 4.0, 0.5) + 0.5)
                t = torch.arange(-tail, tail + 1, dtype=torch.float32)
                c = 0.70710678 / sigma
                k = (0.5 * (torch.erf(c * (t + 0.5)) - torch.erf(c * (t - 0.5)))).clamp(min=0)
                shape = [1, 1, 1, 1, 1]
                shape[2 + a] = -1
                pad = [0, 0, 0]
                pad[a] = tail
                x = F.conv3d(x, k.reshape(shape), padding=pad)
        data = F.interpolate(x, size=m, mode="trilinear", align_corners=True)[0, 0]
    cube = torch.zeros(spec.image_size)
    cube[: m[0], : m[1], : m[2]] = data
    return cube.reshape(spec.n_chunks, spec.chunk_depth, h, w).numpy()


# -- PrepSpec -----------------------------------------------------------------------------------------
def test_default_spec_is_mu2_1b():
    spec = PrepSpec()
    assert spec.n_chunks == 8 and spec.chunk_token_grid == (4, 8, 8) and spec.tokens_per_chunk == 256
    assert SMALL.chunk_token_grid == (2, 2, 2) and SMALL.cell == (4, 16, 16)


def test_spec_round_trips_through_json():
    spec = PrepSpec(image_size=(64, 64, 64), chunk_depth=8, patch_size=(4, 8, 8), hu_window=(-1000, 400))
    again = PrepSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec


def test_spec_reads_checkpoint_configs():
    from engine.model.config import Mu2Config, preset_names

    for name in preset_names():
        spec = PrepSpec.from_dict(Mu2Config.preset(name).preprocess)
        assert spec.canonical_orientation == "SLP" and spec.n_chunks >= 1, name
    assert PrepSpec.from_dict(Mu2Config.preset("mu2-1b").preprocess) == PrepSpec()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": (20, 32, 32), "chunk_depth": 8},
        {"patch_size": (3, 8, 8), "chunk_depth": 8, "image_size": (16, 32, 32)},
        {"percentiles": (99.0, 1.0)},
        {"hu_window": (400, -1000)},
        {"canonical_orientation": "SLL"},
        {"canonical_orientation": "XYZ"},
    ],
)
def test_invalid_specs_rejected(kwargs):
    with pytest.raises(ValueError):
        PrepSpec(**kwargs)


# -- prepare ------------------------------------------------------------------------------------------
def test_exact_percentiles_match_numpy():
    rng = np.random.default_rng(3)
    for data in (ct_like((40, 256, 256)), rng.normal(size=5_000_001).astype(np.float32)):
        for q in ((0.5, 99.5), (0.0, 100.0), (50.0, 50.0)):
            assert percentiles(data, q) == [float(v) for v in np.percentile(data, q)]


@pytest.mark.parametrize("shape", [(12, 40, 30), (30, 20, 64), (5, 31, 33), (16, 32, 32)])
def test_prepare_matches_the_plain_official_steps(shape):
    vox = ct_like(shape)
    out = prepare(Volume(vox), SMALL)
    assert isinstance(out, ModelInput)
    assert out.pixels.shape == (2, 8, 32, 32) and out.pixels.dtype == np.float32
    assert 0.0 <= out.pixels.min() and out.pixels.max() <= 1.0
    # An identity-direction volume is (z, y, x) = (k, j, i); the official array is (k, i, j).
    ref = reference_prepare(vox.transpose(0, 2, 1), SMALL)
    np.testing.assert_allclose(out.pixels, ref, atol=2e-6)


def test_matches_monai_when_installed():
    """Same numbers as MONAI 1.3's transforms in the official order (skipped without MONAI)."""
    pytest.importorskip("monai")
    from monai.transforms import Compose, CropForeground, ScaleIntensityRangePercentiles
    from monai.transforms.spatial.functional import resize

    vox = ct_like((70, 90, 60))
    kij = torch.tensor(vox.transpose(0, 2, 1)[None], dtype=torch.float64)
    data = Compose(
        [ScaleIntensityRangePercentiles(0.5, 99.5, b_min=0.0, b_max=1.0, clip=True), CropForeground()]
    )(kij)
    data = torch.as_tensor(data)[0].permute(1, 2, 0)
    n = data.shape
    ratio = min(32 / n[0], 32 / n[1])
    size = [int(n[0] * ratio), int(n[1] * ratio), 16]
    data = resize(data[None], size, "bilinear", True, None, 3, True, None, False, None)
    data = F.pad(torch.as_tensor(data), (0, 16 - size[2], 0, 32 - size[1], 0, 32 - size[0]))
    ref = data.permute(0, 3, 1, 2).reshape(2, 8, 32, 32).numpy()
    np.testing.assert_allclose(prepare(Volume(vox), SMALL).pixels, ref, atol=1e-6)


def test_deep_volumes_are_resized_to_the_cube_depth():
    vox = ct_like((40, 24, 24))
    out = prepare(Volume(vox), SMALL)
    assert out.grid_map.resized[0] == 16
    np.testing.assert_allclose(out.pixels, reference_prepare(vox.transpose(0, 2, 1), SMALL), atol=2e-6)


def test_orientation_is_physical_not_storage():
    """The same patient stored flipped (RAS-style NIfTI) or as sagittal slices gives the same input."""
    vox = ct_like((14, 30, 26))
    lps = Volume(vox, spacing=(2.0, 1.0, 1.0))
    ras = Volume(
        np.ascontiguousarray(vox[:, ::-1, ::-1]),
        spacing=(2.0, 1.0, 1.0),
        direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1),
    )
    # Array (x, z, y): index axes i=y, j=z, k=x → direction columns P, S, L.
    sag = Volume(np.ascontiguousarray(vox.transpose(2, 0, 1)), direction=(0, 0, 1, 1, 0, 0, 0, 1, 0))
    a = prepare(lps, SMALL).pixels
    np.testing.assert_array_equal(prepare(ras, SMALL).pixels, a)
    np.testing.assert_array_equal(prepare(sag, SMALL).pixels, a)
    stored = PrepSpec(**{**SMALL.to_dict(), "canonical_orientation": "stored"})
    np.testing.assert_array_equal(prepare(lps, stored).pixels, a)  # LPS storage is already 'SLP'
    assert not np.array_equal(prepare(ras, stored).pixels, a)


def test_hu_window_mode():
    vox = ct_like((10, 32, 32))
    spec = PrepSpec(**{**SMALL.to_dict(), "hu_window": (-1000.0, 400.0)})
    out = prepare(Volume(vox), spec)
    assert out.intensity_range == (-1000.0, 400.0)
    body = out.pixels[out.pixels > 0]
    assert body.size and body.max() <= 1.0


def test_fingerprint_is_deterministic_and_sensitive():
    vol = Volume(ct_like((10, 32, 32)))
    a = prepare(vol, SMALL)
    assert prepare(vol, SMALL).fingerprint == a.fingerprint and len(a.fingerprint) == 64
    other = PrepSpec(**{**SMALL.to_dict(), "percentiles": (1.0, 99.0)})
    assert prepare(vol, other).fingerprint != a.fingerprint
    vol.voxels[5, 10, 10] += 500
    assert prepare(vol, SMALL).fingerprint != a.fingerprint


def test_constant_volume_does_not_crash():
    out = prepare(Volume(np.full((6, 20, 20), -1024.0, np.float32)), SMALL)
    assert np.isfinite(out.pixels).all() and out.pixels.max() <= 1.0


def test_prepared_npy_volume_used_as_is(tmp_path):
    from engine.volume import load_volume

    arr = np.random.default_rng(0).random((1, 8, 32, 32), dtype=np.float32)
    np.save(tmp_path / "m3d.npy", arr)
    vol = load_volume(tmp_path / "m3d.npy")
    assert vol.prepared and vol.shape == (8, 32, 32) and vol.warnings
    out = prepare(vol, SMALL)
    np.testing.assert_array_equal(out.pixels[0], arr[0])
    assert not out.pixels[1].any()  # padded to the cube depth
    heat = out.grid_map.to_volume(np.ones((2, 8)))
    assert heat.shape == (8, 32, 32) and heat.min() == 1.0
    with pytest.raises(Mu2InputError, match="expects at most"):
        prepare(vol, PrepSpec(**{**SMALL.to_dict(), "image_size": (16, 64, 64)}))


# -- GridMap ------------------------------------------------------------------------------------------
@pytest.fixture(
    params=[
        ((13, 50, 37), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
        ((40, 21, 29), (-1, 0, 0, 0, -1, 0, 0, 0, 1)),  # flipped in-plane, deeper than the cube
        ((25, 17, 30), (0, 0, 1, 1, 0, 0, 0, 1, 0)),  # sagittal storage: axes permuted
    ]
)
def mapped(request) -> tuple[Volume, ModelInput]:
    shape, direction = request.param
    vol = Volume(
        ct_like(shape, seed=2), spacing=(1.5, 0.8, 0.7), origin=(-5.0, 3.0, 12.0), direction=direction
    )
    return vol, prepare(vol, SMALL)


def test_grid_shapes(mapped):
    vol, mi = mapped
    gm = mi.grid_map
    assert gm.token_grid_shape == (4, 2, 2) and gm.chunk_grid_shape == (2, 2, 2) and gm.tokens_per_chunk == 8
    assert gm.global_cell(1, 5) == (3, 0, 1)  # chunk 1, token (d, h, w) = (1, 0, 1)
    assert gm.to_volume(np.zeros((2, 8))).shape == vol.shape


def test_each_token_lands_exactly_in_its_bounds(mapped):
    vol, mi = mapped
    gm = mi.grid_map
    ids = np.arange(1, gm.n_chunks * gm.tokens_per_chunk + 1, dtype=np.float32).reshape(gm.n_chunks, -1)
    labels = gm.to_volume(ids)
    assert labels.dtype == np.float32 and labels.shape == vol.shape
    grids = np.meshgrid(*[np.arange(s) for s in vol.shape], indexing="ij")
    nonempty = 0
    for t in range(gm.n_chunks):
        for n in range(gm.tokens_per_chunk):
            box = gm.token_bounds_voxels(t, n)
            inside = np.ones(vol.shape, bool)
            for axis, (lo, hi) in enumerate(box):
                inside &= (grids[axis] > lo) & (grids[axis] < hi)
            assert np.array_equal(labels == ids[t, n], inside), (t, n)
            if inside.any():
                nonempty += 1
                centre = gm.token_center_world(t, n)
                idx = vol.world_to_index(centre)
                assert all(lo - 1e-6 <= i <= hi + 1e-6 for i, (lo, hi) in zip(idx, box)), (t, n)
    assert nonempty >= 8
    # The foreground box is covered completely, the rest of the volume is zero.
    body = vol.voxels > mi.intensity_range[0]
    assert (labels[body] > 0).all()


def test_gridmap_serialises(mapped):
    vol, mi = mapped
    gm = mi.grid_map
    again = GridMap.from_dict(json.loads(json.dumps(gm.to_dict())))
    assert again == gm
    vals = np.random.default_rng(1).random(gm.token_grid_shape).astype(np.float32)
    np.testing.assert_array_equal(again.to_volume(vals), gm.to_volume(vals))


def test_token_value_reaches_the_voxels_the_model_saw():
    """A bright blob in the volume lights up the cube cells where prepare put it, and maps back onto it."""
    vox = np.full((16, 64, 64), -1024.0, np.float32)
    vox[2:14, 8:56, 8:56] = 0.0
    vox[10:13, 40:50, 12:20] = 1500.0
    vol = Volume(vox)
    spec = PrepSpec(
        image_size=(16, 64, 64), chunk_depth=8, patch_size=(2, 4, 4), pool=2, percentiles=(0.0, 100.0)
    )
    mi = prepare(vol, spec)
    cube = mi.pixels.reshape(16, 64, 64)
    cell_max = cube.reshape(4, 4, 8, 8, 8, 8).max(axis=(1, 3, 5))  # (Gz, Gy, Gx) brightest cube voxel
    heat = mi.grid_map.to_volume((cell_max > 0.9).astype(np.float32))
    assert heat[10:13, 40:50, 12:20].min() == 1.0
    assert heat[vox < 1000].mean() < 0.05
