"""Conditioning inputs of the video model (§3.2, Fig. 3).

Text: one embedding per text encoder (T5, CLIP), each attended by its own cross-attention.
Frames: masked-frame conditioning (filled in below).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TextCondition:
    """Per-encoder text embeddings, always padded to each encoder's max_length.

    context[i]: [B, L_i, D_i] float; masks[i]: [B, L_i] bool (True = real token) or None.
    The null condition is the embedding of the empty prompt "" (not zeros).
    """
    context: list[torch.Tensor]
    masks: list[torch.Tensor | None]

    @property
    def batch_size(self) -> int:
        return self.context[0].shape[0]

    def to(self, device=None, dtype=None) -> "TextCondition":
        return TextCondition([c.to(device=device, dtype=dtype) for c in self.context],
                             [None if m is None else m.to(device=device) for m in self.masks])

    def repeat(self, n: int) -> "TextCondition":
        """Repeat every sample n times along the batch (sample-major)."""
        return TextCondition([c.repeat_interleave(n, 0) for c in self.context],
                             [None if m is None else m.repeat_interleave(n, 0) for m in self.masks])

    @staticmethod
    def cat(items: list["TextCondition"]) -> "TextCondition":
        n = len(items[0].context)
        ctx = [torch.cat([it.context[i] for it in items]) for i in range(n)]
        masks = []
        for i in range(n):
            ms = [it.masks[i] for it in items]
            if all(m is None for m in ms):
                masks.append(None)
            else:
                ms = [torch.ones(it.context[i].shape[:2], dtype=torch.bool, device=it.context[i].device)
                      if m is None else m for it, m in zip(items, ms)]
                masks.append(torch.cat(ms))
        return TextCondition(ctx, masks)
