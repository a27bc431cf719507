"""Swin3D U-Net backbone over (latent level x lat patches x lon patches).

Stage 1 (width D) -> patch merging (2 x 2 in lat/lon, width 2 D) -> bottleneck stage ->
patch splitting back to D, concatenated with the stage-1 skip and fused -> stage 3 (width D).
Each stage alternates plain and shifted windows. The patch grid is zero-padded at its end to
a multiple of twice the window (so both resolutions tile into windows) and cropped back; the
attention masks keep real tokens from attending padding and, in shifted windows, tokens from
attending across the wrap-around seam (the usual Swin region mask).

Activation checkpointing (config ``train.activation_checkpointing``,
``set_activation_checkpointing``) recomputes each block's activations in the backward pass
instead of keeping them (``torch.utils.checkpoint``, non-reentrant): the same loss and
gradients, less memory, about one more forward pass of the backbone per step. It is a
training setting, not part of the model (``ModelConfig``): a checkpoint trained with it loads
and runs without it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from bfm.model.config import ModelConfig
from bfm.model.layers import MLP

Window = tuple[int, int, int]


def relative_index(window: Window) -> Tensor:
    """Index into the relative-position bias table for every (query, key) pair, ``(N, N)``."""
    wz, wh, ww = window
    axes = [torch.arange(n) for n in window]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(1)  # (3, N)
    rel = coords[:, :, None] - coords[:, None, :]
    rel += torch.tensor([wz - 1, wh - 1, ww - 1])[:, None, None]
    return rel[0] * (2 * wh - 1) * (2 * ww - 1) + rel[1] * (2 * ww - 1) + rel[2]


def partition(x: Tensor, window: Window) -> Tensor:
    """``(B, Z, H, W, ...)`` -> ``(B * nW, N, ...)`` with N = wz wh ww tokens per window."""
    b, z, h, w = x.shape[:4]
    rest = x.shape[4:]
    wz, wh, ww = window
    x = x.reshape(b, z // wz, wz, h // wh, wh, w // ww, ww, *rest)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, *range(7, 7 + len(rest)))
    return x.reshape(-1, wz * wh * ww, *rest)


def unpartition(x: Tensor, window: Window, shape: tuple[int, int, int, int]) -> Tensor:
    """Inverse of ``partition``: ``(B * nW, N, D)`` -> ``(B, Z, H, W, D)``."""
    b, z, h, w = shape
    wz, wh, ww = window
    x = x.reshape(b, z // wz, h // wh, w // ww, wz, wh, ww, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, z, h, w, -1)


def attention_mask(valid: Tensor, window: Window, shift: Window) -> Tensor:
    """Which keys each query may attend, per window: ``(nW, N, N)`` bool.

    ``valid`` ``(Z, H, W)`` marks real (not padded) tokens, in the unshifted layout. A real
    query sees real keys of its own shift region; a padded query sees its whole region (its
    output is cropped away, this only keeps the softmax finite).
    """
    size = valid.shape
    region = torch.zeros(size, dtype=torch.long, device=valid.device)
    for axis, (n, w, s) in enumerate(zip(size, window, shift, strict=True)):
        if s:
            ids = torch.zeros(n, dtype=torch.long, device=valid.device)
            ids[n - w : n - s], ids[n - s :] = 1, 2
            view = [1, 1, 1]
            view[axis] = n
            region = region * 3 + ids.view(view)
    rolled = torch.roll(valid, shifts=tuple(-s for s in shift), dims=(0, 1, 2))
    region = partition(region[None], window)
    ok = partition(rolled[None], window)
    same = region[:, :, None] == region[:, None, :]
    return same & (ok[:, None, :] | ~ok[:, :, None])


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias."""

    rel_index: Tensor

    def __init__(self, dim: int, heads: int, window: Window) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        n_rel = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.rel_bias = nn.Parameter(torch.randn(n_rel, heads) * 0.02)
        self.register_buffer("rel_index", relative_index(window), persistent=False)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x ``(B * nW, N, D)``, mask ``(B * nW, N, N)`` bool -> ``(B * nW, N, D)``."""
        bw, n, d = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.rel_bias[self.rel_index].permute(2, 0, 1).to(q.dtype)  # (h, N, N)
        neg = torch.finfo(q.dtype).min
        attn_mask = bias[None].masked_fill(~mask[:, None], neg)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(bw, n, d))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention + MLP on ``(B, Z, H, W, D)``."""

    def __init__(
        self, dim: int, heads: int, window: Window, mlp_ratio: float, shifted: bool
    ) -> None:
        super().__init__()
        self.window, self.shifted = window, shifted
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.mlp = MLP(dim, mlp_ratio)

    def shift(self, size: Window) -> Window:
        """Half a window along every axis longer than the window (elsewhere a roll is a no-op);
        none in unshifted blocks."""
        if not self.shifted:
            return (0, 0, 0)
        (z, h, w), (wz, wh, ww) = size, self.window
        return (wz // 2 if z > wz else 0, wh // 2 if h > wh else 0, ww // 2 if w > ww else 0)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """x ``(B, Z, H, W, D)`` with Z, H, W multiples of the window; valid ``(Z, H, W)``."""
        b, z, h, w, _ = x.shape
        shift = self.shift((z, h, w))
        y = self.norm1(x)
        if any(shift):
            y = torch.roll(y, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        mask = attention_mask(valid, self.window, shift)
        mask = mask.repeat(b, 1, 1)
        y = unpartition(self.attn(partition(y, self.window), mask), self.window, (b, z, h, w))
        if any(shift):
            y = torch.roll(y, shifts=shift, dims=(1, 2, 3))
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchMerge(nn.Module):
    """2 x 2 lat/lon merge: ``(B, Z, H, W, D)`` -> ``(B, Z, H/2, W/2, 2 D)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm, self.reduce = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        parts = [x[:, :, i::2, j::2] for i in (0, 1) for j in (0, 1)]
        return self.reduce(self.norm(torch.cat(parts, dim=-1)))


class PatchSplit(nn.Module):
    """Inverse of the merge: ``(B, Z, h, w, 2 D)`` -> ``(B, Z, 2 h, 2 w, D)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.expand, self.norm = nn.Linear(2 * dim, 4 * dim, bias=False), nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        b, z, h, w, _ = x.shape
        x = self.expand(x).reshape(b, z, h, w, 2, 2, -1).permute(0, 1, 2, 4, 3, 5, 6)
        return self.norm(x.reshape(b, z, 2 * h, 2 * w, -1))


Block = Callable[[int, int], nn.Module]  # (width, index in its stage) -> a block


class UNetBackbone(nn.Module):
    """``(B, K, Hp, Wp, D)`` -> same shape, any Hp and Wp: the U-Net both backbones share.

    Stage 1 at full resolution, patch merging, stage 2 at half resolution and twice the
    width, patch splitting, the skip fused back in, stage 3. The grid is padded to a multiple
    of ``multiple`` (both resolutions must tile evenly); blocks take ``(x, valid)`` with the
    mask of real (unpadded) tokens.
    """

    def __init__(self, cfg: ModelConfig, block: Block, multiple: tuple[int, int]) -> None:
        super().__init__()
        d = cfg.embed_dim
        d1, d2, d3 = cfg.backbone_depths
        self.multiple = multiple

        def stage(dim: int, depth: int) -> nn.ModuleList:
            return nn.ModuleList(block(dim, i) for i in range(depth))

        self.stage1, self.stage2, self.stage3 = stage(d, d1), stage(2 * d, d2), stage(d, d3)
        self.down, self.up = PatchMerge(d), PatchSplit(d)
        self.fuse = nn.Linear(2 * d, d)
        self.norm = nn.LayerNorm(d)
        self.checkpointing = False  # set_activation_checkpointing

    def _block(self, blk: nn.Module, x: Tensor, valid: Tensor) -> Tensor:
        """``blk(x, valid)``; with checkpointing (and gradients) its activations are
        recomputed in the backward pass instead of kept."""
        if self.checkpointing and torch.is_grad_enabled():
            out: Tensor = torch.utils.checkpoint.checkpoint(blk, x, valid, use_reentrant=False)
            return out
        return blk(x, valid)

    def forward(self, x: Tensor) -> Tensor:
        _, z, h, w, _ = x.shape
        mh, mw = self.multiple
        x = F.pad(x, (0, 0, 0, -w % mw, 0, -h % mh))
        valid = torch.zeros(x.shape[1:4], dtype=torch.bool, device=x.device)
        valid[:, :h, :w] = True
        for blk in self.stage1:
            x = self._block(blk, x, valid)
        skip = x
        # Padded tokens hold whatever attention left there: zero them so that a merged token
        # at the edge sees zero padding, as the input did.
        x = self.down(x * valid[None, ..., None])
        # The real region is a top-left box, so a merged token is real iff its first child is.
        valid_half = valid[:, ::2, ::2]
        for blk in self.stage2:
            x = self._block(blk, x, valid_half)
        x = self.fuse(torch.cat([self.up(x), skip], dim=-1))
        for blk in self.stage3:
            x = self._block(blk, x, valid)
        return self.norm(x)[:, :, :h, :w]


class Swin3DBackbone(UNetBackbone):
    """Shifted windows: plain and shifted blocks alternate in every stage."""

    def __init__(self, cfg: ModelConfig) -> None:
        heads, r, win = cfg.num_heads, cfg.mlp_ratio, cfg.window
        super().__init__(cfg, lambda dim, i: SwinBlock(dim, heads, win, r, i % 2 == 1),
                         (2 * win[1], 2 * win[2]))  # fmt: skip
        self.window = win


def set_activation_checkpointing(model: nn.Module, on: bool = True) -> int:
    """Switch activation checkpointing of every backbone block in ``model`` on or off
    (both backbones); the number of backbones it found (0: nothing to checkpoint)."""
    found = [m for m in model.modules() if isinstance(m, UNetBackbone)]
    for backbone in found:
        backbone.checkpointing = on
    return len(found)


def build_backbone(cfg: ModelConfig) -> nn.Module:
    """The backbone named by ``cfg.backbone`` (config key ``model.backbone``, checked by
    ``ModelConfig``)."""
    from bfm.model.mvit import MViTBackbone  # it builds on this module's patch merging

    backbones: dict[str, type[nn.Module]] = {"swin3d": Swin3DBackbone, "mvit": MViTBackbone}
    return backbones[cfg.backbone](cfg)
