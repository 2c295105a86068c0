"""Build the models of each stage (§3.3) from the config and the previous stage's export.

vae:    a fresh AutoencoderKL (toy worlds have no pretrained autoencoder).
t2i:    the spatial U-Net alone (UNetConfig.temporal = False), trained in image mode.
video:  F = spatial weights from `init_from` (a t2i or video export) + temporal layers, identity at
        init, + zero-init conditioning channels; spatial frozen unless `model.train_spatial`.
interp: I = initialised from the video model F; only its temporal parameters are trained (§3.2).
"""
from __future__ import annotations

import dataclasses
import itertools
import warnings

import torch

from ..model.checkpoint import CheckpointError, load_config
from ..model.config import ConfigError, ModelConfig, ScheduleConfig, VAEConfig
from ..model.presets import get_preset
from ..model.unet import EmuUNet, is_temporal_key
from ..model.vae import AutoencoderKL, load_vae
from .config import TrainConfig
from .toy_world import BACKGROUNDS, COLOURS, MOTIONS, SHAPES, SPEEDS, caption


def vae_for_training(cfg: TrainConfig) -> AutoencoderKL:
    """A fresh VAE from the config, or with vae.train_decoder_only the VAE at vae.path with its
    encoder frozen (only the decoder side has requires_grad, so `trainable` picks just that)."""
    v = cfg.vae
    if v.train_decoder_only:
        vae = load_vae(v.path).train().requires_grad_(True)
        for part in (vae.encoder, vae.quant_conv):
            part.requires_grad_(False)
        return vae
    vae_cfg = VAEConfig(latent_channels=v.latent_channels, base_channels=v.base_channels,
                        channel_mult=tuple(v.channel_mult), num_res_blocks=v.num_res_blocks,
                        norm_groups=v.norm_groups, scale_factor=1.0)
    return AutoencoderKL(vae_cfg)


def frozen_vae(cfg: TrainConfig) -> AutoencoderKL:
    return load_vae(cfg.vae.path).eval().requires_grad_(False)


def model_config(cfg: TrainConfig) -> tuple[ModelConfig, dict | None]:
    """(ModelConfig of the model this stage trains, state dict to start from or None)."""
    schedule = ScheduleConfig(zero_terminal_snr=cfg.model.zero_terminal_snr,
                              prediction_type=cfg.model.prediction_type, snr_shift=cfg.model.snr_shift)
    if cfg.init_from:
        base = load_config(cfg.init_from, kinds=("video", "interp"))
        from safetensors.torch import load_file
        state = load_file(cfg.init_from)
    else:
        if cfg.stage == "interp" or (cfg.stage == "video" and not cfg.model.train_spatial):
            # A random frozen spatial U-Net ends in SD's zero-init output conv: nothing could learn.
            fix = "" if cfg.stage == "interp" else " (or set model.train_spatial = true to train everything from scratch)"
            raise ConfigError(f"stage {cfg.stage!r} needs init_from: F starts from a trained text-to-image "
                              f"model (§3.3) and I from F — chain from the t2i / video export{fix}")
        if cfg.stage == "video":
            warnings.warn("video stage without init_from: training the whole U-Net from scratch")
        base, state = get_preset(cfg.model.preset), None
    # Added temporal cross-attention layers start like every temporal layer (§3.3: the block's output
    # projection is zero) and load_initial accepts them as new temporal keys; never drop trained ones.
    temporal_text = cfg.stage != "t2i" and (cfg.model.temporal_text or base.unet.temporal_text)
    unet = dataclasses.replace(base.unet, temporal=cfg.stage != "t2i", temporal_text=temporal_text)
    kind = "interp" if cfg.stage == "interp" else "video"
    frames = 1 if cfg.stage == "t2i" else cfg.data.num_frames
    fill = cfg.diffusion.interp_fill if kind == "interp" else "zero"
    image_fill = cfg.diffusion.image_fill if cfg.stage == "video" else "zero"
    mc = dataclasses.replace(base, unet=unet, schedule=schedule, kind=kind, num_frames=frames, fps=cfg.data.fps,
                             resolution=cfg.data.size, stage=cfg.name,
                             interp_factor=cfg.diffusion.interp_factor, interp_fill=fill, image_fill=image_fill)
    mc.validate()
    if frames > unet.max_frames:
        raise ConfigError(f"data.num_frames = {frames} exceeds the model's max_frames = {unet.max_frames}")
    return mc, state


def build_unet(cfg: TrainConfig, mc: ModelConfig, state: dict | None) -> EmuUNet:
    unet = EmuUNet(mc.unet)
    if state is not None:
        load_initial(unet, state, cfg.init_from)
    if cfg.model.gradient_checkpointing:
        unet.enable_gradient_checkpointing(True)
    if cfg.stage == "t2i":
        unet.requires_grad_(True)
    elif cfg.stage == "video" and cfg.model.train_spatial:
        unet.requires_grad_(True)          # Table 1e ablation: spatial weights fine-tuned too
    else:
        unet.freeze_spatial()              # §3.2: spatial frozen; interp trains temporal params only
    return unet


def load_initial(unet: EmuUNet, state: dict, where: str) -> None:
    """Load a previous stage's weights. Keys the new model adds must all be temporal/conditioning
    (video from t2i); keys the new model lacks must all be temporal (t2i from a video model)."""
    own = unet.state_dict()
    state = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in state]
    bad_missing = [k for k in missing if not is_temporal_key(k)]
    wrong = [k for k in state if state[k].shape != own[k].shape]
    if bad_missing or wrong:
        raise CheckpointError(f"{where}: cannot initialise this stage's U-Net from it (missing spatial "
                              f"{bad_missing[:3]}, wrong shapes {wrong[:3]}); chain stages of the same preset")
    unet.load_state_dict(state, strict=False)


def trainable(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def toy_corpus() -> list[str]:
    """Every caption the toy world writes (toy_world.caption over all attribute combinations) plus
    its loose vocabulary, so the tiny tokenizers hold each caption word whole and a caption fits the
    encoders' short max_length. Built from `caption` itself: a hand-written caption template here
    once missed "standing still", whose letter-by-letter pieces pushed the background word past
    max_length = 16 for every static clip."""
    combos = itertools.product(COLOURS, SHAPES, MOTIONS, SPEEDS, BACKGROUNDS)
    captions = [caption(dict(colour=c, shape=s, motion=m, speed=v, background=b)) for c, s, m, v, b in combos]
    words = [*COLOURS, *BACKGROUNDS, *SHAPES, *MOTIONS, *SPEEDS, "static", "slowly", "quickly"]
    return list(dict.fromkeys(captions)) + [" ".join(words)]


def text_encoders(cfg: TrainConfig, mc: ModelConfig):
    """Frozen text encoders in the model's context order: loaded from `text.paths`, or tiny random
    ones built on the toy vocabulary (`text.build_tiny`), which the stage then exports."""
    from ..model import text as text_lib
    from ..model.tokenizer_build import build_tiny_text_encoders

    if cfg.text.paths:
        encoders, built = text_lib.TextEncoders([text_lib.load_text_encoder(p) for p in cfg.text.paths]), False
    elif cfg.text.build_tiny:
        kinds = [e.kind for e in mc.text_encoders]
        if kinds != ["t5", "clip"]:
            raise ConfigError(f"text.build_tiny builds [t5, clip] encoders (in that order); this model lists "
                              f"{kinds} — give text.paths instead")
        t5, clip = mc.text_encoders
        encoders = build_tiny_text_encoders(toy_corpus(), t5_dim=t5.dim, clip_dim=clip.dim,
                                            max_length=t5.max_length, seed=cfg.seed)
        built = True
    else:
        raise ConfigError("no text encoders: set text.paths to exported encoders or text.build_tiny = true")
    got = tuple(c.dim for c in encoders.configs)
    if got != tuple(mc.unet.context_dims):
        raise ConfigError(f"text encoder dims {got} do not match the U-Net's context_dims "
                          f"{tuple(mc.unet.context_dims)}; list text.paths in the model's order")
    return encoders, built
