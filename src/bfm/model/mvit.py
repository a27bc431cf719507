"""MViT backbone: multiscale pooling attention over (latent level x lat x lon) patches.

The same contract and U-Net shape as the Swin3D backbone (``(B, K, Hp, Wp, D)`` in and out:
stage 1 at width D -> patch merging to half resolution at 2 D -> bottleneck stage -> patch
splitting back, fused with the stage-1 skip -> stage 3), but every block attends globally:
each token's query sees keys and values pooled by ``kv_stride`` over (lat, lon), so the cost
is (tokens x tokens / stride^2) instead of windowed, and each stage sees the whole grid. The
pooling is a masked average (padding tokens do not count) and pooled cells made only of
padding are masked out of the attention.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bfm.model.backbone import UNetBackbone
from bfm.model.config import ModelConfig
from bfm.model.layers import MLP


def masked_pool(x: Tensor, valid: Tensor, stride: int) -> tuple[Tensor, Tensor]:
    """Average over stride x stride (lat, lon) cells of real tokens only.

    x ``(B, Z, H, W, D)`` with H, W multiples of ``stride``; valid ``(Z, H, W)`` bool ->
    ``(B, Z, H/s, W/s, D)`` and the pooled validity ``(Z, H/s, W/s)``.
    """
    b, z, h, w, d = x.shape
    weight = valid.to(x.dtype)[None, ..., None]
    shape = (b, z, h // stride, stride, w // stride, stride, d)
    total = (x * weight).reshape(shape).sum(dim=(3, 5))
    count = weight.expand(b, -1, -1, -1, -1).reshape(shape[:-1] + (1,)).sum(dim=(3, 5))
    pooled_valid = count[0, ..., 0] > 0
    return total / count.clamp_min(1.0), pooled_valid


class PoolingAttention(nn.Module):
    """Multi-head attention of every token over the stride-pooled keys and values."""

    def __init__(self, dim: int, heads: int, stride: int) -> None:
        super().__init__()
        self.heads, self.stride = heads, stride
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(
            dim, dim)  # fmt: skip

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """x ``(B, Z, H, W, D)``, valid ``(Z, H, W)`` -> ``(B, Z, H, W, D)``."""
        b, z, h, w, d = x.shape
        hd = d // self.heads
        pooled, pooled_valid = masked_pool(x, valid, self.stride)
        q = self.q(x).reshape(b, -1, self.heads, hd).transpose(1, 2)
        k, v = self.kv(pooled).reshape(b, -1, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        mask = None
        if not bool(pooled_valid.all()):
            mask = pooled_valid.reshape(1, 1, 1, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, z, h, w, d))


class MultiScaleBlock(nn.Module):
    """Pre-norm pooling attention + MLP on ``(B, Z, H, W, D)``."""

    def __init__(self, dim: int, heads: int, stride: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = PoolingAttention(dim, heads, stride)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), valid)
        return x + self.mlp(self.norm2(x))


class MViTBackbone(UNetBackbone):
    """Multiscale pooling attention in every stage (keys and values pooled by ``kv_stride``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        heads, r, s = cfg.num_heads, cfg.mlp_ratio, cfg.kv_stride
        super().__init__(cfg, lambda dim, i: MultiScaleBlock(dim, heads, s, r), (2 * s, 2 * s))
        self.stride = s
