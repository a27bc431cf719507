"""Perceiver IO encoder: every group's patches -> K latent levels per patch.

Tokens per patch (one D-vector each):

- ``time`` and ``static`` groups: one token from all the group's variables and both times;
- ``level`` groups (atmospheric): one token per pressure level, from a Linear shared by all
  levels plus a learned level embedding;
- ``species`` groups: one token per species, from a Linear shared by all species plus the
  species' identity from the species table (``bfm.model.species``: taxonomy and media
  embeddings projected to D).

Every input channel comes with its missing-value mask (1 where the value was missing and
filled with 0), so the model can tell "missing" from "average". A categorical channel (soil
type) enters as a learned embedding of its category (one extra row for "missing"), not as a
number.

Every token also gets its group embedding and the Fourier embedding of its patch centre. K
learned latent queries (plus position and the time embedding of t0) cross-attend the tokens
of their own patch, so the cost is linear in the number of patches.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bfm.contracts.catalogue import DimsKind
from bfm.model.config import ModelConfig
from bfm.model.layers import CrossAttentionBlock, identity_embedding, patchify
from bfm.model.species import SpeciesEmbedder


class Encoder(nn.Module):
    """``inputs`` (normalised, H and W multiples of p) -> latents ``(B, K, Hp, Wp, D)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        layout, p, d = cfg.layout, cfg.patch_size, cfg.embed_dim
        self.layout, self.p = layout, p
        self.embed = nn.ModuleDict()
        self.categories = nn.ModuleDict()
        for g in layout.groups:
            times = 1 if layout.kind(g) == DimsKind.STATIC else 2
            # level/species groups: one token per level/species holds all variables there.
            split = layout.kind(g) in (DimsKind.LEVEL, DimsKind.SPECIES)
            per_token = len(layout.variables(g)) if split else layout.n_channels(g)
            cats = layout.categorical(g)
            extra = sum(cfg.category_dim - 1 for _ in cats)  # an embedding replaces a code
            self.embed[g] = nn.Linear(times * (2 * per_token + extra) * p * p, d)
            if cats:
                self.categories[g] = nn.ModuleList(
                    nn.Embedding(n + 1, cfg.category_dim) for _, n in cats
                )
        self.level_embed = identity_embedding(max(1, len(layout.levels)), d)
        if DimsKind.SPECIES in layout.kinds:
            self.species = SpeciesEmbedder(
                len(layout.species), d, cfg.species_dims, cfg.taxon_buckets, cfg.use_species_table
            )
        self.group_embed = nn.Parameter(torch.randn(len(layout.groups), d) * 0.02)
        self.latents = nn.Parameter(torch.randn(cfg.latent_levels, d) * 0.02)
        self.layers = nn.ModuleList(
            CrossAttentionBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.encoder_depth)
        )
        self.norm = nn.LayerNorm(d)

    def _embed_categories(self, group: str, x: Tensor) -> Tensor:
        """Static ``(B, C, H, W)``: each categorical channel replaced by its embedding."""
        parts, last = [], 0
        embeddings: nn.ModuleList = self.categories[group]  # type: ignore[assignment]
        for emb, (channel, n) in zip(embeddings, self.layout.categorical(group), strict=True):
            codes = x[:, channel].round().long().clamp(0, n)  # n: the "missing" category
            parts += [x[:, last:channel], emb(codes).permute(0, 3, 1, 2).to(x.dtype)]
            last = channel + 1
        return torch.cat([*parts, x[:, last:]], dim=1)

    def group_tokens(self, group: str, x: Tensor, missing: Tensor,
                     species: Tensor | None = None) -> Tensor:  # fmt: skip
        """One group's tokens: x and its mask ``(B, 2, C_g, H, W)`` or static
        ``(B, C_g, H, W)`` -> ``(B, Hp, Wp, N_g, D)`` with N_g = 1, levels or species."""
        kind, b = self.layout.kind(group), x.shape[0]
        h, w = x.shape[-2:]
        hp, wp = h // self.p, w // self.p
        missing = missing.to(x.dtype)
        if kind in (DimsKind.STATIC, DimsKind.TIME):
            if group in self.categories:
                x = self._embed_categories(group, x)
            flat = torch.cat([x.reshape(b, -1, h, w), missing.reshape(b, -1, h, w)], dim=1)
            return self.embed[group](patchify(flat, self.p)).unsqueeze(3)
        n, v = self.layout.inner(group), len(self.layout.variables(group))

        def per_token(t: Tensor) -> Tensor:  # (B, 2, V*N, H, W) -> (B*N, 2*V, H, W)
            return t.reshape(b, 2, v, n, h, w).permute(0, 3, 1, 2, 4, 5).reshape(b * n, 2 * v, h, w)

        # The same Linear embeds every level/species.
        tok = self.embed[group](patchify(torch.cat([per_token(x), per_token(missing)], 1), self.p))
        tok = tok.reshape(b, n, hp, wp, -1).permute(0, 2, 3, 1, 4)
        identity = self.level_embed.weight[:n] if kind == DimsKind.LEVEL else species
        assert identity is not None, "species groups need the species vectors"
        return tok + identity.to(tok.dtype)

    def forward(self, inputs: dict[str, Tensor], missing: dict[str, Tensor], pos: Tensor,
                time: Tensor, species: Tensor | None = None) -> Tensor:  # fmt: skip
        """inputs and masks per group; pos ``(Hp, Wp, D)``; time ``(B, D)`` ->
        ``(B, K, Hp, Wp, D)``; species ``(S, D)`` the species' identity vectors."""
        parts = [
            self.group_tokens(g, inputs[g], missing[g], species) + self.group_embed[i]
            for i, g in enumerate(self.layout.groups)
        ]
        tokens = torch.cat(parts, dim=3) + pos[None, :, :, None]
        b, hp, wp, t, d = tokens.shape
        kv = tokens.reshape(b * hp * wp, t, d)
        q = self.latents + pos[None, :, :, None] + time[:, None, None, None]
        q = q.reshape(b * hp * wp, -1, d)
        for layer in self.layers:
            q = layer(q, kv)
        return self.norm(q).reshape(b, hp, wp, -1, d).permute(0, 3, 1, 2, 4)
