"""Presets: named sets of ``ModelConfig`` defaults; they change nothing else.

Parameter counts with the full study layout (every catalogue group, 13 pressure levels, 21
species, a table with 64-wide media embeddings) are checked by tests/test_model.py: ``tiny``
about half a million (tests, demo, CPU), ``small`` 20 M +- 10 %, ``medium`` 50 M +- 10 %.
"""

from __future__ import annotations

from typing import Any

from bfm.contracts.layout import Layout
from bfm.model.config import ModelConfig

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        patch_size=4,
        embed_dim=48,
        num_heads=4,
        latent_levels=2,
        encoder_depth=1,
        decoder_depth=1,
        backbone_depths=(2, 2, 2),
        window=(2, 2, 2),
        mlp_ratio=2.0,
    ),
    "small": dict(
        patch_size=4,
        embed_dim=256,
        num_heads=8,
        latent_levels=4,
        encoder_depth=2,
        decoder_depth=2,
        backbone_depths=(2, 4, 2),
        window=(2, 4, 4),
        mlp_ratio=4.0,
    ),
    "medium": dict(
        patch_size=4,
        embed_dim=384,
        num_heads=12,
        latent_levels=4,
        encoder_depth=2,
        decoder_depth=2,
        backbone_depths=(3, 4, 3),
        window=(2, 4, 4),
        mlp_ratio=4.0,
    ),
}


def build_config(preset: str, layout: Layout, **overrides: Any) -> ModelConfig:
    """The preset's defaults for ``layout``, with ``overrides`` (None values ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"model.preset: {preset!r} is not one of {sorted(PRESETS)}")
    kw = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return ModelConfig(layout=layout, preset=preset, **kw)
