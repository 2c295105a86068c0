"""Classifier-free guidance with separate image and text scales (Emu Video appendix; IP2P form).

Three conditionings of the same noisy input:
    uncond = (∅ image, ∅ text)   image = (I, ∅ text)   full = (I, T)
combined image-first, then text (the ordering matters, PAPER_NOTES "Classifier-free guidance"):
    v = v(∅,∅) + s_I·(v(I,∅) − v(∅,∅)) + s_T·(v(I,T) − v(I,∅))
The weights sum to 1, so the combination is the same in v, ε or x0 space; CFG *rescale* is not
(std is not affine-equivariant) and is applied on v, like diffusers and ComfyUI (diffusion_math §2.6).

CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained classifier free guidance"; not in the paper) is a
second form of the same combination: each DDIM step takes x̂0 from the guided prediction but points back
toward x_prev with the UNGUIDED branch's ε̂ (v(∅,∅)) instead of the guided one. The scales then act as
λ ≈ 0..1 (1 = x̂0 of the fully conditioned branch, not an extrapolation past it), and the guidance works
through the trajectory instead of overshooting every x̂0. On the demo model (card eval, seed 0, scales
1 / 1) it kept squares in 11% of the animate frames against 0% with CFG at 3.5 / 7.5, but triangles in 81%
against 95%, and held-out text→video fell from 6 to 5 of 8; so the demo keeps CFG (demo/MODEL_CARD.md).
"""
from __future__ import annotations

import torch

from .config import GUIDANCE_FORMS, InputError

BRANCHES = ("full", "image", "uncond")


def renoise_branch(form: str) -> str | None:
    """The branch whose ε̂ a DDIM step renoises with: None = the guided prediction's own (CFG), the
    unguided v(∅,∅) for CFG++ (module docstring)."""
    if form not in GUIDANCE_FORMS:
        raise InputError(f"unknown guidance form {form!r}; choose one of {', '.join(GUIDANCE_FORMS)}")
    return "uncond" if form == "cfg++" else None


def dual_guidance(v_uncond: torch.Tensor, v_image: torch.Tensor, v_full: torch.Tensor,
                  image_scale: float, text_scale: float) -> torch.Tensor:
    """v(∅,∅) + s_I·(v(I,∅) − v(∅,∅)) + s_T·(v(I,T) − v(I,∅))."""
    return v_uncond + image_scale * (v_image - v_uncond) + text_scale * (v_full - v_image)


def cfg(v_uncond: torch.Tensor, v_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Plain (text) classifier-free guidance: v(∅) + s·(v(T) − v(∅))."""
    return v_uncond + scale * (v_cond - v_uncond)


def rescale_cfg(v_guided: torch.Tensor, v_ref: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. §3.4: pull the guided prediction's per-sample std back toward the reference's.

    v_ref is the fully conditioned prediction. std runs over ALL non-batch dims, so a 5-D video
    latent gets one std per sample (ComfyUI's RescaleCFG hard-codes dims (1,2,3): pitfall 9).
    """
    if not 0.0 <= phi <= 1.0:
        raise InputError(f"CFG rescale must be in [0, 1] (0 = off, ~0.7 recommended), got {phi}")
    if phi == 0:
        return v_guided
    dims = tuple(range(1, v_guided.ndim))
    std_ref = v_ref.std(dim=dims, keepdim=True)
    std_guided = v_guided.std(dim=dims, keepdim=True)
    # A constant guided output has std 0: leave it alone rather than divide by zero.
    ratio = torch.where(std_guided > 0, std_ref / std_guided.clamp(min=torch.finfo(std_guided.dtype).tiny),
                        torch.ones_like(std_guided))
    return v_guided * (phi * ratio + (1 - phi))


def text_scale_at(t: int, num_train_timesteps: int, text_scale: float, late_text_scale: float | None,
                  late_below: float) -> float:
    """The text scale of the step at timestep t: `late_text_scale` on the late, nearly clean steps
    (t < late_below·T), `text_scale` before them; None = `text_scale` throughout.

    Guidance limited to an interval of noise levels (Kynkäänniemi et al. 2024, "Applying guidance in a
    limited interval improves sample and distribution quality") is not in the paper. The early steps set
    the layout and the motion, which is where strong text guidance pays; on the late ones it reshapes
    details the known frame already fixes. On the demo, 7.5 there rounds squares, yet held-out pairings
    need it to keep their shape, so the demo keeps one scale (demo/MODEL_CARD.md)."""
    if late_text_scale is None or t >= late_below * num_train_timesteps:
        return text_scale
    return late_text_scale


def guidance_weights(image_scale: float, text_scale: float) -> dict[str, float]:
    """The dual-guidance formula as a weighted sum of the three branches.

    Expanding  v(∅,∅) + s_I·(v(I,∅) − v(∅,∅)) + s_T·(v(I,T) − v(I,∅))  gives
        uncond: 1 − s_I      image: s_I − s_T      full: s_T        (sum = 1)
    """
    return {"full": float(text_scale), "image": float(image_scale) - float(text_scale),
            "uncond": 1.0 - float(image_scale)}


def guidance_branches(image_scale: float, text_scale: float) -> tuple[str, ...]:
    """Branches (subset of ("full", "image", "uncond"), in that order) whose weight is non-zero.

    From `guidance_weights`:
      - s_I = 1  → uncond cancels;                     s_T = 0 → full is not needed;
      - s_I = s_T → image cancels (plain CFG between (I,T) and (∅,∅));
      - s_I = s_T = 1 → only full;   s_I = 1, s_T = 0 → only image;   s_I = s_T = 0 → only uncond.
    Weights sum to 1, so at least one branch is always needed.
    """
    weights = guidance_weights(image_scale, text_scale)
    return tuple(name for name in BRANCHES if weights[name] != 0.0)


def combine_branches(preds: dict[str, torch.Tensor], image_scale: float, text_scale: float) -> torch.Tensor:
    """Dual guidance from the branches that `guidance_branches` asked for (others may be absent)."""
    weights = guidance_weights(image_scale, text_scale)
    needed = guidance_branches(image_scale, text_scale)
    missing = [name for name in needed if name not in preds]
    if missing:
        raise InputError(f"guidance with s_I={image_scale}, s_T={text_scale} needs branches {missing}")
    out = weights[needed[0]] * preds[needed[0]]
    for name in needed[1:]:
        out = out + weights[name] * preds[name]
    return out
