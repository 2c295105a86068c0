"""Discrete DDPM noise schedule with zero terminal SNR, v-prediction and DDIM (§3.3).

Emu Video trains its 512 px model with v-prediction on a schedule rescaled so that the last
step is pure noise (ᾱ_{T-1} = 0, Lin et al. 2023 "Common Diffusion Noise Schedules and Sample
Steps are Flawed", Alg. 1). Sampling is DDIM over *trailing* timesteps so that it starts at
t = T-1, where the model was trained on pure noise.

Conventions: t is an integer in 0..T-1 (T-1 is the noisiest and is what the U-Net receives);
ᾱ_t = alphas_cumprod[t]. Schedules are built in float64; the tensors they are applied to keep
their dtype (computed in at least float32).
"""
from __future__ import annotations

import math

import torch

from .config import ConfigError, InputError, ScheduleConfig

BETA_SCHEDULES = ("scaled_linear", "linear", "squaredcos_cap_v2")
SPACINGS = ("trailing", "leading", "linspace")
PREDICTION_TYPES = ("v", "eps")


def make_betas(beta_schedule: str, beta_start: float, beta_end: float, num_train_timesteps: int) -> torch.Tensor:
    """β_0..β_{T-1} in float64 (same definitions as diffusers / LDM)."""
    T = num_train_timesteps
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if beta_schedule == "scaled_linear":  # SD's schedule; ComfyUI calls it "linear"
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float64) ** 2
    if beta_schedule == "squaredcos_cap_v2":  # Nichol & Dhariwal cosine, β capped at 0.999
        def alpha_bar(x: float) -> float:
            return math.cos((x + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ConfigError(f"unknown beta_schedule {beta_schedule!r}; use one of {BETA_SCHEDULES}")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. Alg. 1: shift/scale √ᾱ so √ᾱ_{T-1} = 0 while √ᾱ_0 is kept; return the new β.

    §3.3: without it the last training step still leaks signal, a train/test mismatch that broke
    object consistency at 512 px (Table 1b).
    """
    sqrt_ab = torch.cumprod(1 - betas, 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alphas_cumprod = sqrt_ab ** 2
    alphas = torch.cat([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return 1 - alphas


def shift_snr(alphas_cumprod: torch.Tensor, shift: float) -> torch.Tensor:
    """ᾱ of the schedule whose SNR(t) = ᾱ/(1-ᾱ) is `shift` times the given one.

    SD's schedule was tuned for 64×64 latents. On a smaller latent the same per-pixel noise leaves
    far less of each object readable (Hoogeboom et al. 2023, "simple diffusion": averaging
    a×a pixels multiplies SNR by a², so a schedule should move with resolution). shift > 1 gives a
    smaller latent less noise at every t; SNR 0 stays 0, so zero terminal SNR is kept (§3.3).
    """
    if not shift > 0:
        raise ConfigError(f"snr_shift must be > 0 (1 = unshifted), got {shift!r}")
    return shift * alphas_cumprod / (1 + (shift - 1) * alphas_cumprod)


def _broadcast(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample coefficient [B] (or scalar) → shape that broadcasts over x's non-batch dims."""
    return coef.reshape(-1, *([1] * (x.ndim - 1))) if coef.ndim else coef


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


class NoiseSchedule:
    """β / ᾱ tables plus the forward process, the v ↔ (x0, ε) conversions and one DDIM step."""

    def __init__(self, beta_schedule: str = "scaled_linear", beta_start: float = 0.00085, beta_end: float = 0.012,
                 num_train_timesteps: int = 1000, zero_terminal_snr: bool = True, prediction_type: str = "v",
                 snr_shift: float = 1.0):
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
            raise ConfigError(f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")
        if prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"unknown prediction_type {prediction_type!r}; use one of {PREDICTION_TYPES}")
        if prediction_type == "eps" and zero_terminal_snr:
            # At SNR 0, x0 = (x_t - √(1-ᾱ)ε)/√ᾱ divides by zero: ε carries no information about x0.
            raise ConfigError("prediction_type='eps' is undefined with zero_terminal_snr=True (x0 cannot be "
                              "recovered from ε at SNR 0); use prediction_type='v' or zero_terminal_snr=False")
        betas = make_betas(beta_schedule, beta_start, beta_end, num_train_timesteps)
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.beta_schedule = beta_schedule
        self.num_train_timesteps = num_train_timesteps
        self.zero_terminal_snr = zero_terminal_snr
        self.prediction_type = prediction_type
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        if zero_terminal_snr:
            alphas_cumprod[-1] = 0.0  # exact, not a float residue
        if snr_shift != 1:
            alphas_cumprod = shift_snr(alphas_cumprod, snr_shift)
            betas = 1 - alphas_cumprod / torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        self.snr_shift = float(snr_shift)
        self.betas = betas
        self.alphas_cumprod = alphas_cumprod
        self._tables: dict[torch.device, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg: ScheduleConfig) -> "NoiseSchedule":
        return cls(cfg.beta_schedule, cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps,
                   cfg.zero_terminal_snr, cfg.prediction_type, cfg.snr_shift)

    def __repr__(self) -> str:
        return (f"NoiseSchedule({self.beta_schedule!r}, T={self.num_train_timesteps}, "
                f"zero_terminal_snr={self.zero_terminal_snr}, prediction_type={self.prediction_type!r}, "
                f"snr_shift={self.snr_shift:g})")

    # ------------------------------------------------------------------ timesteps

    def timesteps(self, n: int, spacing: str = "trailing", offset: int = 0) -> torch.Tensor:
        """n inference timesteps, descending, as a LongTensor (diffusion_math.md §2.4).

        trailing (default; Lin et al. §3.3) always starts at T-1, the pure-noise step a zero-SNR
        model was trained on. leading never reaches T-1; `offset` is diffusers' steps_offset for it.
        """
        T = self.num_train_timesteps
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= T:
            raise InputError(f"number of sampling steps must be an integer in 1..{T}, got {n!r}")
        k = torch.arange(n, dtype=torch.float64)
        if spacing == "trailing":
            ts = torch.round(T - k * (T / n)) - 1
        elif spacing == "leading":
            ts = (n - 1 - k) * (T // n) + offset
        elif spacing == "linspace":
            ts = torch.round(torch.linspace(0, T - 1, n, dtype=torch.float64)).flip(0)
        else:
            raise InputError(f"unknown timestep spacing {spacing!r}; use one of {SPACINGS} "
                             f"('trailing' for zero-terminal-SNR models)")
        ts = ts.long()
        if ts.min() < 0 or ts.max() > T - 1:
            raise InputError(f"{spacing} spacing with offset {offset} leaves 0..{T - 1}; lower the offset")
        return ts

    @staticmethod
    def previous_timesteps(timesteps: torch.Tensor) -> torch.Tensor:
        """t_prev for each step, read from the list itself; -1 after the last one (ᾱ_prev = 1).

        diffusers computes t - T//n instead, which is wrong whenever n does not divide T
        (diffusion_math.md pitfall 3).
        """
        return torch.cat([timesteps[1:], timesteps.new_tensor([-1])])

    # ------------------------------------------------------------------ coefficients

    def _table(self, device: torch.device) -> torch.Tensor:
        if device not in self._tables:
            dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
            self._tables[device] = self.alphas_cumprod.to(device=device, dtype=dtype)
        return self._tables[device]

    def alpha_bar(self, t, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t broadcast against `like` ([B, ...]); t is an int or a LongTensor [B]; t = -1 → 1."""
        table = self._table(like.device)
        t = torch.as_tensor(t, device=like.device)
        if t.is_floating_point():
            raise InputError(f"timesteps must be integers in 0..{self.num_train_timesteps - 1}, got {t.dtype}")
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, like.shape[0])):
            raise InputError(f"timesteps must be a scalar or one per sample (batch {like.shape[0]}), "
                             f"got shape {tuple(t.shape)}")
        ab = torch.where(t >= 0, table[t.clamp(min=0)], torch.ones((), dtype=table.dtype, device=like.device))
        return _broadcast(ab.to(_work_dtype(like)), like)

    def _coefs(self, t, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ab = self.alpha_bar(t, like)
        return ab.sqrt(), (1 - ab).sqrt()

    # ------------------------------------------------------------------ forward process / targets

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """x_t = √ᾱ_t·x0 + √(1-ᾱ_t)·ε."""
        a, s = self._coefs(t, x0)
        w = _work_dtype(x0)
        return (a * x0.to(w) + s * noise.to(w)).to(x0.dtype)

    def v_target(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """v = √ᾱ_t·ε - √(1-ᾱ_t)·x0 (at t = T-1 with zero SNR: v = -x0)."""
        a, s = self._coefs(t, x0)
        w = _work_dtype(x0)
        return (a * noise.to(w) - s * x0.to(w)).to(x0.dtype)

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """What the network must output: v, or ε for an eps-prediction schedule."""
        return self.v_target(x0, noise, t) if self.prediction_type == "v" else noise

    def pred_x0_eps(self, x_t: torch.Tensor, model_out: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Convert the network output (v or ε) at x_t into (x̂0, ε̂), in x_t's working precision."""
        a, s = self._coefs(t, x_t)
        w = _work_dtype(x_t)
        x_t, out = x_t.to(w), model_out.to(w)
        if self.prediction_type == "v":
            return a * x_t - s * out, s * x_t + a * out
        # eps: only constructed without zero SNR, so a > 0 everywhere
        return (x_t - s * out) / a, out

    def model_output(self, x0: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
        """Inverse of `pred_x0_eps`: the network output (v or ε) that says (x0, ε) at timestep t."""
        if self.prediction_type != "v":
            return eps
        a, s = self._coefs(t, x0)
        return a * eps - s * x0

    # ------------------------------------------------------------------ DDIM

    def ddim_step(self, x_t: torch.Tensor, model_out: torch.Tensor, t, t_prev, eta: float = 0.0,
                  generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                  renoise_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDIM update x_t → x_{t_prev}; returns (x_prev, x̂0) (diffusion_math.md §2.5).

        t_prev must come from the timestep list (`previous_timesteps`); -1 means "past the end",
        where ᾱ_prev = 1 and the step returns x̂0 (diffusers' set_alpha_to_one=True). No x̂0
        clipping: latents are not bounded to [-1, 1]. With eta > 0 the fresh noise z is `noise` if
        given, else drawn from `generator` on its device (CPU by default) and moved to x_t's device.
        `renoise_out`, when given, supplies the ε̂ that points back toward x_prev instead of model_out's
        (CFG++: the unguided branch's; guidance.py).
        """
        if eta < 0:
            raise InputError(f"eta must be >= 0 (0 = deterministic DDIM, 1 = DDPM-like), got {eta}")
        w = _work_dtype(x_t)
        x0, eps = self.pred_x0_eps(x_t, model_out, t)
        if renoise_out is not None:
            eps = self.pred_x0_eps(x_t, renoise_out, t)[1]
        ab_t, ab_prev = self.alpha_bar(t, x_t), self.alpha_bar(t_prev, x_t)
        x_prev = ab_prev.sqrt() * x0
        sigma = 0.0
        if eta > 0:
            # (1-ᾱ_prev)/(1-ᾱ_t)·(1-ᾱ_t/ᾱ_prev); ᾱ_prev > 0 always (it is ≥ ᾱ_t and t_prev < T-1 or 1)
            var = (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)
            sigma = eta * var.clamp(min=0).sqrt()
        # Pitfall 6: at ᾱ_t = 0 the radicand is exactly 0 but float error can make it slightly negative.
        direction = (1 - ab_prev - sigma ** 2).clamp(min=0).sqrt() if eta > 0 else (1 - ab_prev).sqrt()
        x_prev = x_prev + direction * eps
        if eta > 0:
            if noise is None:
                device = generator.device if generator is not None else torch.device("cpu")
                noise = torch.randn(x_t.shape, generator=generator, device=device, dtype=torch.float32)
            x_prev = x_prev + sigma * noise.to(device=x_t.device, dtype=w)
        return x_prev.to(x_t.dtype), x0.to(x_t.dtype)
