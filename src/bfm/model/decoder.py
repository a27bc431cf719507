"""Perceiver IO decoder: latent levels of a patch -> every output channel of that patch.

One query per output channel (variable x level, variable x species, or variable) per patch:
a learned channel embedding plus the patch position and the time embedding. The queries
cross-attend the K latent tokens of their patch, then a small per-variable head
``Linear(D -> p * p)`` (shared by the levels/species of a variable) emits the channel's p x p
pixels. Nothing depends on the grid size, so the parameter count does not grow with the area.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bfm.contracts.catalogue import DimsKind
from bfm.model.config import ModelConfig
from bfm.model.layers import CrossAttentionBlock, identity_embedding, unpatchify


class Decoder(nn.Module):
    """latents ``(B, K, Hp, Wp, D)`` -> ``{group: (B, C_g, Hp p, Wp p)}`` (dynamic groups)."""

    var_index: Tensor  # (C,) variable of each output channel, selects its head
    inner_kind: Tensor  # (C,) 0: none, 1: a level, 2: a species
    inner_index: Tensor  # (C,) which level or species

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        layout, d, p = cfg.layout, cfg.embed_dim, cfg.patch_size
        self.p = p
        self.groups = layout.dynamic
        self.sizes = [layout.n_channels(g) for g in self.groups]
        names = [f"{g}/{var}" for g in self.groups for var, _ in layout.channel_labels(g)]
        variables = list(dict.fromkeys(names))
        self.register_buffer(
            "var_index", torch.tensor([variables.index(n) for n in names]), persistent=False
        )
        # A channel's query: its variable's plus its level's (a learned embedding of the fixed
        # set of levels) or its species' identity (from the species table): nothing is indexed
        # by species, so a species new to the table needs no new parameter.
        inner = []
        for g in self.groups:
            kind = {DimsKind.LEVEL: 1, DimsKind.SPECIES: 2}.get(layout.kind(g), 0)
            inner += [(kind, n) for _ in layout.variables(g) for n in range(layout.inner(g))]
        self.register_buffer("inner_kind", torch.tensor([k for k, _ in inner]), persistent=False)
        self.register_buffer("inner_index", torch.tensor([n for _, n in inner]), persistent=False)
        self.var_query = nn.Parameter(torch.randn(len(variables), d) * 0.02)
        self.level_query = identity_embedding(max(1, len(layout.levels)), d)
        self.layers = nn.ModuleList(
            CrossAttentionBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.decoder_depth)
        )
        self.norm = nn.LayerNorm(d)
        # Zero heads: the untrained model predicts no change (persistence when residual).
        self.head_weight = nn.Parameter(torch.zeros(len(variables), d, p * p))
        self.head_bias = nn.Parameter(torch.zeros(len(variables), p * p))

    def queries(self, species: Tensor | None) -> Tensor:
        """``(C, D)``: one query per output channel."""
        q = self.var_query[self.var_index]
        levels = self.level_query(self.inner_index.clamp(max=self.level_query.num_embeddings - 1))
        q = q + levels * (self.inner_kind == 1)[:, None].to(q.dtype)
        if species is not None:
            sp = species[self.inner_index.clamp(max=species.shape[0] - 1)].to(q.dtype)
            q = q + sp * (self.inner_kind == 2)[:, None].to(q.dtype)
        return q

    def forward(self, latents: Tensor, pos: Tensor, time: Tensor,
                species: Tensor | None = None) -> dict[str, Tensor]:  # fmt: skip
        """latents ``(B, K, Hp, Wp, D)``, pos ``(Hp, Wp, D)``, time ``(B, D)``, species
        ``(S, D)`` (the species' identity vectors, when the layout has species)."""
        b, _, hp, wp, d = latents.shape
        kv = latents.permute(0, 2, 3, 1, 4).reshape(b * hp * wp, -1, d)
        q = self.queries(species) + pos[None, :, :, None] + time[:, None, None, None]
        q = q.reshape(b * hp * wp, -1, d)
        for layer in self.layers:
            q = layer(q, kv)
        q = self.norm(q)
        w, bias = self.head_weight[self.var_index], self.head_bias[self.var_index]
        pixels = torch.einsum("ncd,cdq->ncq", q, w) + bias  # (B * P, C, p * p)
        fields = unpatchify(pixels.reshape(b, hp, wp, -1, self.p * self.p), self.p)
        return dict(zip(self.groups, torch.split(fields, self.sizes, dim=1), strict=True))
