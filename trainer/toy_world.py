"""A procedurally generated, captioned toy world: coloured shapes moving over plain backgrounds.

Tests, CI smoke runs and the demo model train on it, and an analytic oracle (no learning) judges
whether a generated clip shows what its caption says — colour, shape, motion direction and
background — so text faithfulness (§4's "faithfulness" axis) can be measured automatically.
Some attribute combinations (HELD_OUT) never appear in training data, so evaluation on them
measures compositional generalisation rather than memorisation.

    emu-video toy-data OUT --clips N [--size 64 --frames 16 --fps 8 --seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
from collections import Counter

import numpy as np

from ..model.config import InputError
from ..model.video_io import atomic_path, write_mp4

# --------------------------------------------------------------------------- the vocabulary (one place)

# Object colours, far apart in RGB and from every background, so nearest-colour naming is robust
# to H.264's 4:2:0 chroma blur.
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "magenta": (210, 50, 200),
    "cyan": (40, 210, 220),
}
BACKGROUNDS = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
    "navy": (20, 25, 80),
    "beige": (225, 210, 175),
}
SHAPES = ("circle", "square", "triangle", "diamond")
MOTIONS = ("left", "right", "up", "down", "static")
SPEEDS = {"slow": 0.2, "fast": 0.45}     # fraction of the frame crossed over the clip

# Attribute combinations never generated for training (a clip matching every key of any entry is
# held out). Each value of every attribute still appears in training, only these pairings don't.
HELD_OUT = (
    {"colour": "red", "shape": "triangle"},
    {"colour": "blue", "shape": "circle"},
    {"colour": "green", "shape": "square"},
    {"colour": "yellow", "shape": "diamond"},
    {"motion": "up", "background": "white"},
)

_MOTION_VECTORS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "static": (0, 0)}
_SUPERSAMPLE = 4                    # sub-pixel coverage gives anti-aliased edges
_RADIUS = (0.10, 0.14)              # object half-size as a fraction of the frame side


def is_held_out(attributes: dict) -> bool:
    return any(all(attributes.get(k) == v for k, v in combo.items()) for combo in HELD_OUT)


def caption(attributes: dict) -> str:
    """e.g. 'a red circle moving slowly left on a black background'."""
    a = attributes
    if a["motion"] == "static":
        action = "standing still"
    else:
        action = f"moving {'slowly' if a['speed'] == 'slow' else 'quickly'} {a['motion']}"
    return f"a {a['colour']} {a['shape']} {action} on a {a['background']} background"


def sample_attributes(rng: np.random.Generator, held_out: str = "exclude") -> dict:
    """held_out: "exclude" (training data), "include" (any combination) or "only" (evaluation)."""
    if held_out not in ("exclude", "include", "only"):
        raise InputError(f"held_out must be 'exclude', 'include' or 'only', got {held_out!r}")
    while True:   # rejection sampling keeps the marginals of the allowed set uniform
        motion = str(rng.choice(MOTIONS))
        a = dict(shape=str(rng.choice(SHAPES)), colour=str(rng.choice(list(COLOURS))), motion=motion,
                 background=str(rng.choice(list(BACKGROUNDS))),
                 speed="none" if motion == "static" else str(rng.choice(list(SPEEDS))))
        if held_out == "include" or is_held_out(a) == (held_out == "only"):
            return a


def sample_prompts(n: int, seed: int = 0, held_out: bool = False) -> list[dict]:
    """n evaluation prompts, each dict(caption, attributes); held_out=True gives only HELD_OUT combos."""
    rng = np.random.default_rng([seed, 0x7E57])
    out = []
    for _ in range(n):
        a = sample_attributes(rng, "only" if held_out else "exclude")
        out.append(dict(caption=caption(a), attributes=a))
    return out


# --------------------------------------------------------------------------- rendering

def shape_mask(shape: str, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Inside-test at coordinates (x, y) relative to the object centre, half-size r (y points down)."""
    if shape == "circle":
        return x * x + y * y <= r * r
    if shape == "square":
        return (np.abs(x) <= 0.85 * r) & (np.abs(y) <= 0.85 * r)    # ~ the circle's area
    if shape == "triangle":                                            # apex up, base at the bottom
        return (y <= r) & (np.abs(x) <= (y + r) / 2)
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= r
    raise InputError(f"unknown shape {shape!r}; choose one of {SHAPES}")


def trajectory(attributes: dict, rng: np.random.Generator, size: int, num_frames: int, radius: float) -> np.ndarray:
    """Object centres [T,2] (x, y) in pixels; the whole path keeps the object inside the frame."""
    dx, dy = _MOTION_VECTORS[attributes["motion"]]
    travel = 0.0 if attributes["motion"] == "static" else SPEEDS[attributes["speed"]] * size
    lo, hi = radius + 2, size - radius - 2
    start = np.array([rng.uniform(lo + max(-dx, 0) * travel, hi - max(dx, 0) * travel),
                      rng.uniform(lo + max(-dy, 0) * travel, hi - max(dy, 0) * travel)])
    progress = np.linspace(0.0, 1.0, num_frames)[:, None]
    return start + progress * travel * np.array([dx, dy])


def render_clip(attributes: dict, size: int = 64, num_frames: int = 16, seed=0) -> np.ndarray:
    """uint8 [T,size,size,3] frames of one clip; deterministic for (attributes, size, num_frames, seed)."""
    rng = np.random.default_rng(seed)
    radius = rng.uniform(*_RADIUS) * size
    centres = trajectory(attributes, rng, size, num_frames, radius)
    ss = _SUPERSAMPLE
    grid = (np.arange(size * ss) + 0.5) / ss                  # sub-pixel centres in pixel units
    bg = np.array(BACKGROUNDS[attributes["background"]], np.float32)
    fg = np.array(COLOURS[attributes["colour"]], np.float32)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for t, (cx, cy) in enumerate(centres):
        inside = shape_mask(attributes["shape"], grid[None, :] - cx, grid[:, None] - cy, radius)
        alpha = inside.reshape(size, ss, size, ss).mean(axis=(1, 3))[..., None]
        frames[t] = np.rint(bg * (1 - alpha) + fg * alpha).astype(np.uint8)
    return frames


def generate(out: str, clips: int, size: int = 64, num_frames: int = 16, fps: float = 8, seed: int = 0,
             held_out: str = "exclude", lossless: bool = False) -> str:
    """Write clips/clip_00000.mp4 ... and manifest.jsonl into `out`. Clip i depends only on (seed, i).
    `lossless`: RGB H.264 at crf 0 (video_io.write_mp4), so training reads the rendered pixels exactly."""
    if clips < 1 or size < 16 or num_frames < 2:
        raise InputError("need --clips >= 1, --size >= 16 and --frames >= 2")
    os.makedirs(os.path.join(out, "clips"), exist_ok=True)
    lines = []
    for i in range(clips):
        rng = np.random.default_rng([seed, i])
        a = sample_attributes(rng, held_out)
        rel = f"clips/clip_{i:05d}.mp4"
        write_mp4(render_clip(a, size, num_frames, seed=rng), os.path.join(out, rel), fps, lossless=lossless)
        lines.append(json.dumps(dict(path=rel, caption=caption(a), fps=fps, frames=num_frames, attributes=a)))
    manifest = os.path.join(out, "manifest.jsonl")
    with atomic_path(manifest) as tmp:
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
    return manifest


# --------------------------------------------------------------------------- the oracle

def _nearest(rgb: np.ndarray, palette: dict) -> str:
    names = list(palette)
    d = np.linalg.norm(np.array([palette[n] for n in names], np.float32) - rgb, axis=1)
    return names[int(np.argmin(d))]


def _erode(mask: np.ndarray) -> np.ndarray:
    core = mask.copy()
    core[1:] &= mask[:-1]
    core[:-1] &= mask[1:]
    core[:, 1:] &= mask[:, :-1]
    core[:, :-1] &= mask[:, 1:]
    return core


def classify_shape(mask: np.ndarray) -> str:
    """Shape from the mask's fill ratio of its bounding box, and (for the two ~half-filled shapes)
    from where its mass sits vertically: a triangle's centroid is 2/3 of the way down, a diamond's at 1/2."""
    ys, xs = np.nonzero(mask)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = len(ys) / (h * w)
    if fill > 0.89:
        return "square"
    if fill > 0.65:
        return "circle"
    centroid_depth = (ys.mean() - ys.min() + 0.5) / h
    return "triangle" if centroid_depth > 0.58 else "diamond"


def measure_frame(frame: np.ndarray) -> dict:
    """Background (border colour), object colour/shape/centroid/size of one uint8 [H,W,3] frame."""
    img = frame.astype(np.float32)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg = np.median(border, axis=0)
    out = dict(background=_nearest(bg, BACKGROUNDS), colour=None, shape=None, centroid=None, size=0)
    coarse = np.linalg.norm(img - bg, axis=-1) > 40
    if coarse.sum() < 4:
        return out
    core = _erode(coarse)
    fg = np.median(img[core if core.sum() >= 4 else coarse], axis=0)
    # Object = pixels more than half-way from background to object colour: edge pixels that the
    # anti-aliasing (and codec blur) half-covered count half in, so areas and fill ratios stay true.
    axis = fg - bg
    t = ((img - bg) @ axis) / max(float(axis @ axis), 1e-6)
    mask = t > 0.5
    if mask.sum() < 4:
        return out
    ys, xs = np.nonzero(mask)
    out.update(colour=_nearest(fg, COLOURS), shape=classify_shape(mask),
               centroid=(float(xs.mean()), float(ys.mean())), size=int(mask.sum()))
    return out


def measure_frames(frames) -> list[dict]:
    """Per-frame measurements of uint8 [T,H,W,3] frames (see measure_frame)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"frames must be uint8 [T,H,W,3], got shape {frames.shape}")
    return [measure_frame(f) for f in frames]


def _majority(values) -> str | None:
    values = [v for v in values if v is not None]
    return Counter(values).most_common(1)[0][0] if values else None


def motion_direction(centroids: list, frame_size: int, min_travel: float = 0.08) -> str:
    """'left'/'right'/'up'/'down' from a least-squares fit of the centroid path, or 'static' when the
    fitted travel over the clip is under `min_travel` of the frame."""
    points = np.array([c for c in centroids if c is not None], np.float64)
    if len(points) < 2:
        return "static"
    t = np.linspace(0.0, 1.0, len(centroids))[[i for i, c in enumerate(centroids) if c is not None]]
    slope = np.polyfit(t, points, 1)[0] * (t[-1] - t[0])      # fitted displacement over the visible span
    if np.hypot(*slope) < min_travel * frame_size:
        return "static"
    if abs(slope[0]) >= abs(slope[1]):
        return "right" if slope[0] > 0 else "left"
    return "down" if slope[1] > 0 else "up"


def judge_image(frame, attributes: dict) -> dict:
    """Does one picture (a generated first frame) show the prompt's colour, shape and background?
    dict(colour_ok, shape_ok, background_ok, all_ok, seen); motion needs a clip, so it has no key."""
    m = measure_frame(np.asarray(frame))
    result = {f"{k}_ok": m[k] == attributes[k] for k in ("colour", "shape", "background")}
    result["all_ok"] = all(result.values())
    result["seen"] = {k: m[k] for k in ("colour", "shape", "background")}
    return result


def judge(frames, attributes: dict) -> dict:
    """Does the clip show its attributes? dict(colour_ok, shape_ok, motion_ok, background_ok, all_ok)
    plus what was seen. Speed is not judged: generated clips may be longer or shorter."""
    frames = np.asarray(frames)
    m = measure_frames(frames)
    seen = dict(colour=_majority(x["colour"] for x in m), shape=_majority(x["shape"] for x in m),
                background=_majority(x["background"] for x in m),
                motion=motion_direction([x["centroid"] for x in m], min(frames.shape[1:3])))
    result = {f"{k}_ok": seen[k] == attributes[k] for k in ("colour", "shape", "motion", "background")}
    result["all_ok"] = all(result.values())
    result["seen"] = seen
    return result


# --------------------------------------------------------------------------- CLI

def toy_data_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="emu-video toy-data", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output folder (gets clips/ and manifest.jsonl)")
    p.add_argument("--clips", type=int, required=True)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--fps", type=float, default=8)
    p.add_argument("--seed", type=int, default=0)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--include-held-out", action="store_true", help="also generate HELD_OUT combinations")
    group.add_argument("--only-held-out", action="store_true", help="generate only HELD_OUT combinations (eval set)")
    p.add_argument("--lossless", action="store_true",
                   help="RGB H.264 at crf 0: frames read back exactly (default: yuv420p crf 18, which blurs colour edges)")
    args = p.parse_args(argv)
    held_out = "include" if args.include_held_out else "only" if args.only_held_out else "exclude"
    manifest = generate(args.out, args.clips, args.size, args.frames, args.fps, args.seed, held_out, args.lossless)
    print(f"wrote {args.clips} clips and {manifest}")
    return 0


main = toy_data_main
