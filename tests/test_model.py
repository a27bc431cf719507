"""The model: shapes on odd grids, preset sizes, gradients, normalisation, window masks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from bfm.contracts.layout import Layout, Normaliser
from bfm.contracts.sample import ModelInput
from bfm.model import BFM, ModelConfig, build_config, count_parameters, masked_mse
from bfm.model import backbone as backbone_module
from bfm.model.backbone import Swin3DBackbone, attention_mask
from bfm.testing import BASE_GROUPS

LAYOUT = Layout(levels=(500, 850, 1000), species=(11, 22), groups=BASE_GROUPS)
EUROPE = Layout(
    levels=(50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000),
    species=(1, 2, 3, 4, 5, 6),
    groups=BASE_GROUPS,
)


def random_inputs(layout: Layout, b: int, h: int, w: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for group in layout.groups:
        c = layout.n_channels(group)
        shape = (b, c, h, w) if layout.kind(group) == "static" else (b, 2, c, h, w)
        out[group] = torch.randn(shape, generator=g)
    return out


def coords(h: int, w: int, b: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lat = torch.linspace(56.0, 56.0 - 0.5 * (h - 1), h)
    lon = torch.linspace(0.0, 0.5 * (w - 1), w)
    time = torch.tensor([[15.0, 6.0]] * b)
    return lat, lon, time


def randomise_heads(model: BFM) -> None:
    """Zero heads make the untrained model persistence; give them weights for gradient tests."""
    torch.manual_seed(1)
    torch.nn.init.normal_(model.decoder.head_weight, std=0.05)
    torch.nn.init.normal_(model.decoder.head_bias, std=0.05)


@pytest.mark.parametrize("h,w", [(9, 13), (7, 5), (25, 41), (1, 3)])
def test_output_shapes_on_odd_grids(h: int, w: int) -> None:
    model = BFM(build_config("tiny", LAYOUT))
    randomise_heads(model)
    out = model(ModelInput(random_inputs(LAYOUT, 2, h, w), *coords(h, w, 2)))
    assert set(out) == {"surface", "atmospheric", "species"}
    assert out["surface"].shape == (2, 4, h, w)
    assert out["atmospheric"].shape == (2, 5 * 3, h, w)
    assert out["species"].shape == (2, 2, h, w)
    assert all(torch.isfinite(t).all() for t in out.values())


def test_one_model_serves_any_grid_and_has_no_grid_sized_parameter() -> None:
    model = BFM(build_config("tiny", LAYOUT))
    n = count_parameters(model)
    for h, w in ((9, 13), (30, 50)):
        model(ModelInput(random_inputs(LAYOUT, 1, h, w), *coords(h, w)))
    assert count_parameters(model) == n
    assert max(p.numel() for p in model.parameters()) < 50_000


def test_preset_parameter_counts() -> None:
    counts = {
        p: count_parameters(BFM(build_config(p, EUROPE))) for p in ("tiny", "small", "medium")
    }
    assert 100_000 <= counts["tiny"] < 1_000_000, counts
    assert 17_000_000 <= counts["small"] <= 23_000_000, counts
    assert 42_500_000 <= counts["medium"] <= 57_500_000, counts


def test_untrained_model_is_persistence_and_species_climatology() -> None:
    model = BFM(build_config("tiny", LAYOUT))
    x = random_inputs(LAYOUT, 1, 9, 13)
    out = model(ModelInput(x, *coords(9, 13)))
    assert set(out) == {"surface", "atmospheric", "species"}
    for g in ("surface", "atmospheric"):
        torch.testing.assert_close(out[g], x[g][:, -1], rtol=0, atol=0)
    # Counts are predicted directly: normalised 0 is the training mean.
    torch.testing.assert_close(out["species"], torch.zeros_like(out["species"]), rtol=0, atol=0)


def test_backward_gives_finite_gradients_everywhere() -> None:
    model = BFM(build_config("tiny", LAYOUT))
    randomise_heads(model)
    x = random_inputs(LAYOUT, 2, 9, 13)
    target = {g: torch.randn(2, LAYOUT.n_channels(g), 9, 13) for g in LAYOUT.dynamic}
    mask = {g: torch.rand(t.shape) > 0.2 for g, t in target.items()}
    loss = masked_mse(model(ModelInput(x, *coords(9, 13, 2))), target, mask, LAYOUT)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert model.encoder.species_embed.weight.grad.abs().sum() > 0
    assert model.encoder.level_embed.weight.grad.abs().sum() > 0
    assert model.backbone.stage2[0].attn.qkv.weight.grad.abs().sum() > 0


def test_normaliser_round_trip_known_values_and_the_model_carries_it() -> None:
    mean = {
        g: np.arange(LAYOUT.n_channels(g), dtype=np.float64) * 1000 + 101325.0
        for g in LAYOUT.groups
    }
    std = {g: np.full(LAYOUT.n_channels(g), 250.0) for g in LAYOUT.groups}
    norm = Normaliser(mean, std)
    phys = np.full((2, 4, 3, 3), 101575.0, dtype=np.float32)
    phys[0, 0, 0, 0] = np.nan
    x = norm.normalise("surface", phys)
    expected = (101575.0 - mean["surface"]) / 250.0
    np.testing.assert_allclose(x[1, :, 1, 1], expected, rtol=1e-6)
    assert np.isnan(x[0, 0, 0, 0]) and x.dtype == np.float32
    np.testing.assert_allclose(norm.denormalise("surface", x), phys, rtol=1e-7)
    model = BFM(build_config("tiny", LAYOUT), norm)  # carried as float64 buffers, exactly
    for g in LAYOUT.groups:
        np.testing.assert_array_equal(model.normaliser().mean[g], mean[g])
        np.testing.assert_array_equal(model.normaliser().std[g], std[g])


def test_unknown_backbone_names_the_key() -> None:
    with pytest.raises(ValueError, match="model.backbone"):
        build_config("tiny", LAYOUT, backbone="mvit")
    with pytest.raises(ValueError, match="model.preset"):
        build_config("huge", LAYOUT)


def test_config_round_trips_through_json() -> None:
    cfg = build_config("small", EUROPE)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_bad_input_shape_is_a_clear_error() -> None:
    model = BFM(build_config("tiny", LAYOUT))
    x = random_inputs(LAYOUT, 1, 9, 13)
    x["atmospheric"] = x["atmospheric"][:, :, :10]
    with pytest.raises(ValueError, match="atmospheric"):
        model(ModelInput(x, *coords(9, 13)))


def test_window_mask_blocks_padding_and_the_shift_seam() -> None:
    # 1 x 1 x 4 tokens, windows of 2 along lon, shifted by 1: rolled order is [1, 2, 3, 0],
    # windows [1, 2] and [3, 0]; 3 and 0 met only across the seam and must not attend.
    valid = torch.ones(1, 1, 4, dtype=torch.bool)
    mask = attention_mask(valid, (1, 1, 2), (0, 0, 1))
    assert mask[0].all()
    assert torch.equal(mask[1], torch.eye(2, dtype=torch.bool))
    # Unshifted, last token padded: real token 2 must not see it; padded 3 sees its window.
    valid[0, 0, 3] = False
    mask = attention_mask(valid, (1, 1, 2), (0, 0, 0))
    assert torch.equal(mask[1], torch.tensor([[True, False], [True, True]]))


def test_masked_mse_known_answer() -> None:
    layout = Layout(levels=(500, 850), species=(1,), groups=BASE_GROUPS)
    shape = {g: (1, layout.n_channels(g), 2, 2) for g in layout.dynamic}
    pred = {g: torch.zeros(s) for g, s in shape.items()}
    target = {g: torch.zeros(s) for g, s in shape.items()}
    mask = {g: torch.ones(s, dtype=torch.bool) for g, s in shape.items()}
    target["surface"][0, 0] = 2.0  # t2m: squared error 4 everywhere
    target["surface"][0, 0, 0, 0] = 100.0  # ... except a masked point
    mask["surface"][0, 0, 0, 0] = False
    for g in layout.dynamic:  # species entirely missing -> drops out of the mean
        if g == "species":
            mask[g][:] = False
    loss = masked_mse(pred, target, mask, layout)
    n_vars = 4 + 5  # surface + atmospheric variables; species has no valid point
    assert loss.item() == pytest.approx(4.0 / n_vars)
    weighted = masked_mse(pred, target, mask, layout, weights={"surface/t2m": 9.0})
    assert weighted.item() == pytest.approx(9 * 4.0 / (9 + n_vars - 1))


def test_backbone_real_tokens_ignore_whatever_fills_the_padding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = build_config("tiny", LAYOUT)
    bb = Swin3DBackbone(dataclasses.replace(cfg, backbone_depths=(2, 2, 2)))
    x = torch.randn(1, cfg.latent_levels, 3, 5, cfg.embed_dim)  # padded to 4 x 8 inside
    expected = bb(x)
    zero_pad = backbone_module.F.pad

    def noisy_pad(t: torch.Tensor, pad: tuple, *args: object, **kw: object) -> torch.Tensor:
        out, inside = zero_pad(t, pad), zero_pad(torch.ones_like(t), pad)
        return out + (1 - inside) * 100 * torch.randn_like(out)

    monkeypatch.setattr(backbone_module.F, "pad", noisy_pad)
    got = bb(x)
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected)
