"""The Biodiversity Foundation Model: encoder -> backbone -> decoder.

``BFM.forward`` maps a normalised two-time ``ModelInput`` (``bfm.contracts.sample``: B batch,
H x W grid of any size, C_g channels of group g as in ``bfm.contracts.layout.Layout``) to the
normalised next time (t0 + 2 step) of every dynamic group, ``{g: (B, C_g, H, W)}``.

The model pads H and W up to a multiple of the patch size (and the backbone pads the patch
grid to its windows) and crops the output back. It carries the normalisation statistics as
float64 buffers, so a checkpoint is self-contained (``normaliser()`` returns them). See
docs/architecture.md ("Model").
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from bfm.contracts.catalogue import DimsKind
from bfm.contracts.layout import Normaliser
from bfm.contracts.sample import ModelInput
from bfm.contracts.species_table import SpeciesTable
from bfm.model.backbone import build_backbone
from bfm.model.config import ModelConfig
from bfm.model.decoder import Decoder
from bfm.model.encoder import Encoder
from bfm.model.layers import FourierPosition, TimeEncoding, pad_to, patch_centres
from bfm.model.local import LocalCountHead


class NormBuffers(nn.Module):
    """``mean_<group>`` and ``std_<group>`` buffers, float64 ``(C_g,)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.groups = cfg.layout.groups
        for g in self.groups:
            n = cfg.layout.n_channels(g)
            self.register_buffer(f"mean_{g}", torch.zeros(n, dtype=torch.float64))
            self.register_buffer(f"std_{g}", torch.ones(n, dtype=torch.float64))

    def get(self, group: str) -> tuple[Tensor, Tensor]:
        """Mean and std of a group shaped ``(C_g, 1, 1)`` to broadcast over (..., C, H, W)."""
        mean, std = getattr(self, f"mean_{group}"), getattr(self, f"std_{group}")
        return mean[:, None, None], std[:, None, None]


class BFM(nn.Module):
    """Encoder -> backbone -> decoder; see the module docstring for the tensor contract."""

    def __init__(self, cfg: ModelConfig, norm: Normaliser | None = None,
                 species: SpeciesTable | None = None) -> None:  # fmt: skip
        super().__init__()
        d = cfg.embed_dim
        self.config = cfg
        self.pos_encoder = FourierPosition(d, cfg.fourier_bands)
        self.pos_decoder = FourierPosition(d, cfg.fourier_bands)
        self.time_embed = TimeEncoding(d, cfg.time_harmonics)
        self.encoder = Encoder(cfg)
        self.backbone = build_backbone(cfg)
        self.decoder = Decoder(cfg)
        self.local = LocalCountHead(cfg) if cfg.local_dim else None
        self.norm = NormBuffers(cfg)
        if norm is not None:
            self.set_normaliser(norm)
        if species is not None and hasattr(self.encoder, "species"):
            self.encoder.species.set_table(species.select(cfg.layout.species))

    def forward(self, x: ModelInput) -> dict[str, Tensor]:
        inputs, h, w, centres, t, species, latents = self.latents(x)
        out = {g: y[..., :h, :w] for g, y in self.decoder(latents, self.pos_decoder(*centres), t,
                                                           species).items()}  # fmt: skip
        if self.local is not None:  # counts: the cell's own environment too
            missing = x.missing or {g: torch.zeros_like(v) for g, v in inputs.items()}
            for g, term in self.local(inputs, missing, species).items():
                out[g] = out[g] + term.to(out[g].dtype)
        return {g: self._head(g, y, inputs[g]) for g, y in out.items()}

    def latents(self, x: ModelInput) -> tuple:
        """Encoder and backbone: ``(inputs, H, W, patch centres, time embedding, species
        vectors, latents (B, K, Hp, Wp, D))``."""
        inputs, layout = x.inputs, self.config.layout
        h, w = self._check(inputs)
        p = self.config.patch_size
        lat, lon = (c[0] if c.dim() == 2 else c for c in (x.lat, x.lon))
        hp, wp = math.ceil(h / p), math.ceil(w / p)
        centres = patch_centres(lat, p, hp), patch_centres(lon, p, wp)
        t = self.time_embed(x.time)
        missing = x.missing or {g: torch.zeros_like(v) for g, v in inputs.items()}
        padded = {g: pad_to(inputs[g], p) for g in layout.groups}
        # Outside the grid counts as missing: the border patches know where the data ends.
        masks = {g: pad_to(missing[g], p, value=1.0) for g in layout.groups}
        species = self.encoder.species() if hasattr(self.encoder, "species") else None
        latents = self.encoder(padded, masks, self.pos_encoder(*centres), t, species)
        return inputs, h, w, centres, t, species, self.backbone(latents)

    def cell_features(self, x: ModelInput) -> Tensor:
        """``(B, H, W, F)``: per cell, the backbone's latent levels of its patch (``K D``)
        and, when the model has the local pathway, its per-cell features (``local_dim``)."""
        inputs, h, w, _, _, _, latents = self.latents(x)
        b, k, hp, wp, d = latents.shape
        p = self.config.patch_size
        cells = latents.permute(0, 2, 3, 1, 4).reshape(b, hp, wp, k * d)
        cells = cells.repeat_interleave(p, 1).repeat_interleave(p, 2)[:, :h, :w]
        if self.local is None:
            return cells
        missing = x.missing or {g: torch.zeros_like(v) for g, v in inputs.items()}
        return torch.cat([cells, self.local.features(inputs, missing).to(cells.dtype)], dim=-1)

    def _head(self, group: str, y: Tensor, x: Tensor) -> Tensor:
        """Continuous channels: the change from the last input (residual) or the normalised
        value; count channels: a log-rate around the log of the training mean."""
        layout = self.config.layout
        if self.config.residual and layout.kind(group) != DimsKind.SPECIES:
            y = y + x[:, -1].to(y.dtype)
        counts = torch.from_numpy(layout.count_channels(group)).to(y.device)
        if counts.any():
            mean, _ = self.norm.get(group)
            offset = torch.log(mean.clamp_min(1e-6)).to(y.dtype)
            y = torch.where(counts[:, None, None], y + offset, y)
        return y

    def _check(self, inputs: dict[str, Tensor]) -> tuple[int, int]:
        """Raise ValueError unless every group is present with the layout's shape."""
        layout = self.config.layout
        shapes = {}
        for g in layout.groups:
            if g not in inputs:
                raise ValueError(f"model input lacks group {g!r} (needs {list(layout.groups)})")
            x = inputs[g]
            want = 4 if layout.kind(g) == DimsKind.STATIC else 5
            if (
                x.dim() != want
                or x.shape[-3] != layout.n_channels(g)
                or (want == 5 and x.shape[1] != 2)
            ):
                raise ValueError(
                    f"model input {g!r} has shape {tuple(x.shape)}, expected "
                    f"{'(B, C, H, W)' if want == 4 else '(B, 2, C, H, W)'} "
                    f"with C={layout.n_channels(g)}"
                )
            shapes[g] = tuple(x.shape[-2:])
        if len(set(shapes.values())) != 1:
            raise ValueError(f"model inputs disagree on (H, W): {shapes}")
        h, w = next(iter(shapes.values()))
        return int(h), int(w)

    def set_normaliser(self, norm: Normaliser) -> None:
        for g in self.config.layout.groups:
            getattr(self.norm, f"mean_{g}").copy_(torch.from_numpy(norm.mean[g]))
            getattr(self.norm, f"std_{g}").copy_(torch.from_numpy(norm.std[g]))

    def normaliser(self) -> Normaliser:
        """The carried statistics as a numpy ``Normaliser`` (for the data layer)."""
        groups = self.config.layout.groups
        mean = {g: getattr(self.norm, f"mean_{g}").cpu().numpy().astype(np.float64) for g in groups}
        std = {g: getattr(self.norm, f"std_{g}").cpu().numpy().astype(np.float64) for g in groups}
        return Normaliser(mean, std)


def count_parameters(model: nn.Module) -> int:
    # ZeRO-3 leaves each rank a partition (numel 0 between uses); ds_numel is the whole size.
    return sum(int(getattr(p, "ds_numel", p.numel())) for p in model.parameters())
