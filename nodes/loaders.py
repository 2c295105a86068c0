"""Loader nodes: video model F, interpolation model I, VAE, text encoders (T5 + CLIP).

Files come from ComfyUI's model folders (`diffusion_models`, `vae`, `text_encoders`) or, outside
ComfyUI, from the folder in $EMU_VIDEO_MODELS laid out the same way (see nodes/host.py). Loads are
cached by (file, modification time, dtype), so re-running a workflow does not re-read weights.
Models rest on the offload device and are moved to the compute device only while they run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from . import host

CATEGORY = "Emu Video"
DTYPES = ["auto", "fp32", "fp16", "bf16"]
DTYPE_TOOLTIP = ("Weight precision. auto: float32 on CPU, bfloat16 on GPUs that support it, else float16. "
                 "Use fp32 if you see NaN errors.")


@dataclass
class EmuModel:
    """What an EMU_VIDEO_MODEL / EMU_INTERP_MODEL wire carries."""
    unet: object          # model.unet.EmuUNet
    config: object        # model.config.ModelConfig
    name: str

    @property
    def schedule(self):
        from ..model.schedule import NoiseSchedule
        return NoiseSchedule.from_config(self.config.schedule)


def torch_dtype(name: str, device=None):
    import torch

    if name not in DTYPES:
        from ..model.config import InputError
        raise InputError(f"unknown dtype {name!r}; choose one of {DTYPES}")
    if name == "auto":
        device = torch.device(device if device is not None else host.torch_device())
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _cache_key(kind: str, path: str, *extra) -> tuple:
    return (kind, os.path.abspath(path), os.path.getmtime(path), *extra)


def _model_names(*kinds: str) -> list[str]:
    names: list[str] = []
    for kind in kinds:
        names += [n for n in host.list_models(kind) if n not in names]
    return names


def _resolve_any(kinds: tuple[str, ...], name: str) -> str:
    """First folder kind that has `name`; the error of the first kind lists where it looked."""
    first_error = None
    for kind in kinds:
        try:
            return str(host.resolve_model(kind, name))
        except Exception as e:  # noqa: BLE001 - re-raised below with the first folder's message
            first_error = first_error or e
    raise first_error


def load_emu_model(name: str, dtype: str = "auto", kind: str = "video") -> EmuModel:
    from ..model.checkpoint import load_model

    path = _resolve_any(("diffusion_models", "emu_video"), name)
    dt = torch_dtype(dtype)

    def load():
        unet, config = load_model(path, device=host.offload_device(), dtype=dt, kinds=(kind,))
        return EmuModel(unet, config, os.path.basename(path))
    return host.cached(_cache_key(kind, path, str(dt)), load)


def _list_or_placeholder(names: list[str]) -> list[str]:
    # ComfyUI needs a non-empty combo; the placeholder resolves to a clear "not found" error.
    return names or ["(no files found: run `emu-video init-models` or add models)"]


class _EmuModelLoader:
    """Shared by the video (F) and interpolation (I) loaders: same file format, different `kind`."""
    CATEGORY = CATEGORY
    FUNCTION = "load"
    KIND = "video"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (_list_or_placeholder(_model_names("diffusion_models", "emu_video")),
                           {"tooltip": cls.FILE_TOOLTIP}),
            "dtype": (DTYPES, {"default": "auto", "tooltip": DTYPE_TOOLTIP}),
        }}

    def load(self, model_name, dtype="auto"):
        return (load_emu_model(model_name, dtype, kind=self.KIND),)


class EmuVideoModelLoader(_EmuModelLoader):
    DESCRIPTION = ("Loads the Emu Video model F (§3.2): without its temporal layers it makes the first frame, "
                   "with them the video. Emu Video .safetensors files from models/diffusion_models.")
    RETURN_TYPES = ("EMU_VIDEO_MODEL",)
    RETURN_NAMES = ("model",)
    FILE_TOOLTIP = "Emu Video model file (kind 'video')."


class EmuVideoInterpModelLoader(_EmuModelLoader):
    DESCRIPTION = ("Loads the Emu Video interpolation model I (§3.2), which turns K frames into (K−1)·k+1 "
                   "frames. From models/diffusion_models (or models/emu_video).")
    RETURN_TYPES = ("EMU_INTERP_MODEL",)
    RETURN_NAMES = ("interp_model",)
    FILE_TOOLTIP = "Emu Video interpolation model file (kind 'interp')."
    KIND = "interp"


class EmuVideoVAELoader:
    DESCRIPTION = ("Loads the image autoencoder (§3.2 'Latents': frames are encoded independently). Accepts "
                   "Emu Video VAE files, SD VAE .safetensors and diffusers AutoencoderKL folders.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("EMU_VAE",)
    RETURN_NAMES = ("vae",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae_name": (_list_or_placeholder(_model_names("vae")), {"tooltip": "VAE file from models/vae."}),
            "dtype": (DTYPES, {"default": "fp32", "tooltip": "VAE precision; fp32 avoids colour banding "
                                                            "and NaNs in fp16 decoders."}),
        }}

    def load(self, vae_name, dtype="fp32"):
        from ..model.vae import load_vae

        path = str(host.resolve_model("vae", vae_name))
        dt = torch_dtype(dtype)
        return (host.cached(_cache_key("vae", path, str(dt)),
                            lambda: load_vae(path).to(device=host.offload_device(), dtype=dt)),)


class EmuVideoTextEncodersLoader:
    DESCRIPTION = ("Loads the frozen T5 and CLIP text encoders (§3.3: each has its own cross-attention in the "
                   "U-Net). Single .safetensors files (tokenizer embedded or in '<name>_tokenizer/' next to "
                   "the file) or Hugging Face folders in models/text_encoders.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("EMU_TEXT_ENCODERS",)
    RETURN_NAMES = ("text_encoders",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        names = _list_or_placeholder(_model_names("text_encoders"))
        return {"required": {
            "t5_name": (names, {"tooltip": "T5 encoder (first cross-attention after SD's attn2)."}),
            "clip_name": (names, {"tooltip": "CLIP text encoder."}),
            "dtype": (DTYPES, {"default": "auto", "tooltip": DTYPE_TOOLTIP}),
        }}

    def load(self, t5_name, clip_name, dtype="auto"):
        paths = [str(host.resolve_model("text_encoders", n)) for n in (t5_name, clip_name)]
        dt = torch_dtype(dtype)
        key = ("text",) + tuple((p, os.path.getmtime(p)) for p in paths) + (str(dt),)
        return (host.cached(key, lambda: load_text_encoders(paths, dt)),)


def load_text_encoders(paths, dtype=None, device=None):
    """[T5, CLIP] in that order: the order of ModelConfig.text_encoders and the U-Net's cross-attentions."""
    from ..model.text import TextEncoders, load_text_encoder

    kinds = ("t5", "clip")
    encoders = TextEncoders([load_text_encoder(str(p), kind=k) for p, k in zip(paths, kinds)])
    return encoders.to(device=device or host.offload_device(), dtype=dtype)


NODE_CLASS_MAPPINGS = {
    "EmuVideoModelLoader": EmuVideoModelLoader,
    "EmuVideoInterpModelLoader": EmuVideoInterpModelLoader,
    "EmuVideoVAELoader": EmuVideoVAELoader,
    "EmuVideoTextEncodersLoader": EmuVideoTextEncodersLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EmuVideoModelLoader": "Emu Video Model Loader",
    "EmuVideoInterpModelLoader": "Emu Video Interpolation Model Loader",
    "EmuVideoVAELoader": "Emu Video VAE Loader",
    "EmuVideoTextEncodersLoader": "Emu Video Text Encoders Loader (T5 + CLIP)",
}
