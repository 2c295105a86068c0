"""The Emu Video factorization (§3.2) as small steps shared by the nodes, the CLI and the trainer.

    text ──F without temporal layers──▶ first frame I          generate_first_frame
    text + I ──F (dual guidance)──────▶ T frames                 generate_video
    T frames ──interpolation model I──▶ (T−1)·k+1 frames         interpolate
    last frames + new text ──F───────▶ a longer video (Fig. 7)   extend
    latents ──VAE, chunked───────────▶ pixels                    decode

Every step works in the VAE's scaled latent space, takes an explicit seed (noise from a CPU
generator, so a seed gives the same video on any device), a `callback(step, total, x0)` for progress
and a `cancel()` check, and validates its inputs before any tensor work so mistakes read as advice,
not as a shape traceback from inside the U-Net.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from . import conditioning as cond_lib
from .conditioning import TextCondition
from .config import InputError, ModelConfig

RESIZE_MODES = ("crop", "pad", "stretch")
DEFAULT_NOISE_AUG = 100   # §3.3: the interpolation model's conditioning frames are noised to t = 100 at inference


class MemoryEstimateError(InputError):
    """The requested video would not fit in the device's memory."""


# --------------------------------------------------------------------------- validation

def nearest_multiples(value: int, factor: int) -> tuple[int, int]:
    below = max(factor, (value // factor) * factor)
    return below, below + factor


def latent_size(height: int, width: int, config: ModelConfig, vae_factor: int) -> tuple[int, int]:
    """Pixel size → latent size, checking divisibility by VAE factor × U-Net downsampling."""
    factor = vae_factor * config.unet.downsample_factor
    for name, value in (("height", height), ("width", width)):
        if value < factor or value % factor:
            lo, hi = nearest_multiples(value, factor)
            raise InputError(f"{name} {value} must be a positive multiple of {factor} (VAE ×{vae_factor} · "
                             f"U-Net ×{config.unet.downsample_factor}); the nearest valid {name}s are {lo} and {hi}")
    return height // vae_factor, width // vae_factor


def check_frames(num_frames: int, config: ModelConfig, what: str = "frames") -> int:
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise InputError(f"number of {what} must be an integer >= 1, got {num_frames!r}")
    limit = config.unet.max_frames
    if num_frames > limit:
        raise InputError(f"{num_frames} {what} is more than this model supports ({limit}, its temporal "
                         f"position table); generate fewer frames, then use the interpolation or extend nodes")
    return num_frames


def check_latents(latents: torch.Tensor, config: ModelConfig, ndim: int = 5) -> torch.Tensor:
    layout = "[B, C, T, h, w]" if ndim == 5 else "[B, C, h, w]"
    if not isinstance(latents, torch.Tensor) or latents.ndim != ndim:
        shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise InputError(f"expected a latent {layout}, got {shape}; connect the output of an Emu Video sampler")
    channels = config.unet.latent_channels
    if latents.shape[1] != channels:
        raise InputError(f"this latent comes from another model: it has {latents.shape[1]} channels, this model "
                         f"uses {channels}; connect latents made with the same model family (and its VAE)")
    factor = config.unet.downsample_factor
    if latents.shape[-1] % factor or latents.shape[-2] % factor:
        raise InputError(f"latent size {latents.shape[-2]}x{latents.shape[-1]} is not a multiple of the U-Net's "
                         f"downsampling {factor}; it was made for another model")
    return latents


def estimate_memory(config: ModelConfig, batch: int, frames: int, h: int, w: int,
                    dtype: torch.dtype = torch.float32, branches: int = 3) -> int:
    """Rough peak activation bytes of one guided sampling step (the weights are already resident
    on the device when this is checked, so they are already missing from its free memory).

    Every level keeps ~(num_res_blocks + 1) feature maps for the skip connections plus the blocks'
    temporaries; attention at a level adds the [HW × HW] score matrix per head when the backend
    materialises it (the CPU math path does). Deliberately generous: it guards against hopeless
    requests, not borderline ones.
    """
    u = config.unet
    item = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    n = batch * branches * frames
    elements = 0
    for level, mult in enumerate(u.channel_mult):
        pixels = (h >> level) * (w >> level)
        elements += n * pixels * u.model_channels * mult * (u.num_res_blocks + 1) * 6
        if level in u.attention_levels:
            heads = u.num_heads if u.head_dim <= 0 else max(1, u.model_channels * mult // u.head_dim)
            elements += n * heads * pixels * pixels
    return int(elements * item)


def available_memory(device) -> int | None:
    """Free bytes on `device` (CUDA: driver's free memory; CPU: MemAvailable), or None if unknown."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu" and os.path.exists("/proc/meminfo"):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return None


def check_memory(config: ModelConfig, batch: int, frames: int, h: int, w: int, device, dtype,
                 available: int | None = None) -> None:
    """Refuse before sampling when the estimate clearly exceeds free memory (EMU_VIDEO_SKIP_MEMORY_CHECK=1 skips)."""
    if os.environ.get("EMU_VIDEO_SKIP_MEMORY_CHECK") == "1":
        return
    need = estimate_memory(config, batch, frames, h, w, dtype)
    free = available if available is not None else available_memory(device)
    if free is not None and need > free:
        raise MemoryEstimateError(
            f"{frames} frames at latent {h}x{w} (batch {batch}) need about {need / 2**30:.1f} GiB but only "
            f"{free / 2**30:.1f} GiB is free on {device}; use fewer frames or a smaller size (then interpolate "
            f"/ extend), or a lower-precision dtype (set EMU_VIDEO_SKIP_MEMORY_CHECK=1 to try anyway)")


# --------------------------------------------------------------------------- text and image inputs

def encode_prompts(text_encoders, prompts: str | Sequence[str], negative: str = "") -> tuple[TextCondition, TextCondition]:
    """(cond, null). The null condition is the embedding of `negative` — the empty prompt by default,
    which is what the model saw when its text was dropped in training (not zeros)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise InputError("no prompt given; pass at least one (possibly empty) prompt")
    cond = text_encoders.encode(prompts)
    null = text_encoders.encode([negative] * len(prompts)) if negative else text_encoders.null(len(prompts))
    return cond, null


def as_image_batch(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE → float32 [B, H, W, 3] (adds a batch dim, drops alpha, repeats grey)."""
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
        raise InputError(f"expected an IMAGE [B, H, W, 3] (0..1), got "
                         f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    image = image[None] if image.ndim == 3 else image
    channels = image.shape[-1]
    if channels == 4:
        image = image[..., :3]
    elif channels == 1:
        image = image.expand(*image.shape[:-1], 3)
    elif channels != 3:
        raise InputError(f"expected an IMAGE with 3 colour channels last ([B, H, W, 3]), got shape "
                         f"{tuple(image.shape)}")
    return image.float()


def prepare_image(image: torch.Tensor, height: int, width: int, mode: str = "crop") -> torch.Tensor:
    """Any IMAGE [B,H,W,3] 0..1 → [B,height,width,3] 0..1.

    crop: resize the short side, centre crop (default: no borders, no distortion);
    pad: fit inside, black borders; stretch: resize both sides (distorts the aspect)."""
    if mode not in RESIZE_MODES:
        raise InputError(f"unknown resize mode {mode!r}; use one of {RESIZE_MODES}")
    x = as_image_batch(image).permute(0, 3, 1, 2)
    src_h, src_w = x.shape[-2:]
    if mode == "stretch":
        x = _resize(x, height, width)
    elif mode == "crop":
        scale = max(height / src_h, width / src_w)
        x = _resize(x, max(height, math.ceil(src_h * scale)), max(width, math.ceil(src_w * scale)))
        top, left = (x.shape[-2] - height) // 2, (x.shape[-1] - width) // 2
        x = x[..., top:top + height, left:left + width]
    else:
        scale = min(height / src_h, width / src_w)
        new_h, new_w = min(height, max(1, round(src_h * scale))), min(width, max(1, round(src_w * scale)))
        x = _resize(x, new_h, new_w)
        top, left = (height - new_h) // 2, (width - new_w) // 2
        x = F.pad(x, (left, width - new_w - left, top, height - new_h - top))
    return x.clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if x.shape[-2:] == (h, w):
        return x
    # antialias only matters (and is only supported) when shrinking with bilinear filtering
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def encode_image(vae, image: torch.Tensor) -> torch.Tensor:
    """IMAGE [B,H,W,3] 0..1 (already at model size) → scaled latent [B,C,h,w] (same space as the video)."""
    pixels = as_image_batch(image).permute(0, 3, 1, 2) * 2 - 1
    with torch.no_grad():
        return vae.encode(pixels.to(vae.device, vae.dtype)).float()


# --------------------------------------------------------------------------- sampling steps

def _module_device_dtype(module) -> tuple[torch.device, torch.dtype]:
    p = next(module.parameters())
    return p.device, p.dtype


def _match_batch(text: TextCondition, batch: int, what: str) -> TextCondition:
    if text.batch_size == batch:
        return text
    if text.batch_size == 1:
        return text.repeat(batch)
    raise InputError(f"{what} has {text.batch_size} prompts but the batch has {batch} samples; use one prompt "
                     f"or one per sample")


def _text_on(unet, text: TextCondition, null_text: TextCondition, batch: int):
    device, dtype = _module_device_dtype(unet)
    return (_match_batch(text, batch, "text").to(device, dtype),
            _match_batch(null_text, batch, "negative text").to(device, dtype))


def generate_first_frame(unet, schedule, config: ModelConfig, text: TextCondition, null_text: TextCondition,
                         settings, height: int, width: int, seed: int, vae_factor: int, batch_size: int = 1,
                         callback: Callable | None = None, cancel: Callable | None = None) -> torch.Tensor:
    """§3.2 step 1: F without its temporal layers is the text-to-image model → latent [B,C,h,w]."""
    from .sampling import make_noise, sample_image

    h, w = latent_size(height, width, config, vae_factor)
    device, dtype = _module_device_dtype(unet)
    batch = max(batch_size, text.batch_size)
    check_memory(config, batch, 1, h, w, device, dtype)
    text, null_text = _text_on(unet, text, null_text, batch)
    noise = make_noise((batch, config.unet.latent_channels, h, w), seed, device, dtype)
    with torch.no_grad():
        return sample_image(unet, schedule, noise, text, null_text, settings, callback=callback, cancel=cancel).float()


def _sample_conditioned(unet, schedule, config, text, null_text, settings, cond, mask, seed, callback, cancel,
                        known=None, init=None):
    from .sampling import make_noise, sample_video

    device, dtype = _module_device_dtype(unet)
    b, _, t, h, w = cond.shape
    check_memory(config, b, t, h, w, device, dtype)
    text, null_text = _text_on(unet, text, null_text, b)
    noise = make_noise(tuple(cond.shape), seed, device, dtype)
    with torch.no_grad():
        out = sample_video(unet, schedule, noise, cond.to(device, dtype), mask.to(device, dtype), text, null_text,
                           settings, callback=callback, cancel=cancel,
                           known=None if known is None else known.to(device, dtype),
                           init=None if init is None else init.to(device, dtype))
    return out.float()


def generate_video(unet, schedule, config: ModelConfig, text: TextCondition, null_text: TextCondition, settings,
                   image_latent: torch.Tensor | None, num_frames: int, seed: int, height: int | None = None,
                   width: int | None = None, vae_factor: int | None = None,
                   callback: Callable | None = None, cancel: Callable | None = None) -> torch.Tensor:
    """§3.2 step 2: T frames conditioned on the text and the first frame → latent [B,C,T,h,w].

    With `image_latent=None` it is direct text-to-video: the model sees "no known frames", exactly
    the ∅-image branch it was trained with (conditioning dropout)."""
    check_frames(num_frames, config)
    if image_latent is None:
        if None in (height, width, vae_factor):
            raise InputError("without a first frame, give height, width and vae_factor for direct text-to-video")
        h, w = latent_size(height, width, config, vae_factor)
        b = text.batch_size
        cond = torch.zeros(b, config.unet.latent_channels, num_frames, h, w)
        mask = torch.zeros(b, 1, num_frames, h, w)
    else:
        check_latents(image_latent, config, ndim=4)
        cond, mask = cond_lib.first_frame(image_latent.float().cpu(), num_frames, config.image_fill)
    return _sample_conditioned(unet, schedule, config, text, null_text, settings, cond, mask, seed, callback, cancel)


def interpolate(interp_unet, schedule, config: ModelConfig, latents: torch.Tensor, text: TextCondition,
                null_text: TextCondition, settings, seed: int, factor: int | None = None,
                noise_aug: int = DEFAULT_NOISE_AUG, callback: Callable | None = None,
                cancel: Callable | None = None) -> torch.Tensor:
    """Interpolation model I (§3.2): K known frames → (K−1)·k+1 frames.

    The known frames go to slots 0, k, 2k, … (the in-betweens as config.interp_fill says: zeros, or
    their blend) and are noise-augmented to t = noise_aug (§3.3: 100 at inference) exactly as in
    training. With settings.keep_known (the default) the key frames are kept clean through every step
    (conditioning.pin_known_frames), so they come out as given and the in-betweens are denoised beside
    them, with no seam; without it the model redraws them. A "residual" model draws x0 − (keys +
    blend), so the blend is added back at the end. With settings.denoise < 1 the run starts from the
    key frames' linear blend noised part-way and takes only the last steps (not in the paper; on the
    demo 0.15 scored higher PSNR than the full run in 3 steps of 25, demo/MODEL_CARD.md)."""
    check_latents(latents, config)
    factor = config.interp_factor if factor in (None, 0) else factor
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise InputError(f"interpolation factor must be an integer >= 1, got {factor!r}")
    known = latents.shape[2]
    if known < 2:
        raise InputError(f"interpolation needs at least 2 frames, got {known}")
    if not 0 <= noise_aug < schedule.num_train_timesteps:
        raise InputError(f"noise augmentation timestep must be in 0..{schedule.num_train_timesteps - 1}, got {noise_aug}")
    check_frames((known - 1) * factor + 1, config, what=f"output frames ((K−1)·k+1 with K={known}, k={factor})")
    if config.interp_fill == "residual" and settings.image_cfg != 1:
        raise InputError(f"this interpolation model draws corrections to its key frames' blend (interp_fill = "
                         f"'residual') and has no branch without them: set its image guidance to 1 "
                         f"(got {settings.image_cfg})")
    generator = torch.Generator().manual_seed(int(seed) + 1)  # independent of the sampling noise stream
    clean, cond, mask = cond_lib.interpolation_inputs(latents.float().cpu(), factor, config.interp_fill,
                                                      schedule, noise_aug, generator)
    offset = cond_lib.interpolation_offset(clean, config.interp_fill)
    # where denoise < 1 starts: the keys' blend, as the residual the model draws (0 for a residual model)
    init = cond_lib.linear_blend(latents.float().cpu(), factor) - offset if settings.denoise < 1 else None
    out = _sample_conditioned(interp_unet, schedule, config, text, null_text, settings, cond, mask, seed,
                              callback, cancel, known=clean - offset, init=init)
    return out + offset.to(out.device)      # the sample is on the model's device (a GPU), the offset on the CPU


def extend(unet, schedule, config: ModelConfig, latents: torch.Tensor, text: TextCondition, null_text: TextCondition,
           settings, seed: int, context_frames: int = 0, new_frames: int = 0,
           callback: Callable | None = None, cancel: Callable | None = None) -> torch.Tensor:
    """Fig. 7: condition on the last `context_frames` of a video and a new prompt, generate
    `new_frames` more; returns the whole longer latent [B,C,T+new,h,w].

    Defaults split the model's training length: half context, half new frames."""
    check_latents(latents, config)
    context_frames = context_frames or max(1, config.num_frames // 2)
    new_frames = new_frames or max(1, config.num_frames - context_frames)
    if context_frames > latents.shape[2]:
        raise InputError(f"context_frames={context_frames} but the video has only {latents.shape[2]} frames; "
                         f"use at most {latents.shape[2]}")
    window = check_frames(context_frames + new_frames, config, what="frames (context + new)")
    cond, mask = cond_lib.extension(latents[:, :, -context_frames:].float().cpu(), window,
                                    fill=config.image_fill)
    out = _sample_conditioned(unet, schedule, config, text, null_text, settings, cond, mask, seed, callback, cancel)
    return torch.cat([latents.float().cpu(), out[:, :, context_frames:].cpu()], dim=2)


def decode(vae, latents: torch.Tensor, callback: Callable | None = None, cancel: Callable | None = None) -> torch.Tensor:
    """Latents [B,C,T,h,w] (or [B,C,h,w]) → frames float32 [B,T,H,W,3] in 0..1, decoded in chunks of
    the VAE's decode_chunk frames (memory stays flat in T; `callback(done, total)` per chunk)."""
    if not isinstance(latents, torch.Tensor) or latents.ndim not in (4, 5):
        raise InputError("expected latents [B, C, T, h, w] or [B, C, h, w]")
    if latents.ndim == 4:
        latents = latents[:, :, None]
    with torch.no_grad():
        video = vae.decode_video(latents, callback=callback, cancel=cancel)
    return ((video.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).cpu().contiguous()
