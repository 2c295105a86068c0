"""Named model configurations: a tiny one for CPU tests and a paper-sized one (§3.3)."""
from __future__ import annotations

import torch

from .config import ConfigError, ModelConfig, TextEncoderConfig, UNetConfig


def tiny_config() -> ModelConfig:
    """A ~1.4M-parameter model for CPU tests (8-16 px latents, 2-8 frames: tens of ms per forward)."""
    encoders = (TextEncoderConfig(name="t5", kind="t5", dim=32, max_length=16),
                TextEncoderConfig(name="clip", kind="clip", dim=32, max_length=16))
    unet = UNetConfig(latent_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                      attention_levels=(1,), num_heads=2, norm_groups=8,
                      context_dims=tuple(e.dim for e in encoders), temporal_head_dim=16, max_frames=32)
    return ModelConfig(unet=unet, text_encoders=encoders, num_frames=8, resolution=128)


def demo_config() -> ModelConfig:
    """The shipped toy-world demo model (~5M parameters): 64 px frames → 16×16×4 VAE latents.

    Wider than `tiny` and with attention at the two lower-resolution levels (16→8→4 latent px), where
    cross-attention is cheap on CPU and sees the whole object; 64-d text encoders. Sized so that F and
    I in fp16 plus VAE and encoders ship in under 30 MB and the chain trains in ~1 CPU-hour.
    """
    encoders = (TextEncoderConfig(name="t5", kind="t5", dim=64, max_length=16),
                TextEncoderConfig(name="clip", kind="clip", dim=64, max_length=16))
    unet = UNetConfig(latent_channels=4, model_channels=48, channel_mult=(1, 2, 2), num_res_blocks=1,
                      attention_levels=(1, 2), num_heads=4, norm_groups=16,
                      context_dims=tuple(e.dim for e in encoders), temporal_head_dim=24, max_frames=32)
    return ModelConfig(unet=unet, text_encoders=encoders, num_frames=8, resolution=64)


def paper_config() -> ModelConfig:
    """Emu-like F (§3.3): 8-channel latent, T5-XL (2048) and CLIP-L (768) cross-attention.

    Emu's exact U-Net is not public; this SDXL-like layout (three levels, attention on the two
    lower ones, 8 transformer blocks each) lands near the paper's 2.7B frozen spatial and 1.7B
    trainable temporal parameters (see `count_parameters`).
    """
    encoders = (TextEncoderConfig(name="t5", kind="t5", dim=2048, max_length=77),
                TextEncoderConfig(name="clip", kind="clip", dim=768, max_length=77))
    unet = UNetConfig(latent_channels=8, model_channels=320, channel_mult=(1, 2, 4), num_res_blocks=2,
                      attention_levels=(1, 2), head_dim=64, transformer_depth=8, norm_groups=32,
                      context_dims=tuple(e.dim for e in encoders), use_linear_proj=True,
                      temporal=True, temporal_kernel=3, temporal_head_dim=64, max_frames=128)
    return ModelConfig(unet=unet, text_encoders=encoders, num_frames=16, fps=4, resolution=512)


def count_parameters(cfg: ModelConfig | UNetConfig) -> dict[str, int]:
    """Spatial/temporal parameter counts of the U-Net, built on the meta device (allocates nothing)."""
    from .unet import EmuUNet  # local import: presets stay importable without building models

    unet_cfg = cfg.unet if isinstance(cfg, ModelConfig) else cfg
    with torch.device("meta"):
        model = EmuUNet(unet_cfg)
    return {"spatial": sum(p.numel() for p in model.spatial_parameters()),
            "temporal": sum(p.numel() for p in model.temporal_parameters())}


PRESETS = {"tiny": tiny_config, "demo": demo_config, "paper": paper_config}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]()
    cfg.validate()
    return cfg
