"""Emu Video checkpoint files: safetensors weights + JSON config in the metadata.

One format for the video model F and the interpolation model I (§3.2), written by the trainer's export
and read by the nodes and the CLI. Never pickle: only `.safetensors` is read or written.

Metadata (all str -> str, as safetensors requires):
  format="emu_video", format_version, kind ("video" | "interp" | "vae" | "text"), config (ModelConfig JSON),
  prediction_type, zero_terminal_snr, snr_shift, num_frames, fps, stage, plus free-form extras (e.g. latent_scale).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import ConfigError, InputError, ModelConfig, from_json, to_json

FORMAT = "emu_video"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


class CheckpointError(InputError):
    """A checkpoint file is missing, unsafe, of another kind, or does not fit its config."""


def refuse_pickle(path) -> None:
    """Weights are safetensors only: every loader calls this before touching a file."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path.name}: pickle checkpoints ({path.suffix}) are never loaded because "
                              f"unpickling can run arbitrary code; convert it to .safetensors first, in a "
                              f"trusted environment (load it with weights_only=True, save it with "
                              f"safetensors.torch.save_file)")


def check_safetensors_path(path) -> Path:
    """Refuse missing files and pickle formats with a message that says what to do."""
    path = Path(path)
    refuse_pickle(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; check the path or put the file in the models folder")
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path.name}: expected a .safetensors file")
    return path


def atomic_save(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str]) -> Path:
    """Write a safetensors file to a temp name in the same folder, then rename: a kill mid-write
    leaves either the old file or the new one, never half of one."""
    from safetensors.torch import save_file

    from .video_io import atomic_path

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(str(path)) as tmp:
        save_file(tensors, tmp, metadata={k: str(v) for k, v in metadata.items()})
    return path


def read_metadata(path) -> dict[str, str]:
    from safetensors import safe_open

    path = check_safetensors_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        raise CheckpointError(f"{path.name}: not a readable safetensors file ({e}); re-export or re-download it") from None


def model_metadata(config: ModelConfig, extra: dict | None = None) -> dict[str, str]:
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "kind": config.kind,
        "config": to_json(config),
        "prediction_type": config.schedule.prediction_type,
        "zero_terminal_snr": str(config.schedule.zero_terminal_snr).lower(),
        "snr_shift": f"{config.schedule.snr_shift:g}",
        "num_frames": str(config.num_frames),
        "fps": str(config.fps),
        "stage": config.stage,
    }
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    return meta


def save_model(path, unet: torch.nn.Module, config: ModelConfig, extra: dict | None = None) -> Path:
    """Save a video/interp model (the whole U-Net, spatial + temporal) with its config."""
    config.validate()
    return atomic_save(unet.state_dict(), path, model_metadata(config, extra))


def check_format(meta: dict[str, str], path, kinds: tuple[str, ...]) -> None:
    name = Path(path).name
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{name}: not an Emu Video checkpoint (no 'format: emu_video' metadata). "
                              f"For Stable Diffusion weights use the SD import (model.sd_import); "
                              f"for a trained model use the file written by `emu-video train` export")
    version = int(meta.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{name}: format version {version} is newer than this pack understands "
                              f"({FORMAT_VERSION}); update comfyui-emu-video")
    if meta.get("kind") not in kinds:
        raise CheckpointError(f"{name}: this is a '{meta.get('kind')}' file, but a {' or '.join(kinds)} "
                              f"model was expected; pick it in the matching loader")


def load_config(path, kinds=("video", "interp")) -> ModelConfig:
    meta = read_metadata(path)
    check_format(meta, path, kinds)
    try:
        config = from_json(ModelConfig, meta["config"])
        config.validate()
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"{Path(path).name}: stored config is invalid ({e})") from None
    return config


def load_model(path, device="cpu", dtype: torch.dtype | None = None, kinds=("video", "interp")):
    """Load (EmuUNet, ModelConfig) from our safetensors file, validating format, kind and shapes."""
    from safetensors.torch import load_file

    from .unet import EmuUNet

    config = load_config(path, kinds)
    unet = EmuUNet(config.unet)
    state = load_file(str(path), device=str(device))
    expected = unet.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(part for part in (
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}" if missing else "",
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}" if unexpected else "",
            f"wrong shape {wrong[:3]}" if wrong else "") if part)
        raise CheckpointError(f"{Path(path).name}: weights do not match the config stored in the file ({detail}); "
                              f"the file is damaged or was edited — re-export it from the trainer")
    unet.load_state_dict(state)
    unet = unet.to(device=device, dtype=dtype)
    return unet.eval(), config
