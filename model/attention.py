"""Spatial attention of the SD U-Net (LDM key names) with one cross-attention per text encoder (§3.3)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from .layers import GroupNorm32, zero_init

# Temporal attention runs with a batch of B*H*W sequences (x2 under CFG). CUDA SDPA kernels have
# failed with "invalid configuration argument" once the batch reaches 65536 (launch-grid limit,
# pytorch#146704); ComfyUI chunks at 2**15 for the same reason.
CHUNK_ROWS = 2 ** 15


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention over [N, heads, L, d] tensors, chunked along N.

    mask: optional key-padding mask [N, Lk] (bool, True = attend).
    """
    if mask is not None:
        # A sequence with every key masked would give NaN; let it attend to all keys instead.
        # (Tensor ops only: no host sync, so this traces under torch.compile.)
        mask = mask | ~mask.any(dim=-1, keepdim=True)
        mask = mask[:, None, None, :]
    n = q.shape[0]
    if n <= CHUNK_ROWS:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = []
    for start in range(0, n, CHUNK_ROWS):
        end = start + CHUNK_ROWS
        m = None if mask is None else mask[start:end]
        out.append(F.scaled_dot_product_attention(q[start:end], k[start:end], v[start:end], attn_mask=m))
    return torch.cat(out)


# Reshapes are written with view/permute rather than einops: dynamo re-traces einops' pattern
# parsing on every call, which made torch.compile of the U-Net many times slower.

def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[N, L, heads*d] -> [N, heads, L, d]."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[N, heads, L, d] -> [N, L, heads*d]."""
    return x.transpose(1, 2).flatten(2)


def image_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, H*W, C]."""
    return x.flatten(2).transpose(1, 2)


def tokens_to_image(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[N, H*W, C] -> [N, C, H, W]."""
    return x.transpose(1, 2).unflatten(2, (height, width))


class CrossAttention(nn.Module):
    """Multi-head attention; self-attention when `context` is None (LDM keys to_q/to_k/to_v/to_out.0)."""

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = (split_heads(t, self.heads) for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        if q.dtype != v.dtype:  # context kept in fp32 outside autocast regions
            k, v = k.to(q.dtype), v.to(q.dtype)
        out = attention(q, k, v, mask)
        return self.to_out(merge_heads(out))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU MLP (LDM keys net.0.proj, net.2)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Inference only: the 8x-wide GEGLU hidden state is the largest transient of a U-Net
        # forward, so run it a slice of tokens at a time (same result; training keeps one call
        # because autograd would save every slice anyway).
        if torch.is_grad_enabled() or x.shape[0] < FF_CHUNKS:
            return self.net(x)
        return torch.cat([self.net(part) for part in x.chunk(FF_CHUNKS, dim=0)])


FF_CHUNKS = 4


class BasicTransformerBlock(nn.Module):
    """Self-attention, one cross-attention per text encoder, GEGLU MLP.

    §3.3: separate cross-attention layers attend to T5 and to CLIP. Encoder 0 keeps SD's
    `attn2`/`norm2` keys; encoders 1.. get `extra_attn.{i}`/`extra_norm.{i}`.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, context_dims: tuple[int, ...]):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head)
        self.attn2 = CrossAttention(dim, context_dims[0], heads, dim_head)
        self.extra_attn = nn.ModuleList(CrossAttention(dim, d, heads, dim_head) for d in context_dims[1:])
        self.extra_norm = nn.ModuleList(nn.LayerNorm(dim) for _ in context_dims[1:])
        self.ff = FeedForward(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: list[torch.Tensor], masks: list[torch.Tensor | None]) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context[0], masks[0])
        for i, (attn, norm) in enumerate(zip(self.extra_attn, self.extra_norm)):
            x = x + attn(norm(x), context[i + 1], masks[i + 1])
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Per-frame spatial transformer over H*W tokens (LDM keys norm, proj_in, transformer_blocks, proj_out),
    plus an optional temporal attention child (§3.2: after every spatial attention)."""

    takes_context = True

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dims: tuple[int, ...],
                 norm_groups: int, use_linear_proj: bool = False, temporal: nn.Module | None = None):
        super().__init__()
        inner = heads * dim_head
        self.use_linear_proj = use_linear_proj
        self.norm = GroupNorm32(norm_groups, channels, eps=1e-6)
        if use_linear_proj:  # SD 2.x
            self.proj_in = nn.Linear(channels, inner)
            self.proj_out = zero_init(nn.Linear(inner, channels))
        else:  # SD 1.x: 1x1 convs
            self.proj_in = nn.Conv2d(channels, inner, 1)
            self.proj_out = zero_init(nn.Conv2d(inner, channels, 1))
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dims) for _ in range(depth))
        if temporal is not None:
            self.temporal = temporal

    def forward(self, x: torch.Tensor, context: list[torch.Tensor], masks: list[torch.Tensor | None],
                num_frames: int | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        hidden = self.norm(x)
        if self.use_linear_proj:
            hidden = self.proj_in(image_to_tokens(hidden))
        else:
            hidden = image_to_tokens(self.proj_in(hidden))
        for block in self.transformer_blocks:
            hidden = block(hidden, context, masks)
        if self.use_linear_proj:
            hidden = tokens_to_image(self.proj_out(hidden), h, w)
        else:
            hidden = self.proj_out(tokens_to_image(hidden, h, w))
        x = x + hidden
        if num_frames is not None and hasattr(self, "temporal"):
            x = self.temporal(x, num_frames, context, masks)
        return x
