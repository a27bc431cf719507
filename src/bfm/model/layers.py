"""Building blocks shared by encoder, backbone and decoder.

Shapes: B batch, P patches, T tokens, K latent levels, D width, h heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """``Linear(D -> r D) -> GELU -> Linear(r D -> D)`` on the last axis."""

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        hidden = max(1, int(dim * ratio))
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class CrossAttention(nn.Module):
    """Multi-head attention of queries ``(N, Q, D)`` over keys/values ``(N, T, D)``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.kv = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, q: Tensor, kv: Tensor) -> Tensor:
        n, nq, d = q.shape
        hd = d // self.heads
        query = self.q(q).view(n, nq, self.heads, hd).transpose(1, 2)
        k, v = self.kv(kv).view(n, kv.shape[1], 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(query, k, v)
        return self.out(out.transpose(1, 2).reshape(n, nq, d))


class CrossAttentionBlock(nn.Module):
    """Perceiver IO layer: ``q += Attn(LN q, LN kv); q += MLP(LN q)``; q ``(N, Q, D)``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_mlp = (nn.LayerNorm(dim) for _ in range(3))
        self.attn = CrossAttention(dim, heads)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, q: Tensor, kv: Tensor) -> Tensor:
        q = q + self.attn(self.norm_q(q), self.norm_kv(kv))
        return q + self.mlp(self.norm_mlp(q))


class FourierPosition(nn.Module):
    """Fourier features of (lat, lon) in degrees, projected to D.

    Wavelengths are geometric from one patch-ish scale (1 deg) to the globe (720 deg), so
    nearby patches differ and the encoding never repeats inside a region.
    """

    freq: Tensor

    def __init__(self, dim: int, bands: int) -> None:
        super().__init__()
        wavelengths = torch.logspace(0.0, math.log10(720.0), bands, dtype=torch.float64)
        self.register_buffer("freq", (2 * math.pi / wavelengths).float(), persistent=False)
        self.proj = nn.Linear(4 * bands, dim)

    def forward(self, lat: Tensor, lon: Tensor) -> Tensor:
        """lat ``(Hp,)``, lon ``(Wp,)`` patch centres -> ``(Hp, Wp, D)``."""
        la = lat.float()[:, None, None] * self.freq
        lo = lon.float()[None, :, None] * self.freq
        la, lo = torch.broadcast_tensors(la, lo)
        feats = torch.cat([la.sin(), la.cos(), lo.sin(), lo.cos()], dim=-1)
        return self.proj(feats.to(self.proj.weight.dtype))


class TimeEncoding(nn.Module):
    """Sinusoidal day-of-year (period 365.25 d) and hour (period 24 h) features -> D."""

    k: Tensor

    def __init__(self, dim: int, harmonics: int) -> None:
        super().__init__()
        self.register_buffer("k", torch.arange(1, harmonics + 1).float(), persistent=False)
        self.proj = nn.Linear(4 * harmonics, dim)

    def forward(self, time: Tensor) -> Tensor:
        """time ``(B, 2)`` = [day of year, hour] -> ``(B, D)``."""
        doy = 2 * math.pi * time[:, :1].float() / 365.25 * self.k
        hour = 2 * math.pi * time[:, 1:2].float() / 24.0 * self.k
        feats = torch.cat([doy.sin(), doy.cos(), hour.sin(), hour.cos()], dim=-1)
        return self.proj(feats.to(self.proj.weight.dtype))


def pad_to(x: Tensor, multiple: int, value: float = 0.0) -> Tensor:
    """Pad the last two axes (H, W) at the end with ``value`` up to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(x, (0, pw, 0, ph), value=value) if ph or pw else x


def patch_centres(coord: Tensor, patch: int, n_patches: int) -> Tensor:
    """Centres of ``n_patches`` consecutive groups of ``patch`` cells of a regular axis.

    The axis is extended linearly past its end, where the input was padded.
    """
    coord = coord.double()
    step = (coord[-1] - coord[0]) / (len(coord) - 1) if len(coord) > 1 else coord.new_tensor(0.0)
    idx = torch.arange(n_patches, dtype=torch.float64, device=coord.device) * patch
    return (coord[0] + (idx + (patch - 1) / 2) * step).float()


def patchify(x: Tensor, p: int) -> Tensor:
    """``(N, F, H, W)`` with H, W multiples of p -> ``(N, H/p, W/p, F p p)``."""
    n, f, h, w = x.shape
    x = x.reshape(n, f, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(n, h // p, w // p, f * p * p)


def unpatchify(x: Tensor, p: int) -> Tensor:
    """``(N, Hp, Wp, C, p p)`` -> ``(N, C, Hp p, Wp p)``."""
    n, hp, wp, c, _ = x.shape
    x = x.reshape(n, hp, wp, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n, c, hp * p, wp * p)


EMBED_STD = 0.02  # the scale of every learned identity vector (as the latents and groups)


def identity_embedding(n: int, d: int) -> nn.Embedding:
    """An ``nn.Embedding`` of identities (levels, taxa) at the scale of the other learned
    vectors: PyTorch's default N(0, 1) would make these tokens outweigh the data in every
    attention (a species vector sums six of them)."""
    emb = nn.Embedding(n, d)
    nn.init.normal_(emb.weight, std=EMBED_STD)
    return emb
