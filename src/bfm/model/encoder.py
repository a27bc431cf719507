"""Perceiver IO encoder: every group's patches -> K latent levels per patch.

Tokens per patch (one D-vector each):

- ``time`` and ``static`` groups: one token from all the group's variables and both times;
- ``level`` groups (atmospheric): one token per pressure level, from a Linear shared by all
  levels plus a learned level embedding;
- ``species`` groups: one token per species, from a Linear shared by all species plus a
  per-species embedding vector. That vector is, for now, a learned ``nn.Embedding`` indexed by
  the species' position in the layout; it is the hook where the species table's modality
  embeddings (image, audio, eDNA, text; docs/architecture.md) will enter, projected to D.

Every token also gets its group embedding and the Fourier embedding of its patch centre. K
learned latent queries (plus position and the time embedding of t0) cross-attend the tokens
of their own patch, so the cost is linear in the number of patches.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bfm.contracts.catalogue import DimsKind
from bfm.model.config import ModelConfig
from bfm.model.layers import CrossAttentionBlock, patchify


class Encoder(nn.Module):
    """``inputs`` (normalised, H and W multiples of p) -> latents ``(B, K, Hp, Wp, D)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        layout, p, d = cfg.layout, cfg.patch_size, cfg.embed_dim
        self.layout, self.p = layout, p
        self.embed = nn.ModuleDict()
        for g in layout.groups:
            times = 1 if layout.kind(g) == DimsKind.STATIC else 2
            # level/species groups: one token per level/species holds all variables there.
            split = layout.kind(g) in (DimsKind.LEVEL, DimsKind.SPECIES)
            per_token = len(layout.variables(g)) if split else layout.n_channels(g)
            self.embed[g] = nn.Linear(times * per_token * p * p, d)
        self.level_embed = nn.Embedding(max(1, len(layout.levels)), d)
        # The species hook: replace by a projection of the species table's embeddings.
        self.species_embed = nn.Embedding(max(1, len(layout.species)), d)
        self.group_embed = nn.Parameter(torch.randn(len(layout.groups), d) * 0.02)
        self.latents = nn.Parameter(torch.randn(cfg.latent_levels, d) * 0.02)
        self.layers = nn.ModuleList(
            CrossAttentionBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.encoder_depth)
        )
        self.norm = nn.LayerNorm(d)

    def group_tokens(self, group: str, x: Tensor) -> Tensor:
        """One group's tokens: x ``(B, 2, C_g, H, W)`` or static ``(B, C_g, H, W)`` ->
        ``(B, Hp, Wp, N_g, D)`` with N_g = 1, levels or species."""
        kind, b = self.layout.kind(group), x.shape[0]
        h, w = x.shape[-2:]
        hp, wp = h // self.p, w // self.p
        if kind in (DimsKind.STATIC, DimsKind.TIME):
            flat = x.reshape(b, -1, h, w)
            return self.embed[group](patchify(flat, self.p)).unsqueeze(3)
        n, v = self.layout.inner(group), len(self.layout.variables(group))
        # (B, 2, V*N, H, W) -> (B*N, 2*V, H, W): the same Linear embeds every level/species.
        per = x.reshape(b, 2, v, n, h, w).permute(0, 3, 1, 2, 4, 5).reshape(b * n, 2 * v, h, w)
        tok = self.embed[group](patchify(per, self.p))
        tok = tok.reshape(b, n, hp, wp, -1).permute(0, 2, 3, 1, 4)
        table = self.level_embed if kind == DimsKind.LEVEL else self.species_embed
        return tok + table.weight[:n]

    def forward(self, inputs: dict[str, Tensor], pos: Tensor, time: Tensor) -> Tensor:
        """inputs per group; pos ``(Hp, Wp, D)``; time ``(B, D)`` -> ``(B, K, Hp, Wp, D)``."""
        parts = [
            self.group_tokens(g, inputs[g]) + self.group_embed[i]
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
