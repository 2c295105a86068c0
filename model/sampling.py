"""DDIM sampling with dual (image + text) guidance for the factorized pipeline (§3.2, §3.3).

Step 1 (`sample_image`): the spatial model alone (image mode) makes the first frame with plain
text CFG. Step 2 (`sample_video`): the video model, conditioned on known frames through the
masked-frame input, makes the clip with dual guidance. Both run DDIM over trailing timesteps of a
zero-terminal-SNR schedule (§3.3 uses 250 steps; 50 is a cheaper default).

The denoiser is any callable with the EmuUNet signature
    denoiser(x_in [B, Cin, T, h, w], timesteps [B], context, context_masks, image_mode) -> [B, C, T, h, w]
with Cin = 2C+1 in video mode and C in image mode; it predicts v (or ε, per the schedule).
All guidance branches of a step run as ONE batched forward, branch-major along the batch.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from .conditioning import TextCondition, drop_image, model_input, pin_known_frames
from .config import InputError
from .guidance import BRANCHES, combine_branches, guidance_branches, renoise_branch, rescale_cfg, text_scale_at
from .schedule import NoiseSchedule


class SamplingCancelled(Exception):
    """Raised when the caller's `cancel()` returned True; carries the step it stopped at."""

    def __init__(self, step: int, total: int):
        super().__init__(f"sampling cancelled at step {step + 1}/{total}")
        self.step, self.total = step, total


class SamplingDiverged(FloatingPointError):
    """NaN or inf appeared in the latents."""


@dataclass
class SamplerSettings:
    steps: int = 50
    spacing: str = "trailing"     # zero-SNR models must start at t = T-1 (Lin et al. §3.3)
    eta: float = 0.0              # 0 = deterministic DDIM
    image_cfg: float = 1.5        # s_I (IP2P default); ignored in image mode
    text_cfg: float = 7.5         # s_T (IP2P default)
    rescale: float = 0.0          # CFG rescale φ on v (Lin et al. §3.4 suggest 0.7); 0 = off
    keep_known: bool = True       # replacement method: known frames (a user's picture) come out exactly as given
    late_text_cfg: float | None = None   # video only: s_T on the late steps (t < late_below·T); None = text_cfg
    late_below: float = 0.5       # ... where "late" starts, as a fraction of the training timesteps T
    guidance: str = "cfg"         # "cfg" or "cfg++" (renoise with v(∅,∅), scales near 1; guidance.py); the
                                  # pipeline's first frame and in-betweens keep "cfg"
    denoise: float = 1.0          # the fraction of the steps run (diffusers' img2img strength): < 1 starts
                                  # part-way from a given latent; only the interpolation has one (its blend)

    @property
    def steps_run(self) -> int:
        """How many of the `steps` a run visits: the last ⌊steps·denoise⌋, at least one (all at denoise 1).
        At least one, so a scheduler shared with the video can lower its steps without breaking this run."""
        return max(1, int(self.steps * self.denoise + 1e-9))

    def validate(self, schedule: NoiseSchedule) -> None:
        schedule.timesteps(self.steps, self.spacing)  # raises on a bad step count or spacing name
        renoise_branch(self.guidance)                  # raises on an unknown guidance form
        if self.eta < 0:
            raise InputError(f"eta must be >= 0, got {self.eta}")
        if not 0.0 <= self.rescale <= 1.0:
            raise InputError(f"rescale must be in [0, 1] (0 = off), got {self.rescale}")
        if self.late_text_cfg is not None and not self.late_text_cfg >= 0:
            raise InputError(f"late text guidance must be >= 0 (1 = none on the late steps), got {self.late_text_cfg}")
        if not 0.0 < self.late_below <= 1.0:
            raise InputError(f"late_below must be in (0, 1] (the fraction of the timesteps counted late, "
                             f"e.g. 0.5), got {self.late_below}")
        if not 0.0 < self.denoise <= 1.0:
            raise InputError(f"denoise must be in (0, 1] (1 = from pure noise), got {self.denoise}")


def first_frame_settings(settings: SamplerSettings, text_cfg: float | None) -> SamplerSettings:
    """The text→image step's settings (§3.2 step 1): the video's, with the picture's own text guidance
    where one is given. A scale tuned for the video can overshoot a single frame: the demo draws the
    right shape far more often at 2 than at the video's 7.5 (demo/MODEL_CARD.md). Image sampling
    has no late text scale (late_text_cfg is the video's) and keeps plain CFG (CFG++ scales are λ ≈ 1,
    the video's)."""
    settings = replace(settings, guidance="cfg")
    return settings if text_cfg is None else replace(settings, text_cfg=float(text_cfg))


Denoiser = Callable[..., torch.Tensor]
StepFn = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def make_noise(shape, seed: int, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """N(0, I) from a CPU generator, then moved: the same seed gives the same noise on any device."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


def _text_for_batch(text: TextCondition, batch: int, what: str) -> TextCondition:
    if text.batch_size == batch:
        return text
    if text.batch_size == 1:
        return text.repeat(batch)
    raise InputError(f"{what} has batch {text.batch_size}; it must be 1 or match the noise batch {batch}")


def _branch_inputs(branches: tuple[str, ...], text: TextCondition, null_text: TextCondition):
    """Text per branch: the full branch sees the prompt, the ∅-text branches the empty prompt."""
    return TextCondition.cat([text if name == "full" else null_text for name in branches])


def run_timesteps(schedule: NoiseSchedule, settings: SamplerSettings) -> torch.Tensor:
    """The timesteps a run visits: the schedule's `steps`, or with denoise < 1 only the last
    steps_run of them, as diffusers' img2img `strength` does (the step size stays that of `steps`)."""
    timesteps = schedule.timesteps(settings.steps, settings.spacing)
    return timesteps[len(timesteps) - settings.steps_run:]


def start_latent(schedule: NoiseSchedule, noise: torch.Tensor, settings: SamplerSettings, t: int,
                 init: torch.Tensor | None) -> torch.Tensor:
    """x at the first step run: the noise itself, or with denoise < 1 `init` noised to t (SDEdit,
    Meng et al. 2022), so the run refines `init` instead of drawing from scratch."""
    if settings.denoise >= 1:
        return noise
    if init is None:
        raise InputError(f"denoise {settings.denoise} needs a latent to start from; only the interpolation has "
                         f"one (its key frames' blend): the first frame, the video and extend start from noise, "
                         f"so leave their denoise at 1")
    if init.shape != noise.shape:
        raise InputError(f"starting latent {tuple(init.shape)} must match the noise {tuple(noise.shape)}")
    return schedule.add_noise(init.to(noise), noise, t).to(noise.dtype)


def _denoise(schedule: NoiseSchedule, x: torch.Tensor, settings: SamplerSettings, predict: StepFn,
             image_scale: float, text_scale: float, generator, callback, cancel,
             pin: Callable | None = None, late_text_scale: float | None = None,
             init: torch.Tensor | None = None) -> torch.Tensor:
    """The DDIM loop shared by image and video sampling; `predict(x, t)` returns the branches' outputs
    and `pin(x, guided, t)`, when given, rewrites the guided prediction (known-frame replacement).
    `late_text_scale` replaces `text_scale` on the late steps (guidance.text_scale_at); with
    settings.guidance "cfg++" each step renoises with the unguided branch (guidance.renoise_branch);
    with settings.denoise < 1 the run starts part-way, from `init` (start_latent)."""
    ref = renoise_branch(settings.guidance)
    timesteps = run_timesteps(schedule, settings)
    x = start_latent(schedule, x, settings, int(timesteps[0]), init)
    previous = schedule.previous_timesteps(timesteps)
    total = len(timesteps)
    for i, (t, t_prev) in enumerate(zip(timesteps.tolist(), previous.tolist())):
        if cancel is not None and cancel():
            raise SamplingCancelled(i, total)
        preds = predict(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        s_T = text_scale_at(t, schedule.num_train_timesteps, text_scale, late_text_scale, settings.late_below)
        guided = combine_branches(preds, image_scale, s_T)
        if settings.rescale > 0:
            guided = rescale_cfg(guided, preds["full"], settings.rescale)
        renoise = preds[ref] if ref else None
        if pin is not None:
            guided = pin(x, guided, t)
            renoise = None if renoise is None else pin(x, renoise, t)
        x, x0 = schedule.ddim_step(x, guided, t, t_prev, eta=settings.eta, generator=generator,
                                   renoise_out=renoise)
        # One device→host sync per step; cheap next to a U-Net forward and names the failing step.
        if not bool(torch.isfinite(x).all()):
            raise SamplingDiverged(
                f"NaN/inf in the latents at step {i + 1}/{total} (t={t}); run the model in float32 "
                f"(or bfloat16 instead of float16) and/or lower the guidance scales or the rescale")
        if callback is not None:
            callback(i, total, x0)
    return x


def _branches(settings: SamplerSettings, image_scale: float, text_scale: float,
              late_text_scale: float | None = None) -> tuple[str, ...]:
    branches = guidance_branches(image_scale, text_scale)
    if late_text_scale is not None:          # every branch either text scale needs, in BRANCHES order
        late = guidance_branches(image_scale, late_text_scale)
        branches = tuple(b for b in BRANCHES if b in branches or b in late)
    if settings.rescale > 0 and "full" not in branches:
        branches = ("full",) + branches  # rescale's reference std is the fully conditioned prediction
    ref = renoise_branch(settings.guidance)
    if ref and ref not in branches:      # CFG++ renoises with v(∅,∅) even where its weight is 0
        branches = tuple(b for b in BRANCHES if b in branches or b == ref)
    return branches


def _split(out: torch.Tensor, branches: tuple[str, ...], x: torch.Tensor) -> dict[str, torch.Tensor]:
    if out.shape[0] != x.shape[0] * len(branches) or out.shape[1] != x.shape[1]:
        raise InputError(f"denoiser returned {tuple(out.shape)}; expected [{x.shape[0] * len(branches)}, "
                         f"{x.shape[1]}, ...] (one v per sample and branch, latent channels only)")
    return dict(zip(branches, out.to(x.dtype).chunk(len(branches))))


def sample_video(denoiser: Denoiser, schedule: NoiseSchedule, noise: torch.Tensor,
                 cond: torch.Tensor | None, mask: torch.Tensor | None, text: TextCondition,
                 null_text: TextCondition, settings: SamplerSettings | None = None,
                 generator: torch.Generator | None = None,
                 callback: Callable[[int, int, torch.Tensor], None] | None = None,
                 cancel: Callable[[], bool] | None = None, known: torch.Tensor | None = None,
                 init: torch.Tensor | None = None) -> torch.Tensor:
    """Generate video latents [B, C, T, h, w] from `noise` with dual guidance.

    cond/mask come from conditioning.known_frames & co. (None → no known frames: direct T2V).
    The ∅-image branch zeroes cond and mask (conditioning.drop_image), the ∅-text branches use
    `null_text` (the empty prompt). Noise augmentation of cond (interpolation) is the caller's.
    With settings.keep_known the masked frames are pinned to `known` (default: cond), which the
    caller passes clean when cond is noise-augmented. With settings.denoise < 1 the run starts from
    `init` noised part-way (start_latent).
    """
    settings = settings or SamplerSettings()
    settings.validate(schedule)
    if noise.ndim != 5:
        raise InputError(f"video noise must be [B, C, T, h, w], got shape {tuple(noise.shape)}")
    B = noise.shape[0]
    if cond is None or mask is None:
        cond, mask = drop_image(noise, noise[:, :1])
    model_input(noise, cond, mask)  # validates shapes before any forward
    s_I, s_T, s_T_late = settings.image_cfg, settings.text_cfg, settings.late_text_cfg
    branches = _branches(settings, s_I, s_T, s_T_late)
    text_b = _branch_inputs(branches, _text_for_batch(text, B, "text"), _text_for_batch(null_text, B, "null text"))
    text_b = text_b.to(device=noise.device)
    no_cond, no_mask = drop_image(cond, mask)
    cond_b = torch.cat([no_cond if name == "uncond" else cond for name in branches]).to(noise)
    mask_b = torch.cat([no_mask if name == "uncond" else mask for name in branches]).to(noise)

    def predict(x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        x_in = model_input(x.repeat(len(branches), 1, 1, 1, 1), cond_b, mask_b)
        out = denoiser(x_in, t.repeat(len(branches)), text_b.context, text_b.masks, image_mode=False)
        return _split(out, branches, x)

    pin = None
    if settings.keep_known and bool(mask.any()):
        known = (cond if known is None else known).to(noise)
        if known.shape != noise.shape:
            raise InputError(f"known frames {tuple(known.shape)} must match the noise {tuple(noise.shape)}")
        pin_mask = mask.to(noise.device)

        def pin(x: torch.Tensor, guided: torch.Tensor, t: int) -> torch.Tensor:
            return pin_known_frames(schedule, x, guided, t, known, pin_mask)

    return _denoise(schedule, noise, settings, predict, s_I, s_T, generator, callback, cancel, pin, s_T_late, init)


def sample_image(denoiser: Denoiser, schedule: NoiseSchedule, noise: torch.Tensor, text: TextCondition,
                 null_text: TextCondition, settings: SamplerSettings | None = None,
                 generator: torch.Generator | None = None,
                 callback: Callable[[int, int, torch.Tensor], None] | None = None,
                 cancel: Callable[[], bool] | None = None) -> torch.Tensor:
    """Generate image latents [B, C, h, w] in image mode (no temporal layers), plain text CFG (§3.2 step 1).

    Plain CFG is dual guidance with s_I = s_T (the image branch cancels), so the loop is shared.
    The callback receives x̂0 as [B, C, 1, h, w].
    """
    settings = settings or SamplerSettings()
    settings.validate(schedule)
    if noise.ndim != 4:
        raise InputError(f"image noise must be [B, C, h, w], got shape {tuple(noise.shape)}")
    B = noise.shape[0]
    scale = settings.text_cfg
    branches = _branches(settings, scale, scale)
    text_b = _branch_inputs(branches, _text_for_batch(text, B, "text"), _text_for_batch(null_text, B, "null text"))
    text_b = text_b.to(device=noise.device)

    def predict(x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        out = denoiser(x.repeat(len(branches), 1, 1, 1, 1), t.repeat(len(branches)),
                       text_b.context, text_b.masks, image_mode=True)
        return _split(out, branches, x)

    x = _denoise(schedule, noise.unsqueeze(2), settings, predict, scale, scale, generator, callback, cancel)
    return x.squeeze(2)
