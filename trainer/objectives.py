"""The loss of each stage, as an nn.Module so DDP/FSDP wrap exactly what is trained.

All randomness (noise, timesteps, dropout, frame choice) is drawn OUTSIDE the modules from a CPU
generator seeded by (seed, step, micro-step, rank) — see loop.step_generator — so a resumed run
draws exactly what a straight run draws, on any device.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model import conditioning as cond_lib
from ..model.conditioning import TextCondition
from ..model.unet import batch_to_frames, frames_to_batch


def border_median(x: torch.Tensor) -> torch.Tensor:
    """Per-image median of the outermost ring of pixels [N,C,H,W] → [N,C,1,1]: the background of a
    frame whose object stays inside it (the toy world's, and most animated pictures')."""
    border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], dim=2)
    return border.median(dim=2).values[:, :, None, None]


def focus_weights(frames: torch.Tensor, focus: float) -> torch.Tensor:
    """Per-pixel loss weights [B,1,H,W] = 1 + focus * (distance of the pixel's colour from the frame's
    border median, 0..1). Small objects on a plain background are a few % of the pixels, so a plain
    per-pixel loss is met by drawing them as background-coloured blobs; weighting by contrast with
    the dominant (border) colour gives the minority pixels a share of the gradient that matches
    how much they matter to a viewer. Frames in -1..1; the largest RGB distance is 2*sqrt(3)."""
    return 1 + focus * (frames - border_median(frames)).norm(dim=1, keepdim=True) / (2 * 3 ** 0.5)


def latent_focus_weights(latents: torch.Tensor, focus: float, dilate: int = 0) -> torch.Tensor:
    """focus_weights for the diffusion loss, read off the clean latents themselves (so cached
    latents need no pixels): [B,C,h,w] or [B,C,T,h,w] → broadcastable weights with channel dim 1.

    A latent vector's distance from its frame's border median is scaled by the frame's largest such
    distance (latents have no fixed range), so the object and its edges get up to 1 + focus × the
    weight of the flat background — the same minority-pixel argument as focus_weights, applied to
    the denoiser, where a plain MSE is met by a background-coloured blob of the right colour.

    dilate > 0 spreads each pixel's distance over its (2·dilate+1)² neighbourhood (a max filter), so
    the weight is flat across the object's edge. The weights come from the clean target, so where
    they differ across an edge the weighted loss's optimum is E[w·x0 | x_t] / E[w | x_t], not E[x0 | x_t]:
    an uncertain edge pixel is pulled toward the object, which inflates objects. A plateau that covers
    the edge's uncertainty removes that pull there (on the demo it did not keep squares square either:
    demo/MODEL_CARD.md)."""
    video = latents.dim() == 5
    x = frames_to_batch(latents) if video else latents                      # [N,C,h,w] per frame
    distance = (x - border_median(x)).norm(dim=1, keepdim=True)
    if dilate:
        distance = F.max_pool2d(distance, 2 * dilate + 1, stride=1, padding=dilate)
    scale = distance.flatten(1).amax(dim=1).clamp_min(1e-6)[:, None, None, None]
    w = 1 + focus * distance / scale
    return batch_to_frames(w, latents.shape[0]) if video else w


class VAELoss(nn.Module):
    """Reconstruction (L1 + L2, optionally contrast-weighted: focus_weights) + a small KL to N(0, I)
    on frames as independent images (§3.2)."""

    def __init__(self, vae, l1: float, l2: float, kl: float, focus: float = 0.0):
        super().__init__()
        self.vae, self.l1, self.l2, self.kl, self.focus = vae, l1, l2, kl, focus

    def forward(self, frames: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        moments = self.vae.quant_conv(self.vae.encoder(frames))
        mean, logvar = moments.float().chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        z = mean + torch.exp(0.5 * logvar) * noise
        recon = self.vae.decoder(self.vae.post_quant_conv(z.to(frames.dtype))).float()
        x = frames.float()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        err = recon - x
        per_pixel = self.l1 * err.abs() + self.l2 * err.pow(2)
        if self.focus:
            w = focus_weights(x, self.focus)
            return (per_pixel * w).mean() / w.mean() + self.kl * kl
        return per_pixel.mean() + self.kl * kl


def min_snr_weights(schedule, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ per-sample loss weights [B] (Hang et al. 2023, "Efficient Diffusion Training via
    Min-SNR Weighting Strategy"): every timestep's loss counts as an x0-MSE weighted min(SNR_t, γ).

    The plain v-MSE is (SNR+1)·x0-MSE, so the nearly clean steps, which are easy and pull the shared
    weights their own way, dominate it; capping at γ moves the gradient to the mid-noise steps where
    layout and shape are decided. Converted to the network's target: v → min(SNR, γ)/(SNR+1),
    ε → min(SNR, γ)/SNR (the conversions diffusers' train_text_to_image uses). On a zero-terminal-SNR
    schedule the last step (SNR 0) gets weight 0; its neighbours still train the near-pure-noise regime."""
    ab = schedule.alpha_bar(t, torch.empty(t.shape[0], device=t.device)).float()
    snr = ab / (1 - ab).clamp_min(1e-12)
    capped = snr.clamp(max=gamma)
    return capped / (snr + 1) if schedule.prediction_type == "v" else capped / snr


class DiffusionLoss(nn.Module):
    """MSE to the schedule's target (v on the zero-terminal-SNR schedule, §3.3) for the U-Net.

    focus > 0 weights latent pixels by contrast with the frame's background (latent_focus_weights,
    flat across edges with focus_dilate > 0);
    snr_gamma > 0 weights timesteps (min_snr_weights). Both off = the paper's plain MSE.
    image mode (t2i): x0 [B, C, h, w], no known frames.
    video mode: x0 [B, C, T, h, w] with cond/mask [known-frame latents | mask] (Fig. 3).
    """

    def __init__(self, unet, schedule, image_mode: bool, focus: float = 0.0, snr_gamma: float = 0.0,
                 focus_dilate: int = 0):
        super().__init__()
        self.unet, self.schedule, self.image_mode = unet, schedule, image_mode
        self.focus, self.snr_gamma, self.focus_dilate = focus, snr_gamma, focus_dilate

    def forward(self, x0, noise, t, context, masks, cond=None, mask=None) -> torch.Tensor:
        x_t = self.schedule.add_noise(x0, noise, t)
        x_in = x_t if self.image_mode else cond_lib.model_input(x_t, cond, mask)
        out = self.unet(x_in, t, context, masks, image_mode=self.image_mode)
        target = self.schedule.training_target(x0, noise, t)
        if not self.focus and not self.snr_gamma:
            return F.mse_loss(out.float(), target.float())
        err = (out.float() - target.float()).pow(2)
        if self.focus:
            w = latent_focus_weights(x0.float(), self.focus, self.focus_dilate)
            err = err * w / w.mean()
        per_sample = err.flatten(1).mean(dim=1)            # equal sizes: their mean is the batch mean
        if self.snr_gamma:
            per_sample = per_sample * min_snr_weights(self.schedule, t, self.snr_gamma).to(per_sample.device)
        return per_sample.mean()


# --------------------------------------------------------------------------- per-stage inputs

def timesteps(batch: int, schedule, gen: torch.Generator, sampling: str = "uniform") -> torch.Tensor:
    """Training timesteps [B]: uniform over 0..N-1 (DDPM, the paper), or logit-normal: t/N =
    sigmoid(u), u ~ N(0, 1) (Esser et al. 2024 §3.1, SD3's best), which spends more steps at mid
    noise and fewer at the nearly clean and nearly pure-noise ends (every step keeps some chance)."""
    n = schedule.num_train_timesteps
    if sampling == "uniform":
        return torch.randint(0, n, (batch,), generator=gen)
    if sampling == "logit_normal":
        u = torch.randn(batch, generator=gen, dtype=torch.float64)
        return (torch.sigmoid(u) * n).long().clamp(0, n - 1)
    raise ValueError(f"unknown timestep sampling {sampling!r}; use 'uniform' or 'logit_normal'")


def text_dropout(text: TextCondition, null: TextCondition, drop: torch.Tensor) -> TextCondition:
    return cond_lib.drop_text(text, null, drop) if bool(drop.any()) else text


def t2i_inputs(latents: torch.Tensor, text: TextCondition, null: TextCondition, cfg, schedule,
               gen: torch.Generator) -> dict:
    """One frame per clip as an image (§3.2: F without temporal layers is the T2I model); the text is
    dropped with the total text-drop probability so the T2I model supports CFG."""
    B, C, T = latents.shape[:3]
    frame = torch.randint(0, T, (B,), generator=gen)
    x0 = latents[torch.arange(B), :, frame]
    p = cfg.diffusion.p_drop_text + cfg.diffusion.p_drop_both
    drop = torch.rand(B, generator=gen) < p
    text = text_dropout(text, null, drop)
    noise = torch.randn(x0.shape, generator=gen)
    t = timesteps(B, schedule, gen, cfg.diffusion.timestep_sampling)
    return dict(x0=x0, noise=noise, t=t, context=text.context, masks=text.masks)


def with_dropout_and_noise(latents, cond, mask, text, null, cfg, schedule, gen) -> dict:
    """IP2P-style disjoint text / image / both condition dropout (5% each by default) for dual
    guidance, then the diffusion noise and timesteps; the draw order is fixed for exact resume."""
    B = latents.shape[0]
    d = cfg.diffusion
    drop_t, drop_i = cond_lib.condition_dropout(B, d.p_drop_text, d.p_drop_image, d.p_drop_both, generator=gen)
    cond, mask = cond_lib.drop_image(cond, mask, drop_i)
    text = text_dropout(text, null, drop_t)
    noise = torch.randn(latents.shape, generator=gen)
    t = timesteps(B, schedule, gen, d.timestep_sampling)
    return dict(x0=latents, noise=noise, t=t, context=text.context, masks=text.masks,
                cond=cond, mask=mask)


def video_inputs(latents, text, null, cfg, schedule, gen) -> dict:
    """Image-to-video: frame 0 of the clip is the known frame (§3.2; the other slots as
    diffusion.image_fill says), with IP2P-style disjoint text / image / both dropout (5% each by
    default) for dual guidance."""
    B, _, T = latents.shape[:3]
    cond, mask = cond_lib.first_frame(latents[:, :, 0], T, cfg.diffusion.image_fill)
    return with_dropout_and_noise(latents, cond, mask, text, null, cfg, schedule, gen)


def interp_inputs(latents, text, null, cfg, schedule, gen) -> dict:
    """Interpolation (§3.3): every k-th frame known (zero-interleaved, or with diffusion.interp_fill =
    "blend" the in-betweens blended), noise-augmented to τ ~ U{0..cond_noise_max} so generated key
    frames at inference look like training inputs."""
    B, _, T = latents.shape[:3]
    k = cfg.diffusion.interp_factor
    tau = cond_lib.sample_aug_timesteps(B, cfg.diffusion.cond_noise_max, generator=gen)
    clean, cond, mask = cond_lib.interpolation_inputs(latents[:, :, ::k], k, cfg.diffusion.interp_fill,
                                                      schedule, tau, generator=gen)
    x0 = latents - cond_lib.interpolation_offset(clean, cfg.diffusion.interp_fill)
    return with_dropout_and_noise(x0, cond, mask, text, null, cfg, schedule, gen)


STAGE_INPUTS = {"t2i": t2i_inputs, "video": video_inputs, "interp": interp_inputs}
