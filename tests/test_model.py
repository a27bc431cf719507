"""The model: every group in and out, both backbones, shifted windows that cross window
borders, categorical embeddings, missing-value masks, species identity from the table, the
loss per variable kind, preset sizes, determinism, and a tiny model that overfits a batch."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from bfm.contracts import catalogue
from bfm.contracts.catalogue import DEFAULT_LEVELS
from bfm.contracts.layout import Layout, Normaliser, to_physical
from bfm.contracts.sample import ModelInput, Sample
from bfm.model import BFM, ModelConfig, build_config, count_parameters
from bfm.model import backbone as backbone_module
from bfm.model.backbone import Swin3DBackbone, attention_mask
from bfm.model.loss import latitude_weights, masked_loss
from bfm.model.mvit import MViTBackbone, masked_pool
from bfm.testing import BASE_GROUPS, mock_model_input, mock_species_table

BACKBONES = ("swin3d", "mvit")
LAYOUT = Layout(levels=(500, 850, 1000), species=(11, 22), groups=BASE_GROUPS)
TABLE = mock_species_table(LAYOUT.species)
DIMS = tuple(TABLE.dims.values())


def every_group(species: int = 3) -> Layout:
    """Every group of the catalogue: the study's layout."""
    return Layout(levels=(500, 850), species=tuple(range(1, species + 1)),
                  groups=catalogue.groups())  # fmt: skip


def model_of(layout: Layout = LAYOUT, backbone: str = "swin3d", preset: str = "tiny",
             table=None, **kw) -> BFM:  # fmt: skip
    table = table or mock_species_table(layout.species)
    cfg = build_config(preset, layout, backbone=backbone, species_dims=tuple(table.dims.values()),
                       **kw)  # fmt: skip
    return BFM(cfg, None, table)


def random_input(layout: Layout, b: int, h: int, w: int, seed: int = 0) -> ModelInput:
    return mock_model_input(layout, b, h, w, seed)


def randomise_heads(model: BFM) -> None:
    """Zero heads make the untrained model persistence; give them weights for gradient tests."""
    torch.manual_seed(1)
    torch.nn.init.normal_(model.decoder.head_weight, std=0.05)
    torch.nn.init.normal_(model.decoder.head_bias, std=0.05)


# --- shapes, sizes, gradients ---------------------------------------------------------------
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("h,w", [(9, 13), (7, 5), (1, 3)])
def test_every_group_comes_out_with_its_shape(backbone: str, h: int, w: int) -> None:
    layout = every_group()
    model = model_of(layout, backbone)
    randomise_heads(model)
    out = model(random_input(layout, 2, h, w))
    assert set(out) == set(layout.dynamic) == set(catalogue.groups()) - {"static"}
    for g, y in out.items():
        assert y.shape == (2, layout.n_channels(g), h, w), g
        assert torch.isfinite(y).all(), g


def test_one_model_serves_any_grid_and_has_no_grid_sized_parameter() -> None:
    model = model_of()
    n = count_parameters(model)
    for h, w in ((9, 13), (30, 50)):
        model(random_input(LAYOUT, 1, h, w))
    assert count_parameters(model) == n
    assert max(p.numel() for p in model.parameters()) < 60_000


@pytest.mark.parametrize("backbone", BACKBONES)
def test_preset_sizes_with_the_full_europe_layout(backbone: str) -> None:
    """All groups, 13 levels, the 21 species of the study, 64-long media embeddings."""
    europe = Layout(DEFAULT_LEVELS, tuple(range(1, 22)), catalogue.groups())
    table = mock_species_table(europe.species, dims=(64, 64, 64, 64))
    counts = {p: count_parameters(model_of(europe, backbone, p, table))
              for p in ("tiny", "small", "medium")}  # fmt: skip
    assert counts["tiny"] < 1_000_000, counts
    assert 18_000_000 <= counts["small"] <= 22_000_000, counts
    assert 45_000_000 <= counts["medium"] <= 55_000_000, counts


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_trainable_parameter_gets_a_finite_gradient(backbone: str) -> None:
    layout = every_group()
    model = model_of(layout, backbone)
    randomise_heads(model)
    x = random_input(layout, 2, 9, 13)
    target = {g: torch.rand(2, layout.n_channels(g), 9, 13) for g in layout.dynamic}
    mask = {g: torch.rand(t.shape) > 0.2 for g, t in target.items()}
    masked_loss(model(x), target, mask, layout, x.lat).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert model.encoder.species.rank_embed[5].weight.grad.abs().sum() > 0  # genus
    assert model.encoder.categories["static"][0].weight.grad.abs().sum() > 0  # soil type


def test_a_fixed_seed_gives_the_same_model_and_outputs() -> None:
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = model_of()
        randomise_heads(model)
        outs.append(model(random_input(LAYOUT, 1, 9, 13)))
    for g in outs[0]:
        torch.testing.assert_close(outs[0][g], outs[1][g], rtol=0, atol=0)


# --- backbones ------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["tiny", "small", "medium"])
def test_every_preset_shifts_windows_in_every_stage(preset: str) -> None:
    cfg = build_config(preset, LAYOUT, species_dims=DIMS)
    bb = Swin3DBackbone(cfg)
    for stage in (bb.stage1, bb.stage2, bb.stage3):
        assert any(block.shifted for block in stage), preset
    assert cfg.window[0] > 1 and cfg.latent_levels >= cfg.window[0]  # levels exchange


@pytest.mark.parametrize("backbone", BACKBONES)
def test_an_output_cell_depends_on_inputs_across_a_window_border(backbone: str) -> None:
    """tiny: 4-cell patches, 2 x 2-patch windows; the bottleneck's windows cover 16 x 16
    cells. Without shifted windows an output cell would see only its own 16 x 16 block."""
    model = model_of(backbone=backbone)
    randomise_heads(model)
    x = random_input(LAYOUT, 1, 32, 32)
    x.inputs["surface"].requires_grad_(True)
    out = model(x)["surface"]
    out[0, 0, 5, 15].backward()  # a cell in the first block, by its eastern border
    grad = x.inputs["surface"].grad[0].abs().sum(dim=(0, 1))  # (H, W)
    assert grad[:16, 16:].sum() > 0, "no information from the next block east"
    assert grad[16:, :16].sum() > 0, "no information from the next block south"


def test_swin_window_mask_blocks_padding_and_the_shift_seam() -> None:
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


@pytest.mark.parametrize("backbone", [Swin3DBackbone, MViTBackbone])
def test_real_tokens_ignore_whatever_fills_the_padding(
    backbone: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = build_config("tiny", LAYOUT, species_dims=DIMS)
    bb = backbone(cfg)
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


def test_masked_pool_averages_real_tokens_only() -> None:
    x = torch.arange(8.0).reshape(1, 1, 2, 4, 1)  # [[0 1 2 3] [4 5 6 7]]
    valid = torch.tensor([[[True, True, True, False], [True, False, False, False]]])
    pooled, ok = masked_pool(x, valid, 2)
    assert pooled.flatten().tolist() == pytest.approx([(0 + 1 + 4) / 3, 2.0])
    assert ok.flatten().tolist() == [True, True]


# --- inputs ---------------------------------------------------------------------------------
def test_soil_type_enters_as_an_embedding_of_its_category() -> None:
    layout = every_group()
    model = model_of(layout)
    randomise_heads(model)
    x = random_input(layout, 1, 8, 8)
    ((channel, n),) = layout.categorical("static")
    x.inputs["static"][:, channel] = 3.0
    base = model(x)["surface"]
    x.inputs["static"][:, channel] = 3.2  # the same category
    torch.testing.assert_close(model(x)["surface"], base, rtol=0, atol=0)
    x.inputs["static"][:, channel] = 4.0  # a neighbouring code is another category, not "close"
    assert not torch.equal(model(x)["surface"], base)
    assert model.encoder.categories["static"][0].num_embeddings == n + 1  # + "missing"


def test_the_model_tells_missing_from_the_mean() -> None:
    model = model_of()
    randomise_heads(model)
    x = random_input(LAYOUT, 1, 8, 8)
    x.inputs["surface"][:, :, 0] = 0.0  # t2m exactly at its mean ...
    x.missing = {g: torch.zeros_like(t) for g, t in x.inputs.items()}
    known = model(x)["atmospheric"]
    x.missing["surface"][:, :, 0] = 1.0  # ... or unknown
    assert not torch.equal(model(x)["atmospheric"], known)


def test_a_group_the_model_needs_is_named_when_missing() -> None:
    model = model_of()
    x = random_input(LAYOUT, 1, 9, 13)
    del x.inputs["atmospheric"]
    with pytest.raises(ValueError, match="model input lacks group 'atmospheric'"):
        model(x)


# --- species identity -----------------------------------------------------------------------
def test_species_tokens_come_from_the_table_not_an_index() -> None:
    a, b = model_of(), model_of(table=mock_species_table(LAYOUT.species, seed=1))
    b.load_state_dict(
        {
            k: v
            for k, v in a.state_dict().items()
            if "species.media" not in k and "species.has" not in k and "species.taxa" not in k
        },
        strict=False,
    )
    x = random_input(LAYOUT, 1, 8, 8)
    randomise_heads(a)
    b.decoder.load_state_dict(a.decoder.state_dict())
    assert not torch.equal(a(x)["species"], b(x)["species"])  # same weights, other table
    # The number of trainable parameters does not depend on how many species there are.
    three = Layout(LAYOUT.levels, (11, 22, 33), BASE_GROUPS)
    assert count_parameters(model_of(three)) == count_parameters(a)


def test_a_new_species_gets_its_vector_from_its_genus() -> None:
    table = mock_species_table((1, 2, 3, 4))
    table.taxonomy[3] = table.taxonomy[0]  # species 4: the genus (and family ...) of species 1
    table.present.update({m: np.zeros(4, bool) for m in table.present})  # taxonomy only
    model = model_of(Layout(LAYOUT.levels, (1, 2, 3, 4), BASE_GROUPS), table=table)
    vectors = model.encoder.species()
    torch.testing.assert_close(vectors[0], vectors[3])  # same genus, family, ...: same vector
    assert not torch.equal(vectors[0], vectors[1])


def test_without_the_table_species_have_no_identity() -> None:
    model = model_of(use_species_table=False)
    vectors = model.encoder.species()
    torch.testing.assert_close(vectors[0], vectors[1])
    assert not hasattr(model.encoder.species, "rank_embed")


# --- outputs and loss -----------------------------------------------------------------------
def test_untrained_model_is_persistence_and_the_species_mean() -> None:
    norm = Normaliser({g: np.full(LAYOUT.n_channels(g), 0.25) for g in LAYOUT.groups},
                      {g: np.ones(LAYOUT.n_channels(g)) for g in LAYOUT.groups})  # fmt: skip
    model = BFM(build_config("tiny", LAYOUT, species_dims=DIMS), norm, TABLE)
    x = random_input(LAYOUT, 1, 9, 13)
    out = model(x)
    for g in ("surface", "atmospheric"):
        torch.testing.assert_close(out[g], x.inputs[g][:, -1], rtol=0, atol=0)
    rate = to_physical(LAYOUT, norm, "species", out["species"][0].detach().numpy())
    np.testing.assert_allclose(rate, 0.25, rtol=1e-6)  # a log-rate around the training mean


def test_count_predictions_are_never_negative() -> None:
    model = model_of()
    randomise_heads(model)
    torch.nn.init.normal_(model.decoder.head_bias, std=5.0)
    norm = model.normaliser()
    pred = model(random_input(LAYOUT, 1, 9, 13))["species"][0].detach().numpy()
    assert (pred < 0).any()  # log-rates may be negative ...
    assert (to_physical(LAYOUT, norm, "species", pred) > 0).all()  # ... rates never


def test_loss_known_answers() -> None:
    layout = Layout(levels=(500,), species=(1,), groups=BASE_GROUPS)
    shape = {g: (1, layout.n_channels(g), 2, 2) for g in layout.dynamic}
    pred = {g: torch.zeros(s) for g, s in shape.items()}
    target = {g: torch.zeros(s) for g, s in shape.items()}
    mask = {g: torch.ones(s, dtype=torch.bool) for g, s in shape.items()}
    lat = torch.tensor([0.0, 0.0])  # equal rows: weights 1
    target["surface"][0, 0] = 2.0  # t2m: squared error 4 everywhere ...
    target["surface"][0, 0, 0, 0] = 100.0  # ... except a masked point
    mask["surface"][0, 0, 0, 0] = False
    mask["species"][:] = False  # species entirely missing: drops out of the mean
    n_vars = 4 + 5
    assert masked_loss(pred, target, mask, layout, lat).item() == pytest.approx(4 / n_vars)
    mae = masked_loss(pred, target, mask, layout, lat, loss="mae")
    assert mae.item() == pytest.approx(2 / n_vars)
    weighted = masked_loss(pred, target, mask, layout, lat, {"surface/t2m": 9.0})
    assert weighted.item() == pytest.approx(9 * 4 / (9 + n_vars - 1))
    # Poisson on a log-rate: eta = log 2, y = 3 -> exp(eta) - y eta = 2 - 3 log 2.
    only = {g: torch.zeros_like(m) for g, m in mask.items()}
    only["species"][:] = True
    pred["species"][:], target["species"][:] = np.log(2.0), 3.0
    poisson = masked_loss(pred, target, only, layout, lat)
    assert poisson.item() == pytest.approx(2 - 3 * np.log(2.0), rel=1e-6)
    scaled = masked_loss(pred, target, only, layout, lat,
                         count_scale={"species": torch.tensor([0.5, 0.5])})  # fmt: skip
    assert scaled.item() == pytest.approx((2 - 3 * np.log(2.0)) / 0.5, rel=1e-6)
    nothing = masked_loss(pred, target, {g: torch.zeros_like(m) for g, m in mask.items()},
                          layout, lat)  # fmt: skip
    assert nothing.item() == 0.0 and torch.isfinite(nothing)


def test_latitude_weights_follow_the_cell_area() -> None:
    w = latitude_weights(torch.tensor([0.0, 60.0]))
    assert w.tolist() == pytest.approx([2 / 1.5, 1 / 1.5])  # cos 0 : cos 60 = 2 : 1, mean 1


# --- config ---------------------------------------------------------------------------------
def test_config_round_trips_through_json_and_names_bad_keys() -> None:
    cfg = build_config("small", every_group(), backbone="mvit", species_dims=(4, 4, 4, 4))
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="model.backbone: 'vit' is not one of"):
        build_config("tiny", LAYOUT, backbone="vit")
    with pytest.raises(ValueError, match="model.preset"):
        build_config("huge", LAYOUT)


# --- learning -------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", BACKBONES)
def test_tiny_overfits_one_batch(backbone: str) -> None:
    """Loss on one fixed sample falls by >= 90 % of its distance to the best attainable loss
    (the Poisson likelihood of counts has a floor: the loss at the log of the counts) within
    150 CPU steps."""
    from bfm.testing import DEMO_GRID, mock_batch, trend_values
    from bfm.training.data import to_sample

    layout = Layout((500, 850), (11, 22), BASE_GROUPS)
    x = mock_batch("2010-01-01", DEMO_GRID, levels=layout.levels, species=layout.species,
                   value=trend_values(), k=0)  # fmt: skip
    y = mock_batch("2010-01-02", DEMO_GRID, levels=layout.levels, species=layout.species,
                   value=trend_values(), k=1)  # fmt: skip
    norm = Normaliser({g: np.zeros(layout.n_channels(g)) for g in layout.groups},
                      {g: np.ones(layout.n_channels(g)) for g in layout.groups})  # fmt: skip
    for g in layout.groups:  # a usable scale per channel: this sample's own
        stacked = layout.stack(g, x.groups[g]).astype(np.float64)
        axes = (0, 2, 3) if stacked.ndim == 4 else (1, 2)
        norm.mean[g][:] = stacked.mean(axis=axes)
        norm.std[g][:] = np.maximum(stacked.std(axis=axes), 1e-6)
    norm.mean["species"][:] = 0.5
    sample = Sample.collate([to_sample(x, y, layout, norm)])
    torch.manual_seed(0)
    model = model_of(layout, backbone)
    model.set_normaliser(norm)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = masked_loss(model(sample.input), sample.target, sample.mask, layout,
                           sample.input.lat)  # fmt: skip
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    best = {g: t.clone() for g, t in sample.target.items()}  # continuous: the target itself
    for g in layout.dynamic:
        counts = torch.from_numpy(layout.count_channels(g))
        best[g][:, counts] = torch.log(sample.target[g][:, counts].clamp_min(1e-6))
    floor = masked_loss(best, sample.target, sample.mask, layout, sample.input.lat).item()
    assert losses[-1] - floor <= 0.1 * (losses[0] - floor), (losses[0], losses[-1], floor)


def test_modelconfig_refuses_categorical_variables_outside_static_groups() -> None:
    with pytest.raises(ValueError, match="categorical variables are supported in static"):
        Layout((), (), ("surface",), variable_kinds=(("categorical",) * 4,),
               categories=((8, 0, 0, 0),))  # fmt: skip
    assert dataclasses.replace(build_config("tiny", LAYOUT), taxon_buckets=8).taxon_buckets == 8


def test_the_local_pathway_reads_each_cells_own_environment() -> None:
    """Counts also see their cell's own inputs (bfm.model.local): with the decoder's heads at
    zero only that pathway moves the species output, and an edit of one cell's elevation
    moves that cell alone; the species' own counts are not among its inputs; local_dim=0
    removes it."""
    model = model_of()
    torch.manual_seed(3)
    for p in model.local.parameters():  # a trained-looking pathway (its response starts at 0)
        torch.nn.init.normal_(p, std=0.3)
    x = random_input(LAYOUT, 1, 9, 13)
    base = model(x)["species"].detach()
    edited = dataclasses.replace(x, inputs={**x.inputs, "static": x.inputs["static"].clone()})
    edited.inputs["static"][0, 0, 4, 5] += 2.0  # z (surface geopotential) of one cell
    moved = (model(edited)["species"].detach() - base).abs().sum(dim=(0, 1))
    assert moved[4, 5] > 0 and moved.sum() == moved[4, 5]
    counts = dataclasses.replace(x, inputs={**x.inputs, "species": x.inputs["species"] + 5.0})
    torch.testing.assert_close(model(counts)["species"], base)
    assert model_of(local_dim=0).local is None
    assert count_parameters(model_of(local_dim=0)) < count_parameters(model)
