"""Exponential moving average of the trainable weights (frozen spatial weights are not copied:
they never change, and at paper scale they are 2.7B parameters, §3.3)."""
from __future__ import annotations

import torch


class EMA:
    def __init__(self, named_params: dict[str, torch.nn.Parameter], decay: float = 0.999, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.params = named_params
        self.shadow = {k: p.detach().float().clone() for k, p in named_params.items()}

    def current_decay(self) -> float:
        # Warm-up: early averages would otherwise stay glued to the random/identity init.
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        for k, p in self.params.items():
            self.shadow[k].lerp_(p.detach().float(), 1 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, named_params: dict[str, torch.nn.Parameter]) -> None:
        for k, p in named_params.items():
            p.copy_(self.shadow[k].to(p.dtype))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state(self, tensors: dict[str, torch.Tensor], num_updates: int) -> None:
        missing = set(self.shadow) - set(tensors)
        if missing:
            raise ValueError(f"EMA state lacks {sorted(missing)[:3]}...; the checkpoint is from another model")
        for k in self.shadow:
            self.shadow[k].copy_(tensors[k])
        self.num_updates = num_updates
