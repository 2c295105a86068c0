"""Temporal layers of the video model F (§3.2, §3.3).

Spatial layers see frames independently as a batch [B*T, C, H, W] (frame-major). These layers
mix information across frames at every spatial position and are the only new parameters:
both start as the identity so that, at initialisation, the video model is the image model
applied frame by frame (§3.3: identity init made convergence ~2x faster).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .attention import CrossAttention, FeedForward
from .layers import zero_init


# Frame-major batches [B*T, C, H, W] <-> one sequence per spatial position. Plain view/permute
# (not einops): dynamo re-traces einops' pattern parsing on every call, slowing torch.compile.

def to_frame_sequences(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(b t) c h w -> (b h w) t c"""
    bt, c, h, w = x.shape
    return x.reshape(bt // num_frames, num_frames, c, h, w).permute(0, 3, 4, 1, 2).reshape(-1, num_frames, c)


def from_frame_sequences(x: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
    """(b h w) t c -> (b t) c h w"""
    c = x.shape[-1]
    return x.reshape(-1, height, width, num_frames, c).permute(0, 3, 4, 1, 2).reshape(-1, c, height, width)


class TemporalConv(nn.Module):
    """1D convolution over frames after a spatial ResBlock, identity kernel at init.

    §3.3: "identity kernel for the temporal convolutions": the centre tap is the identity
    matrix, the other taps and the bias are zero, so output == input until it is trained.
    Frames beyond the clip edges are zero padded.
    """

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.reset_to_identity()

    @torch.no_grad()
    def reset_to_identity(self) -> None:
        nn.init.dirac_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        seq = self.conv(to_frame_sequences(x, num_frames).transpose(1, 2))  # [B*H*W, C, T]
        return from_frame_sequences(seq.transpose(1, 2), num_frames, h, w)


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """Fixed sin/cos table used to initialise the learned frame-position embedding."""
    pos = torch.arange(num_positions, dtype=torch.float32)[:, None]
    freqs = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    table = torch.zeros(num_positions, dim)
    table[:, 0::2] = torch.sin(pos * freqs)
    table[:, 1::2] = torch.cos(pos * freqs[: dim // 2])
    return table


class TemporalBlock(nn.Module):
    """Pre-norm self-attention over frames, optional cross-attention to the text, GEGLU MLP.

    The cross-attention (one per text encoder, `text_attn.{i}`/`text_norm.{i}`) is not in the paper,
    whose temporal layers see the prompt only through the spatial layers' output. SVD's temporal
    blocks (`time_stack`) do cross-attend; UNetConfig.temporal_text turns it on.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_dims: tuple[int, ...] = ()):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = CrossAttention(dim, None, heads, head_dim)
        if context_dims:
            self.text_norm = nn.ModuleList(nn.LayerNorm(dim) for _ in context_dims)
            self.text_attn = nn.ModuleList(CrossAttention(dim, d, heads, head_dim) for d in context_dims)
            for attn in self.text_attn:   # added to trained temporal layers, they change nothing at first
                zero_init(attn.to_out[0])
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: list[torch.Tensor] | None = None,
                masks: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """x: [B*H*W, T, C] frame sequences; context/masks: one [B, L, D] / [B, L] per encoder."""
        x = x + self.attn1(self.norm1(x))
        if hasattr(self, "text_attn"):
            for norm, attn, ctx, mask in zip(self.text_norm, self.text_attn, context, masks):
                x = x + cross_attend_per_clip(attn, norm(x), ctx, mask)
        return x + self.ff(self.norm2(x))


def cross_attend_per_clip(attn: CrossAttention, x: torch.Tensor, context: torch.Tensor,
                          mask: torch.Tensor | None) -> torch.Tensor:
    """Cross-attention of every frame sequence of a clip to that clip's prompt.

    x holds B clips' H*W sequences, clip-major. Each query attends to the keys on its own, so a
    clip's H*W*T queries can share one sequence: the prompt is projected once per clip instead of
    once per spatial position (exactly the same result, no [B*H*W, L, D] copy of the context).
    """
    rows, frames, dim = x.shape
    clips = context.shape[0]
    out = attn(x.reshape(clips, (rows // clips) * frames, dim), context, mask)
    return out.reshape(rows, frames, dim)


class TemporalAttention(nn.Module):
    """Self-attention over the frames at every spatial position, after a spatial transformer.

    One temporal block per spatial transformer block ("a 1D temporal attention after every
    spatial attention", §3.2), in the transformer's own width with a learned frame-position table.
    §3.3: the final projection is zeroed, so the layer is an exact residual identity at init.
    """

    def __init__(self, channels: int, head_dim: int, max_frames: int, depth: int = 1,
                 context_dims: tuple[int, ...] = ()):
        super().__init__()
        heads = max(1, channels // head_dim)
        inner = heads * head_dim
        self.norm = nn.LayerNorm(channels)
        self.proj_in = nn.Linear(channels, inner)
        self.pos_embed = nn.Parameter(sinusoidal_table(max_frames, inner))
        self.blocks = nn.ModuleList(TemporalBlock(inner, heads, head_dim, context_dims) for _ in range(depth))
        self.proj_out = zero_init(nn.Linear(inner, channels))

    def forward(self, x: torch.Tensor, num_frames: int, context: list[torch.Tensor] | None = None,
                masks: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """context/masks: the spatial layers' per-frame text ([B*T, L, D], each clip's prompt
        repeated T times); the temporal cross-attention reads one copy per clip."""
        h, w = x.shape[-2:]
        seq = to_frame_sequences(x, num_frames)
        hidden = self.proj_in(self.norm(seq))
        hidden = hidden + self.pos_embed[:num_frames].to(hidden.dtype)
        if context is not None:
            context = [c[::num_frames] for c in context]
            masks = [None if m is None else m[::num_frames] for m in masks]
        for block in self.blocks:
            hidden = block(hidden, context, masks)
        seq = seq + self.proj_out(hidden)
        return from_frame_sequences(seq, num_frames, h, w)
