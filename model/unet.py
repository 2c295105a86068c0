"""EmuUNet: the video model F (§3.2) = SD's spatial U-Net (LDM names, loads SD weights key-for-key)
with temporal layers nested inside its blocks and zero-initialised image-conditioning channels.

Without its temporal layers F is the text-to-image model that makes the first frame (§3.2
"simplicity"); with them it makes the video conditioned on that frame (Fig. 3).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .attention import SpatialTransformer
from .conditioning import TextCondition
from .config import InputError, UNetConfig
from .layers import (Downsample, GroupNorm32, ResBlock, TimestepEmbedSequential, Upsample, timestep_embedding,
                     zero_init)
from .temporal import TemporalAttention, TemporalConv

COND_CONV_PREFIX = "input_blocks.0.0.cond."


def is_temporal_key(name: str) -> bool:
    """True for parameters trained in the video stage: temporal layers and the conditioning conv."""
    return ".temporal." in name or name.startswith("temporal.") or name.startswith(COND_CONV_PREFIX)


def frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> frame-major [B*T, C, H, W]: spatial layers see every frame as an image."""
    return x.transpose(1, 2).flatten(0, 1)


def batch_to_frames(x: torch.Tensor, batch: int) -> torch.Tensor:
    """[B*T, C, H, W] -> [B, C, T, H, W]."""
    return x.unflatten(0, (batch, -1)).transpose(1, 2)


class InputConv(nn.Conv2d):
    """SD's first conv (weight [model_channels, C, 3, 3], unchanged) plus a zero-initialised child
    `cond` over the extra C+1 channels [known-frame latents | mask].

    §3.3 widens the first conv with zeroed channels; as a separate child the spatial part can stay
    frozen while the conditioning channels train. Summing the two convs is the widened conv.
    """

    def __init__(self, latent_channels: int, out_channels: int, with_cond: bool):
        super().__init__(latent_channels, out_channels, 3, padding=1)
        if with_cond:
            self.cond = zero_init(nn.Conv2d(latent_channels + 1, out_channels, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = super().forward(x)
        if cond is not None and hasattr(self, "cond"):
            h = h + self.cond(cond)
        return h


class EmuUNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.gradient_checkpointing = False
        mc, groups = cfg.model_channels, cfg.norm_groups
        emb_dim = mc * 4
        ctx_dims = tuple(cfg.context_dims)

        def resblock(ch_in, ch_out):
            temporal = TemporalConv(ch_out, cfg.temporal_kernel) if cfg.temporal else None
            return ResBlock(ch_in, emb_dim, ch_out, groups, temporal)

        def transformer(ch):
            heads, dim_head = (ch // cfg.head_dim, cfg.head_dim) if cfg.head_dim > 0 else (cfg.num_heads, ch // cfg.num_heads)
            temporal = TemporalAttention(ch, cfg.temporal_head_dim, cfg.max_frames, cfg.transformer_depth,
                                          ctx_dims if cfg.temporal_text else ()) if cfg.temporal else None
            return SpatialTransformer(ch, heads, dim_head, cfg.transformer_depth, ctx_dims, groups,
                                      cfg.use_linear_proj, temporal)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(InputConv(cfg.latent_channels, mc, cfg.temporal))])
        skip_channels, ch = [mc], mc
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [resblock(ch, mc * mult)]
                ch = mc * mult
                if level in cfg.attention_levels:
                    layers.append(transformer(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)

        self.middle_block = TimestepEmbedSequential(resblock(ch, ch), transformer(ch), resblock(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [resblock(ch + skip_channels.pop(), mc * mult)]
                ch = mc * mult
                if level in cfg.attention_levels:
                    layers.append(transformer(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(groups, ch), nn.SiLU(),
                                 zero_init(nn.Conv2d(mc, cfg.latent_channels, 3, padding=1)))

    # ------------------------------------------------------------------ parameter groups

    def temporal_parameters(self) -> list[nn.Parameter]:
        """The parameters trained in the video stage (§3.3): temporal layers + conditioning conv."""
        return [p for n, p in self.named_parameters() if is_temporal_key(n)]

    def spatial_parameters(self) -> list[nn.Parameter]:
        """The text-to-image parameters, frozen while training the video model (§3.2)."""
        return [p for n, p in self.named_parameters() if not is_temporal_key(n)]

    def freeze_spatial(self) -> "EmuUNet":
        for n, p in self.named_parameters():
            p.requires_grad_(is_temporal_key(n))
        return self

    def enable_gradient_checkpointing(self, on: bool = True) -> "EmuUNet":
        """Recompute each U-Net block in backward (non-reentrant checkpoint) to save activation memory."""
        self.gradient_checkpointing = on
        return self

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor, timesteps, context, context_masks=None, image_mode: bool = False) -> torch.Tensor:
        """x: [B, Cin, T, H, W], Cin = C or 2C+1 ([noisy | known-frame latents | mask]); returns [B, C, T, H, W].

        image_mode: run F as the text-to-image model: temporal layers skipped and conditioning
        channels ignored; frames are independent images. Also accepts [B, C, H, W] (returns 4-D).
        A model built with cfg.temporal=False always runs in image mode.
        context: one [B, L_i, D_i] tensor per text encoder (or a TextCondition); context_masks:
        matching [B, L_i] bool key-padding masks (True = real token) or None.
        """
        if isinstance(context, TextCondition):
            context, context_masks = context.context, context.masks
        image_mode = image_mode or not self.cfg.temporal
        four_d = x.ndim == 4
        if four_d:
            if not image_mode:
                raise InputError(f"got a 4-D input {tuple(x.shape)}; video mode needs [B, C, T, H, W] "
                                 f"(pass image_mode=True to denoise [B, C, H, W] images)")
            x = x[:, :, None]
        timesteps, context, context_masks = self._check_inputs(x, timesteps, context, context_masks, image_mode)

        batch, cin, frames = x.shape[:3]
        c = self.cfg.latent_channels
        dtype = self.time_embed[0].weight.dtype
        x_in = x.to(dtype)
        noisy = frames_to_batch(x_in[:, :c])
        cond = frames_to_batch(x_in[:, c:]) if not image_mode and cin > c else None
        num_frames = None if image_mode else frames

        emb = self.time_embed(timestep_embedding(timesteps, self.cfg.model_channels).to(dtype))
        emb = emb.repeat_interleave(frames, dim=0)
        ctx = [t.to(dtype).repeat_interleave(frames, dim=0) for t in context]
        masks = [None if m is None else m.bool().repeat_interleave(frames, dim=0) for m in context_masks]

        h = self.input_blocks[0][0](noisy, cond)
        skips = [h]
        for block in self.input_blocks[1:]:
            h = self._run(block, h, emb, ctx, masks, num_frames)
            skips.append(h)
        h = self._run(self.middle_block, h, emb, ctx, masks, num_frames)
        for block in self.output_blocks:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb, ctx, masks, num_frames)
        out = batch_to_frames(self.out(h), batch).to(x.dtype)
        return out[:, :, 0] if four_d else out

    def _run(self, block, h, emb, ctx, masks, num_frames):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, h, emb, ctx, masks, num_frames, use_reentrant=False)
        return block(h, emb, ctx, masks, num_frames)

    def _check_inputs(self, x, timesteps, context, context_masks, image_mode):
        """Shape checks only (no host sync); every failure says what was expected."""
        cfg = self.cfg
        if x.ndim != 5:
            raise InputError(f"x must be [B, C, T, H, W] (or [B, C, H, W] in image mode), got shape {tuple(x.shape)}")
        batch, cin, frames, height, width = x.shape
        c = cfg.latent_channels
        if cin not in (c, cfg.in_channels):
            raise InputError(f"x has {cin} channels; expected {c} (noisy latent only) or {cfg.in_channels} "
                             f"([noisy latent {c} | known-frame latents {c} | mask 1])")
        if frames == 0:
            raise InputError("x has 0 frames; pass at least one frame")
        if not image_mode and frames > cfg.max_frames:
            raise InputError(f"x has {frames} frames but the model's frame-position table holds {cfg.max_frames}; "
                             f"generate at most {cfg.max_frames} frames per call")
        f = cfg.downsample_factor
        if height % f or width % f:
            raise InputError(f"latent size {height}x{width} is not divisible by {f} (the U-Net downsamples {f}x); "
                             f"use an image size that is a multiple of {f} x the VAE factor")

        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(batch)
        if timesteps.shape != (batch,):
            raise InputError(f"timesteps must have shape [B]=[{batch}], got {tuple(timesteps.shape)}")

        if torch.is_tensor(context):
            context = [context]
        n = len(cfg.context_dims)
        if not isinstance(context, (list, tuple)) or len(context) != n:
            got = len(context) if isinstance(context, (list, tuple)) else type(context).__name__
            raise InputError(f"the model has {n} text encoder(s) (context dims {tuple(cfg.context_dims)}); "
                             f"pass a list of {n} context tensors, got {got}")
        for i, (ctx, dim) in enumerate(zip(context, cfg.context_dims)):
            if not torch.is_tensor(ctx) or ctx.ndim != 3 or ctx.shape[0] != batch or ctx.shape[2] != dim:
                shape = tuple(ctx.shape) if torch.is_tensor(ctx) else type(ctx).__name__
                raise InputError(f"context[{i}] must be [B={batch}, L, {dim}], got {shape}; check the text "
                                 f"encoder order and that prompts and latents have the same batch size")
        if context_masks is None:
            context_masks = [None] * n
        if len(context_masks) != n:
            raise InputError(f"context_masks must have {n} entries (one per text encoder, None allowed), "
                             f"got {len(context_masks)}")
        for i, (m, ctx) in enumerate(zip(context_masks, context)):
            if m is not None and tuple(m.shape) != tuple(ctx.shape[:2]):
                raise InputError(f"context_masks[{i}] must be [B, L]={tuple(ctx.shape[:2])} like its context, "
                                 f"got {tuple(m.shape)}")
        return timesteps, list(context), list(context_masks)
