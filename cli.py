"""`emu-video` command line.

    emu-video init-models --preset tiny --out DIR       a small random model set (ComfyUI models/ layout)
    emu-video init-models --preset demo --out DIR       a copy of the shipped trained demo set (demo/)
    emu-video run WORKFLOW.json [--set N.INPUT=V ...]   run a shipped workflow (UI or API format) headlessly
    emu-video generate --prompt "..." --out clip.mp4    text → first frame → video → interpolation → mp4
    emu-video animate --image PIC --prompt "..." --out clip.mp4
    emu-video train | toy-data | select-hq | bench | eval | table1 | guidance-probe   (hooks into trainer/, bench.py)

Heavy imports (torch, transformers, av) happen inside the commands, so `--help` is instant.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
from pathlib import Path

from .model.config import GUIDANCE_FORMS

PACKAGE_DIR = Path(__file__).resolve().parent
DEMO_DIR = PACKAGE_DIR / "demo"
MANIFEST = "emu_video_models.json"
TRAINER_EXPORT = "models.json"             # what `emu-video train` writes into <out_dir>/export
EXAMPLE_IMAGE = "emu_video_example.png"   # the picture workflows/animate_image.json loads
# The file names the shipped workflows reference (init-models writes exactly these).
TINY_FILES = {
    "video": "diffusion_models/emu_video_tiny.safetensors",
    "interp": "diffusion_models/emu_video_interp_tiny.safetensors",
    "vae": "vae/emu_video_vae_tiny.safetensors",
    "t5": "text_encoders/emu_video_t5_tiny.safetensors",
    "clip": "text_encoders/emu_video_clip_tiny.safetensors",
}
# Subcommands owned by other modules: name -> (module inside the package, function(argv), help).
HOOKS = {
    "train": ("trainer.train", "train_main", "train a model stage from a TOML config (trainer/)"),
    "toy-data": ("trainer.toy_world", "toy_data_main", "render the procedural toy-world video dataset"),
    "select-hq": ("trainer.hq", "select_hq_main", "select a high-motion, high-quality subset (§3.3)"),
    "bench": ("bench", "bench_main", "benchmarks (bench.py)"),
    "eval": ("trainer.evaluate", "eval_main", "evaluate a model on held-out toy-world prompts"),
    "guidance-probe": ("trainer.guidance_probe", "guidance_probe_main",
                       "one step of each guidance branch on noised toy clips: which scales keep each shape"),
    "table1": ("trainer.ablations", "table1_main", "reproduce the paper's Table 1 ablations at toy scale (docs/EVAL.md)"),
}


class CLIError(Exception):
    """A user-facing error: printed without a traceback."""


# --------------------------------------------------------------------------- init-models

def init_models(out: str | os.PathLike, preset: str = "tiny", seed: int = 0,
                input_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write a complete random model set (video F, interp I, VAE, T5, CLIP) laid out like ComfyUI's
    models/ folder, with the file names the shipped workflows use, plus the input picture of
    workflows/animate_image.json into `input_dir` (default: ComfyUI's input/ beside a folder named
    models, else OUT/input). Deterministic for a seed."""
    import torch

    from .model.checkpoint import save_model
    from .model.text import save_text_encoder
    from .model.tokenizer_build import build_tiny_text_encoders
    from .model.unet import EmuUNet
    from .model.vae import AutoencoderKL, save_vae

    if preset == "demo":
        return copy_demo_set(out, input_dir)
    if preset not in INIT_PRESETS:
        raise CLIError(f"unknown preset {preset!r}; init-models supports {sorted([*INIT_PRESETS, 'demo'])} (random weights "
                       f"of a paper-sized model would be ~17 GB and useless)")
    video_cfg, interp_cfg, vae_cfg = INIT_PRESETS[preset]()
    out = Path(out)
    paths = {k: out / v for k, v in TINY_FILES.items()}
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(vae_cfg)
        video = _randomised_temporal(EmuUNet(video_cfg.unet), seed + 1)
        interp = EmuUNet(interp_cfg.unet)
        interp.load_state_dict(video.state_dict())   # §3.2: I is initialised from F
        _randomised_temporal(interp, seed + 2)
    save_vae(vae, paths["vae"])
    save_model(paths["video"], video, video_cfg)
    save_model(paths["interp"], interp, interp_cfg)
    encoders = build_tiny_text_encoders(_corpus(), t5_dim=video_cfg.text_encoders[0].dim,
                                        clip_dim=video_cfg.text_encoders[1].dim,
                                        max_length=video_cfg.text_encoders[0].max_length, seed=seed)
    save_text_encoder(encoders["t5"], paths["t5"])
    save_text_encoder(encoders["clip"], paths["clip"])
    paths["picture"] = write_example_image(Path(input_dir or _input_dir(out)) / EXAMPLE_IMAGE)
    (out / MANIFEST).write_text(json.dumps(TINY_FILES, indent=2) + "\n")   # last: marks the set complete
    return paths


def copy_demo_set(out: str | os.PathLike, input_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """`init-models --preset demo`: copy the shipped trained demo set (demo/) into OUT under the file
    names the shipped workflows use (TINY_FILES), so every workflow runs on it unchanged."""
    import shutil

    from .model.video_io import atomic_path

    sources = find_model_set(DEMO_DIR) if DEMO_DIR.is_dir() else None
    if sources is None or "interp" not in sources or not sources["interp"].exists():
        raise CLIError(f"no trained demo model in {DEMO_DIR}; build it with `make demo-model` "
                       f"or use `--preset tiny` for a random model set")
    out = Path(out)
    paths = {}
    for kind, rel in TINY_FILES.items():
        paths[kind] = out / rel
        paths[kind].parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(str(paths[kind])) as tmp:
            shutil.copyfile(sources[kind], tmp)
    paths["picture"] = write_example_image(Path(input_dir or _input_dir(out)) / EXAMPLE_IMAGE)
    manifest = dict(TINY_FILES, sampling=model_set_sampling(DEMO_DIR))
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")   # last: marks the set complete
    return paths


def _randomised_temporal(unet, seed: int):
    """Random models keep §3.3's identity init of the temporal layers (frames would be independent
    images). Nudge them so the temporal and conditioning code paths have a visible effect."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.temporal_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return unet


def _tiny_preset():
    import dataclasses

    from .model.config import VAEConfig
    from .model.presets import tiny_config

    video = tiny_config()
    video = dataclasses.replace(video, kind="video", num_frames=4, fps=4, resolution=32, interp_factor=2)
    interp = dataclasses.replace(video, kind="interp", num_frames=7, fps=8)
    vae = VAEConfig(latent_channels=video.unet.latent_channels, base_channels=16, channel_mult=(1, 2),
                    num_res_blocks=1, norm_groups=8, scale_factor=1.0, decode_chunk=4)
    return video, interp, vae


INIT_PRESETS = {"tiny": _tiny_preset}


def _corpus() -> list[str]:
    """Prompts the tiny tokenizers are trained on: every toy-world caption (held-out combinations
    included, so evaluation prompts tokenize too), or a fixed corpus if the toy world is absent."""
    import itertools

    try:
        from .trainer import toy_world as tw
    except ImportError:
        tw = None
    if tw is not None:
        combos = itertools.product(tw.SHAPES, tw.COLOURS, tw.MOTIONS, tw.BACKGROUNDS, tw.SPEEDS)
        return sorted({tw.caption(dict(shape=s, colour=c, motion=m, background=b,
                                       speed="none" if m == "static" else v)) for s, c, m, b, v in combos})
    shapes, colours = ["circle", "square", "triangle"], ["red", "green", "blue", "yellow", "white", "black"]
    return [f"a {c} {s} moving {m} on a {b} background" for s in shapes for c in colours
            for m in ("left", "right", "up", "down") for b in ("black", "white")]


def write_example_image(path: str | os.PathLike) -> Path:
    """The input picture of workflows/animate_image.json: a red disc on black (the toy world's style)."""
    import numpy as np

    from .model.video_io import write_png

    size = 64
    yy, xx = np.mgrid[:size, :size]
    image = np.zeros((size, size, 3), np.uint8)
    image[(yy - 30) ** 2 + (xx - 26) ** 2 <= 12 ** 2] = (220, 30, 30)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(write_png(image, str(path)))


# --------------------------------------------------------------------------- model sets

def trainer_export_files(folder: Path) -> dict[str, Path]:
    """A trainer export folder (`emu-video train`'s <out_dir>/export, whose models.json lists the
    files as the trainer saw them: absolute or relative to where it ran) → model-set kind → path."""
    data = json.loads((folder / TRAINER_EXPORT).read_text())
    t5, clip = data["text"]
    files = {"interp" if data.get("stage") == "interp" else "video": data["model"], "vae": data["vae"],
             "t5": t5, "clip": clip}
    # a file of the export itself is found beside models.json wherever the run was started
    return {k: Path(v) if Path(v).exists() or not (folder / Path(v).name).exists() else folder / Path(v).name
            for k, v in files.items()}


def find_model_set(model_dir: str | os.PathLike | None) -> dict[str, Path]:
    """The files of a model set folder: its manifest, else a trainer export's models.json, else the
    init-models names."""
    folder = Path(model_dir) if model_dir else DEMO_DIR
    if not folder.is_dir():
        if model_dir:
            raise CLIError(f"model folder not found: {folder}")
        raise CLIError("no model given and no demo model shipped with this install; run "
                       "`emu-video init-models --out models` and pass `--model models`")
    manifest = folder / MANIFEST
    if not manifest.is_file() and (folder / TRAINER_EXPORT).is_file():
        paths = trainer_export_files(folder)
        if "video" not in paths:
            raise CLIError(f"{folder} is an interpolation model's export; pass a video stage's export folder "
                           f"(or a model set folder holding both) as --model")
        missing = [f"{k}: {p}" for k, p in paths.items() if not p.exists()]
        if missing:
            raise CLIError(f"{folder / TRAINER_EXPORT} lists files that are not there ({', '.join(missing)}); "
                           f"run from the folder the trainer ran in, or give absolute paths")
        return paths
    files = json.loads(manifest.read_text()) if manifest.is_file() else dict(TINY_FILES)
    paths = {k: folder / v for k, v in files.items() if isinstance(v, str)}   # "sampling" holds defaults
    missing = [f"{k}: {p}" for k, p in paths.items() if k != "interp" and not p.exists()]
    if missing:
        raise CLIError(f"model set in {folder} is incomplete (missing {', '.join(missing)}); run "
                       f"`emu-video init-models --out {folder}` or pass another --model")
    return paths


def model_set_sampling(model_dir: str | os.PathLike | None) -> dict:
    """The sampling defaults a model set's manifest recommends (steps, text_cfg, ...), or {}."""
    manifest = (Path(model_dir) if model_dir else DEMO_DIR) / MANIFEST
    if not manifest.is_file():
        return {}
    return dict(json.loads(manifest.read_text()).get("sampling") or {})


def load_model_set(paths: dict[str, Path], device=None, dtype=None) -> dict:
    from .model.checkpoint import load_model
    from .model.vae import load_vae
    from .nodes.loaders import EmuModel, load_text_encoders

    video, cfg = load_model(paths["video"], device=device or "cpu", dtype=dtype, kinds=("video",))
    models = {"video": EmuModel(video, cfg, paths["video"].name), "vae": load_vae(paths["vae"]).to(device or "cpu"),
              "text": load_text_encoders([paths["t5"], paths["clip"]], device=device or "cpu")}
    if paths.get("interp") and paths["interp"].exists():
        interp, icfg = load_model(paths["interp"], device=device or "cpu", dtype=dtype, kinds=("interp",))
        models["interp"] = EmuModel(interp, icfg, paths["interp"].name)
    return models


# --------------------------------------------------------------------------- generate / animate

def make_video(args, image=None) -> Path:
    """first frame (unless `image` is given) → video → interpolation → decode → mp4."""
    import torch

    from .model import pipeline
    from .model.sampling import SamplerSettings
    from .model.video_io import write_mp4
    from .nodes.sampling_nodes import step_progress

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    models = load_model_set(find_model_set(args.model), device=device)
    F, vae = models["video"], models["vae"]
    cfg = F.config
    if not cfg.unet.temporal:
        raise CLIError(f"{F.name} is a text-to-image model (no temporal layers): it draws one picture, not a "
                       f"video; pass a video stage's export or a model set as --model (`emu-video eval` judges "
                       f"a text-to-image export's pictures)")
    height, width = args.height or cfg.resolution, args.width or cfg.resolution
    frames = args.frames or cfg.num_frames
    settings = SamplerSettings(**sampling_settings(args))
    schedule = F.schedule
    text, null = pipeline.encode_prompts(models["text"], args.prompt, args.negative)
    if image is None:
        latent = pipeline.generate_first_frame(F.unet, schedule, cfg, text, null, first_frame_settings(args, settings),
                                               height, width, args.seed,
                                               vae.cfg.downsample_factor,
                                               callback=step_progress(settings.steps, "first frame"))
        image = pipeline.decode(vae, latent)[:, 0]
    pipeline.latent_size(height, width, cfg, vae.cfg.downsample_factor)
    image = pipeline.prepare_image(image, height, width, args.resize)
    video = pipeline.generate_video(F.unet, schedule, cfg, text, null, settings, pipeline.encode_image(vae, image),
                                    frames, args.seed, callback=step_progress(settings.steps, "video"))
    fps = cfg.fps
    if "interp" in models and not args.no_interp:
        interp = models["interp"]
        in_between = interp_settings(args, settings)
        video = pipeline.interpolate(interp.unet, interp.schedule, interp.config, video, text, null,
                                     in_between, args.seed, callback=step_progress(in_between.steps_run, "interpolation"))
        fps *= interp.config.interp_factor
    pixels = pipeline.decode(vae, video)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(pixels[0], str(out), fps)
    print(f"wrote {out} ({pixels.shape[1]} frames, {pixels.shape[3]}x{pixels.shape[2]}, {fps} fps)")
    return out


SAMPLING_FALLBACK = {"steps": 50, "image_cfg": 1.5, "text_cfg": 7.5, "rescale": 0.7, "keep_known": True,
                     "late_text_cfg": None, "late_below": 0.5, "guidance": "cfg"}
# The interpolation model's own guidance: I is trained with its key frames always given, so its ∅-image
# branch is untrained, and on the demo text guidance blurred the in-betweens (MODEL_CARD.md); 1 = one forward.
# interp_denoise < 1 starts the in-betweens part-way from the key frames' blend (SamplerSettings.denoise).
INTERP_FALLBACK = {"interp_image_cfg": 1.0, "interp_text_cfg": 1.0, "interp_denoise": 1.0}


def _chosen(args, fallbacks: dict) -> dict:
    """What the user gave, else the model set's manifest defaults, else the fallback."""
    recommended = model_set_sampling(args.model)
    return {k: getattr(args, k) if getattr(args, k) is not None else recommended.get(k, fallback)
            for k, fallback in fallbacks.items()}


def sampling_settings(args) -> dict:
    """SamplerSettings arguments for the first frame and the video."""
    return _chosen(args, SAMPLING_FALLBACK)


def first_frame_settings(args, settings):
    """The video's SamplerSettings with the text→image step's own text guidance: --first-frame-cfg, else the
    model set's, else the video's (sampling.first_frame_settings)."""
    from .model.sampling import first_frame_settings as with_first_frame_cfg

    return with_first_frame_cfg(settings, _chosen(args, {"first_frame_cfg": None})["first_frame_cfg"])


def interp_settings(args, settings):
    """The video's SamplerSettings with the interpolation model's own guidance scales and denoise."""
    chosen = _chosen(args, INTERP_FALLBACK)
    return dataclasses.replace(settings, image_cfg=chosen["interp_image_cfg"], text_cfg=chosen["interp_text_cfg"],
                               late_text_cfg=None, guidance="cfg", denoise=chosen["interp_denoise"])


def read_picture(path: str | os.PathLike):
    """A PNG/JPEG/WEBP → IMAGE [1, H, W, 3] float 0..1 (the headless LoadImage's reader)."""
    from .nodes.workflow import read_image

    if not Path(path).is_file():
        raise CLIError(f"image not found: {path}")
    return read_image(str(path))[0]


# --------------------------------------------------------------------------- run

def parse_overrides(items: list[str]) -> dict:
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise CLIError(f"--set expects NODE.INPUT=VALUE (node id or title), got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def run_workflow_file(workflow_path, overrides=None, models=None, out=None, progress=True) -> dict:
    """Run a workflow JSON (UI or API format) headlessly; returns the output nodes' results."""
    from . import NODE_CLASS_MAPPINGS
    from .nodes.workflow import run_workflow

    path = Path(workflow_path)
    if not path.is_file():
        raise CLIError(f"workflow not found: {path}")
    try:
        workflow = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CLIError(f"{path} is not valid JSON ({e})") from None
    if models:
        os.environ["EMU_VIDEO_MODELS"] = str(Path(models).resolve())
    if out:
        os.environ["EMU_VIDEO_OUTPUT"] = str(Path(out).resolve())
    if models and "EMU_VIDEO_INPUT" not in os.environ:
        # init-models writes the workflows' input picture next to the models (ComfyUI: input/)
        os.environ["EMU_VIDEO_INPUT"] = str(_input_dir(Path(models)).resolve())
    return run_workflow(workflow, dict(NODE_CLASS_MAPPINGS), overrides=overrides or {}, progress=progress)


def _input_dir(models_dir: Path) -> Path:
    """ComfyUI keeps input pictures in <root>/input beside <root>/models."""
    return models_dir.parent / "input" if models_dir.name == "models" else models_dir / "input"


def output_files(results: dict) -> list[str]:
    files = []
    for value in results.values():
        ui = value.get("ui", {}) if isinstance(value, dict) else {}
        for key in ("video", "images", "gifs"):
            for item in ui.get(key, []) or []:
                if isinstance(item, dict) and "filename" in item:
                    files.append(os.path.join(item.get("subfolder", ""), item["filename"]))
    return files


# --------------------------------------------------------------------------- argparse

def _add_sampling_args(p):
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative", default="", help="negative prompt (default: the trained empty-prompt null)")
    p.add_argument("--out", default="clip.mp4", help="output mp4 path")
    p.add_argument("--model", default=None, help="model set folder (default: the shipped demo model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=0, help="video frames before interpolation (0 = model's)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"DDIM steps (default: the model set's, else {SAMPLING_FALLBACK['steps']})")
    p.add_argument("--width", type=int, default=0)
    p.add_argument("--height", type=int, default=0)
    p.add_argument("--image-cfg", type=float, default=None,
                   help=f"image guidance (default: the model set's, else {SAMPLING_FALLBACK['image_cfg']})")
    p.add_argument("--text-cfg", type=float, default=None,
                   help=f"text guidance (default: the model set's, else {SAMPLING_FALLBACK['text_cfg']})")
    p.add_argument("--first-frame-cfg", type=float, default=None,
                   help="text guidance of the first frame (text→image; default: the model set's, else --text-cfg)")
    p.add_argument("--late-text-cfg", type=float, default=None,
                   help="the video's text guidance on its late steps (default: the model set's, else --text-cfg)")
    p.add_argument("--late-below", type=float, default=None,
                   help="the late steps: t < this fraction of the training timesteps (default: the model set's, "
                        f"else {SAMPLING_FALLBACK['late_below']})")
    p.add_argument("--rescale", type=float, default=None,
                   help=f"CFG rescale φ, 0 = off (default: the model set's, else {SAMPLING_FALLBACK['rescale']})")
    p.add_argument("--guidance", choices=GUIDANCE_FORMS, default=None,
                   help="the video's guidance form; cfg++ renoises each step with the unguided branch and takes "
                        "scales near 1, e.g. --guidance cfg++ --image-cfg 1 --text-cfg 1 (default: the model "
                        "set's, else cfg)")
    p.add_argument("--interp-image-cfg", type=float, default=None,
                   help="the interpolation model's image guidance (default: the model set's, else 1 = off)")
    p.add_argument("--interp-text-cfg", type=float, default=None,
                   help="the interpolation model's text guidance (default: the model set's, else 1 = off)")
    p.add_argument("--interp-denoise", type=float, default=None,
                   help="the fraction of the steps the interpolation runs, starting from the key frames' blend "
                        "noised part-way (default: the model set's, else 1 = from pure noise)")
    p.add_argument("--keep-known", action=argparse.BooleanOptionalAction, default=None,
                   help="known frames (the picture, key frames) come out exactly as given (default: on)")
    p.add_argument("--resize", choices=["crop", "pad", "stretch"], default="crop",
                   help="how a picture is fitted to the model size (default: short-side resize + centre crop)")
    p.add_argument("--no-interp", action="store_true", help="skip the interpolation model")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emu-video", description="Emu Video: factorized text-to-video.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("init-models", help="write a small random model set (ComfyUI models/ layout)")
    p.add_argument("--preset", default="tiny", help=f"one of {sorted([*INIT_PRESETS, 'demo'])} (demo: copy the "
                                                    f"shipped trained model under the workflows' file names)")
    p.add_argument("--out", required=True, help="models folder (e.g. ComfyUI/models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-dir", default=None, help=f"where to write {EXAMPLE_IMAGE} (default: ComfyUI's input/ "
                                                     f"beside a folder named models, else OUT/input)")

    p = sub.add_parser("run", help="run a workflow JSON (UI or API format) headlessly")
    p.add_argument("workflow")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="override an input (node id or title); VALUE is JSON or a plain string")
    p.add_argument("--models", default=None, help="models folder (default: $EMU_VIDEO_MODELS or ./models)")
    p.add_argument("--out", default=None, help="output folder (default: $EMU_VIDEO_OUTPUT or ./output)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    _add_sampling_args(sub.add_parser("generate", help="text → video mp4"))
    p = sub.add_parser("animate", help="picture + text → video mp4")
    p.add_argument("--image", required=True)
    _add_sampling_args(p)

    for name, (_, _, help_text) in HOOKS.items():
        hp = sub.add_parser(name, help=help_text, add_help=False)
        hp.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def run_hook(name: str, argv: list[str]):
    module_name, func_name, _ = HOOKS[name]
    try:
        module = importlib.import_module(f"{__package__}.{module_name}")
    except ModuleNotFoundError as e:
        raise CLIError(f"`emu-video {name}` is not available in this install ({module_name} is missing: {e})") from None
    func = getattr(module, func_name, None)
    if func is None:
        raise CLIError(f"`emu-video {name}`: {module_name} has no {func_name}(argv)")
    return func(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in HOOKS:
        try:
            return int(run_hook(argv[0], argv[1:]) or 0)
        except CLIError as e:
            print(f"emu-video: {e}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return _dispatch(args)
    except CLIError as e:
        print(f"emu-video: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # InputError / ConfigError / CheckpointError: messages written for users
        print(f"emu-video {args.command}: {e}", file=sys.stderr)
        return 1


def _dispatch(args) -> int:
    if args.command == "init-models":
        paths = init_models(args.out, args.preset, args.seed, args.input_dir)
        for kind, path in paths.items():
            print(f"{kind:7s} {path}")
        return 0
    if args.command == "run":
        results = run_workflow_file(args.workflow, parse_overrides(args.overrides), args.models, args.out,
                                    progress=not args.quiet)
        for f in output_files(results):
            print(f"output: {f}")
        return 0
    if args.command == "generate":
        make_video(args)
        return 0
    if args.command == "animate":
        make_video(args, image=read_picture(args.image))
        return 0
    raise CLIError(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
