"""One class per kind of stage: what is trained, its loss on a batch, its export, its samples.

VAEStage:       `vae` (§3.2 "Latents": frames encoded independently by an image autoencoder).
DiffusionStage: `t2i` (image mode), `video` (F, stage 1 / stage 2 / 16 frames / hq), `interp` (I).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from ..model import pipeline
from ..model.checkpoint import atomic_save, save_model
from ..model.config import to_json
from ..model.sampling import SamplerSettings
from ..model.schedule import NoiseSchedule
from ..model.video_io import write_mp4, write_png_grid
from . import build
from .batches import encode_batch
from .cache import LatentCache, module_hash
from .objectives import STAGE_INPUTS, DiffusionLoss, VAELoss


@contextlib.contextmanager
def ema_weights(params: dict[str, torch.nn.Parameter], ema, use: bool = True):
    """Temporarily put the EMA weights into the model (export / validation), then restore."""
    if ema is None or not use:
        yield
        return
    saved = {k: p.detach().clone() for k, p in params.items()}
    ema.copy_to(params)
    try:
        yield
    finally:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(saved[k])


def _frames_uint8(video: torch.Tensor) -> torch.Tensor:
    """[T, H, W, 3] float 0..1 → uint8."""
    return (video.clamp(0, 1) * 255).round().to(torch.uint8).cpu()


class VAEStage:
    kind = "vae"
    cache = None

    def __init__(self, cfg, device, dataset, config_json: str):
        self.cfg, self.device, self.dataset, self.config_json = cfg, device, dataset, config_json
        self.vae = build.vae_for_training(cfg).to(device)
        self.module = VAELoss(self.vae, cfg.vae.l1_weight, cfg.vae.l2_weight, cfg.vae.kl_weight,
                              cfg.vae.focus_weight)
        self.trainable = {f"vae.{k}": p for k, p in build.trainable(self.vae).items()}

    def loss(self, module, items: list[dict], gen: torch.Generator) -> torch.Tensor:
        video = torch.stack([it["video"] for it in items])                    # [B, 3, T, H, W]
        frames = video.transpose(1, 2).flatten(0, 1).to(self.device)          # frames are images (§3.2)
        f = self.vae.cfg.downsample_factor
        shape = (frames.shape[0], self.vae.cfg.latent_channels, frames.shape[2] // f, frames.shape[3] // f)
        return module(frames, torch.randn(shape, generator=gen).to(self.device))

    @torch.no_grad()
    def latent_scale(self, batches: int = 4) -> float:
        """SD's recipe: scale latents to unit variance (SD's 0.18215 = 1/std of its latents)."""
        zs = []
        for i in range(min(batches, len(self.dataset))):
            video = self.dataset[i]["video"][None].to(self.device)
            moments = self.vae.quant_conv(self.vae.encoder(video.transpose(1, 2).flatten(0, 1)))
            zs.append(moments.chunk(2, dim=1)[0].float().flatten())
        return float(1.0 / torch.cat(zs).std().clamp_min(1e-6))

    def export(self, out_dir: Path, ema) -> dict:
        with ema_weights(self.trainable, ema, self.cfg.ema.export):
            if not self.cfg.vae.train_decoder_only:      # a fine-tuned decoder keeps the file's latent scale
                self.vae.cfg.scale_factor = self.latent_scale()
            path = out_dir / "vae.safetensors"
            meta = {"format": "emu_video", "kind": "vae", "config": to_json(self.vae.cfg),
                    "train_config": self.config_json}
            atomic_save(self.vae.state_dict(), path, meta)
        return {"vae": str(path)}

    @torch.no_grad()
    def validate(self, folder: Path, ema) -> list[str]:
        video = self.dataset[0]["video"][None].to(self.device)                # [1, 3, T, H, W]
        with ema_weights(self.trainable, ema):
            self.vae.eval()
            moments = self.vae.quant_conv(self.vae.encoder(video[0].transpose(0, 1)))
            recon = self.vae.decoder(self.vae.post_quant_conv(moments.chunk(2, dim=1)[0]))
            self.vae.train()
        pair = torch.cat([video[0].transpose(0, 1), recon.float()])          # originals then recon
        path = write_png_grid(_frames_uint8((pair.permute(0, 2, 3, 1) + 1) / 2).numpy(),
                              str(folder / "recon.png"), cols=video.shape[2])
        return [path]


class DiffusionStage:
    def __init__(self, cfg, device, dataset, config_json: str):
        self.cfg, self.device, self.dataset, self.config_json = cfg, device, dataset, config_json
        self.kind = cfg.stage
        self.model_config, state = build.model_config(cfg)
        self.unet = build.build_unet(cfg, self.model_config, state).to(device)
        self.schedule = NoiseSchedule.from_config(self.model_config.schedule)
        self.vae = build.frozen_vae(cfg).to(device)
        if self.vae.cfg.latent_channels != self.model_config.unet.latent_channels:
            raise build.ConfigError(f"the VAE has {self.vae.cfg.latent_channels} latent channels but the U-Net "
                                    f"expects {self.model_config.unet.latent_channels}; use matching presets")
        self.encoders, self.built_text = build.text_encoders(cfg, self.model_config)
        self.encoders.to(device)
        self.null = self.encoders.encode([""]).to(device)
        self.module = DiffusionLoss(self.unet, self.schedule, image_mode=self.kind == "t2i",
                                    focus=cfg.diffusion.focus_weight, snr_gamma=cfg.diffusion.snr_gamma,
                                    focus_dilate=cfg.diffusion.focus_dilate)
        self.trainable = build.trainable(self.unet)
        self.make_inputs = STAGE_INPUTS[self.kind]
        self.cache = self._cache() if cfg.cache.enabled else None

    def _cache(self) -> LatentCache:
        d = self.cfg.data
        folder = self.cfg.cache.dir or str(Path(d.root) / ".emu_cache")
        encoders = module_hash(self.vae) + "-" + module_hash(self.encoders)
        geometry = {"size": d.size, "fps": d.fps, "frames": d.num_frames, "start": d.start}
        return LatentCache(folder, encoders, geometry)

    def loss(self, module, items: list[dict], gen: torch.Generator) -> torch.Tensor:
        latents, text = encode_batch(items, self.vae, self.encoders, self.device, self.dataset, self.cache)
        inputs = self.make_inputs(latents, text, self.null, self.cfg, self.schedule, gen)
        inputs = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        return module(**inputs)

    def export(self, out_dir: Path, ema) -> dict:
        paths = {}
        extra = {"train_config": self.config_json, "vae": self.cfg.vae.path}
        with ema_weights(self.trainable, ema, self.cfg.ema.export):
            paths["model"] = str(save_model(out_dir / "model.safetensors", self.unet, self.model_config, extra))
        if self.built_text:
            from ..model.text import save_text_encoder
            paths["text"] = []
            for enc in self.encoders.encoders:
                save_text_encoder(enc, out_dir / f"text_{enc.cfg.name}.safetensors")
                paths["text"].append(str(out_dir / f"text_{enc.cfg.name}.safetensors"))
        else:
            paths["text"] = list(self.cfg.text.paths)
        paths["vae"] = self.cfg.vae.path
        return paths

    # ------------------------------------------------------------------ validation samples

    def _settings(self) -> SamplerSettings:
        v = self.cfg.validation
        # a residual interpolation model has no branch without its key frames to guide against
        image_cfg = 1.0 if self.model_config.interp_fill == "residual" else v.image_cfg
        return SamplerSettings(steps=v.steps, image_cfg=image_cfg, text_cfg=v.text_cfg)

    @torch.no_grad()
    def validate(self, folder: Path, ema) -> list[str]:
        written = []
        self.unet.eval()
        try:
            with ema_weights(self.trainable, ema):
                for i, prompt in enumerate(self.cfg.validation.prompts):
                    for seed in self.cfg.validation.seeds:
                        latents = self._sample(prompt, seed)
                        frames = _frames_uint8(pipeline.decode(self.vae, latents)[0]).numpy()
                        stem = folder / f"prompt{i:02d}_seed{seed}"
                        if frames.shape[0] > 1:
                            written.append(write_mp4(frames, str(stem) + ".mp4", self.cfg.data.fps))
                        written.append(write_png_grid(frames, str(stem) + ".png", cols=min(8, frames.shape[0])))
        finally:
            self.unet.train()
        (folder / "prompts.json").write_text(json.dumps(list(self.cfg.validation.prompts)))
        return written

    def _sample(self, prompt: str, seed: int) -> torch.Tensor:
        mc, d, settings = self.model_config, self.cfg.data, self._settings()
        text, null = pipeline.encode_prompts(self.encoders, [prompt])
        f = self.vae.cfg.downsample_factor
        if self.kind == "t2i":
            return pipeline.generate_first_frame(self.unet, self.schedule, mc, text, null, settings,
                                                 d.size, d.size, seed, f)
        if self.kind == "video":
            # §3.2 factorization: the first frame from F in image mode, then the video conditioned on it.
            image = pipeline.generate_first_frame(self.unet, self.schedule, mc, text, null, settings,
                                                  d.size, d.size, seed, f)
            return pipeline.generate_video(self.unet, self.schedule, mc, text, null, settings, image,
                                           d.num_frames, seed)
        # interp: known frames from a (centre) data clip, so only the interpolation is judged.
        item = self.dataset[seed % len(self.dataset)]
        z = self.vae.encode_video(item["video"][None].to(self.device)).float()
        k = self.cfg.diffusion.interp_factor
        text, null = pipeline.encode_prompts(self.encoders, [item["caption"]])
        return pipeline.interpolate(self.unet, self.schedule, mc, z[:, :, ::k], text, null, settings, seed, k)


def make_stage(cfg, device, dataset, config_json: str):
    cls = VAEStage if cfg.stage == "vae" else DiffusionStage
    return cls(cfg, device, dataset, config_json)
