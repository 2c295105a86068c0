"""Metrics of `emu-video eval`: pure functions of uint8 frames [T,H,W,3] and of the toy-world
oracle's measurements, so ablation runs can be compared with exactly the same code.

    text faithfulness      attribute hit rates of the oracle's judgements      text_faithfulness
    image faithfulness     PSNR of generated frame 0 vs the conditioning image psnr
    temporal consistency   colour/size stability, trajectory smoothness        temporal_consistency
    zero-SNR check (§3.3)  mean intensity of black / white backgrounds         background_intensity
    interpolation          PSNR of in-betweens vs truth, and of linear blends  linear_blend, inbetween_indices
"""
from __future__ import annotations

import math
import re

import numpy as np

from ..model.config import InputError
from . import toy_world as tw

ATTRIBUTES = ("colour", "shape", "motion", "background")
# Same background/object separation as toy_world.measure_frame: a pixel further than this (RGB
# distance) from the border colour belongs to the object.
OBJECT_DISTANCE = 40.0

_CAPTION = re.compile(r"^a (?P<colour>\w+) (?P<shape>\w+) (?:moving (?P<speed>slowly|quickly) (?P<motion>\w+)"
                      r"|standing still) on a (?P<background>\w+) background$")


# --------------------------------------------------------------------------- prompts

def parse_caption(text: str) -> dict:
    """Inverse of toy_world.caption: 'a red circle moving slowly left on a black background' → attributes."""
    m = _CAPTION.match(text.strip().lower())
    vocab = dict(colour=tw.COLOURS, shape=tw.SHAPES, background=tw.BACKGROUNDS, motion=tw.MOTIONS)
    if m is None or any(m.group(k) is not None and m.group(k) not in v for k, v in vocab.items()):
        raise InputError(f"{text!r} is not a toy-world caption the oracle can judge; write prompts like "
                         f"'a red circle moving slowly left on a black background' or 'a blue square standing "
                         f"still on a white background' (colours {list(tw.COLOURS)}, shapes {list(tw.SHAPES)}, "
                         f"backgrounds {list(tw.BACKGROUNDS)})")
    if m.group("motion") is None:
        return dict(colour=m["colour"], shape=m["shape"], motion="static", background=m["background"], speed="none")
    return dict(colour=m["colour"], shape=m["shape"], motion=m["motion"], background=m["background"],
                speed="slow" if m["speed"] == "slowly" else "fast")


# --------------------------------------------------------------------------- text faithfulness

def text_faithfulness(judgements: list[dict]) -> dict:
    """Fraction of clips whose colour / shape / motion / background (and all at once) the oracle
    found as prompted; `judgements` are toy_world.judge (or judge_image) results. A rate is None for
    no clips, or for an attribute the judgements do not judge (motion, for single pictures)."""
    n = len(judgements)
    rates = {k: (sum(bool(j[f"{k}_ok"]) for j in judgements) / n
                 if n and all(f"{k}_ok" in j for j in judgements) else None) for k in (*ATTRIBUTES, "all")}
    return {**rates, "n": n}


def shape_kept(clips: list[tuple[list[dict], str]], shapes) -> dict:
    """Of the frames after frame 0, the fraction that show the prompted shape: in all clips ("all")
    and per prompted shape. `clips` are (toy_world.measure_frames result, prompted shape). With a
    true frame 0 (the animate section) this is the video model's own share of losing a shape, frame
    by frame, where the clip-level shape verdict only says whether most frames kept it."""
    def rate(items):
        frames = [m["shape"] == shape for measured, shape in items for m in measured[1:]]
        return sum(frames) / len(frames) if frames else None
    return {"all": rate(clips), **{s: rate([c for c in clips if c[1] == s]) for s in shapes}}


# --------------------------------------------------------------------------- PSNR and interpolation

def psnr(a, b, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB of two equally shaped uint8 images or frame stacks
    (inf when identical). Frame stacks: the mean of the per-frame PSNRs."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise InputError(f"PSNR needs equally shaped frames, got {a.shape} and {b.shape}")
    if a.ndim == 4:
        return float(np.mean([psnr(x, y, peak) for x, y in zip(a, b)]))
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def mse(a, b) -> float:
    """Mean squared error of two equally shaped uint8 images or frame stacks."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise InputError(f"MSE needs equally shaped frames, got {a.shape} and {b.shape}")
    return float(np.mean((a - b) ** 2))


def pooled_psnr(errors: list[float], peak: float = 255.0) -> float:
    """PSNR of the mean MSE over clips: one exact clip (a static object, where linear blending is
    perfect) does not turn the whole average into inf as a mean of per-clip PSNRs would."""
    m = float(np.mean(errors))
    return math.inf if m == 0 else 10.0 * math.log10(peak * peak / m)


def keyframe_indices(num_frames: int, factor: int) -> list[int]:
    """Slots of the known frames in an interpolated clip of (K−1)·k+1 frames: 0, k, 2k, …"""
    if factor < 1 or (num_frames - 1) % factor:
        raise InputError(f"{num_frames} frames is not (K−1)·{factor}+1; render clips of that length")
    return list(range(0, num_frames, factor))


def inbetween_indices(num_frames: int, factor: int) -> list[int]:
    """The slots interpolation has to invent (everything but the key frames)."""
    known = set(keyframe_indices(num_frames, factor))
    return [i for i in range(num_frames) if i not in known]


def linear_blend(known, factor: int) -> np.ndarray:
    """The no-model baseline: K key frames → (K−1)·k+1 frames, each in-between a cross-fade of its
    two neighbouring key frames weighted by distance. uint8 in, uint8 out."""
    known = np.asarray(known, np.float64)
    if known.ndim != 4 or len(known) < 2:
        raise InputError(f"linear blending needs at least 2 key frames [K,H,W,3], got shape {known.shape}")
    frames = []
    for i in range(len(known) - 1):
        for r in range(factor):
            w = r / factor
            frames.append((1 - w) * known[i] + w * known[i + 1])
    frames.append(known[-1])
    return np.clip(np.rint(np.stack(frames)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- zero terminal SNR

def background_region(frame) -> np.ndarray:
    """Boolean [H,W] mask of the background as the oracle sees it: pixels near the border's median
    colour, minus a one-pixel ring around the object so anti-aliased edges don't count."""
    img = np.asarray(frame, np.float32)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    obj = np.linalg.norm(img - np.median(border, axis=0), axis=-1) > OBJECT_DISTANCE
    grown = obj.copy()
    grown[1:] |= obj[:-1]
    grown[:-1] |= obj[1:]
    grown[:, 1:] |= obj[:, :-1]
    grown[:, :-1] |= obj[:, 1:]
    return ~grown


def background_intensity(frames) -> float:
    """Mean grey level (0..255) of the background region over all frames of a clip.

    §3.3 / Lin et al.: a schedule with signal left at t = N cannot make very dark or very bright
    images (the mean leaks in from the training distribution); with zero terminal SNR a prompted
    black background should come out near 0 and a white one near 255."""
    frames = np.asarray(frames)
    regions = [(f, background_region(f)) for f in frames]
    values = [f[region].mean() for f, region in regions if region.any()]
    return float(np.mean(values)) if values else float(np.asarray(frames, np.float64).mean())


def zero_snr_check(clips: list[tuple[np.ndarray, dict]]) -> dict:
    """Mean background intensity of the clips prompted with a black and with a white background."""
    out = {}
    for name in ("black", "white"):
        values = [background_intensity(f) for f, a in clips if a["background"] == name]
        out[f"{name}_mean"] = float(np.mean(values)) if values else None
        out[f"n_{name}"] = len(values)
    return out


# --------------------------------------------------------------------------- temporal consistency

def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def clip_consistency(measurements: list[dict], frame_size: int) -> dict:
    """Stability of one clip from toy_world.measure_frames: visible (fraction of frames with an
    object), colour (fraction showing the clip's majority colour), size_cv (std/mean of the object
    area) and jerk (mean |second difference| of the centroid, in frame sides; 0 for constant velocity)."""
    seen = [m for m in measurements if m["centroid"] is not None]
    out = dict(visible=len(seen) / len(measurements) if measurements else 0.0, colour=None, size_cv=None, jerk=None)
    if not seen:
        return out
    colours = [m["colour"] for m in seen]
    out["colour"] = max(colours.count(c) for c in set(colours)) / len(colours)
    sizes = np.array([m["size"] for m in seen], np.float64)
    out["size_cv"] = float(sizes.std() / sizes.mean()) if len(sizes) > 1 else 0.0
    # only runs of consecutive visible frames give honest second differences
    path = [m["centroid"] for m in measurements]
    jerks = [np.hypot(*np.subtract(np.add(path[t - 1], path[t + 1]), np.multiply(2, path[t])))
             for t in range(1, len(path) - 1) if None not in (path[t - 1], path[t], path[t + 1])]
    out["jerk"] = float(np.mean(jerks)) / frame_size if jerks else None
    return out


def temporal_consistency(clips: list[list[dict]], frame_size: int) -> dict:
    """clip_consistency averaged over clips (clips without a visible object count only in `visible`)."""
    per_clip = [clip_consistency(m, frame_size) for m in clips]
    return {k: _mean(c[k] for c in per_clip) for k in ("visible", "colour", "size_cv", "jerk")}
