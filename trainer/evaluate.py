"""`emu-video eval`: generate toy-world clips with the full pipeline and judge them with the
analytic oracle (no learned metric — §4 found FVD/IS don't track quality; the toy world lets us
measure faithfulness exactly instead).

    emu-video eval --model DIR --out DIR [--held-out N | --prompts FILE] [--seed K --steps S --frames F]

Sections (metric functions in eval_metrics.py):
  text        prompt → first frame → video → interpolation, judged per attribute; HELD_OUT
              combinations (generalisation) and seen ones reported separately
  animate     a rendered ground-truth first frame + its prompt → video; PSNR of frame 0 vs the picture,
              as shipped (known frame kept) and as the model alone redraws it
  temporal    colour/size stability and trajectory smoothness of the text-to-video clips
  zero_snr    mean background intensity of clips prompted black / white (§3.3, Lin et al.)
  interp      in-between frames of rendered clips vs the truth, next to linear blending

--first-frames-only (automatic for a t2i export, which has no temporal layers) judges the
text→image step alone: the same first frames, colour/shape/background, and the zero-SNR check.
--model takes a model set folder or a trainer export folder (<out_dir>/export).

Writes report.md, metrics.json and contact sheets (one row per clip) into --out.
`compare_reports([metrics.json, ...])` turns several runs into one markdown table (docs/EVAL.md).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..cli import INTERP_FALLBACK, SAMPLING_FALLBACK
from ..model.conditioning import linear_blend
from ..model.config import GUIDANCE_FORMS
from ..model.sampling import first_frame_settings
from ..model.config import InputError
from ..model.video_io import atomic_path, to_uint8_frames, write_png_grid
from . import eval_metrics as em
from . import toy_world as tw

# metric key → (format, what it measures); the order is the report's row order
METRICS = {
    "animate.psnr_frame0": ("{:.2f} dB", "image faithfulness: PSNR of generated frame 0 vs the conditioning picture"),
    "animate.psnr_frame0_model": ("{:.2f} dB", "the same without keep_known: frame 0 as the model alone redraws it"),
    "animate.psnr_vae": ("{:.2f} dB", "ceiling: PSNR of the conditioning picture after a VAE round trip (no diffusion)"),
    "animate.shape_kept": ("{:.0%}", "frames after frame 0 of the animate clips that show the picture's shape"),
    **{f"animate.shape_kept.{s}": ("{:.0%}", f"the same, {s} prompts only") for s in tw.SHAPES},
    "temporal.visible": ("{:.0%}", "frames in which the oracle finds an object"),
    "temporal.colour": ("{:.0%}", "frames showing the clip's majority object colour"),
    "temporal.size_cv": ("{:.3f}", "object area std/mean across frames (0 = stable)"),
    "temporal.jerk": ("{:.4f}", "mean |centroid 2nd difference| in frame sides (0 = constant velocity)"),
    "zero_snr.black_mean": ("{:.1f}", "mean background level (0..255) of clips prompted black (want ~0)"),
    "zero_snr.white_mean": ("{:.1f}", "mean background level (0..255) of clips prompted white (want ~255)"),
    "interp.psnr_model": ("{:.2f} dB", "interpolation model: PSNR (pooled MSE over clips) of in-between frames vs the true ones"),
    "interp.psnr_linear": ("{:.2f} dB", "baseline: linear blend of the same key frames, same in-betweens"),
    "interp.psnr_latent_blend": ("{:.2f} dB", "baseline: the key frames' latents blended linearly, then decoded "
                                 "(where an interp_fill = 'residual' model starts)"),
    "interp.psnr_vae": ("{:.2f} dB", "ceiling: the true in-betweens after a VAE round trip (what any latent model can reach)"),
}
GROUPS = {"held_out": "held-out (generalisation)", "seen": "seen combinations",
          "first_frame": "their first frames alone (text→image; motion not judged)",
          "animate": "animate (ground-truth first frame)", "ceiling": "oracle on rendered truth (ceiling)",
          "vae": "oracle on the truth after a VAE round trip (the latent's ceiling)"}


@dataclass
class EvalSettings:
    seed: int = 0
    steps: int = SAMPLING_FALLBACK["steps"]
    frames: int = 0            # video frames before interpolation; 0 = the model's
    size: int = 0              # square pixel size; 0 = the model's resolution
    image_cfg: float = SAMPLING_FALLBACK["image_cfg"]
    text_cfg: float = SAMPLING_FALLBACK["text_cfg"]
    first_frame_cfg: float | None = None   # the text→image step's own text guidance; None = text_cfg
    late_text_cfg: float | None = None     # the video's text guidance on its late steps; None = text_cfg
    late_below: float = SAMPLING_FALLBACK["late_below"]   # ... t < late_below·T (SamplerSettings.late_below)
    guidance: str = SAMPLING_FALLBACK["guidance"]         # the video's guidance form: "cfg" or "cfg++"
    rescale: float = SAMPLING_FALLBACK["rescale"]
    keep_known: bool = SAMPLING_FALLBACK["keep_known"]   # known frames pinned (SamplerSettings.keep_known)
    interp_image_cfg: float = INTERP_FALLBACK["interp_image_cfg"]   # the interpolation model's own guidance
    interp_text_cfg: float = INTERP_FALLBACK["interp_text_cfg"]
    interp_denoise: float = INTERP_FALLBACK["interp_denoise"]     # < 1: in-betweens start from the keys' blend
    device: str | None = None
    direct: bool = False       # direct text-to-video (Table 1a baseline): no first frame, no animate section
    first_frames_only: bool = False   # the text→image step alone (always so for a model without temporal layers)


# --------------------------------------------------------------------------- prompts

def default_prompts(n: int, seed: int = 0) -> list[dict]:
    """n HELD_OUT-combination prompts (generalisation) followed by n seen ones."""
    if n < 1:
        raise InputError(f"--held-out must be >= 1, got {n}")
    held = [dict(p, group="held_out") for p in tw.sample_prompts(n, seed, held_out=True)]
    return held + [dict(p, group="seen") for p in tw.sample_prompts(n, seed)]


def read_prompts(path) -> list[dict]:
    """Toy-world captions, one per line (blank lines and #comments skipped); grouped by tw.is_held_out."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompt file not found: {path}; give a text file with one toy-world caption per line")
    lines = [s.strip() for s in path.read_text().splitlines()]
    prompts = []
    for line in lines:
        if line and not line.startswith("#"):
            a = em.parse_caption(line)
            prompts.append(dict(caption=line, attributes=a, group="held_out" if tw.is_held_out(a) else "seen"))
    if not prompts:
        raise InputError(f"{path} has no prompts; write one toy-world caption per line")
    return prompts


# --------------------------------------------------------------------------- generation

class EvalPipeline:
    """The model set plus sampling settings; each method returns uint8 frames [T,H,W,3]."""

    def __init__(self, models: dict, settings: EvalSettings):
        from ..model import pipeline
        from ..model.sampling import SamplerSettings

        self.p, self.models = pipeline, models
        self.F, self.vae, self.interp = models["video"], models["vae"], models.get("interp")
        self.schedule = self.F.schedule
        self.interp_schedule = self.interp.schedule if self.interp else None
        self.sampler = SamplerSettings(steps=settings.steps, image_cfg=settings.image_cfg,
                                       text_cfg=settings.text_cfg, rescale=settings.rescale,
                                       keep_known=settings.keep_known, late_text_cfg=settings.late_text_cfg,
                                       late_below=settings.late_below, guidance=settings.guidance)
        self.sampler.validate(self.schedule)
        self.interp_sampler = replace(self.sampler, image_cfg=settings.interp_image_cfg,
                                      text_cfg=settings.interp_text_cfg, late_text_cfg=None, guidance="cfg",
                                      denoise=settings.interp_denoise)
        self.interp_sampler.validate(self.schedule)
        self.first_sampler = first_frame_settings(self.sampler, settings.first_frame_cfg)
        self.size = settings.size or self.F.config.resolution
        self.frames = pipeline.check_frames(settings.frames or self.F.config.num_frames, self.F.config)
        self.vae_factor = self.vae.cfg.downsample_factor
        self.direct = settings.direct
        pipeline.latent_size(self.size, self.size, self.F.config, self.vae_factor)   # fail before sampling

    @property
    def factor(self) -> int:
        return self.interp.config.interp_factor if self.interp else 1

    def _text(self, caption: str):
        return self.p.encode_prompts(self.models["text"], caption)

    def _encode(self, frames: np.ndarray):
        import torch
        return self.p.encode_image(self.vae, torch.from_numpy(np.asarray(frames)).float() / 255)

    def _pixels(self, latents) -> np.ndarray:
        return to_uint8_frames(self.p.decode(self.vae, latents)[0])

    def _video(self, text, null, image_latent, seed: int, sampler=None):
        return self.p.generate_video(self.F.unet, self.schedule, self.F.config, text, null, sampler or self.sampler,
                                     image_latent, self.frames, seed)

    def _interpolate(self, latents, text, null, seed: int):
        return self.p.interpolate(self.interp.unet, self.interp_schedule, self.interp.config, latents, text, null,
                                  self.interp_sampler, seed, factor=self.factor)

    def text_to_video(self, caption: str, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
        """§3.2: first frame from text, video from text + frame, then interpolation when available.
        Returns (uint8 frames, the uint8 first frame or None). Direct mode (Table 1a's baseline)
        samples the video from the text alone, with no first frame."""
        text, null = self._text(caption)
        if self.direct:
            video = self.p.generate_video(self.F.unet, self.schedule, self.F.config, text, null, self.sampler, None,
                                          self.frames, seed, self.size, self.size, self.vae_factor)
            if self.interp is not None:
                video = self._interpolate(video, text, null, seed)
            return self._pixels(video), None
        image = self._first_frame(text, null, seed)
        video = self._video(text, null, self.p.encode_image(self.vae, image), seed)
        if self.interp is not None:
            video = self._interpolate(video, text, null, seed)
        return self._pixels(video), to_uint8_frames(image)[0]

    def _first_frame(self, text, null, seed: int):
        first = self.p.generate_first_frame(self.F.unet, self.schedule, self.F.config, text, null, self.first_sampler,
                                            self.size, self.size, seed, self.vae_factor)
        return self.p.decode(self.vae, first)[:, 0]

    def first_frame(self, caption: str, seed: int) -> np.ndarray:
        """§3.2 step 1 alone: the uint8 picture F draws from the text, exactly as text_to_video's first frame."""
        text, null = self._text(caption)
        return to_uint8_frames(self._first_frame(text, null, seed))[0]

    def animate(self, picture: np.ndarray, caption: str, seed: int, keep_known: bool | None = None) -> np.ndarray:
        """keep_known None = the settings' choice; False shows what the model alone makes of frame 0."""
        text, null = self._text(caption)
        sampler = self.sampler if keep_known is None else replace(self.sampler, keep_known=keep_known)
        return self._pixels(self._video(text, null, self._encode(picture[None]), seed, sampler))

    def _clip_latents(self, frames: np.ndarray):
        return self._encode(frames).permute(1, 0, 2, 3)[None]       # [K,C,h,w] → [1,C,K,h,w]

    def round_trip(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames through VAE encode + decode: the best any latent model can draw them."""
        return self._pixels(self._clip_latents(frames))

    def latent_blend(self, known: np.ndarray) -> np.ndarray:
        """K known uint8 frames → (K−1)·k+1 frames: their latents blended linearly, then decoded."""
        return self._pixels(linear_blend(self._clip_latents(known), self.factor))

    def interpolate_frames(self, known: np.ndarray, caption: str, seed: int) -> np.ndarray:
        """K known uint8 frames → (K−1)·k+1 frames through the VAE and the interpolation model."""
        text, null = self._text(caption)
        return self._pixels(self._interpolate(self._clip_latents(known), text, null, seed))


# --------------------------------------------------------------------------- the sections

def _progress(items, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(items, desc=desc, disable=not enabled, dynamic_ncols=True)


def eval_text(pipe: EvalPipeline, prompts: list[dict], seed: int, progress: bool) -> list[dict]:
    clips = []
    for i, p in enumerate(_progress(prompts, "eval text→video", progress)):
        frames, first = pipe.text_to_video(p["caption"], seed + i)
        # the same prompt rendered by the world at the same size: how well the oracle itself can
        # read clips this small (its shape test needs ~64 px to be exact)
        truth = tw.render_clip(p["attributes"], pipe.size, len(frames), seed=[seed, i])
        clips.append(dict(p, frames=frames, measurements=tw.measure_frames(frames),
                          judgement=tw.judge(frames, p["attributes"]), ceiling=tw.judge(truth, p["attributes"]),
                          first_frame=None if first is None else tw.judge_image(first, p["attributes"]),
                          vae=tw.judge(pipe.round_trip(truth), p["attributes"])))
    return clips


def eval_first_frames(pipe: EvalPipeline, prompts: list[dict], seed: int, progress: bool) -> list[dict]:
    """The text→image step alone: each prompt's first frame (the same seeds as eval_text), judged as
    a picture, beside the rendered truth and its VAE round trip."""
    clips = []
    for i, p in enumerate(_progress(prompts, "eval text→image", progress)):
        first = pipe.first_frame(p["caption"], seed + i)
        truth = tw.render_clip(p["attributes"], pipe.size, 1, seed=[seed, i])[0]
        clips.append(dict(p, frames=first[None], first_frame=tw.judge_image(first, p["attributes"]),
                          ceiling=tw.judge_image(truth, p["attributes"]),
                          vae=tw.judge_image(pipe.round_trip(truth[None])[0], p["attributes"])))
    return clips


def eval_animate(pipe: EvalPipeline, prompts: list[dict], seed: int, progress: bool) -> list[dict]:
    clips = []
    for i, p in enumerate(_progress(prompts, "eval animate", progress)):
        picture = tw.render_clip(p["attributes"], pipe.size, pipe.frames, seed=[seed, i])[0]
        frames = pipe.animate(picture, p["caption"], seed + i)
        # with keep_known, frame 0 is the picture through the VAE by construction: measure the model's own too
        redrawn = pipe.animate(picture, p["caption"], seed + i, keep_known=False) if pipe.sampler.keep_known else frames
        clips.append(dict(p, picture=picture, frames=frames, measurements=tw.measure_frames(frames),
                          psnr=em.psnr(frames[0], picture),
                          psnr_model=em.psnr(redrawn[0], picture),
                          psnr_vae=em.psnr(pipe.round_trip(picture[None])[0], picture),
                          judgement=tw.judge(frames, p["attributes"])))
    return clips


def eval_interp(pipe: EvalPipeline, prompts: list[dict], seed: int, progress: bool) -> list[dict]:
    """Rendered clips of (F−1)·k+1 frames: the model and linear blending both see every k-th frame."""
    k, length = pipe.factor, (pipe.frames - 1) * pipe.factor + 1
    keys = em.keyframe_indices(length, k)
    middle = em.inbetween_indices(length, k)
    clips = []
    for i, p in enumerate(_progress(prompts, "eval interpolation", progress)):
        truth = tw.render_clip(p["attributes"], pipe.size, length, seed=[seed, 0x1E7, i])
        model = pipe.interpolate_frames(truth[keys], p["caption"], seed + i)
        linear = em.linear_blend(truth[keys], k)
        clips.append(dict(p, truth=truth, model=model, linear=linear, mse_model=em.mse(model[middle], truth[middle]),
                          mse_linear=em.mse(linear[middle], truth[middle]),
                          mse_latent_blend=em.mse(pipe.latent_blend(truth[keys])[middle], truth[middle]),
                          mse_vae=em.mse(pipe.round_trip(truth[middle]), truth[middle])))
    return clips


def summarise(text: list[dict], animate: list[dict], interp: list[dict], frame_size: int) -> dict:
    """The flat metric dict of metrics.json (keys as in METRICS plus text.<group>.<attribute>)."""
    out = {}
    for group in ("held_out", "seen"):
        rates = em.text_faithfulness([c["judgement"] for c in text if c["group"] == group])
        out.update({f"text.{group}.{k}": v for k, v in rates.items()})
    # where text following is lost: already in the text→image step, or in the video after it
    firsts = [c["first_frame"] for c in text if c.get("first_frame") is not None]
    out.update({f"text.first_frame.{k}": v for k, v in em.text_faithfulness(firsts).items()})
    out.update({f"text.animate.{k}": v for k, v in em.text_faithfulness([c["judgement"] for c in animate]).items()})
    for group in ("ceiling", "vae"):
        out.update({f"text.{group}.{k}": v for k, v in em.text_faithfulness([c[group] for c in text]).items()})
    out["animate.psnr_frame0"] = float(np.mean([c["psnr"] for c in animate])) if animate else None
    out["animate.psnr_frame0_model"] = float(np.mean([c["psnr_model"] for c in animate])) if animate else None
    out["animate.psnr_vae"] = float(np.mean([c["psnr_vae"] for c in animate])) if animate else None
    kept = em.shape_kept([(c["measurements"], c["attributes"]["shape"]) for c in animate], tw.SHAPES)
    out.update({"animate.shape_kept" + ("" if k == "all" else f".{k}"): v for k, v in kept.items()})
    temporal = em.temporal_consistency([c["measurements"] for c in text], frame_size)
    out.update({f"temporal.{k}": v for k, v in temporal.items()})
    zero = em.zero_snr_check([(c["frames"], c["attributes"]) for c in text])
    out.update({f"zero_snr.{k}": v for k, v in zero.items()})
    out["interp.psnr_model"] = em.pooled_psnr([c["mse_model"] for c in interp]) if interp else None
    out["interp.psnr_linear"] = em.pooled_psnr([c["mse_linear"] for c in interp]) if interp else None
    out["interp.psnr_latent_blend"] = em.pooled_psnr([c["mse_latent_blend"] for c in interp]) if interp else None
    out["interp.psnr_vae"] = em.pooled_psnr([c["mse_vae"] for c in interp]) if interp else None
    out["interp.n"] = len(interp)
    return out


def summarise_first_frames(clips: list[dict]) -> dict:
    """metrics.json's dict for a first-frames-only run: the first-frame, ceiling and VAE rows and the
    zero-SNR background check on the pictures."""
    out = {}
    for group in ("first_frame", "ceiling", "vae"):
        out.update({f"text.{group}.{k}": v for k, v in em.text_faithfulness([c[group] for c in clips]).items()})
    zero = em.zero_snr_check([(c["frames"], c["attributes"]) for c in clips])
    out.update({f"zero_snr.{k}": v for k, v in zero.items()})
    return out


# --------------------------------------------------------------------------- report

def _fmt(key: str, value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if key in METRICS:
        return METRICS[key][0].format(value)
    return f"{value:.0%}" if isinstance(value, float) else str(value)


def faithfulness_table(metrics: dict) -> str:
    rows = ["| prompts | n | colour | shape | motion | background | all |", "|---|---|---|---|---|---|---|"]
    for group, label in GROUPS.items():
        if not metrics.get(f"text.{group}.n"):
            continue                                   # a section this run did not have
        cells = [_fmt("", metrics.get(f"text.{group}.{k}")) for k in (*em.ATTRIBUTES, "all")]
        rows.append(f"| {label} | {metrics.get(f'text.{group}.n', 0)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def metric_table(metrics: dict) -> str:
    rows = ["| metric | value | what it measures |", "|---|---|---|"]
    rows += [f"| {k} | {_fmt(k, metrics.get(k))} | {desc} |" for k, (_, desc) in METRICS.items() if k in metrics]
    return "\n".join(rows)


def render_report(result: dict, sheets: dict[str, str]) -> str:
    settings = result["settings"]
    lines = ["# Emu Video toy-world evaluation", "",
             "Judged by the analytic oracle of trainer/toy_world.py (no learned metric).", "",
             "## Text faithfulness", "", faithfulness_table(result["metrics"]), "",
             "## Image faithfulness, temporal consistency, zero-SNR, interpolation", "",
             metric_table(result["metrics"]), "", "## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in settings.items()]
    lines += ["", "## Contact sheets (one row per clip)", ""]
    lines += [f"**{title}**\n\n![{title}]({name})\n" for title, name in sheets.items()]
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    with atomic_path(str(path)) as tmp:
        Path(tmp).write_text(text)


def write_sheets(out: Path, text: list[dict], animate: list[dict], interp: list[dict],
                 first_frames: bool = False) -> dict[str, str]:
    """Contact sheets: title → file name. Animate rows start with the conditioning picture;
    interpolation clips take three rows: truth, linear blend, model. First frames alone: one
    picture per prompt, a row per group."""
    sheets = {}

    def sheet(title, name, rows):
        if rows:
            write_png_grid(np.concatenate(rows), str(out / name), cols=len(rows[0]), pad=1)
            sheets[title] = name
    if first_frames:
        for group, label in (("held_out", "text→image, held-out prompts"), ("seen", "text→image, seen prompts")):
            pictures = [c["frames"] for c in text if c["group"] == group]
            sheet(label, f"t2i_{group}.png", [np.concatenate(pictures)] if pictures else [])
        return sheets
    for group, label in (("held_out", "text→video, held-out prompts"), ("seen", "text→video, seen prompts")):
        sheet(label, f"t2v_{group}.png", [c["frames"] for c in text if c["group"] == group])
    sheet("animate: picture, then generated frames", "animate.png",
          [np.concatenate([c["picture"][None], c["frames"]]) for c in animate])
    sheet("interpolation: truth / linear blend / model", "interp.png",
          [rows for c in interp for rows in (c["truth"], c["linear"], c["model"])])
    return sheets


# --------------------------------------------------------------------------- entry points

def evaluate(model_dir, out, prompts: list[dict], settings: EvalSettings, progress: bool = True) -> dict:
    """Run every section, write report.md / metrics.json / contact sheets into `out`; return metrics.json's dict."""
    import torch

    from .. import cli

    paths = cli.find_model_set(model_dir)
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe = EvalPipeline(cli.load_model_set(paths, device=device), settings)
    if not pipe.F.config.unet.temporal:              # a t2i export: it draws pictures, not videos
        settings = replace(settings, first_frames_only=True)
    if settings.first_frames_only and settings.direct:
        raise InputError("--direct samples videos without a first frame, so there is no first frame to judge; "
                         "drop --first-frames-only or --direct")
    if settings.first_frames_only:
        text, animate, interp = eval_first_frames(pipe, prompts, settings.seed, progress), [], []
        metrics = summarise_first_frames(text)
    else:
        text = eval_text(pipe, prompts, settings.seed, progress)
        # a direct text-to-video model was trained without image conditioning: there is nothing to animate
        animate = [] if settings.direct else eval_animate(pipe, prompts, settings.seed, progress)
        held = [p for p in prompts if p["group"] == "held_out"] or prompts
        interp = eval_interp(pipe, held, settings.seed, progress) if pipe.interp is not None else []
        metrics = summarise(text, animate, interp, pipe.size)
    recorded = dict(model_dir=str(model_dir), **{f"{k}_file": p.name for k, p in paths.items() if p.exists()},
                    **asdict(settings))
    recorded.update(device=str(device), size=pipe.size, frames=pipe.frames, interp_factor=pipe.factor,
                    prompts=len(prompts))
    result = dict(
        settings=recorded,
        metrics=metrics,
        clips=[dict(caption=c["caption"], group=c["group"], seed=settings.seed + i,
                    **c.get("judgement", {}), first_frame=c["first_frame"]) for i, c in enumerate(text)])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sheets = write_sheets(out, text, animate, interp, settings.first_frames_only)
    _write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
    _write_text(out / "report.md", render_report(result, sheets))
    return result


def _run_name(item, index: int) -> tuple[str, dict]:
    if isinstance(item, dict):
        return item.get("settings", {}).get("name") or f"run {index + 1}", item
    path = Path(item)
    if not path.is_file():
        raise InputError(f"metrics file not found: {path}; pass the metrics.json files `emu-video eval` wrote")
    return path.parent.name or path.stem, json.loads(path.read_text())


def compare_reports(reports: list, names: list[str] | None = None) -> str:
    """Several metrics.json (paths or loaded dicts) → one markdown table, a column per run
    (named by `names`, else by each file's folder) and a row per metric."""
    runs = [_run_name(r, i) for i, r in enumerate(reports)]
    if not runs:
        raise InputError("compare_reports needs at least one metrics.json")
    labels = list(names) if names else [name for name, _ in runs]
    if len(labels) != len(runs):
        raise InputError(f"got {len(labels)} names for {len(runs)} reports; give one name per report")
    keys = [f"text.{g}.{k}" for g in GROUPS for k in (*em.ATTRIBUTES, "all")] + list(METRICS)
    rows = ["| metric | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    rows += [f"| {k} | " + " | ".join(_fmt(k, r["metrics"].get(k)) for _, r in runs) + " |" for k in keys]
    return "\n".join(rows) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emu-video eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model set folder (emu-video init-models layout)")
    p.add_argument("--out", required=True, help="output folder for report.md, metrics.json and PNGs")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--prompts", help="text file, one toy-world caption per line")
    source.add_argument("--held-out", type=int, default=8,
                        help="N held-out-combination prompts plus N seen ones (default 8)")
    d = EvalSettings()
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--steps", type=int, default=d.steps, help="DDIM steps per sampling run")
    p.add_argument("--frames", type=int, default=d.frames, help="video frames before interpolation (0 = model's)")
    p.add_argument("--size", type=int, default=d.size, help="square pixel size (0 = model's resolution)")
    p.add_argument("--image-cfg", type=float, default=d.image_cfg)
    p.add_argument("--text-cfg", type=float, default=d.text_cfg)
    p.add_argument("--first-frame-cfg", type=float, default=d.first_frame_cfg,
                   help="text guidance of the text→image step (default: --text-cfg)")
    p.add_argument("--late-text-cfg", type=float, default=d.late_text_cfg,
                   help="the video's text guidance on its late steps (default: --text-cfg throughout)")
    p.add_argument("--late-below", type=float, default=d.late_below,
                   help=f"the late steps: t < this fraction of the training timesteps (default {d.late_below})")
    p.add_argument("--rescale", type=float, default=d.rescale, help="CFG rescale φ (0 = off)")
    p.add_argument("--guidance", choices=GUIDANCE_FORMS, default=d.guidance,
                   help="the video's guidance form (cfg++: renoise with the unguided branch, scales ~1)")
    p.add_argument("--interp-image-cfg", type=float, default=d.interp_image_cfg)
    p.add_argument("--interp-text-cfg", type=float, default=d.interp_text_cfg)
    p.add_argument("--interp-denoise", type=float, default=d.interp_denoise,
                   help="the fraction of the interpolation's steps run, from the key frames' blend (1 = all)")
    p.add_argument("--keep-known", action=argparse.BooleanOptionalAction, default=d.keep_known,
                   help="known frames come out exactly as given (default: on, as in generate/animate)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    p.add_argument("--direct", action="store_true",
                   help="direct text-to-video: sample the video without a first frame (Table 1a baseline)")
    p.add_argument("--first-frames-only", action="store_true",
                   help="judge the text→image step alone (automatic for a t2i export without temporal layers)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def eval_main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    settings = EvalSettings(seed=args.seed, steps=args.steps, frames=args.frames, size=args.size,
                            image_cfg=args.image_cfg, text_cfg=args.text_cfg, first_frame_cfg=args.first_frame_cfg,
                            late_text_cfg=args.late_text_cfg, late_below=args.late_below,
                            guidance=args.guidance, rescale=args.rescale, device=args.device,
                            direct=args.direct, keep_known=args.keep_known, first_frames_only=args.first_frames_only,
                            interp_image_cfg=args.interp_image_cfg, interp_text_cfg=args.interp_text_cfg,
                            interp_denoise=args.interp_denoise)
    try:
        prompts = read_prompts(args.prompts) if args.prompts else default_prompts(args.held_out, args.seed)
        result = evaluate(args.model, args.out, prompts, settings, progress=not args.quiet)
    except ValueError as e:    # InputError / ConfigError / CheckpointError: messages written for users
        print(f"emu-video eval: {e}", file=sys.stderr)
        return 1
    m = result["metrics"]
    if "text.held_out.all" not in m:
        print(f"first frames: shape {_fmt('', m['text.first_frame.shape'])}, all-correct "
              f"{_fmt('', m['text.first_frame.all'])}; wrote {Path(args.out) / 'report.md'}")
        return 0
    print(f"held-out all-correct {_fmt('', m['text.held_out.all'])}, seen {_fmt('', m['text.seen.all'])}; "
          f"wrote {Path(args.out) / 'report.md'}")
    return 0


main = eval_main
