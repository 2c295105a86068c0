"""Where dual guidance changes a shape: one denoising step of each branch on noised true toy-world clips.

    emu-video guidance-probe --model demo --timesteps 50,200,400 --scales 1,1 1,0 3.5,7.5 1,2 1,3

For each shape, `--per-shape` clips of seen attribute combinations are rendered and VAE-encoded; their
latents are noised to each timestep t; the video model runs its three guidance branches once (§3.2's
image conditioning: the clip's own frame 0 is the known picture) and the branches are combined at each
(image, text) scale pair (guidance.combine_branches). x̂0 is decoded and the oracle reads frames 1..T-1:
the table gives the fraction that show the clip's shape. (1,1) is v(I,T) alone and (1,0) v(I,∅) alone.

Why it exists: on the demo model both branches draw squares at t = 200 while their mix at the card's
scales does not, which places the rounding of squares in the guided step (demo/MODEL_CARD.md).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from ..model.config import InputError
from . import eval_metrics as em
from . import toy_world as tw

DEFAULT_SCALES = ("1,1", "1,0", "3.5,1", "1,2", "1,3", "3.5,7.5")


def parse_scales(text: str) -> tuple[float, float]:
    """'IMAGE,TEXT' → (s_I, s_T)."""
    parts = text.split(",")
    try:
        image, text_scale = (float(p) for p in parts)
    except ValueError:
        raise InputError(f"--scales takes IMAGE,TEXT pairs such as 3.5,7.5; got {text!r}") from None
    if image < 0 or text_scale < 0:
        raise InputError(f"guidance scales must be >= 0, got {text!r}")
    return image, text_scale


def probe_clips(shapes, per_shape: int, seed: int):
    """(shape, index, attributes, clip seed) for `per_shape` seen-combination clips of each shape."""
    rng = np.random.default_rng(seed)
    clips = []
    for shape in shapes:
        for k in range(per_shape):
            a = tw.sample_attributes(rng, "exclude")
            while a["shape"] != shape:
                a = tw.sample_attributes(rng, "exclude")
            clips.append((shape, k, a, int(rng.integers(1 << 30))))
    return clips


def branch_predictions(pipe, x_t, t: int, cond, mask, text, null) -> dict:
    """v of the three dual-guidance branches (guidance.BRANCHES) at one noisy input."""
    import torch

    from ..model import conditioning as C

    no_cond, no_mask = C.drop_image(cond, mask)
    inputs = {"full": (text, cond, mask), "image": (null, cond, mask), "uncond": (null, no_cond, no_mask)}
    steps = torch.tensor([t], device=x_t.device)
    with torch.no_grad():
        return {name: pipe.F.unet(C.model_input(x_t, c, m), steps, txt.context, txt.masks, image_mode=False)
                for name, (txt, c, m) in inputs.items()}


def run_probe(pipe, shapes, per_shape: int, timesteps, scales, seed: int = 5, progress: bool = True) -> dict:
    """{(shape, t, (s_I, s_T)): fraction of frames 1..T-1 of the decoded x̂0 showing the clip's shape}."""
    import torch

    from ..model import conditioning as C
    from ..model.guidance import combine_branches

    found: dict = {}
    for shape, k, a, clip_seed in probe_clips(shapes, per_shape, seed):
        frames = tw.render_clip(a, size=pipe.size, num_frames=pipe.frames, seed=clip_seed)
        latents = pipe._clip_latents(frames)
        text, null = pipe._text(tw.caption(a))
        cond, mask = C.first_frame(latents[:, :, 0], pipe.frames, pipe.F.config.image_fill)
        for t in timesteps:
            noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(k * 1000 + t)).to(latents)
            x_t = pipe.schedule.add_noise(latents, noise, t)
            preds = branch_predictions(pipe, x_t, t, cond, mask, text, null)
            for pair in scales:
                x0, _ = pipe.schedule.pred_x0_eps(x_t, combine_branches(preds, *pair), t)
                found.setdefault((shape, t, pair), []).append((tw.measure_frames(pipe._pixels(x0)), shape))
        if progress:
            print(f"guidance-probe: {shape} clip {k + 1}/{per_shape} done", file=sys.stderr, flush=True)
    return {key: em.shape_kept(clips, [key[0]])[key[0]] for key, clips in found.items()}


def format_table(results: dict, shapes, timesteps, scales) -> str:
    """Markdown: a row per (shape, t), a column per (image, text) scale pair."""
    head = "| shape | t | " + " | ".join(f"image {i:g}, text {s:g}" for i, s in scales) + " |"
    rows = [head, "|---|---|" + "---|" * len(scales)]
    for shape in shapes:
        for t in timesteps:
            cells = " | ".join(f"{results[(shape, t, pair)]:.0%}" for pair in scales)
            rows.append(f"| {shape} | {t} | {cells} |")
    return "\n".join(rows) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emu-video guidance-probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model set folder (emu-video init-models layout)")
    p.add_argument("--shapes", default="square,diamond,circle,triangle", help="comma-separated toy-world shapes")
    p.add_argument("--per-shape", type=int, default=6, help="clips per shape (default 6)")
    p.add_argument("--timesteps", default="50,200,400", help="comma-separated noise timesteps t")
    p.add_argument("--scales", nargs="+", default=list(DEFAULT_SCALES),
                   help="IMAGE,TEXT guidance pairs; 1,1 = v(I,T) alone, 1,0 = v(I,∅) alone")
    p.add_argument("--seed", type=int, default=5, help="seed of the clips' attributes")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no per-clip progress lines")
    return p


def _check(args, num_train_timesteps: int) -> tuple[list[str], list[int]]:
    """The shapes and timesteps asked for, checked (the scales are parsed before the model loads)."""
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in tw.SHAPES]
    if not shapes or unknown:
        raise InputError(f"--shapes: unknown {unknown or 'empty list'}; choose from {', '.join(tw.SHAPES)}")
    if args.per_shape < 1:
        raise InputError(f"--per-shape must be >= 1, got {args.per_shape}")
    try:
        timesteps = [int(t) for t in args.timesteps.split(",")]
    except ValueError:
        raise InputError(f"--timesteps takes integers such as 50,200,400; got {args.timesteps!r}") from None
    bad = [t for t in timesteps if not 0 <= t < num_train_timesteps]
    if bad:
        raise InputError(f"--timesteps {bad} outside the model's 0..{num_train_timesteps - 1}")
    return shapes, timesteps


def guidance_probe_main(argv=None) -> int:
    import torch

    from .. import cli
    from .evaluate import EvalPipeline, EvalSettings

    args = build_parser().parse_args(argv)
    try:
        scales = [parse_scales(s) for s in args.scales]       # fail before loading anything
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        pipe = EvalPipeline(cli.load_model_set(cli.find_model_set(args.model), device=device), EvalSettings())
        shapes, timesteps = _check(args, pipe.schedule.num_train_timesteps)
        results = run_probe(pipe, shapes, args.per_shape, timesteps, scales, args.seed, progress=not args.quiet)
    except ValueError as e:    # InputError / ConfigError / CheckpointError: messages written for users
        print(f"emu-video guidance-probe: {e}", file=sys.stderr)
        return 2
    print(format_table(results, shapes, timesteps, scales), end="")
    return 0
