"""Learning-rate schedule: linear warm-up, then constant / cosine / linear decay.

A pure function of the step (no hidden scheduler state), so resuming at step s gives exactly
the LR a straight run has at step s.
"""
from __future__ import annotations

import math


def lr_at(step: int, base_lr: float, max_steps: int, warmup_steps: int = 0,
          schedule: str = "constant", min_lr_ratio: float = 0.0) -> float:
    """LR for optimizer step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * progress))
    elif schedule == "linear":
        factor = 1 - progress
    else:
        raise ValueError(f"unknown LR schedule {schedule!r}; use constant, cosine or linear")
    return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * factor)


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
