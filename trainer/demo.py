"""Assemble the shipped demo model set (`make demo-model`'s last training step) from the exports
of the trainer/configs/demo_*.toml chain: F from video stage 2, I from interp, the VAE (demo_vae's
encoder with the decoder demo_vae_decoder fine-tuned), and the frozen T5 + CLIP encoders built (and
exported) by the t2i stage.

    python -m emu_video.trainer.demo --runs runs/demo --out demo [--steps 25 --text-cfg 7.5 ...]
    python -m emu_video.trainer.demo --runs runs/demo --out demo --card docs/demo_eval   (MODEL_CARD.md)

The folder gets the model-set manifest `emu-video init-models` writes (cli.MANIFEST, kind → path),
so cli.find_model_set / load_model_set and `emu-video eval --model` read it unchanged, plus the
sampling defaults the CLI uses for this set. U-Net weights ship in fp16 (F and I together would be
~43 MB in fp32; the 30 MB budget of issue 5) — loading casts them back into the fp32 model.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch

from ..cli import INTERP_FALLBACK, SAMPLING_FALLBACK
from ..model.checkpoint import atomic_save
from ..model.config import GUIDANCE_FORMS
from ..model.video_io import atomic_path

# kind → file inside the demo folder (ComfyUI models/ layout)
DEMO_FILES = {
    "video": "diffusion_models/emu_video_demo.safetensors",
    "interp": "diffusion_models/emu_video_interp_demo.safetensors",
    "vae": "vae/emu_video_vae_demo.safetensors",
    "t5": "text_encoders/emu_video_t5_demo.safetensors",
    "clip": "text_encoders/emu_video_clip_demo.safetensors",
}
# kind → export of the demo chain, relative to --runs
EXPORTS = {
    "video": "video_stage2/export/model.safetensors",
    "interp": "interp/export/model.safetensors",
    "vae": "vae_decoder/export/vae.safetensors",      # demo_vae's latents, its decoder fine-tuned
    "t5": "t2i/export/text_t5.safetensors",
    "clip": "t2i/export/text_clip.safetensors",
}
HALF_PRECISION = ("video", "interp")


def copy_half(src: Path, dst: Path) -> Path:
    """Copy a safetensors file with its floating tensors in fp16 and its metadata unchanged."""
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in tensors.items()}
    return atomic_save(tensors, dst, meta)


def assemble(runs, out, sampling: dict | None = None) -> dict[str, Path]:
    """Copy the chain's exports from `runs` into `out` under DEMO_FILES names and write the manifest
    last (it marks the set complete). `sampling` (steps, text_cfg, image_cfg, ...) is stored beside
    the files for the CLI's defaults. Returns kind → written path."""
    from ..cli import MANIFEST

    runs, out = Path(runs), Path(out)
    sources = {kind: runs / rel for kind, rel in EXPORTS.items()}
    missing = [f"{kind}: {p}" for kind, p in sources.items() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"demo chain exports missing ({', '.join(missing)}); run `make demo-model` "
                                f"(or the trainer/configs/demo_*.toml stages) first")
    written = {}
    for kind, src in sources.items():
        dst = out / DEMO_FILES[kind]
        dst.parent.mkdir(parents=True, exist_ok=True)
        if kind in HALF_PRECISION:
            copy_half(src, dst)
        else:
            with atomic_path(str(dst)) as tmp:
                shutil.copyfile(src, tmp)
                os.chmod(tmp, 0o644)
        written[kind] = dst
    manifest = dict(DEMO_FILES, sampling=dict(sampling or {}))
    with atomic_path(str(out / MANIFEST)) as tmp:
        Path(tmp).write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(tmp, 0o644)            # mkstemp makes 0600; shipped files are world-readable
    return written


# --------------------------------------------------------------------------- model card

STAGES = ("vae", "vae_decoder", "t2i", "video_stage1", "video_stage2", "interp")
CONFIG_DIR = Path(__file__).parent / "configs"
# issue 5's targets: metric key → (comparison, threshold, label)
TARGETS = {
    "text.held_out.all": (">=", 0.80, "all attributes right, held-out prompts"),
    "animate.psnr_frame0": (">=", 28.0, "animate frame-0 PSNR (dB), as shipped (keep_known: the replacement method)"),
    "animate.psnr_frame0_model": (">=", 28.0, "animate frame-0 PSNR (dB), the model alone (keep_known off)"),
    "zero_snr.black_mean": ("<=", 0.05 * 255, "black-background mean (0..255; target 0.05 of full scale)"),
}
DISCUSSION = "## Discussion"
TRAINING_LOG = "training_log.json"       # the card's training table as data, beside the card


def stage_summary(runs: Path, stage: str) -> dict:
    """Steps, training-loop time (Σ steps / it_per_s over the log lines, so a resumed run counts
    both parts; start-up, data caching before step 1 and export are not included), last losses."""
    folder = runs / stage
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x.strip()]
    tail = [x["loss"] for x in lines[-8:]]
    cfg = json.loads((folder / "config.json").read_text())
    steps = [0] + [x["step"] for x in lines]
    wall = sum((b - a) / x["it_per_s"] for a, b, x in zip(steps, steps[1:], lines) if x.get("it_per_s"))
    return dict(stage=stage, steps=lines[-1]["step"] if lines else 0, wall_min=wall / 60,
                final_loss=sum(tail) / len(tail) if tail else float("nan"), first_loss=lines[0]["loss"] if lines else None,
                batch=cfg["data"]["batch_size"], size=cfg["data"]["size"], frames=cfg["data"]["num_frames"],
                fps=cfg["data"]["fps"], lr=cfg["optim"]["lr"], train_spatial=cfg["model"]["train_spatial"])


def _target_rows(metrics: dict) -> list[str]:
    rows = ["| target | required | measured | verdict |", "|---|---|---|---|"]
    for key, (op, want, label) in TARGETS.items():
        got = metrics.get(key)
        if got is None:
            rows.append(f"| {label} | {op} {want:g} | n/a | not measured |")
            continue
        ok = got >= want if op == ">=" else got <= want
        rows.append(f"| {label} | {op} {want:g} | {got:.3g} | {'met' if ok else f'missed by {abs(got - want):.3g}'} |")
    model, linear = metrics.get("interp.psnr_model"), metrics.get("interp.psnr_linear")
    if model is not None and linear is not None:
        verdict = "met" if model > linear else f"missed by {linear - model:.2f} dB"
        rows.append(f"| interpolation beats linear blending | model > linear | {model:.2f} vs {linear:.2f} dB | {verdict} |")
    return rows


def write_card(runs, eval_dir, out) -> Path:
    """demo/MODEL_CARD.md from the chain's logs and the eval's metrics.json; a hand-written section
    from `## Discussion` on in an existing card is kept."""
    from ..model.presets import count_parameters, get_preset
    from . import evaluate as ev
    from .config import read_toml
    from .toy_world import HELD_OUT

    runs, eval_dir, out = Path(runs), Path(eval_dir), Path(out)
    card = out / "MODEL_CARD.md"
    old = card.read_text() if card.is_file() else ""
    discussion = old[old.index(DISCUSSION):] if DISCUSSION in old else f"{DISCUSSION}\n\n(to be written)\n"
    base = read_toml(CONFIG_DIR / "demo_base.toml")
    d = base["data"]
    params = count_parameters(get_preset(base["model"]["preset"]))
    files = {k: out / rel for k, rel in DEMO_FILES.items()}
    result = json.loads((eval_dir / "metrics.json").read_text())
    metrics, settings = result["metrics"], result["settings"]
    lines = ["# Emu Video toy-world demo model", "",
             "Trained from scratch by this repository's trainer (`make demo-model`, configs "
             "`trainer/configs/demo_*.toml`) on the procedural toy world; frozen tiny T5 + CLIP text encoders "
             "whose tokenizers are trained on the world's vocabulary. Not a general video model: it only knows "
             "coloured shapes moving over plain backgrounds.", "",
             "## Files", "", "| kind | file | MiB |", "|---|---|---|"]
    lines += [f"| {k} | {DEMO_FILES[k]} | {p.stat().st_size / 2**20:.1f} |" for k, p in files.items() if p.exists()]
    lines += ["", f"U-Net (`demo` preset): {params['spatial'] / 1e6:.2f}M spatial + {params['temporal'] / 1e6:.2f}M "
              f"temporal parameters; F and I ship in fp16. Sampling defaults (manifest): "
              f"`{json.dumps(json.loads((out / 'emu_video_models.json').read_text()).get('sampling', {}))}`. "
              f"`emu-video init-models --preset demo --out DIR` copies this set into a ComfyUI models/ folder "
              f"under the file names the shipped workflows load (cli.TINY_FILES, e.g. video → "
              f"diffusion_models/emu_video_tiny.safetensors).", "",
              "## Data recipe", "",
              f"`emu-video toy-data runs/demo/data --clips {d['toy_clips']} --size {d['toy_size']} "
              f"--frames {d['toy_frames']} --fps {d['toy_fps']} --seed {base.get('seed', 0)}` (the first stage "
              f"writes it when the folder is empty): {d['toy_clips']} clips of {d['toy_frames']} frames "
              f"({d['toy_frames'] / d['toy_fps']:g} s at {d['toy_fps']} fps), {d['toy_size']} px, as H.264 yuv420p "
              f"(crf 18). The decoder fine-tune (demo_vae_decoder.toml) reads the same world written losslessly "
              f"(`--lossless`, RGB crf 0, into runs/demo/data_lossless).", "",
              "Held-out attribute combinations (never in training data; the eval's held-out prompts use only these):", ""]
    lines += [f"- {', '.join(f'{k} = {v}' for k, v in combo.items())}" for combo in HELD_OUT]
    lines += ["", "## Training chain", "",
              "| stage | config | px | frames @ fps | batch | lr | spatial trained | steps | loop time (min) | first → final loss |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    total, summaries = 0.0, stage_summaries(runs, out)
    for stage in STAGES:
        s = summaries.get(stage)
        if s is None:
            lines.append(f"| {stage} | demo_{stage}.toml | | | | | | not run | | |")
            continue
        total += s["wall_min"]
        spatial = "n/a" if stage in ("vae", "vae_decoder", "t2i") else ("yes" if s["train_spatial"] else "no (frozen)")
        lines.append(f"| {stage} | demo_{stage}.toml | {s['size']} | {s['frames']} @ {s['fps']} | {s['batch']} | "
                     f"{s['lr']:g} | {spatial} | {s['steps']} | {s['wall_min']:.1f} | "
                     f"{s['first_loss']:.4f} → {s['final_loss']:.4f} |")
    lines += ["", f"Total training-loop time {total:.0f} min on the 2-core CPU (Σ steps / measured it/s; "
              f"final loss: mean of the last 8 logged batch losses, logged every 25 steps).", "",
              "## Evaluation (`emu-video eval`)", "",
              f"`emu-video eval --model demo --out {eval_dir} --held-out {settings.get('prompts', 0) // 2} "
              f"--steps {settings.get('steps')} --text-cfg {settings.get('text_cfg')}{_optional_args(settings)} "
              f"--image-cfg {settings.get('image_cfg')} "
              f"--interp-text-cfg {settings.get('interp_text_cfg')} --interp-image-cfg {settings.get('interp_image_cfg')}"
              f"{_interp_denoise_arg(settings)}"
              f"{'' if settings.get('keep_known', True) else ' --no-keep-known'}` "
              f"(seed {settings.get('seed')}, {settings.get('size')} px, {settings.get('frames')} frames × "
              f"interpolation factor {settings.get('interp_factor')}); full report with contact sheets: "
              f"`{eval_dir}/report.md`.", "",
              ev.faithfulness_table(metrics), "", ev.metric_table(metrics), "",
              "## Targets (issue 5)", "", *_target_rows(metrics), "", discussion.rstrip(), ""]
    with atomic_path(str(out / TRAINING_LOG)) as tmp:
        Path(tmp).write_text(json.dumps(summaries, indent=1) + "\n")
        os.chmod(tmp, 0o644)
    with atomic_path(str(card)) as tmp:
        Path(tmp).write_text("\n".join(lines))
        os.chmod(tmp, 0o644)
    return card


def stage_summaries(runs: Path, out: Path) -> dict:
    """stage → stage_summary for every stage of the chain: from its run folder under `runs` when it is
    there, else as the set's TRAINING_LOG recorded it (a stage the shipped set kept from an earlier
    run, or a checkout without runs/), so the card's table can be rewritten from the repository alone."""
    log = out / TRAINING_LOG
    stored = json.loads(log.read_text()) if log.is_file() else {}
    found = {stage: stage_summary(runs, stage) for stage in STAGES
             if (runs / stage / "export" / "models.json").is_file()}
    merged = {**stored, **found}
    return {stage: merged[stage] for stage in STAGES if stage in merged}


def _interp_denoise_arg(settings: dict) -> str:
    denoise = settings.get("interp_denoise", 1)
    return "" if denoise == 1 else f" --interp-denoise {denoise}"


def _optional_args(settings: dict) -> str:
    """The eval command's flags for the sampling keys a set may lack (each left out when not set)."""
    args = "" if settings.get("first_frame_cfg") is None else f" --first-frame-cfg {settings['first_frame_cfg']}"
    if settings.get("late_text_cfg") is not None:
        below = settings.get("late_below", SAMPLING_FALLBACK["late_below"])
        args += f" --late-text-cfg {settings['late_text_cfg']} --late-below {below}"
    if settings.get("guidance", "cfg") != "cfg":
        args += f" --guidance {settings['guidance']}"
    return args


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m emu_video.trainer.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/demo", help="out_dir root of the demo_*.toml chain")
    p.add_argument("--out", default=None, help="demo folder (default: the package's demo/)")
    p.add_argument("--steps", type=int, default=25, help="default DDIM steps stored for the CLI")
    p.add_argument("--text-cfg", type=float, default=SAMPLING_FALLBACK["text_cfg"])
    p.add_argument("--first-frame-cfg", type=float, default=None,
                   help="text guidance of the first frame stored for the CLI (default: none, i.e. --text-cfg)")
    p.add_argument("--late-text-cfg", type=float, default=None,
                   help="the video's text guidance on its late steps, stored for the CLI (default: none, i.e. --text-cfg)")
    p.add_argument("--late-below", type=float, default=SAMPLING_FALLBACK["late_below"],
                   help="where the late steps start (fraction of T)")
    p.add_argument("--guidance", choices=GUIDANCE_FORMS, default=None,
                   help="the video's guidance form stored for the CLI (default: none, i.e. cfg)")
    p.add_argument("--image-cfg", type=float, default=SAMPLING_FALLBACK["image_cfg"])
    p.add_argument("--rescale", type=float, default=SAMPLING_FALLBACK["rescale"])
    p.add_argument("--interp-image-cfg", type=float, default=INTERP_FALLBACK["interp_image_cfg"])
    p.add_argument("--interp-text-cfg", type=float, default=INTERP_FALLBACK["interp_text_cfg"])
    p.add_argument("--interp-denoise", type=float, default=INTERP_FALLBACK["interp_denoise"],
                   help="the fraction of the interpolation's steps run from the key frames' blend, stored for the CLI")
    p.add_argument("--card", metavar="EVAL_DIR", default=None,
                   help="only (re)write MODEL_CARD.md from the chain's logs and EVAL_DIR/metrics.json")
    args = p.parse_args(argv)
    from ..cli import DEMO_DIR

    if args.card:
        print(f"wrote {write_card(args.runs, args.card, args.out or DEMO_DIR)}")
        return 0
    sampling = dict(steps=args.steps, text_cfg=args.text_cfg, image_cfg=args.image_cfg, rescale=args.rescale,
                    interp_image_cfg=args.interp_image_cfg, interp_text_cfg=args.interp_text_cfg,
                    interp_denoise=args.interp_denoise)
    if args.first_frame_cfg is not None:
        sampling["first_frame_cfg"] = args.first_frame_cfg
    if args.late_text_cfg is not None:
        sampling.update(late_text_cfg=args.late_text_cfg, late_below=args.late_below)
    if args.guidance is not None:
        sampling["guidance"] = args.guidance
    written = assemble(args.runs, args.out or DEMO_DIR, sampling)
    total = sum(p.stat().st_size for p in written.values())
    for kind, path in written.items():
        print(f"{kind:7s} {path}")
    print(f"total {total / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
