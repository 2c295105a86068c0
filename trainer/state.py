"""Exact-resume training state in one safetensors file per checkpoint (never pickle).

Holds trainable weights, EMA, optimizer moments, step (which is also the data position and the LR
position, both pure functions of it), and the RNG states of torch (CPU/CUDA), numpy and python —
although the loop draws all its randomness from generators seeded by (seed, step), so a resumed
run does not depend on global RNG drift. Non-tensor parts go into the JSON metadata.
Written with checkpoint.atomic_save (temp file + rename); the last `keep_last` are kept.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import torch

from ..model.checkpoint import atomic_save

STATE_RE = re.compile(r"^state_(\d{8})\.safetensors$")


def state_path(folder, step: int) -> Path:
    return Path(folder) / f"state_{step:08d}.safetensors"


def latest_state(folder) -> Path | None:
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := STATE_RE.match(p.name)))
    return found[-1][1] if found else None


# --------------------------------------------------------------------------- RNG

def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": _py_state(random.getstate())}
    return tensors, meta


def _py_state(state):
    return [state[0], list(state[1]), state[2]]


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))


# --------------------------------------------------------------------------- optimizer

def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, per_param in sd["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    flat = [p for g in optimizer.param_groups for p in g["params"]]    # state_dict's index order
    for idx, per_param in state.items():
        for key, value in per_param.items():
            if key != "step" and hasattr(flat[idx], "device_mesh"):       # FSDP2: moments are sharded too
                per_param[key] = shard_like(value, flat[idx]).to(value.dtype)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# --------------------------------------------------------------------------- save / load

def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """FSDP2 parameters are DTensors; gather them for saving (a no-op for plain tensors).
    A collective under FSDP: every rank must call it, in the same order."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def shard_like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """The inverse of full_tensor on load: `full` laid out like `ref` (this rank's FSDP2 shard when
    `ref` is a DTensor). Every rank read the same file, so each cuts its own shard, without communication."""
    full = full.to(ref.device, ref.dtype)
    if not hasattr(ref, "device_mesh"):
        return full
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(full, ref.device_mesh, ref.placements, src_data_rank=None)


def save_state(folder, step: int, params: dict[str, torch.nn.Parameter], optimizer, ema,
               config_json: str, extra: dict | None = None, keep_last: int = 2, write: bool = True) -> Path | None:
    tensors = {f"model.{k}": full_tensor(p.detach()) for k, p in params.items()}
    if ema is not None:
        tensors.update({f"ema.{k}": full_tensor(v) for k, v in ema.state_tensors().items()})
    opt_tensors, opt_meta = optimizer_tensors(optimizer)
    tensors.update({k: full_tensor(v) for k, v in opt_tensors.items()})
    if not write:
        return None
    rng_tensors, rng_meta = rng_state()
    tensors.update(rng_tensors)
    meta = {"format": "emu_video_train_state", "step": str(step), "config": config_json,
            "optimizer": json.dumps(opt_meta), "rng": json.dumps(rng_meta),
            "ema_updates": str(ema.num_updates if ema is not None else 0),
            "extra": json.dumps(extra or {})}
    path = atomic_save(tensors, state_path(folder, step), meta)
    prune(folder, keep_last)
    return path


def prune(folder, keep_last: int) -> None:
    found = sorted(p for p in Path(folder).iterdir() if STATE_RE.match(p.name))
    for old in found[:-keep_last]:
        old.unlink(missing_ok=True)


def load_state(path, params: dict[str, torch.nn.Parameter], optimizer, ema) -> dict:
    """Restore everything in place; returns {"step", "config", "extra"}."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    if meta.get("format") != "emu_video_train_state":
        raise ValueError(f"{path}: not an emu-video training state file")
    tensors = load_file(str(path))
    missing = [k for k in params if f"model.{k}" not in tensors]
    if missing:
        raise ValueError(f"{Path(path).name}: lacks trainable weights {missing[:3]}...; it was written by a "
                         f"different stage/model — point out_dir at a fresh folder or fix the config")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(shard_like(tensors[f"model.{k}"], p))
    load_optimizer(optimizer, {k: v for k, v in tensors.items() if k.startswith("optim.")},
                   json.loads(meta["optimizer"]))
    if ema is not None:
        shadow = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        ema.load_state({k: shard_like(v, ema.shadow[k]) if k in ema.shadow else v for k, v in shadow.items()},
                       int(meta["ema_updates"]))
    set_rng_state(tensors, json.loads(meta["rng"]))
    return {"step": int(meta["step"]), "config": meta["config"], "extra": json.loads(meta["extra"])}
