"""Trainer configuration: typed dataclasses loaded from TOML, with dotted `--set` overrides.

One TrainConfig describes one stage of Emu Video's multi-stage recipe (§3.3):
`vae` → `t2i` → `video` (stage 1: low res / high fps, stage 2: high res / low fps, optional 16 frames,
`hq` fine-tune) → `interp`. Stages are chained by `init_from = <previous stage's export>`.
The resolved config is stored verbatim (JSON) in every resume checkpoint and export.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..model.config import IMAGE_FILLS, INTERP_FILLS, ConfigError

STAGES = ("vae", "t2i", "video", "interp")
PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine", "linear")
STRATEGIES = ("ddp", "fsdp")
TIMESTEP_SAMPLING = ("uniform", "logit_normal")


@dataclass
class ModelSection:
    preset: str = "tiny"                  # model.presets name; ignored when init_from is set (its config wins)
    train_spatial: bool = False           # Table 1e ablation: also train the spatial weights (paper: frozen)
    gradient_checkpointing: bool = False
    prediction_type: str = "v"            # §3.3: v-prediction ...
    zero_terminal_snr: bool = True        # ... on a zero-terminal-SNR schedule (stage 1 in the paper used SD's)
    snr_shift: float = 1.0                # SNR(t) × this (model.schedule.shift_snr): > 1 for latents smaller than SD's 64×64
    temporal_text: bool = False           # temporal attention cross-attends to the text too (UNetConfig.temporal_text;
                                          # not the paper's); a model started from that already has it keeps it


@dataclass
class VAESection:
    path: str = ""                        # trained VAE export (stages t2i/video/interp); "" = none
    # Architecture and loss of the `vae` stage (toy worlds without a pretrained autoencoder).
    latent_channels: int = 4
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    norm_groups: int = 8
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    kl_weight: float = 1e-6               # "small KL": keeps the latent smooth without blurring recon
    focus_weight: float = 0.0             # > 0: weight pixels by contrast with the frame's border colour (objectives.focus_weights)
    train_decoder_only: bool = False      # stage vae: fine-tune the decoder of the VAE at `path`, encoder frozen, so
                                          # the latent space later stages learned stays exactly the same (as SD's
                                          # sd-vae-ft-mse); the architecture is the file's, the fields above are unused


@dataclass
class TextSection:
    paths: tuple[str, ...] = ()           # text-encoder exports, in the model's context order; () = build tiny
    build_tiny: bool = True               # toy worlds: tiny random T5 + CLIP (dims from the model config)
                                          # on the toy world's vocabulary, exported with the stage


@dataclass
class DataSection:
    root: str = ""                        # dataset folder (manifest.jsonl or clip.mp4 + clip.txt pairs)
    manifest: str = ""                    # manifest file name inside root ("" = default; e.g. manifest_hq.jsonl)
    toy_clips: int = 0                    # > 0: generate this many toy-world clips into root if it is empty
    toy_size: int = 64
    toy_frames: int = 16                  # toy clips are toy_frames / toy_fps seconds long
    toy_fps: int = 8
    toy_lossless: bool = False            # toy clips as lossless RGB H.264 (toy_world.generate), not yuv420p crf 18
    num_frames: int = 8                   # T (video), T_p (interp)
    fps: int = 8
    size: int = 32                        # square crop, pixels
    batch_size: int = 2                   # per rank, per micro-step
    start: str = "random"                 # clip start: random | center (center is needed by the cache)
    augment: str = ""                     # "" | "flip" (also swaps left/right in the caption) | "color"
    num_workers: int = 0


@dataclass
class DiffusionSection:
    p_drop_text: float = 0.05             # IP2P-style condition dropout for dual CFG (§3.2, appendix)
    p_drop_image: float = 0.05
    p_drop_both: float = 0.05
    interp_factor: int = 4                # interp: K known frames → (K-1)*factor+1 frames
    cond_noise_max: int = 250             # interp: conditioning noise τ ~ U{0..250} (§3.3)
    interp_fill: str = "zero"             # interp: "zero" (§3.2) | "blend" | "residual" (ModelConfig.interp_fill)
    image_fill: str = "zero"              # video: "zero" (§3.2) | "hold" (ModelConfig.image_fill)
    focus_weight: float = 0.0             # > 0: weight latent pixels by contrast with the frame's background
                                          # (objectives.latent_focus_weights); 0 = the paper's plain MSE
    focus_dilate: int = 0                 # latent pixels the focus weights spread by (max filter), so they are
                                          # flat across object edges and do not pull edges outward; 0 = off
    snr_gamma: float = 0.0                # > 0: Min-SNR-γ loss weights (objectives.min_snr_weights; Open-Sora-Plan
                                          # trains v + zero SNR with 5); 0 = the paper's plain MSE
    timestep_sampling: str = "uniform"    # uniform | logit_normal (objectives.timesteps: more mid-noise steps)


@dataclass
class OptimSection:
    lr: float = 1e-4
    betas: tuple[float, ...] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "constant"            # constant | cosine | linear (after warm-up)
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0                # 0 = off
    grad_accum: int = 1


@dataclass
class LoopSection:
    max_steps: int = 100
    precision: str = "fp32"               # fp32 | bf16 | fp16 (autocast; master weights stay fp32)
    log_every: int = 1
    checkpoint_every: int = 50            # resume state (0 = only at the end)
    keep_last: int = 2
    max_bad_steps: int = 10               # non-finite losses skipped in a row before giving up
    progress: bool = True
    device: str = "auto"                  # auto | cpu | cuda
    resume: bool = True                   # continue from the latest state in out_dir/checkpoints
    stop_at: int = 0                      # > 0: save state and stop after this step (time-limited jobs)
    tensorboard: bool = True              # if installed


@dataclass
class EMASection:
    enabled: bool = True
    decay: float = 0.999
    warmup: bool = True                   # decay ramps as (1+n)/(10+n) early so EMA is not stuck at init
    export: bool = True                   # export the EMA weights (else the raw weights)


@dataclass
class CacheSection:
    enabled: bool = False                 # cache VAE latents + text embeddings (fingerprinted safetensors)
    dir: str = ""                         # "" = <root>/.emu_cache


@dataclass
class ValidationSection:
    every: int = 0                        # steps; 0 = off (a final set is still written when prompts exist)
    prompts: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    steps: int = 10
    image_cfg: float = 1.5
    text_cfg: float = 5.0


@dataclass
class DistSection:
    strategy: str = "ddp"                 # ddp | fsdp (FSDP2 fully_shard; tested on CPU/gloo)
    backend: str = "auto"                 # auto = nccl on CUDA, gloo on CPU


@dataclass
class TrainConfig:
    stage: str = "video"
    name: str = "run"
    out_dir: str = "runs/run"
    seed: int = 0
    init_from: str = ""                   # previous stage's export (video/interp model .safetensors)
    model: ModelSection = field(default_factory=ModelSection)
    vae: VAESection = field(default_factory=VAESection)
    text: TextSection = field(default_factory=TextSection)
    data: DataSection = field(default_factory=DataSection)
    diffusion: DiffusionSection = field(default_factory=DiffusionSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loop: LoopSection = field(default_factory=LoopSection)
    ema: EMASection = field(default_factory=EMASection)
    cache: CacheSection = field(default_factory=CacheSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    dist: DistSection = field(default_factory=DistSection)

    def validate(self) -> None:
        _choice("stage", self.stage, STAGES)
        _choice("loop.precision", self.loop.precision, PRECISIONS)
        _choice("optim.schedule", self.optim.schedule, LR_SCHEDULES)
        _choice("dist.strategy", self.dist.strategy, STRATEGIES)
        _choice("model.prediction_type", self.model.prediction_type, ("v", "eps"))
        if not self.model.snr_shift > 0:
            raise ConfigError(f"model.snr_shift must be > 0 (1 = unshifted), got {self.model.snr_shift!r}")
        if self.model.prediction_type == "eps" and self.model.zero_terminal_snr:
            raise ConfigError("model.prediction_type = 'eps' cannot be used with zero_terminal_snr = true "
                              "(ε is undefined at SNR 0); use 'v' (the paper's choice)")
        if not self.data.root:
            raise ConfigError("data.root is empty; set it to a dataset folder (or a new folder plus "
                              "data.toy_clips > 0 to generate toy data)")
        positive = {"loop.max_steps": self.loop.max_steps, "data.batch_size": self.data.batch_size,
                    "data.num_frames": self.data.num_frames, "data.fps": self.data.fps,
                    "data.size": self.data.size, "optim.grad_accum": self.optim.grad_accum,
                    "loop.keep_last": self.loop.keep_last, "loop.log_every": self.loop.log_every}
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key} must be >= 1, got {value}")
        drop = self.diffusion.p_drop_text + self.diffusion.p_drop_image + self.diffusion.p_drop_both
        if not 0 <= drop <= 1:
            raise ConfigError(f"diffusion.p_drop_* must sum to a probability in [0, 1], got {drop}")
        if self.stage == "interp" and self.data.num_frames % self.diffusion.interp_factor != 1 % \
                self.diffusion.interp_factor:
            raise ConfigError(f"interp: data.num_frames ({self.data.num_frames}) must be (K-1)*interp_factor+1 "
                              f"(e.g. {2 * self.diffusion.interp_factor + 1}) so known frames land on slots")
        if self.cache.enabled and (self.data.start != "center" or self.data.augment):
            raise ConfigError("cache.enabled needs a deterministic clip per video: set data.start = 'center' "
                              "and data.augment = '' (or disable the cache)")
        if self.vae.train_decoder_only and (self.stage != "vae" or not self.vae.path):
            raise ConfigError(f"vae.train_decoder_only fine-tunes an existing VAE's decoder: it needs stage = 'vae' "
                              f"(got {self.stage!r}) and vae.path = that VAE's export (got {self.vae.path!r})")
        if self.stage in ("t2i", "video", "interp") and not self.vae.path:
            raise ConfigError(f"stage {self.stage!r} needs vae.path (a VAE export, e.g. from the 'vae' stage)")
        if not 0 <= self.ema.decay < 1:
            raise ConfigError(f"ema.decay must be in [0, 1), got {self.ema.decay}")
        if self.diffusion.focus_weight < 0:
            raise ConfigError(f"diffusion.focus_weight must be >= 0 (0 = plain MSE), got {self.diffusion.focus_weight}")
        if self.diffusion.focus_dilate < 0:
            raise ConfigError(f"diffusion.focus_dilate must be a whole number of latent pixels >= 0 (0 = off, 1 = "
                              f"a 3×3 plateau), got {self.diffusion.focus_dilate!r}")
        if not self.diffusion.snr_gamma >= 0 or self.diffusion.snr_gamma == float("inf"):
            raise ConfigError(f"diffusion.snr_gamma must be a finite number >= 0 (0 = off; 5 is the usual choice), "
                              f"got {self.diffusion.snr_gamma}")
        _choice("diffusion.timestep_sampling", self.diffusion.timestep_sampling, TIMESTEP_SAMPLING)
        _choice("diffusion.interp_fill", self.diffusion.interp_fill, INTERP_FILLS)
        _choice("diffusion.image_fill", self.diffusion.image_fill, IMAGE_FILLS)
        if self.stage == "interp" and self.diffusion.interp_fill == "residual" and \
                self.diffusion.p_drop_image + self.diffusion.p_drop_both > 0:
            raise ConfigError("diffusion.interp_fill = 'residual' draws corrections to the key frames' blend, which "
                              "means nothing without them: set diffusion.p_drop_image = 0 and p_drop_both = 0")
        if self.vae.focus_weight < 0:
            raise ConfigError(f"vae.focus_weight must be >= 0 (0 = plain per-pixel loss), got {self.vae.focus_weight}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} = {value!r} is not one of {list(allowed)}")


# --------------------------------------------------------------------------- loading

def load_config(path=None, overrides: list[str] = (), base: dict | None = None) -> TrainConfig:
    """TOML file (with optional `extends = "other.toml"` inheritance) + `section.key=value` overrides."""
    data = dict(base or {})
    if path is not None:
        data = _merge(data, read_toml(Path(path)))
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(data, key, value)
    cfg = build(TrainConfig, data, "config")
    cfg.validate()
    return cfg


def read_toml(path: Path) -> dict:
    """Read a TOML file, resolving `extends` (relative to the file) recursively."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; see trainer/configs/ for the shipped stages")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML ({e})") from None
    parent = data.pop("extends", None)
    if parent is None:
        return data
    return _merge(read_toml((path.parent / parent).resolve()), data)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(item: str) -> tuple[str, object]:
    """`optim.lr=3e-4` → ("optim.lr", 3e-4). Values are TOML literals; bare words are strings."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set optim.lr=3e-4")
    key, raw = item.split("=", 1)
    key, raw = key.strip(), raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word such as a path or stage name
    return key, value


def _set_dotted(data: dict, key: str, value) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
    node[parts[-1]] = value


def build(cls, data: dict, where: str):
    """Dataclass `cls` from a dict, type-checked; unknown keys are an error listing the valid ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table/section, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _typed(hints[k], v, f"{where}.{k}" if where != "config" else k) for k, v in data.items()}
    return cls(**kwargs)


def _typed(hint, value, where: str):
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if typing.get_origin(hint) is tuple:
        inner = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_typed(inner, v, where) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value


def config_from_json(text: str) -> TrainConfig:
    return build(TrainConfig, json.loads(text), "config")
