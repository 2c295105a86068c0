"""torchrun data parallelism: DDP (gloo on CPU, nccl on CUDA) or FSDP2 (`fully_shard`).

Every rank runs the same number of steps: the sampler gives each rank an equal shard of every
global batch (see loop.batch_indices), so no rank waits on a collective another never reaches.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("loop.device = 'cuda' but CUDA is not available; use 'auto' or 'cpu'")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def setup(device: str = "auto", backend: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    if world > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local, dev)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def mean_across(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


def wrap(model: torch.nn.Module, info: DistInfo, strategy: str,
         params: dict[str, torch.nn.Parameter]) -> tuple[torch.nn.Module, dict[str, torch.nn.Parameter]]:
    """Wrap for data parallelism; returns (module, `params` as they now live in it).

    DDP keeps the parameter objects (and leaves frozen ones out of its gradient buckets). FSDP2
    swaps every parameter for a new, sharded DTensor Parameter, so the optimizer and the EMA must be
    built on the returned dict, not on the one passed in.
    """
    if not info.enabled:
        return model, params
    if strategy == "fsdp":
        where = {id(p): n for n, p in model.named_parameters()}
        paths = {k: where[id(p)] for k, p in params.items()}
        _fully_shard(model)
        now = dict(model.named_parameters())
        return model, {k: now[path] for k, path in paths.items()}
    ids = [info.device.index] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids), params


# Sharding units: the U-Net's blocks (§3.2's F and I) and the autoencoder's encoder / decoder.
# Each is gathered by its own forward hook just before it runs and freed after, so only one unit is
# whole at a time. A unit must be entered through its forward: input_blocks[0] is not (the U-Net
# calls its InputConv directly), so that one conv stays with the root.
SHARD_UNITS = ("input_blocks", "middle_block", "output_blocks", "encoder", "decoder")


def _fully_shard(model: torch.nn.Module) -> None:
    from torch.distributed.fsdp import fully_shard

    units = []
    for module in model.modules():
        for name in SHARD_UNITS:
            child = module._modules.get(name)
            if child is None:
                continue
            blocks = list(child) if isinstance(child, torch.nn.ModuleList) else [child]
            units.extend(blocks[1:] if name == "input_blocks" else blocks)
    for unit in reversed(units):  # innermost first: FSDP2 shards bottom-up
        fully_shard(unit)
    fully_shard(model)          # the root keeps the rest (time embedding, in/out convs, ...)


@contextlib.contextmanager
def no_sync(module: torch.nn.Module, skip: bool):
    """Gradient accumulation: skip the all-reduce (DDP) / reduce-scatter (FSDP2) on all but the last
    micro-step; gradients accumulate locally and are synchronised once."""
    if not skip:
        yield
    elif hasattr(module, "set_requires_gradient_sync"):        # FSDP2
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    elif hasattr(module, "no_sync"):                            # DDP
        with module.no_sync():
            yield
    else:
        yield


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
