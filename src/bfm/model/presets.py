"""Presets: named sets of ``ModelConfig`` defaults; they change nothing else.

Parameter counts with the Europe layout (4 surface, 3 static, 5 variables x 13 levels,
6 species) are checked by tests/test_model.py: ``tiny`` a few hundred thousand (tests, demo,
CPU), ``small`` about 20 M, ``medium`` about 50 M.
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
