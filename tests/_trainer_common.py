"""Shared helpers for the trainer tests: a tiny toy world and the frozen assets the diffusion
stages need (a VAE and text encoders), all small enough for a few CPU seconds."""
from __future__ import annotations

from pathlib import Path

import torch

from emu_video.model.config import VAEConfig
from emu_video.model.vae import AutoencoderKL, save_vae
from emu_video.trainer.config import load_config
from emu_video.trainer.toy_world import generate


def toy_data(root: Path, clips: int = 4, frames: int = 8, fps: int = 8) -> Path:
    if not (root / "manifest.jsonl").is_file():
        generate(str(root), clips, size=16, num_frames=frames, fps=fps, seed=0)
    return root


def tiny_vae(path: Path) -> Path:
    if not path.is_file():
        torch.manual_seed(0)
        vae = AutoencoderKL(VAEConfig(latent_channels=4, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                      norm_groups=4, scale_factor=1.0))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_vae(vae, path)
    return path


def text_assets(folder: Path) -> list[str]:
    """Tiny T5 + CLIP exported with the trainer's own toy vocabulary (as the t2i stage does)."""
    from emu_video.model.text import save_text_encoder
    from emu_video.model.tokenizer_build import build_tiny_text_encoders
    from emu_video.trainer.build import toy_corpus

    paths = [folder / "text_t5.safetensors", folder / "text_clip.safetensors"]
    if not all(p.is_file() for p in paths):
        folder.mkdir(parents=True, exist_ok=True)
        encoders = build_tiny_text_encoders(toy_corpus(), t5_dim=32, clip_dim=32, max_length=16, seed=0)
        for enc, p in zip(encoders.encoders, paths):
            save_text_encoder(enc, p)
    return [str(p) for p in paths]


def overrides(tmp: Path, stage: str, data: Path, **extra) -> list[str]:
    sets = {"stage": stage, "name": f"test_{stage}", "out_dir": str(tmp / stage), "data.root": str(data),
            "data.size": 16, "data.num_frames": 4, "data.fps": 8, "data.batch_size": 1, "loop.max_steps": 4,
            "loop.checkpoint_every": 0, "loop.progress": False, "loop.tensorboard": False,
            "optim.lr": 1e-3, "ema.decay": 0.9, "validation.steps": 2,
            "vae.base_channels": 8, "vae.channel_mult": [1, 2], "vae.norm_groups": 4}
    sets.update(extra)
    return [f"{k}={_toml(v)}" for k, v in sets.items()]


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)


def config(tmp: Path, stage: str, data: Path, **extra):
    return load_config(None, overrides(tmp, stage, data, **extra))


def t2i_export(path: Path) -> Path:
    """A stand-in for a trained text-to-image model: the tiny preset's spatial U-Net with random
    (non-zero) weights everywhere, including SD's zero-initialised output conv."""
    import dataclasses

    from emu_video.model.checkpoint import save_model
    from emu_video.model.presets import tiny_config
    from emu_video.model.unet import EmuUNet

    if not path.is_file():
        mc = tiny_config()
        mc = dataclasses.replace(mc, unet=dataclasses.replace(mc.unet, temporal=False), num_frames=1,
                                 resolution=16, stage="t2i")
        torch.manual_seed(1)
        unet = EmuUNet(mc.unet)
        with torch.no_grad():
            unet.out[2].weight.normal_(0, 0.05)
        save_model(path, unet, mc)
    return path


class FixedAnswer(torch.nn.Module):
    """A 'U-Net' that ignores its input and returns a fixed prediction (for loss arithmetic)."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out

    def forward(self, x, t, context, masks, image_mode):
        return self.out
