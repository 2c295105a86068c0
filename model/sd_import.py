"""Import Stable Diffusion 1.x/2.x U-Net weights as the frozen spatial part of F (§3.3: all spatial
parameters come from a pretrained text-to-image model; the temporal layers start as identity).

Two sources: an LDM single file (.safetensors, keys `model.diffusion_model.*` or bare) and a
diffusers UNet folder (config.json + diffusion_pytorch_model.safetensors), whose keys are mapped
to the LDM names EmuUNet uses. Pickle checkpoints (.ckpt/.pt) are refused: loading them runs code.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open

from .checkpoint import refuse_pickle
from .config import InputError, UNetConfig
from .unet import EmuUNet, is_temporal_key

LDM_UNET_PREFIX = "model.diffusion_model."
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


# ---------------------------------------------------------------------------- reading files

def read_ldm_unet_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """U-Net tensors of an SD single file, with the `model.diffusion_model.` prefix removed.

    Only the U-Net is read (the VAE and text encoder in the same file are skipped)."""
    path = Path(path)
    refuse_pickle(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; pass an SD 1.x/2.x .safetensors checkpoint")
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        prefixed = [k for k in keys if k.startswith(LDM_UNET_PREFIX)]
        if prefixed:
            return {k[len(LDM_UNET_PREFIX):]: f.get_tensor(k) for k in prefixed}
        if "input_blocks.0.0.weight" in keys:  # a bare U-Net file
            return {k: f.get_tensor(k) for k in keys}
    raise InputError(f"{path}: no Stable Diffusion U-Net weights found (expected keys starting with "
                     f"'{LDM_UNET_PREFIX}' or a bare 'input_blocks.0.0.weight'); is this a VAE/text-encoder file?")


# ---------------------------------------------------------------------------- config inference

def default_heads(context_dim: int) -> tuple[int, int]:
    """(num_heads, head_dim) of SD's releases: SD 1.x fixes 8 heads, SD 2.x fixes 64 channels per head."""
    return (8, -1) if context_dim == 768 else (-1, 64)


def infer_unet_config(sd: dict[str, torch.Tensor], *, num_heads: int | None = None, head_dim: int | None = None,
                      norm_groups: int = 32, **temporal_options) -> UNetConfig:
    """UNetConfig of an LDM-keyed U-Net state dict, read from tensor shapes.

    Heads cannot be read from shapes; the defaults follow SD 1.x (8 heads) / SD 2.x (head_dim 64),
    chosen by the cross-attention width. `temporal_options` (temporal, temporal_kernel, temporal_text,
    temporal_head_dim, max_frames) configure the new temporal layers.
    """
    if "input_blocks.0.0.weight" not in sd:
        raise InputError("not an LDM U-Net state dict: 'input_blocks.0.0.weight' is missing")
    conv_in = sd["input_blocks.0.0.weight"]
    model_channels, latent_channels = conv_in.shape[:2]
    out_channels = sd["out.2.weight"].shape[0]
    if out_channels != latent_channels:
        raise InputError(f"the U-Net takes {latent_channels} input channels but predicts {out_channels}; "
                         f"inpainting/extra-conditioning checkpoints are not supported, use a plain text-to-image one")
    if any(k.startswith("label_emb.") for k in sd):
        raise InputError("this U-Net has class/size conditioning (label_emb: SDXL or an upscaler); "
                         "only SD 1.x/2.x text-to-image U-Nets can be imported")

    blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("input_blocks.")})
    level_channels, res_per_level, attention_levels, depths = [[]], [0], set(), set()
    for i in blocks[1:]:
        if f"input_blocks.{i}.0.op.weight" in sd:  # downsample: next level
            level_channels.append([])
            res_per_level.append(0)
            continue
        level = len(res_per_level) - 1
        level_channels[level].append(sd[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0])
        res_per_level[level] += 1
        if f"input_blocks.{i}.1.proj_in.weight" in sd:
            attention_levels.add(level)
            depths.add(len({k.split(".")[4] for k in sd if k.startswith(f"input_blocks.{i}.1.transformer_blocks.")}))
    if len(set(res_per_level)) != 1:
        raise InputError(f"uneven ResBlocks per level {res_per_level}; not an SD 1.x/2.x U-Net")
    if len(depths) > 1:
        raise InputError(f"transformer depth differs between levels {sorted(depths)}; not supported (SD 1.x/2.x use 1)")
    channel_mult = tuple(chs[0] // model_channels for chs in level_channels)

    attn2 = next(k for k in sd if k.endswith("attn2.to_k.weight"))
    context_dim = sd[attn2].shape[1]
    proj_in = next(k for k in sd if k.endswith(".proj_in.weight"))
    heads, dim_head = default_heads(context_dim)
    if num_heads is not None or head_dim is not None:
        heads, dim_head = (num_heads or -1, head_dim or -1)
        if (heads > 0) == (dim_head > 0):
            raise InputError("give exactly one of num_heads (SD 1.x: 8) or head_dim (SD 2.x: 64)")
    cfg = UNetConfig(latent_channels=latent_channels, model_channels=model_channels, channel_mult=channel_mult,
                     num_res_blocks=res_per_level[0], attention_levels=tuple(sorted(attention_levels)),
                     num_heads=heads if heads > 0 else 8, head_dim=dim_head, transformer_depth=depths.pop() if depths else 1,
                     norm_groups=norm_groups, context_dims=(context_dim,), use_linear_proj=sd[proj_in].ndim == 2,
                     **temporal_options)
    cfg.validate()
    return cfg


# ---------------------------------------------------------------------------- loading

def load_spatial_weights(model: EmuUNet, sd: dict[str, torch.Tensor]) -> EmuUNet:
    """Copy LDM-keyed spatial weights into `model`; every missing key must be temporal/conditioning."""
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # size mismatches
        raise InputError(f"the checkpoint does not fit the model config: {e}".split("\n\t")[0]
                         + " ... (check num_heads/head_dim and norm_groups, or whether this is an SD 1.x/2.x U-Net)") from None
    spatial_missing = [k for k in missing if not is_temporal_key(k)]
    if unexpected or spatial_missing:
        raise InputError(f"the checkpoint's U-Net does not match EmuUNet's SD layout: unexpected keys "
                         f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, missing spatial keys "
                         f"{spatial_missing[:5]}{'...' if len(spatial_missing) > 5 else ''}; "
                         f"only SD 1.x/2.x text-to-image U-Nets can be imported")
    return model


def import_sd_single_file(path: str | Path, *, num_heads: int | None = None, head_dim: int | None = None,
                          norm_groups: int = 32, **temporal_options) -> EmuUNet:
    """EmuUNet whose spatial weights come from an SD 1.x/2.x .safetensors single file."""
    sd = read_ldm_unet_state_dict(path)
    cfg = infer_unet_config(sd, num_heads=num_heads, head_dim=head_dim, norm_groups=norm_groups, **temporal_options)
    return load_spatial_weights(EmuUNet(cfg), sd)


def import_diffusers_unet(folder: str | Path, **temporal_options) -> EmuUNet:
    """EmuUNet whose spatial weights come from a diffusers UNet2DConditionModel folder."""
    folder = Path(folder)
    config_path, weights_path = folder / "config.json", folder / DIFFUSERS_WEIGHTS
    if not config_path.is_file() or not weights_path.is_file():
        raise InputError(f"{folder}: expected a diffusers UNet folder with config.json and {DIFFUSERS_WEIGHTS} "
                         f"(for .bin weights, convert them to safetensors first)")
    config = json.loads(config_path.read_text())
    with safe_open(str(weights_path), framework="pt") as f:
        sd = convert_diffusers_to_ldm({k: f.get_tensor(k) for k in f.keys()}, config)
    num_heads, head_dim = diffusers_heads(config)
    cfg = infer_unet_config(sd, num_heads=num_heads, head_dim=head_dim,
                            norm_groups=config.get("norm_num_groups", 32), **temporal_options)
    return load_spatial_weights(EmuUNet(cfg), sd)


def import_sd_unet(path: str | Path, **options) -> EmuUNet:
    """Either source: a diffusers folder or an LDM single file."""
    return import_diffusers_unet(path, **options) if Path(path).is_dir() else import_sd_single_file(path, **options)


# ---------------------------------------------------------------------------- diffusers -> LDM names

RESNET_RENAMES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                  "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
TOP_LEVEL = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def diffusers_heads(config: dict) -> tuple[int | None, int | None]:
    """(num_heads, head_dim) from a diffusers config. Its `attention_head_dim` historically holds the
    number of heads (SD 1.x: 8; SD 2.x: [5, 10, 20, 20]); `num_attention_heads` wins when set."""
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    widths = config["block_out_channels"]
    heads = [heads] * len(widths) if isinstance(heads, int) else list(heads)
    if len(set(heads)) == 1:
        return heads[0], None
    dims = {w // h for w, h in zip(widths, heads)}
    if len(dims) == 1:
        return None, dims.pop()
    raise InputError(f"diffusers heads per level {heads} give neither a fixed head count nor a fixed head width")


def convert_diffusers_to_ldm(sd: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """Rename UNet2DConditionModel keys to SD's LDM keys (the layout EmuUNet uses)."""
    for key in ("class_embed_type", "addition_embed_type", "encoder_hid_dim"):
        if config.get(key):
            raise InputError(f"diffusers UNet uses {key}={config[key]!r}; only SD 1.x/2.x text-to-image U-Nets are supported")
    per_level = config["layers_per_block"] + 1  # ResBlocks + the Downsample (input) / extra ResBlock (output)
    levels = len(config["block_out_channels"])
    up_has_attention = ["CrossAttn" in t for t in config["up_block_types"]]
    out = {}
    for key, value in sd.items():
        out[_ldm_key(key, per_level, levels, up_has_attention)] = value
    return out


def _ldm_key(key: str, per_level: int, levels: int, up_has_attention: list[bool]) -> str:
    for old, new in TOP_LEVEL.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    m = re.match(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)", key)
    if m:
        kind, block, part, index, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        if kind == "down_blocks":
            first = 1 + block * per_level
            if part == "downsamplers":
                return f"input_blocks.{first + per_level - 1}.0.{rest.replace('conv.', 'op.', 1)}"
            return f"input_blocks.{first + index}.{_inner(part, rest)}"
        first = block * per_level
        if part == "upsamplers":
            slot = 2 if up_has_attention[block] else 1
            return f"output_blocks.{first + per_level - 1}.{slot}.{rest}"
        return f"output_blocks.{first + index}.{_inner(part, rest)}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        slot = 1 if m[1] == "attentions" else 2 * int(m[2])  # Res, Attn, Res
        return f"middle_block.{slot}.{_rename(m[1], m[3])}"
    raise InputError(f"unrecognised diffusers UNet key {key!r}; only SD 1.x/2.x UNet2DConditionModel layouts are supported")


def _inner(part: str, rest: str) -> str:
    """Inside an LDM block resnets sit at slot 0 and attentions at slot 1."""
    return f"{1 if part == 'attentions' else 0}.{_rename(part, rest)}"


def _rename(part: str, rest: str) -> str:
    """Attention parameter names are shared by both layouts; ResNet layers are renamed."""
    if part == "attentions":
        return rest
    layer, _, tail = rest.partition(".")
    if layer not in RESNET_RENAMES:
        raise InputError(f"unrecognised diffusers ResNet parameter {rest!r}")
    return f"{RESNET_RENAMES[layer]}.{tail}"
