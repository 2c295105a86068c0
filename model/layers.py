"""Spatial building blocks of the Stable Diffusion (LDM) U-Net, with LDM parameter names so SD
weights load key-for-key. Temporal layers (§3.2) are attached to ResBlocks as an optional child.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def zero_init(module: nn.Module) -> nn.Module:
    """Zero every parameter of `module` (a residual branch that starts as identity)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 (fp16/bf16 statistics over large groups are imprecise)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, LDM/SD convention: [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class Downsample(nn.Module):
    """Strided 3x3 conv (LDM key `op`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2 then 3x3 conv (LDM key `conv`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResBlock(nn.Module):
    """LDM residual block conditioned on the time embedding, plus an optional temporal child
    (§3.2: a 1D temporal convolution after every spatial convolution block)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, norm_groups: int,
                 temporal: nn.Module | None = None, dropout: float = 0.0):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(norm_groups, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(norm_groups, out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)
        if temporal is not None:
            self.temporal = temporal

    def forward(self, x: torch.Tensor, emb: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        h = self.skip_connection(x) + self.out_layers(h)
        if num_frames is not None and hasattr(self, "temporal"):
            h = self.temporal(h, num_frames)
        return h


class TimestepEmbedSequential(nn.Sequential):
    """A U-Net block; routes the time embedding, text contexts and frame count to the layers that use them."""

    def forward(self, x, emb, context, masks, num_frames: int | None = None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, num_frames)
            elif getattr(layer, "takes_context", False):
                x = layer(x, context, masks, num_frames)
            else:
                x = layer(x)
        return x
