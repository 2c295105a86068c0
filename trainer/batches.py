"""Deterministic, resumable batches: the sample at global position p is item perm_e[p mod N] of
epoch e = p div N, with perm_e a permutation seeded by (seed, e). Rank r, step s, micro-step m of a
run with world size W, accumulation A and per-rank batch B reads positions
((s·A + m)·W + r)·B … +B, so

* every rank gets an equal shard of every global batch (same number of steps everywhere),
* the data position is a pure function of the step (resume = restart the stream at `step`),
* results do not depend on the number of DataLoader workers.
"""
from __future__ import annotations

import numpy as np
import torch

from ..model.conditioning import TextCondition


def permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


def positions(step: int, micro: int, rank: int, world: int, accum: int, batch: int) -> range:
    start = ((step * accum + micro) * world + rank) * batch
    return range(start, start + batch)


class StepBatches(torch.utils.data.Sampler):
    """Yields, for steps start..end-1 and each micro-step, this rank's [(epoch, index), ...]."""

    def __init__(self, n: int, seed: int, start_step: int, end_step: int, rank: int, world: int,
                 accum: int, batch: int):
        self.n, self.seed, self.start, self.end = n, seed, start_step, end_step
        self.rank, self.world, self.accum, self.batch = rank, world, accum, batch
        self._perms: dict[int, np.ndarray] = {}

    def keys(self, step: int, micro: int) -> list[tuple[int, int]]:
        out = []
        for p in positions(step, micro, self.rank, self.world, self.accum, self.batch):
            epoch = p // self.n
            if epoch not in self._perms:
                self._perms = {epoch: permutation(self.n, self.seed, epoch)}  # keep one epoch's perm
            out.append((epoch, int(self._perms[epoch][p % self.n])))
        return out

    def __iter__(self):
        for step in range(self.start, self.end):
            for micro in range(self.accum):
                yield self.keys(step, micro)

    def __len__(self) -> int:
        return (self.end - self.start) * self.accum


class KeyedDataset(torch.utils.data.Dataset):
    """VideoDataset addressed by (epoch, index) so augmentation seeds follow the epoch even in
    worker processes; serves cached latents + text instead of decoding when a cache entry exists."""

    def __init__(self, dataset, cache=None):
        self.dataset, self.cache = dataset, cache

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        if self.cache is not None:
            hit = self.cache.load(self.dataset.entries[index])
            if hit is not None:
                return dict(hit, index=index)
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


def collate(items: list[dict]) -> list[dict]:
    return items  # mixed cached / decoded items are merged by `encode_batch`


@torch.no_grad()
def encode_batch(items: list[dict], vae, encoders, device, dataset=None, cache=None
                 ) -> tuple[torch.Tensor, TextCondition]:
    """(latents [B, C, T, h, w] float32 on device, TextCondition on device); misses go into the cache."""
    latents: list = [None] * len(items)
    contexts: list = [None] * len(items)
    todo = [i for i, it in enumerate(items) if "latents" not in it]
    for i, it in enumerate(items):
        if "latents" in it:
            latents[i] = it["latents"].to(device)
            contexts[i] = TextCondition([c[None].to(device) for c in it["context"]],
                                        [None if m is None else m[None].to(device) for m in it["masks"]])
    if todo:
        video = torch.stack([items[i]["video"] for i in todo]).to(device)
        z = vae.encode_video(video).float()
        text = encoders.encode([items[i]["caption"] for i in todo]).to(device)
        for j, i in enumerate(todo):
            latents[i] = z[j]
            contexts[i] = TextCondition([c[j:j + 1] for c in text.context],
                                        [None if m is None else m[j:j + 1] for m in text.masks])
            if cache is not None:
                cache.store(dataset.entries[items[i]["index"]], z[j].cpu(),
                            TextCondition([c[j] .cpu() for c in text.context],
                                          [None if m is None else m[j].cpu() for m in text.masks]))
    return torch.stack(latents), TextCondition.cat(contexts)
