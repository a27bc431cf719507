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

from bfm.model.config import ModelConfig
from bfm.model.layers import CrossAttentionBlock, unpatchify


class Decoder(nn.Module):
    """latents ``(B, K, Hp, Wp, D)`` -> ``{group: (B, C_g, Hp p, Wp p)}`` (dynamic groups)."""

    var_index: Tensor  # (C,) variable of each output channel, selects its head

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
        self.query = nn.Parameter(torch.randn(len(names), d) * 0.02)
        self.layers = nn.ModuleList(
            CrossAttentionBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.decoder_depth)
        )
        self.norm = nn.LayerNorm(d)
        # Zero heads: the untrained model predicts no change (persistence when residual).
        self.head_weight = nn.Parameter(torch.zeros(len(variables), d, p * p))
        self.head_bias = nn.Parameter(torch.zeros(len(variables), p * p))

    def forward(self, latents: Tensor, pos: Tensor, time: Tensor) -> dict[str, Tensor]:
        """latents ``(B, K, Hp, Wp, D)``, pos ``(Hp, Wp, D)``, time ``(B, D)``."""
        b, _, hp, wp, d = latents.shape
        kv = latents.permute(0, 2, 3, 1, 4).reshape(b * hp * wp, -1, d)
        q = self.query + pos[None, :, :, None] + time[:, None, None, None]
        q = q.reshape(b * hp * wp, -1, d)
        for layer in self.layers:
            q = layer(q, kv)
        q = self.norm(q)
        w, bias = self.head_weight[self.var_index], self.head_bias[self.var_index]
        pixels = torch.einsum("ncd,cdq->ncq", q, w) + bias  # (B * P, C, p * p)
        fields = unpatchify(pixels.reshape(b, hp, wp, -1, self.p * self.p), self.p)
        return dict(zip(self.groups, torch.split(fields, self.sizes, dim=1), strict=True))
