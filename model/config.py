"""Configuration dataclasses: the one source of truth shared by the model, the trainer,
the ComfyUI nodes and every checkpoint (stored there as JSON metadata).

Paper references are to Emu Video (arXiv 2311.10709).
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A config (or a checkpoint's stored config) is malformed; the message says how."""


class InputError(ValueError):
    """Bad user input (tensor shapes, sizes, files, values); the message says what to do."""


# The sampler's guidance forms (model/guidance.py): here, torch-free, so the CLI and nodes can list them.
GUIDANCE_FORMS = ("cfg", "cfg++")


@dataclass
class UNetConfig:
    """The spatial U-Net in Stable Diffusion's LDM layout plus the temporal layers (§3.2, §3.3).

    Defaults are SD 1.x's spatial shape with Emu Video's 8-channel latent.
    """
    latent_channels: int = 8              # C; the paper's autoencoder has 8 latent channels (§3.3)
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (0, 1, 2)   # levels (indices into channel_mult) with transformers
    num_heads: int = 8                    # used when head_dim == -1 (SD 1.x)
    head_dim: int = -1                    # fixed channels per head when > 0 (SD 2.x uses 64)
    transformer_depth: int = 1
    norm_groups: int = 32                 # configurable so tiny test models work
    # One cross-attention per text encoder in every transformer block (§3.3: separate
    # cross-attention layers attend to T5 and to CLIP). The first one keeps SD's `attn2` keys.
    context_dims: tuple[int, ...] = (768,)
    use_linear_proj: bool = False         # SD 2.x transformers project with Linear, SD 1.x with 1x1 conv
    # Temporal layers (§3.2): 1D conv after every spatial ResBlock, 1D attention after every
    # spatial transformer; identity at initialisation.
    temporal: bool = True
    temporal_kernel: int = 3
    temporal_head_dim: int = 64
    max_frames: int = 128                 # length of the temporal position table
    # Not in the paper: temporal attention blocks also cross-attend to the text (as SVD's do), so
    # words only the video shows (motion) reach the temporal layers directly (temporal.TemporalBlock).
    temporal_text: bool = False

    @property
    def in_channels(self) -> int:
        """Model input: [noisy latent (C) | known-frame latents (C) | mask (1)] (Fig. 3)."""
        return 2 * self.latent_channels + 1

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def validate(self) -> None:
        for level in self.attention_levels:
            if not 0 <= level < len(self.channel_mult):
                raise ConfigError(f"attention level {level} outside channel_mult of length {len(self.channel_mult)}")
        for mult in self.channel_mult:
            if (self.model_channels * mult) % self.norm_groups:
                raise ConfigError(
                    f"model_channels*{mult}={self.model_channels * mult} is not divisible by norm_groups="
                    f"{self.norm_groups}; choose norm_groups that divides every level's width")
        if not self.context_dims:
            raise ConfigError("context_dims is empty: the model needs at least one text encoder")
        if self.temporal_kernel % 2 != 1:
            raise ConfigError(f"temporal_kernel must be odd (got {self.temporal_kernel}) so the identity tap is centred")


@dataclass
class VAEConfig:
    """SD `first_stage_model` (AutoencoderKL) layout with a configurable latent width."""
    in_channels: int = 3
    latent_channels: int = 8
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    norm_groups: int = 32
    scale_factor: float = 0.18215         # latent = (mean - shift) * scale
    shift_factor: float = 0.0
    decode_chunk: int = 8                 # frames per encode/decode call: memory stays flat in T

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


@dataclass
class ScheduleConfig:
    """Diffusion noise schedule (§3.3: N = 1000; 512 px training uses v-prediction and zero terminal SNR)."""
    beta_schedule: str = "scaled_linear"  # "scaled_linear" (SD; ComfyUI calls it "linear") | "linear" | "squaredcos_cap_v2"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000
    zero_terminal_snr: bool = True        # Lin et al. 2023, rescale so alphā_N = 0
    prediction_type: str = "v"            # "v" | "eps"
    snr_shift: float = 1.0                # SNR(t) × snr_shift (schedule.shift_snr); 1 = SD's schedule as is


@dataclass
class TextEncoderConfig:
    """One frozen text encoder (§3.3: T5 and CLIP, each with its own cross-attention)."""
    name: str = "clip"                    # key used in files and node outputs
    kind: str = "clip"                    # "clip" | "t5"
    dim: int = 768                        # hidden size fed to cross-attention
    max_length: int = 77                  # prompts are always padded to this length


INTERP_FILLS = ("zero", "blend", "residual")   # I's in-between conditioning (conditioning.interpolation)
IMAGE_FILLS = ("zero", "hold")                  # F's unknown frame slots (conditioning.first_frame)


@dataclass
class ModelConfig:
    """Everything a video (F) or interpolation (I) model checkpoint needs to be used."""
    unet: UNetConfig = field(default_factory=UNetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    text_encoders: tuple[TextEncoderConfig, ...] = (TextEncoderConfig(),)
    kind: str = "video"                   # "video" (F) | "interp" (I)
    num_frames: int = 8                   # frames it was trained on (T, or T_p for interp)
    fps: int = 8
    resolution: int = 256                 # pixels (square) it was trained at
    interp_factor: int = 4                # interp: T known frames -> (T-1)*k+1 frames
    interp_fill: str = "zero"             # interp: in-between slots of the conditioning: "zero" (§3.2, the
                                          # paper) | "blend" (linear blend of the neighbouring key latents) |
                                          # "residual" (blend, and I draws only the correction to it)
    image_fill: str = "zero"              # video: unknown frame slots of the conditioning: "zero" (§3.2, Fig. 3,
                                          # the paper) | "hold" (each holds the last known frame, as SVD repeats
                                          # its image; the mask still marks only the known ones)
    stage: str = "init"

    def validate(self) -> None:
        self.unet.validate()
        dims = tuple(t.dim for t in self.text_encoders)
        if dims != tuple(self.unet.context_dims):
            raise ConfigError(f"text encoder dims {dims} do not match unet.context_dims {tuple(self.unet.context_dims)}")
        if self.kind not in ("video", "interp"):
            raise ConfigError(f"kind must be 'video' or 'interp', got {self.kind!r}")
        if self.interp_fill not in INTERP_FILLS:
            raise ConfigError(f"interp_fill must be one of {INTERP_FILLS} ('zero' = the paper's "
                              f"zero-interleaving), got {self.interp_fill!r}")
        if self.image_fill not in IMAGE_FILLS:
            raise ConfigError(f"image_fill must be one of {IMAGE_FILLS} ('zero' = the paper's zero padding), "
                              f"got {self.image_fill!r}")
        if not self.schedule.snr_shift > 0:
            raise ConfigError(f"schedule.snr_shift must be > 0 (1 = unshifted), got {self.schedule.snr_shift!r}")
        if self.schedule.prediction_type not in ("v", "eps"):
            raise ConfigError(f"prediction_type must be 'v' or 'eps', got {self.schedule.prediction_type!r}")


# --------------------------------------------------------------------------- (de)serialisation

def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def to_json(cfg) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True)


def from_dict(cls, data: dict):
    """Build dataclass `cls` from a plain dict (as stored in JSON), rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {sorted(unknown)}; this file was written by "
                          f"another version or is not an Emu Video config")
    kwargs = {k: _coerce(hints[k], v, f"{cls.__name__}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def from_json(cls, text: str):
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{cls.__name__}: stored config is not valid JSON ({e})") from None
    return from_dict(cls, data)


def _coerce(hint, value, where: str):
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else typing.Any
        return tuple(_coerce(inner, v, where) for v in value)
    if hint in (int, float, bool, str):
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value
