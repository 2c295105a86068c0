"""The image autoencoder (§3.2 "Latents": a video is encoded frame by frame with an image
autoencoder and the T latent frames are noised independently).

Module names follow Stable Diffusion's `first_stage_model` (LDM AutoencoderKL) so SD VAE weights
load 1:1. Loading also accepts diffusers' AutoencoderKL folders through a key map written here
(the package never imports diffusers) and our own safetensors files with a JSON config.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open

from .checkpoint import atomic_save, refuse_pickle
from .config import ConfigError, InputError, VAEConfig, from_json, to_json

SD_SCALE_FACTOR = 0.18215   # SD 1.x/2.x 4-channel VAE; other VAEs must state theirs
LDM_PREFIXES = ("first_stage_model.", "vae.")
_VAE_MODULES = ("encoder", "decoder", "quant_conv", "post_quant_conv")


class Cancelled(RuntimeError):
    """Raised when the caller's cancel() asks to stop a long encode/decode."""


# --------------------------------------------------------------------------- building blocks

def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """LDM VAE ResnetBlock: no time embedding (the autoencoder is unconditional)."""

    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels (mid block only); q/k/v/proj_out are 1x1 convs."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = _norm(ch, groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(ch, ch, 1) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).reshape(b, 1, c, h * w).transpose(-1, -2) for m in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(y.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))   # LDM's asymmetric pad keeps SD weights exact


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch, groups)
        self.attn_1 = AttnBlock(ch, groups)
        self.block_2 = ResnetBlock(ch, ch, groups)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        g, widths = cfg.norm_groups, [cfg.base_channels * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        ch = cfg.base_channels
        for i, out in enumerate(widths):
            level = nn.Module()
            level.block = nn.ModuleList([ResnetBlock(ch if j == 0 else out, out, g) for j in range(cfg.num_res_blocks)])
            if i < len(widths) - 1:
                level.downsample = Downsample(out)
            self.down.append(level)
            ch = out
        self.mid = MidBlock(ch, g)
        self.norm_out = _norm(ch, g)
        self.conv_out = nn.Conv2d(ch, 2 * cfg.latent_channels, 3, padding=1)   # mean and logvar

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        g, widths = cfg.norm_groups, [cfg.base_channels * m for m in cfg.channel_mult]
        ch = widths[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch, 3, padding=1)
        self.mid = MidBlock(ch, g)
        # LDM stores up.{i} with i=0 the full-resolution level but builds them deepest first.
        levels = [None] * len(widths)
        for i in reversed(range(len(widths))):
            level = nn.Module()
            level.block = nn.ModuleList([ResnetBlock(ch if j == 0 else widths[i], widths[i], g)
                                         for j in range(cfg.num_res_blocks + 1)])
            if i > 0:
                level.upsample = Upsample(widths[i])
            levels[i] = level
            ch = widths[i]
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(ch, g)
        self.conv_out = nn.Conv2d(ch, cfg.in_channels, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# --------------------------------------------------------------------------- the autoencoder

class AutoencoderKL(nn.Module):
    """SD-layout KL autoencoder working in the scaled latent space `(mean - shift) * scale`.

    decode() returns pixels in roughly -1..1 and does NOT clamp: callers that make images clamp,
    and training losses / round-trip tests see the raw decoder output.
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        _validate(cfg)
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)

    @property
    def dtype(self) -> torch.dtype:
        return self.quant_conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.quant_conv.weight.device

    # ---- images [B, 3, H, W]
    def encode(self, frames: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels in -1..1 -> scaled latents. The posterior mode by default; `sample=True` draws
        mean + std * noise with noise from `generator` on the CPU (reproducible across devices)."""
        self._check_pixels(frames)
        moments = self.quant_conv(self.encoder(frames.to(self.device, self.dtype)))
        mean, logvar = moments.chunk(2, dim=1)
        if sample:
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32).to(mean)
            mean = mean + std * noise
        return (mean - self.cfg.shift_factor) * self.cfg.scale_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [B, C, h, w] -> pixels [B, 3, 8h, 8w] (unclamped)."""
        self._check_latents(latents, ndim=4)
        z = latents.to(self.device, self.dtype) / self.cfg.scale_factor + self.cfg.shift_factor
        return self.decoder(self.post_quant_conv(z))

    # ---- videos [B, C, T, H, W]: frames are independent (§3.2), so chunk over B*T to keep memory flat
    def encode_video(self, video: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None,
                     callback=None, cancel=None) -> torch.Tensor:
        if video.ndim != 5:
            raise InputError(f"encode_video expects [B, 3, T, H, W], got shape {tuple(video.shape)}; "
                             f"use encode() for single images")
        self._check_pixels(video[:, :, 0])
        return self._framewise(video, lambda x: self.encode(x, sample, generator), callback, cancel)

    def decode_video(self, latents: torch.Tensor, callback=None, cancel=None) -> torch.Tensor:
        """Latents [B, C, T, h, w] -> video [B, 3, T, H, W], at most cfg.decode_chunk frames per
        decoder call. `callback(done_frames, total)` after each chunk; `cancel()` is called before
        each chunk and may raise itself or return True to raise `Cancelled`."""
        self._check_latents(latents, ndim=5)
        return self._framewise(latents, self.decode, callback, cancel)

    def _framewise(self, x, fn, callback, cancel):
        b, _, t = x.shape[:3]
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, *x.shape[1:2], *x.shape[3:])
        total, y = b * t, None
        for start in range(0, total, self.cfg.decode_chunk):
            if cancel is not None and cancel():
                raise Cancelled(f"stopped after {start} of {total} frames")
            chunk = fn(frames[start:start + self.cfg.decode_chunk])
            if y is None:  # preallocate once: no list of chunks + torch.cat doubling the output's memory
                y = chunk.new_empty((total, *chunk.shape[1:]))
            y[start:start + chunk.shape[0]] = chunk
            del chunk
            if callback is not None:
                callback(min(start + self.cfg.decode_chunk, total), total)
        return y.reshape(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)

    # ---- input checks: say what is wrong before a conv does
    def _check_pixels(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise InputError(f"expected images [B, {self.cfg.in_channels}, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.cfg.in_channels:
            raise InputError(f"expected {self.cfg.in_channels} colour channels in dim 1, got {x.shape[1]} "
                             f"(shape {tuple(x.shape)}); images are channels-first in -1..1")
        f = self.cfg.downsample_factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise InputError(f"height and width must be multiples of {f}, got {x.shape[-2]}x{x.shape[-1]}; "
                             f"resize or crop the frames first")

    def _check_latents(self, z: torch.Tensor, ndim: int) -> None:
        layout = "[B, C, h, w]" if ndim == 4 else "[B, C, T, h, w]"
        if z.ndim != ndim:
            raise InputError(f"expected latents {layout}, got shape {tuple(z.shape)}")
        if z.shape[1] != self.cfg.latent_channels:
            raise InputError(f"this VAE has {self.cfg.latent_channels} latent channels but the latents have "
                             f"{z.shape[1]} (shape {tuple(z.shape)}); use the VAE the model was trained with")


def _validate(cfg: VAEConfig) -> None:
    for mult in cfg.channel_mult:
        if (cfg.base_channels * mult) % cfg.norm_groups:
            raise ConfigError(f"VAE width base_channels*{mult}={cfg.base_channels * mult} is not divisible by "
                              f"norm_groups={cfg.norm_groups}; pick norm_groups dividing every width")
    if cfg.decode_chunk < 1:
        raise ConfigError(f"decode_chunk must be >= 1, got {cfg.decode_chunk}")
    if cfg.scale_factor == 0:
        raise ConfigError("scale_factor must be non-zero")


# --------------------------------------------------------------------------- save / load

def save_vae(vae: AutoencoderKL, path: str | os.PathLike) -> None:
    """Write our format: LDM-named weights + {"format", "kind", "config"} metadata, atomically."""
    meta = {"format": "emu_video", "kind": "vae", "config": to_json(vae.cfg)}
    atomic_save(vae.state_dict(), path, meta)


def load_vae(path: str | os.PathLike, scale_factor: float | None = None, shift_factor: float | None = None,
             norm_groups: int | None = None) -> AutoencoderKL:
    """Load (a) our safetensors file, (b) an SD VAE / whole SD checkpoint (.safetensors) or (c) a
    diffusers AutoencoderKL folder. The overrides replace what the file says (or what is guessed:
    SD files do not store their scale, shift or GroupNorm groups)."""
    path = Path(path)
    if path.is_dir():
        cfg, sd = _read_diffusers_folder(path)
    else:
        cfg, sd = _read_single_file(path, scale_factor is not None)
    overrides = {"scale_factor": scale_factor, "shift_factor": shift_factor, "norm_groups": norm_groups}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    vae = AutoencoderKL(cfg)
    _load_state(vae, sd, str(path))
    return vae.eval().requires_grad_(False)


def _read_single_file(path: Path, scale_given: bool) -> tuple[VAEConfig, dict]:
    if not path.exists():
        raise InputError(f"VAE file not found: {path}")
    refuse_pickle(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
            if meta.get("format") == "emu_video":
                if meta.get("kind") != "vae":
                    raise InputError(f"{path.name} is an Emu Video '{meta.get('kind')}' file, not a VAE")
                return from_json(VAEConfig, meta["config"]), {k: f.get_tensor(k) for k in keys}
            prefix = _ldm_prefix(keys, path)
            # Only VAE modules: a whole SD checkpoint also holds the UNet and text encoder.
            names = [k[len(prefix):] for k in keys if k.startswith(prefix)]
            sd = {n: f.get_tensor(prefix + n) for n in names if n.split(".")[0] in _VAE_MODULES}
    except (InputError, ConfigError):
        raise
    except Exception as e:   # safetensors raises its own SafetensorError for a non-safetensors file
        raise InputError(f"{path.name} is not a readable .safetensors file ({e})") from None
    if "decoder.up_blocks.0.resnets.0.conv1.weight" in sd:
        raise InputError(f"{path.name} has diffusers key names; put it in a folder with its config.json "
                         f"(as diffusion_pytorch_model.safetensors) and load the folder")
    cfg = _infer_ldm_config(sd, path)
    if not scale_given and cfg.latent_channels != 4:
        warnings.warn(f"{path.name}: {cfg.latent_channels}-channel VAE without a stored scale factor; using "
                      f"{cfg.scale_factor}. Pass scale_factor/shift_factor if this VAE has its own.")
    return cfg, sd


def _ldm_prefix(keys: list[str], path: Path) -> str:
    for prefix in LDM_PREFIXES + ("",):
        if f"{prefix}decoder.conv_in.weight" in keys:
            return prefix
    raise InputError(f"{path.name}: no VAE weights found (looked for 'decoder.conv_in.weight', bare or under "
                     f"{', '.join(LDM_PREFIXES)}); is this a UNet or text-encoder file?")


def _infer_ldm_config(sd: dict, path: Path) -> VAEConfig:
    """SD files store no config: read widths and depths from the tensor shapes."""
    try:
        base = sd["encoder.conv_in.weight"].shape[0]
        levels = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
        blocks = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)))
        mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // base for i in range(levels))
        latent = sd["decoder.conv_in.weight"].shape[1]
        in_ch = sd["encoder.conv_in.weight"].shape[1]
    except (KeyError, ValueError) as e:
        raise InputError(f"{path.name}: VAE weights are incomplete or not in SD's layout (missing {e})") from None
    scale = SD_SCALE_FACTOR if latent == 4 else VAEConfig.scale_factor
    return VAEConfig(in_channels=in_ch, latent_channels=latent, base_channels=base, channel_mult=mult,
                     num_res_blocks=blocks, scale_factor=scale)


def _load_state(vae: AutoencoderKL, sd: dict, where: str) -> None:
    sd = dict(sd)
    # VAEs without quant convs (e.g. FLUX's) behave as if they were identity 1x1 convs.
    for name in ("quant_conv", "post_quant_conv"):
        if f"{name}.weight" not in sd:
            conv = getattr(vae, name)
            sd[f"{name}.weight"] = torch.eye(conv.in_channels).reshape_as(conv.weight)
            sd[f"{name}.bias"] = torch.zeros_like(conv.bias)
    # Old LDM files store attention q/k/v as linear [C, C]; ours are 1x1 convs [C, C, 1, 1].
    own = vae.state_dict()
    for k, v in sd.items():
        if k in own and v.ndim == 2 and own[k].ndim == 4:
            sd[k] = v[:, :, None, None]
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        raise InputError(f"{where}: weights do not match the VAE layout; missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}")
    bad = [k for k in own if own[k].shape != sd[k].shape]
    if bad:
        raise InputError(f"{where}: tensor shapes do not match the inferred config at {bad[:5]}; "
                         f"the file may be a different autoencoder architecture")
    vae.load_state_dict(sd)


# --------------------------------------------------------------------------- diffusers folders

def _read_diffusers_folder(folder: Path) -> tuple[VAEConfig, dict]:
    cfg_path = folder / "config.json"
    weights = [folder / n for n in ("diffusion_pytorch_model.safetensors", "model.safetensors")]
    weights = [w for w in weights if w.exists()]
    if not cfg_path.exists() or not weights:
        pickles = list(folder.glob("*.bin"))
        hint = " (only pickle .bin weights found; convert them to safetensors)" if pickles else ""
        raise InputError(f"{folder}: a diffusers VAE folder needs config.json and "
                         f"diffusion_pytorch_model.safetensors{hint}")
    dc = json.loads(cfg_path.read_text())
    widths = list(dc.get("block_out_channels", [128, 256, 512, 512]))
    base = widths[0]
    if any(w % base for w in widths):
        raise InputError(f"{folder}: block_out_channels {widths} are not multiples of the first width")
    cfg = VAEConfig(in_channels=dc.get("in_channels", 3), latent_channels=dc.get("latent_channels", 4),
                    base_channels=base, channel_mult=tuple(w // base for w in widths),
                    num_res_blocks=dc.get("layers_per_block", 2), norm_groups=dc.get("norm_num_groups", 32),
                    scale_factor=dc.get("scaling_factor") or SD_SCALE_FACTOR,
                    shift_factor=dc.get("shift_factor") or 0.0)
    with safe_open(str(weights[0]), "pt") as f:
        sd = {diffusers_to_ldm_key(k, len(widths)): f.get_tensor(k) for k in f.keys()}
    return cfg, sd


_ATTN_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
               "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}


def diffusers_to_ldm_key(key: str, levels: int) -> str:
    """Rename one diffusers AutoencoderKL key to SD's LDM name (decoder up blocks count in reverse)."""
    k = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    k = re.sub(r"mid_block\.resnets\.(\d)", lambda m: f"mid.block_{int(m.group(1)) + 1}", k)
    m = re.match(r"(.*)mid_block\.attentions\.0\.(.+)\.(weight|bias)$", k)
    if m:
        return f"{m.group(1)}mid.attn_1.{_ATTN_NAMES.get(m.group(2), m.group(2))}.{m.group(3)}"
    k = re.sub(r"down_blocks\.(\d+)\.resnets", r"down.\1.block", k)
    k = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0", r"down.\1.downsample", k)
    k = re.sub(r"up_blocks\.(\d+)\.resnets", lambda m: f"up.{levels - 1 - int(m.group(1))}.block", k)
    k = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0", lambda m: f"up.{levels - 1 - int(m.group(1))}.upsample", k)
    return k
