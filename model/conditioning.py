"""Conditioning inputs of the video model (§3.2, Fig. 3).

Text: one embedding per text encoder (T5, CLIP), each attended by its own cross-attention.
Frames: masked-frame conditioning (filled in below).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .config import IMAGE_FILLS, INTERP_FILLS, InputError


@dataclass
class TextCondition:
    """Per-encoder text embeddings, always padded to each encoder's max_length.

    context[i]: [B, L_i, D_i] float; masks[i]: [B, L_i] bool (True = real token) or None.
    The null condition is the embedding of the empty prompt "" (not zeros).
    """
    context: list[torch.Tensor]
    masks: list[torch.Tensor | None]

    @property
    def batch_size(self) -> int:
        return self.context[0].shape[0]

    def to(self, device=None, dtype=None) -> "TextCondition":
        return TextCondition([c.to(device=device, dtype=dtype) for c in self.context],
                             [None if m is None else m.to(device=device) for m in self.masks])

    def repeat(self, n: int) -> "TextCondition":
        """Repeat every sample n times along the batch (sample-major)."""
        return TextCondition([c.repeat_interleave(n, 0) for c in self.context],
                             [None if m is None else m.repeat_interleave(n, 0) for m in self.masks])

    @staticmethod
    def cat(items: list["TextCondition"]) -> "TextCondition":
        n = len(items[0].context)
        ctx = [torch.cat([it.context[i] for it in items]) for i in range(n)]
        masks = []
        for i in range(n):
            ms = [it.masks[i] for it in items]
            if all(m is None for m in ms):
                masks.append(None)
            else:
                ms = [torch.ones(it.context[i].shape[:2], dtype=torch.bool, device=it.context[i].device)
                      if m is None else m for it, m in zip(items, ms)]
                masks.append(torch.cat(ms))
        return TextCondition(ctx, masks)


# --------------------------------------------------------------------------- masked-frame conditioning
#
# One mechanism serves image-to-video (frame 0 known), interpolation (every k-th frame known) and
# extension (the first frames known): the known frames' latents go into their frame slots of a
# zero tensor `cond` [B, C, T, h, w], a binary `mask` [B, 1, T, h, w] marks them, and the U-Net
# input is cat([noisy, cond, mask], dim=1) with 2C+1 channels (§3.2, Fig. 3).
#
# Latent convention: `cond` lives in the SAME scaled latent space as the noisy latents, i.e. the
# conditioning latent of a frame is exactly that frame of x0 (VAE latent after scale/shift). This
# differs from IP2P, which concatenates the unscaled posterior mode (diffusion_math pitfall 11);
# one space for both keeps "copy frame 0 of x0" a valid training input.

AUG_T_TRAIN_MAX = 250   # §3.3 interpolation: τ ~ U{0..250} during training
AUG_T_INFERENCE = 100   # ... and τ = 100 at inference


def known_frames(latents: torch.Tensor, positions: Sequence[int], num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Place K known latents [B, C, K, h, w] at frame `positions` of a T-frame clip.

    Returns (cond [B, C, T, h, w], zeros elsewhere; mask [B, 1, T, h, w], 1 at known slots).
    """
    if latents.ndim != 5:
        raise InputError(f"known frames must be latents [B, C, K, h, w], got shape {tuple(latents.shape)}; "
                         f"add a frame axis with .unsqueeze(2) for a single image")
    positions = [int(p) for p in positions]
    if len(positions) != latents.shape[2]:
        raise InputError(f"{latents.shape[2]} known frames but {len(positions)} positions; give one position per frame")
    if len(set(positions)) != len(positions):
        raise InputError(f"frame positions {positions} repeat a slot; each known frame needs its own slot")
    bad = [p for p in positions if not 0 <= p < num_frames]
    if bad:
        raise InputError(f"frame positions {bad} are outside 0..{num_frames - 1} for a {num_frames}-frame clip")
    B, C, _, h, w = latents.shape
    cond = latents.new_zeros(B, C, num_frames, h, w)
    mask = latents.new_zeros(B, 1, num_frames, h, w)
    index = torch.tensor(positions, device=latents.device)
    cond[:, :, index] = latents
    mask[:, :, index] = 1
    return cond, mask


def hold_last_known(cond: torch.Tensor, mask: torch.Tensor, last: torch.Tensor, fill: str) -> torch.Tensor:
    """fill = "zero": cond as is (§3.2, Fig. 3: the unknown slots are zeros). fill = "hold": every
    unknown slot holds `last` [B, C, h, w], the last known frame, as SVD repeats its conditioning image
    over all frames (our deviation, see ModelConfig.image_fill): each frame's own input channels then
    show what the object looks like, where zeros leave only the temporal layers to carry it over."""
    if fill not in IMAGE_FILLS:
        raise InputError(f"image fill must be one of {IMAGE_FILLS}, got {fill!r}")
    return cond if fill == "zero" else cond + (1 - mask) * last.unsqueeze(2)


def first_frame(image_latent: torch.Tensor, num_frames: int, fill: str = "zero") -> tuple[torch.Tensor, torch.Tensor]:
    """Image-to-video (§3.2 step 2): the image is frame 0 of a `num_frames` clip (the other slots
    zeros, or with fill = "hold" the image again; see hold_last_known)."""
    if image_latent.ndim != 4:
        raise InputError(f"image latent must be [B, C, h, w], got shape {tuple(image_latent.shape)}")
    cond, mask = known_frames(image_latent.unsqueeze(2), [0], num_frames)
    return hold_last_known(cond, mask, image_latent, fill), mask


def interpolation(latents: torch.Tensor, factor: int, fill: str = "zero") -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolation model (§3.3): K frames interleaved into (K-1)·k+1 slots at 0, k, 2k, …

    fill = "zero": the paper's zero-interleaving. fill = "blend" or "residual": each in-between
    slot holds the linear blend of its two neighbouring key latents (mask still 0 there), a
    starting point the model refines instead of drawing the object again from its prior (our
    deviation, see ModelConfig.interp_fill; "residual" also shifts the diffusion, see
    interpolation_offset)."""
    if latents.ndim != 5 or latents.shape[2] < 2:
        raise InputError(f"interpolation needs at least 2 known frames [B, C, K>=2, h, w], "
                         f"got shape {tuple(latents.shape)}")
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise InputError(f"interpolation factor must be an integer >= 1, got {factor!r}")
    if fill not in INTERP_FILLS:
        raise InputError(f"interpolation fill must be one of {INTERP_FILLS}, got {fill!r}")
    K = latents.shape[2]
    cond, mask = known_frames(latents, [i * factor for i in range(K)], (K - 1) * factor + 1)
    if fill != "zero":
        cond = cond + (1 - mask) * linear_blend(latents, factor)
    return cond, mask


def interpolation_offset(clean_cond: torch.Tensor, fill: str) -> torch.Tensor:
    """What I's diffusion is measured from: 0, or with fill = "residual" the clean conditioning
    (key frames, blended in-betweens). I then diffuses x0 − offset, which is zero at the keys and
    small wherever the blend is already right, so "keep the blend" is its starting answer and it
    learns only where objects move; samplers add the offset back."""
    return clean_cond if fill == "residual" else torch.zeros_like(clean_cond)


def linear_blend(latents: torch.Tensor, factor: int) -> torch.Tensor:
    """[B, C, K, h, w] → [B, C, (K-1)·k+1, h, w]: slot i·k + r = (1 − r/k)·frame i + (r/k)·frame i+1."""
    lerped = torch.nn.functional.interpolate(latents.float(), size=((latents.shape[2] - 1) * factor + 1,
                                             *latents.shape[3:]), mode="trilinear", align_corners=True)
    return lerped.to(latents.dtype)


def interpolation_inputs(latents: torch.Tensor, factor: int, fill: str, schedule, t_aug,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What I sees, at training and inference alike: (clean cond, noise-augmented cond, mask).

    Every slot that carries a latent is noised to τ (§3.3): the key frames, and with a blend fill
    the blended in-betweens too, so neither tells the model more than a key frame would."""
    cond, mask = interpolation(latents, factor, fill)
    carried = mask if fill == "zero" else torch.ones_like(mask)
    return cond, noise_augment(cond, carried, schedule, t_aug, generator), mask


def extension(past: torch.Tensor, num_frames: int, overlap: int | None = None,
              fill: str = "zero") -> tuple[torch.Tensor, torch.Tensor]:
    """Video extension (§4.3, Fig. 7): the last `overlap` frames of `past` open the new clip.

    overlap defaults to all K frames of `past`; at least one new frame must remain to generate.
    The new slots are zeros, or with fill = "hold" the last known frame (hold_last_known).
    """
    if past.ndim != 5:
        raise InputError(f"past frames must be latents [B, C, K, h, w], got shape {tuple(past.shape)}")
    overlap = past.shape[2] if overlap is None else overlap
    if not 1 <= overlap <= past.shape[2]:
        raise InputError(f"overlap must be in 1..{past.shape[2]} (frames available), got {overlap}")
    if overlap >= num_frames:
        raise InputError(f"{overlap} known frames leave nothing to generate in a {num_frames}-frame clip; "
                         f"use fewer known frames or a longer clip")
    cond, mask = known_frames(past[:, :, past.shape[2] - overlap:], list(range(overlap)), num_frames)
    return hold_last_known(cond, mask, past[:, :, -1], fill), mask


def noise_augment(cond: torch.Tensor, mask: torch.Tensor, schedule, t_aug,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """cond ← mask·(√ᾱ_τ·cond + √(1−ᾱ_τ)·n): the known frames are diffused to level τ (§3.3).

    Softens the gap between clean training frames and generated ones at inference. t_aug is an
    int or a LongTensor [B] (see AUG_T_TRAIN_MAX / AUG_T_INFERENCE). n is drawn from `generator`
    on its own device (CPU for reproducible sampling), or from the default RNG on cond's device.
    """
    device = generator.device if generator is not None else cond.device
    noise = torch.randn(cond.shape, generator=generator, device=device, dtype=torch.float32)
    noisy = schedule.add_noise(cond, noise.to(device=cond.device, dtype=cond.dtype), t_aug)
    return noisy * mask.to(noisy.dtype)


def sample_aug_timesteps(batch_size: int, max_t: int = AUG_T_TRAIN_MAX,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """τ ~ U{0..max_t} per sample (training-time noise augmentation level), LongTensor on CPU."""
    return torch.randint(0, max_t + 1, (batch_size,), generator=generator)


def pin_known_frames(schedule, x_t: torch.Tensor, out: torch.Tensor, t, known: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    """The replacement method (Ho et al. 2022, "Video Diffusion Models" §3.1) on one prediction.

    At the known slots (mask = 1) x̂0 becomes the known latent and ε̂ the noise that x_t then
    implies, so DDIM moves those frames along their own forward path and ends exactly on them,
    while the temporal layers see the true frames beside the unknown ones at every step. Returns
    the network output (v or ε) that says so; the unknown slots keep the model's prediction.
    """
    x0, eps = schedule.pred_x0_eps(x_t, out, t)
    keep = mask.to(torch.bool).expand_as(x0)
    x0 = torch.where(keep, known.to(x0.dtype), x0)
    alpha_bar = schedule.alpha_bar(t, x0)     # < 1 at every timestep t >= 0, so the division is safe
    eps = torch.where(keep, (x_t.to(x0.dtype) - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt(), eps)
    return schedule.model_output(x0, eps, t).to(out.dtype)


def model_input(noisy: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """U-Net input cat([noisy (C), cond (C), mask (1)], dim=1) → 2C+1 channels (Fig. 3)."""
    if noisy.ndim != 5 or cond.shape != noisy.shape:
        raise InputError(f"noisy latents {tuple(noisy.shape)} and conditioning {tuple(cond.shape)} must both be "
                         f"[B, C, T, h, w] of the same shape; build cond with known_frames/first_frame")
    B, _, T, h, w = noisy.shape
    if mask.shape != (B, 1, T, h, w):
        raise InputError(f"mask must be [B, 1, T, h, w] = {(B, 1, T, h, w)}, got {tuple(mask.shape)}")
    return torch.cat([noisy, cond.to(noisy.dtype), mask.to(noisy.dtype)], dim=1)


def drop_image(cond: torch.Tensor, mask: torch.Tensor,
               which: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ∅-image condition: cond AND mask zeroed (all samples, or those where `which` is True).

    Zeroing the mask too means the model sees "no known frames" — the same input as direct
    text-to-video — rather than "known frames that happen to be black". Used identically by the
    training dropout and by the ∅-image guidance branches at sampling.
    """
    if which is None:
        return torch.zeros_like(cond), torch.zeros_like(mask)
    keep = (~which.to(device=cond.device, dtype=torch.bool)).reshape(-1, *([1] * (cond.ndim - 1)))
    return cond * keep.to(cond.dtype), mask * keep.to(mask.dtype)


def drop_text(text: TextCondition, null_text: TextCondition, which: torch.Tensor) -> TextCondition:
    """Replace the text of samples where `which` is True by the empty-prompt embedding."""
    if null_text.batch_size not in (1, text.batch_size):
        raise InputError(f"null text batch {null_text.batch_size} must be 1 or match the text batch {text.batch_size}")
    context, masks = [], []
    for ctx, null_ctx, m, null_m in zip(text.context, null_text.context, text.masks, null_text.masks):
        pick = which.to(device=ctx.device, dtype=torch.bool)
        context.append(torch.where(pick[:, None, None], null_ctx.to(ctx).expand_as(ctx), ctx))
        if m is None and null_m is None:
            masks.append(None)
            continue
        m = torch.ones(ctx.shape[:2], dtype=torch.bool, device=ctx.device) if m is None else m.bool()
        null_m = torch.ones(null_ctx.shape[:2], dtype=torch.bool, device=ctx.device) if null_m is None else null_m
        masks.append(torch.where(pick[:, None], null_m.to(device=ctx.device, dtype=torch.bool).expand_as(m), m))
    return TextCondition(context, masks)


def condition_dropout(batch_size: int, p_text: float = 0.05, p_image: float = 0.05, p_both: float = 0.05,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint per-sample dropout for dual CFG training (IP2P; diffusion_math §2.7).

    r ~ U[0, 1): [0, p_text) drops text only, [p_text, p_text+p_both) drops both,
    [p_text+p_both, p_text+p_both+p_image) drops the image only. Returns bool (drop_text, drop_image).
    """
    probs = {"p_text": p_text, "p_image": p_image, "p_both": p_both}
    bad = {k: v for k, v in probs.items() if not 0.0 <= v <= 1.0}
    if bad or p_text + p_image + p_both > 1.0:
        raise InputError(f"dropout probabilities {probs} must each be in [0, 1] and sum to at most 1")
    device = generator.device if generator is not None else torch.device("cpu")
    r = torch.rand(batch_size, generator=generator, device=device, dtype=torch.float64)
    drop_text_ = r < p_text + p_both
    drop_image_ = (r >= p_text) & (r < p_text + p_both + p_image)
    return drop_text_, drop_image_
