"""VQGAN tokenizer with the MaskGIT architecture used by the official MAGE checkpoints.

State-dict keys match the official ``taming.models.vqgan.VQModel`` (``encoder.*``, ``decoder.*``,
``quantize.embedding.weight``). Architecture quirks kept on purpose (they are in the weights):
no attention, bias-free residual convs, 2x2 average-pool downsampling, and a 1x1 shortcut conv that is
applied to the residual branch's *output* when the channel count changes.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import VQGANConfig


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm2 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.nin_shortcut = nn.Conv2d(cout, cout, 1, bias=False) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.nin_shortcut is not None:
            return self.nin_shortcut(h) + h  # MaskGIT quirk: the input x is not carried over
        return x + h


class _Level(nn.Module):
    """One resolution level: ``block`` list plus an optional resampler (names match the checkpoint)."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)


class _Mid(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.block_1 = ResnetBlock(c, c)
        self.block_2 = ResnetBlock(c, c)

    def forward(self, x):
        return self.block_2(self.block_1(x))


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        chans = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1, bias=False)
        self.down = nn.ModuleList()
        cin = cfg.ch
        for cout in chans:
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(cin, cout))
                cin = cout
            self.down.append(_Level(blocks))
        self.mid = _Mid(cin)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            for blk in level.block:
                h = blk(h)
            if i != len(self.down) - 1:
                h = F.avg_pool2d(h, 2, 2)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        chans = [cfg.ch * m for m in cfg.ch_mult]
        cin = chans[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = _Mid(cin)
        levels = [None] * len(chans)
        for i in reversed(range(len(chans))):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(cin, chans[i]))
                cin = chans[i]
            lvl = _Level(blocks)
            if i != 0:
                lvl.upsample = Upsample(cin)
            levels[i] = lvl
        self.up = nn.ModuleList(levels)  # up.0 = highest resolution, as in the checkpoint
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.out_ch, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            for blk in self.up[i].block:
                h = blk(h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantiser with straight-through gradients (VectorQuantizer2, legacy loss)."""

    def __init__(self, n_embed: int, dim: int, beta: float = 0.25):
        super().__init__()
        self.n_embed, self.dim, self.beta = n_embed, dim, beta
        self.embedding = nn.Embedding(n_embed, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """z [B,C,H,W] -> nearest code ids [B,H,W] (squared L2 as |z|^2 + |e|^2 - 2 z.e)."""
        zf = z.permute(0, 2, 3, 1).reshape(-1, self.dim)
        e = self.embedding.weight
        d = zf.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * zf @ e.t()
        return d.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B,H,W] -> codebook vectors NCHW (contiguous)."""
        return self.embedding(ids).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor):
        """Returns (z_q straight-through, vq loss, ids [B,H,W])."""
        ids = self.codes(z)
        e = self.lookup(ids)
        loss = F.mse_loss(e, z.detach()) + self.beta * F.mse_loss(e.detach(), z)
        # legacy=True in the official quantiser: the two terms are numerically equal in the forward
        z_q = z + (e - z).detach()
        return z_q, loss, ids


class VQGAN(nn.Module):
    """encode: images in [0,1] NCHW -> token ids [B, h*w]; decode: ids [B, h*w] -> images (not clamped)."""

    def __init__(self, cfg: VQGANConfig | None = None):
        super().__init__()
        self.config = cfg = cfg or VQGANConfig()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.beta)

    def _check_images(self, x: torch.Tensor):
        c = self.config
        if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"expected images as a [B,{c.in_channels},H,W] tensor, got "
                             f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
        if x.shape[2] % c.downsample or x.shape[3] % c.downsample:
            raise ValueError(f"image size {tuple(x.shape[2:])} is not a multiple of {c.downsample}")
        if not x.is_floating_point():
            raise ValueError("images must be float in [0,1] (got integer dtype; divide uint8 by 255)")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"images must be in [0,1], got values in [{lo:.3f}, {hi:.3f}]")

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor):
        """Training path: returns (reconstruction, vq loss, ids [B,h,w])."""
        z_q, loss, ids = self.quantize(self.encoder(x))
        return self.decoder(z_q), loss, ids

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._check_images(x)
        ids = self.quantize.codes(self.encoder(x))
        return ids.flatten(1)

    def decode_ids(self, ids: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        if ids.dim() == 2:
            if grid is None:
                side = int(round(ids.shape[1] ** 0.5))
                if side * side != ids.shape[1]:
                    raise ValueError("pass grid=(h, w) for non-square token grids")
                grid = (side, side)
            ids = ids.view(ids.shape[0], *grid)
        if ids.min() < 0 or ids.max() >= self.config.n_embed:
            raise ValueError(f"token ids must be in [0, {self.config.n_embed}); "
                             f"got [{int(ids.min())}, {int(ids.max())}]")
        # the decoder always runs in fp32, also when the caller is inside a bf16 autocast region
        with torch.autocast(ids.device.type, enabled=False):
            return self.decoder(self.quantize.lookup(ids).float())

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        return self.decode_ids(ids, grid)
