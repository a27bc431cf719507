"""Model configuration: the data layout it reads plus architecture hyper-parameters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from bfm.contracts.layout import Layout

BACKBONES = ("swin3d", "mvit")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a ``BFM`` (stored in a run's meta.json).

    Attributes:
        layout: groups, levels and species the model reads (fixes the channel counts).
        preset: name of the preset the defaults came from (informational).
        backbone: ``swin3d`` (shifted-window 3D U-Net) or ``mvit`` (multiscale pooling
            attention); both map ``(B, K, Hp, Wp, D)`` to the same shape.
        patch_size: side p of the square patches; every patch becomes one latent column.
        embed_dim: token width D (the backbone's second stage works at 2 D).
        num_heads: attention heads (D and 2 D must divide by it).
        latent_levels: K latent queries per patch (the Perceiver compresses the patch's
            group/level/species tokens into K latent levels).
        encoder_depth, decoder_depth: cross-attention layers of the Perceiver encoder/decoder.
        backbone_depths: blocks in (stage 1, bottleneck at half resolution, stage 3); Swin
            stages alternate plain and shifted windows, so each needs >= 2 blocks to shift.
        window: Swin window (latent level, lat patches, lon patches); K must divide by its
            first entry, which must be > 1 so that latent levels exchange information.
        kv_stride: MViT key/value pooling stride over (lat, lon) patches within a stage.
        mlp_ratio: hidden width of every MLP, in units of its input width.
        fourier_bands: wavelengths of the (lat, lon) Fourier position encoding.
        time_harmonics: harmonics of the day-of-year and hour encodings.
        residual: predict the change from the last input time for the continuous state
            (time and level groups: an untrained model with its zero-initialised heads is
            then exactly persistence). Counts (species occurrences) are predicted as a
            log-rate around the log of their training mean, so an untrained model predicts
            the training mean (persistence is a poor prior for sparse counts).
        species_dims: embedding length of each media kind of the species table (image,
            audio, edna, text), fixed by the table the model was built with.
        use_species_table: build each species' token from the table (taxonomy and media
            embeddings); False is the ablation without species identity.
        taxon_buckets: hash buckets of the taxonomy embeddings (per rank).
        category_dim: width of the embedding of each category of a categorical variable.
        local_dim: features per cell of the local pathway of counts (``bfm.model.local``:
            each species' log-rate also sees its cell's own inputs); 0 switches it off.
    """

    layout: Layout
    preset: str = "tiny"
    backbone: str = "swin3d"
    patch_size: int = 4
    embed_dim: int = 48
    num_heads: int = 4
    latent_levels: int = 2
    encoder_depth: int = 1
    decoder_depth: int = 1
    backbone_depths: tuple[int, int, int] = (2, 2, 2)
    window: tuple[int, int, int] = (2, 2, 2)
    kv_stride: int = 2
    mlp_ratio: float = 2.0
    fourier_bands: int = 16
    time_harmonics: int = 4
    residual: bool = True
    species_dims: tuple[int, int, int, int] = (0, 0, 0, 0)
    use_species_table: bool = True
    taxon_buckets: int = 512
    category_dim: int = 4
    local_dim: int = 16

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"model.backbone: {self.backbone!r} is not one of {BACKBONES}")
        d, h = self.embed_dim, self.num_heads
        if d % h or (2 * d) % h:
            raise ValueError(f"model: embed_dim={d} must be divisible by num_heads={h}")
        if self.latent_levels % self.window[0]:
            raise ValueError(
                f"model: latent_levels={self.latent_levels} must be a multiple "
                f"of window[0]={self.window[0]}"
            )
        if self.patch_size < 1 or min(self.window) < 1 or min(self.backbone_depths) < 0:
            raise ValueError(f"model: bad patch_size/window/backbone_depths in {self}")
        if self.local_dim < 0:
            raise ValueError(f"model: local_dim must be >= 0, got {self.local_dim}")
        if self.kv_stride < 1 or self.taxon_buckets < 1 or self.category_dim < 1:
            raise ValueError(f"model: kv_stride, taxon_buckets, category_dim must be >= 1: {self}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layout"] = self.layout.to_dict()
        for key in ("backbone_depths", "window", "species_dims"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"model config: unknown keys {unknown}")
        if "layout" not in d:
            raise ValueError("model config: missing key 'layout'")
        kw = dict(d)
        kw["layout"] = Layout.from_dict(d["layout"])
        for key in ("backbone_depths", "window", "species_dims"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)
