"""Species identity from the species table: one D-vector per species of the layout.

Each species' vector is the sum of
- its taxonomy: one learned embedding per rank (kingdom..genus), looked up by a stable hash
  of the rank's name into ``taxon_buckets`` buckets (an unknown rank has its own row), so
  species of one genus or family share what they share and a species new to the table gets
  a vector from its relatives without retraining an index;
- its media: per kind (image, audio, eDNA, text) a linear projection of the table's embedding,
  counted only where the species has that medium (presence mask).

The table's rows are kept as buffers (a checkpoint is self-contained); ``set_table`` loads
them for the layout's species, in its order. With ``use_species_table`` false (the ablation)
every species gets the same learned vector: no identity beyond its data.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import Tensor, nn

from bfm.contracts.species_table import MEDIA, RANKS, SpeciesTable
from bfm.model.layers import EMBED_STD, identity_embedding


def taxon_ids(taxonomy: np.ndarray, buckets: int) -> np.ndarray:
    """``(S, R)`` names -> bucket ids ``(S, R)`` int64; "" (unknown) -> ``buckets``."""
    ids = np.full(taxonomy.shape, buckets, dtype=np.int64)
    for (s, r), name in np.ndenumerate(taxonomy):
        if name:
            ids[s, r] = zlib.crc32(f"{RANKS[r]}:{name}".encode()) % buckets
    return ids


class SpeciesEmbedder(nn.Module):
    """``() -> (S, D)``: the species vectors of the table rows it holds."""

    taxa: Tensor

    def __init__(self, n_species: int, dim: int, dims: tuple[int, ...], buckets: int,
                 use_table: bool) -> None:  # fmt: skip
        super().__init__()
        self.use_table, self.buckets = use_table, buckets
        self.register_buffer("taxa", torch.full((n_species, len(RANKS)), buckets))
        for m, d in zip(MEDIA, dims, strict=True):
            self.register_buffer(f"media_{m}", torch.zeros(n_species, d))
            self.register_buffer(f"has_{m}", torch.zeros(n_species, dtype=torch.bool))
        self.shared = nn.Parameter(torch.randn(dim) * 0.02)
        if use_table:  # without the table no parameter is left without a gradient
            self.rank_embed = nn.ModuleList(identity_embedding(buckets + 1, dim) for _ in RANKS)
            projections = {  # a kind the table has no vector for (length 0) gets none
                m: nn.Linear(d, dim) for m, d in zip(MEDIA, dims, strict=True) if d > 0
            }
            for proj in projections.values():  # media at the scale of the taxa
                nn.init.normal_(proj.weight, std=EMBED_STD / max(1.0, proj.in_features**0.5))
                nn.init.zeros_(proj.bias)
            self.media_proj = nn.ModuleDict(projections)

    def set_table(self, table: SpeciesTable) -> None:
        """Load the table's rows (already in the layout's species order)."""
        self.taxa.copy_(torch.from_numpy(taxon_ids(table.taxonomy, self.buckets)))
        for m in MEDIA:
            getattr(self, f"media_{m}").copy_(torch.from_numpy(table.embeddings[m]))
            getattr(self, f"has_{m}").copy_(torch.from_numpy(table.present[m]))

    def forward(self) -> Tensor:
        if not self.use_table:
            return self.shared.expand(self.taxa.shape[0], -1)
        out = self.shared + sum(emb(self.taxa[:, r]) for r, emb in enumerate(self.rank_embed))
        for m in self.media_proj:
            media, has = getattr(self, f"media_{m}"), getattr(self, f"has_{m}")
            proj = self.media_proj[m](media.to(self.shared.dtype))
            out = out + proj * has[:, None].to(proj.dtype)
        return out
