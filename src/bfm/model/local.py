"""The local pathway of counts: each cell's own environment -> a term of each species' log-rate.

A species distribution model explains where a species is seen by the environment of the very
cell (temperature, elevation, land fraction, land use...). The Perceiver path sees a cell
only through its patch's latent levels, which must also carry the weather; sparse counts
teach that path slowly. This pathway gives the count outputs a direct, full-resolution view:

- the cell's features: every environmental input channel (all groups but the species ones)
  at the last input time (static ones as they are),
  its missing-value mask beside it, a categorical channel as the one-hot of its code (one
  slot for "missing"); an MLP (``Linear -> GELU -> Linear``) maps them to ``local_dim``
  features per cell;
- each species' response: a linear map of its identity vector (from the species table,
  ``bfm.model.species``) plus a learned vector per count variable; the log-rate gains the dot
  product of the cell's features and that response. Nothing is indexed by species, so a
  species new to the table gets a response from its identity.

The response starts at zero, so an untrained model still predicts each channel's training
mean. ``local_dim = 0`` switches the pathway off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bfm.contracts.catalogue import DimsKind
from bfm.model.config import ModelConfig


class LocalCountHead(nn.Module):
    """``inputs``/``missing`` ``{g: (B, [2,] C_g, H, W)}`` and species ``(S, D)`` -> the
    log-rate term ``{g: (B, C_g, H, W)}`` of each group with count channels (zero elsewhere)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        layout = cfg.layout
        self.layout = layout
        self.count_groups = [  # counts per species (the catalogue's only counts)
            g
            for g in layout.dynamic
            if layout.kind(g) == DimsKind.SPECIES and layout.count_channels(g).any()
        ]
        # The environment: every group but the species ones (whose width grows with the
        # species list; the deep path sees the counts).
        self.env_groups = [g for g in layout.groups if layout.kind(g) != DimsKind.SPECIES]
        n_in = 0
        for g in self.env_groups:
            categorical = dict(layout.categorical(g))
            for c in range(layout.n_channels(g)):
                n_in += 1 + (categorical[c] + 1 if c in categorical else 1)  # mask + value(s)
        k = cfg.local_dim
        self.mlp = nn.Sequential(nn.Linear(n_in, 2 * k), nn.GELU(), nn.Linear(2 * k, k))
        # Identity vectors are small at initialisation (bfm.model.layers.EMBED_STD): normalised
        # first, so the response learns at the pace of the rest.
        self.species_norm = nn.LayerNorm(cfg.embed_dim)
        self.species_response = nn.Linear(cfg.embed_dim, k)
        nn.init.zeros_(self.species_response.weight)
        nn.init.zeros_(self.species_response.bias)
        n_count_vars = sum(
            int(layout.count_channels(g).reshape(-1, layout.inner(g))[:, 0].sum())
            for g in self.count_groups
        )
        self.variable_response = nn.Parameter(torch.zeros(max(1, n_count_vars), k))

    def features(self, inputs: dict[str, Tensor], missing: dict[str, Tensor]) -> Tensor:
        """``(B, H, W, F)``: the cell's channels at the last input time, masks, one-hots."""
        parts = []
        for g in self.env_groups:
            static = self.layout.kind(g) == DimsKind.STATIC
            x = inputs[g] if static else inputs[g][:, -1]
            m = missing[g] if static else missing[g][:, -1]
            categorical = dict(self.layout.categorical(g))
            for c in range(x.shape[1]):
                parts.append(m[:, c : c + 1].to(x.dtype))
                if c in categorical:
                    n = categorical[c]
                    code = x[:, c].round().long().clamp(0, n)
                    parts.append(F.one_hot(code, n + 1).permute(0, 3, 1, 2).to(x.dtype))
                else:
                    parts.append(x[:, c : c + 1])
        return self.mlp(torch.cat(parts, dim=1).permute(0, 2, 3, 1))

    def forward(self, inputs: dict[str, Tensor], missing: dict[str, Tensor],
                species: Tensor | None) -> dict[str, Tensor]:  # fmt: skip
        if not self.count_groups or species is None:
            return {}
        feats = self.features(inputs, missing)  # (B, H, W, k)
        response = self.species_response(self.species_norm(species.to(feats.dtype)))  # (S, k)
        out, v = {}, 0
        for g in self.count_groups:
            counts = self.layout.count_channels(g).reshape(-1, self.layout.inner(g))[:, 0]
            per_var = []
            for is_count in counts:
                if is_count:
                    r = response + self.variable_response[v]
                    per_var.append(torch.einsum("bhwk,sk->bshw", feats, r))
                    v += 1
                else:
                    zeros = feats.new_zeros(feats.shape[0], self.layout.inner(g), *feats.shape[1:3])
                    per_var.append(zeros)
            out[g] = torch.cat(per_var, dim=1)
        return out
