"""The training loop shared by every stage: AdamW with warm-up, gradient accumulation and clipping,
autocast (bf16/fp16), a non-finite-loss guard, EMA, exact resume, metrics, validation, export.

Determinism: each (step, micro-step, rank) draws its noise/timesteps/dropout from its own CPU
generator seeded by (seed, step, micro, rank), the data position and the LR are functions of the
step, and the state file restores weights, EMA and optimizer moments — so N straight steps and
N/2 + resume + N/2 give identical weights.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from . import distributed as dist_lib
from .batches import KeyedDataset, StepBatches, collate
from .ema import EMA
from .lr import lr_at, set_lr
from .metrics import Metrics, memory_mb, progress_bar
from .state import latest_state, load_state, save_state

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLoss(FloatingPointError):
    pass


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, step, micro, rank]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def autocast(device: torch.device, precision: str):
    dtype = AUTOCAST[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_loader(dataset, cache, cfg, info, start_step: int):
    sampler = StepBatches(len(dataset), cfg.seed, start_step, cfg.loop.max_steps, info.rank, info.world_size,
                          cfg.optim.grad_accum, cfg.data.batch_size)
    return torch.utils.data.DataLoader(KeyedDataset(dataset, cache), batch_sampler=sampler, collate_fn=collate,
                                       num_workers=cfg.data.num_workers)


def trim_metrics(out_dir: Path, step: int) -> None:
    """On resume, drop lines logged after the state we resume from (they will be logged again)."""
    path = out_dir / "metrics.jsonl"
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in lines))


def run(cfg, stage, dataset, info, out_dir: Path, config_json: str, log=print) -> dict:
    """Train `stage` to cfg.loop.max_steps (or loop.stop_at); returns a summary dict."""
    device = info.device
    if not stage.trainable:
        raise RuntimeError("nothing to train: every parameter is frozen (check model.train_spatial / stage)")
    # Wrap first: FSDP2 replaces the parameters with sharded ones, which the optimizer, the EMA and
    # the resume state must then use (stage.trainable follows, for export and validation).
    module, params = dist_lib.wrap(stage.module, info, cfg.dist.strategy, stage.trainable)
    stage.trainable = params
    sharded = info.enabled and cfg.dist.strategy == "fsdp"
    o = cfg.optim
    optimizer = torch.optim.AdamW(list(params.values()), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                  weight_decay=o.weight_decay)
    ema = EMA(params, cfg.ema.decay, cfg.ema.warmup) if cfg.ema.enabled else None
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.loop.precision == "fp16")

    ckpt_dir = out_dir / "checkpoints"
    step = 0
    resume_from = latest_state(ckpt_dir) if cfg.loop.resume else None
    if resume_from is not None:
        restored = load_state(resume_from, params, optimizer, ema)
        step = restored["step"]
        if restored["extra"].get("scaler"):
            scaler.load_state_dict(restored["extra"]["scaler"])
        log(f"resumed from {resume_from} at step {step}")
        if info.is_main:
            trim_metrics(out_dir, step)
    module.train()

    end = cfg.loop.max_steps if cfg.loop.stop_at <= 0 else min(cfg.loop.stop_at, cfg.loop.max_steps)
    loader = iter(make_loader(dataset, stage.cache, cfg, info, step))
    metrics = Metrics(out_dir, info.is_main, cfg.loop.tensorboard)
    bar = progress_bar(cfg.loop.max_steps, step, cfg.loop.progress and info.is_main, f"{cfg.stage}:{cfg.name}")
    bad_in_row, t_last, losses = 0, time.perf_counter(), []
    try:
        while step < end:
            lr = lr_at(step, o.lr, cfg.loop.max_steps, o.warmup_steps, o.schedule, o.min_lr_ratio)
            set_lr(optimizer, lr)
            loss_sum, finite = torch.zeros((), device=device), True
            for micro in range(o.grad_accum):
                items = next(loader)
                gen = step_generator(cfg.seed, step, micro, info.rank)
                last = micro == o.grad_accum - 1
                with dist_lib.no_sync(module, skip=info.enabled and not last):
                    with autocast(device, cfg.loop.precision):
                        loss = stage.loss(module, items, gen) / o.grad_accum
                    ok = dist_lib.mean_across(torch.isfinite(loss.detach()).float(), info)
                    if float(ok) < 1.0:          # some rank diverged: every rank skips together
                        finite = False
                        continue
                    scaler.scale(loss).backward()
                loss_sum += loss.detach()
            grad_norm = _clip(params, scaler, optimizer, o.grad_clip) if finite else float("nan")
            updated = finite and math.isfinite(grad_norm)
            if finite and scaler.is_enabled():
                scaler.step(optimizer)           # fp16: skips the update itself on inf grads ...
                scaler.update()                  # ... and lowers the loss scale
            elif updated:
                optimizer.step()
            if updated:
                if ema is not None:
                    ema.update()
                bad_in_row = 0
            else:
                bad_in_row += 1
                log(f"step {step}: non-finite loss or gradient, update skipped ({bad_in_row} in a row)")
                if bad_in_row > cfg.loop.max_bad_steps:
                    raise NonFiniteLoss(f"{bad_in_row} steps in a row had a non-finite loss/gradient; lower "
                                        f"optim.lr, use loop.precision = 'bf16' or 'fp32', or check the data")
            optimizer.zero_grad(set_to_none=True)
            step += 1

            loss_value = float(dist_lib.mean_across(loss_sum, info))
            losses.append(loss_value)
            now = time.perf_counter()
            rate, t_last = 1.0 / max(now - t_last, 1e-9), now
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", mem=f"{memory_mb(device):.0f}MB")
            if step % cfg.loop.log_every == 0 or step == end:
                metrics.log(step, {"loss": loss_value, "lr": lr, "grad_norm": grad_norm, "it_per_s": rate,
                                   "memory_mb": memory_mb(device), "skipped": int(not updated)})
            if (cfg.loop.checkpoint_every and step % cfg.loop.checkpoint_every == 0) or step == end:
                _checkpoint(ckpt_dir, step, params, optimizer, ema, scaler, config_json, cfg, info)
            if cfg.validation.every and step % cfg.validation.every == 0 and step != end:
                if sharded:      # sampling runs on rank 0 alone; sharded weights need every rank
                    log(f"step {step}: validation samples skipped under FSDP (written after training)")
                else:
                    validate(stage, out_dir, step, ema, info)
    finally:
        bar.close()
        metrics.close()
    return {"step": step, "losses": losses, "ema": ema, "params": params, "finished": step >= cfg.loop.max_steps}


def _clip(params, scaler, optimizer, max_norm: float) -> float:
    scaler.unscale_(optimizer)
    grads = [p for p in params.values() if p.grad is not None]
    if max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(grads, max_norm)
    else:    # also takes FSDP2's sharded (DTensor) gradients, summing the shards across ranks
        norm = torch.nn.utils.get_total_norm([p.grad for p in grads])
    return float(norm)


def _checkpoint(folder, step, params, optimizer, ema, scaler, config_json, cfg, info) -> None:
    # DDP: weights are identical on every rank, so rank 0 writes alone. FSDP: every rank takes part
    # in gathering the shards (full_tensor), rank 0 writes.
    if info.is_main or cfg.dist.strategy == "fsdp":
        extra = {"scaler": scaler.state_dict() if scaler.is_enabled() else None}
        save_state(folder, step, params, optimizer, ema, config_json, extra, cfg.loop.keep_last, write=info.is_main)
    dist_lib.barrier(info)


def validate(stage, out_dir: Path, step: int, ema, info) -> list[str]:
    written = []
    if info.is_main and (stage.kind == "vae" or stage.cfg.validation.prompts):
        folder = out_dir / "samples" / f"step_{step:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        written = stage.validate(folder, ema)
    dist_lib.barrier(info)
    return written
