"""Two-process CPU DDP (gloo): both ranks run the same number of steps and end with identical weights."""
from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from _trainer_common import config, toy_data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    from pathlib import Path

    from emu_video.trainer.train import train

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    tmp = Path(tmp)
    # Different seeds per rank for the *initial* weights would be a bug DDP hides only at step 0:
    # each rank seeds identically inside train(); DDP also broadcasts rank 0's weights.
    cfg = config(tmp, "vae", tmp / "data", **{"loop.max_steps": 3, "optim.grad_accum": 2})
    result = train(cfg, log=lambda *a: None)
    tensors = {k: p.detach().contiguous() for k, p in result["params"].items()}
    tensors.update({f"ema.{k}": v for k, v in result["ema"].shadow.items()})
    save_file(tensors, str(tmp / f"rank{rank}.safetensors"), metadata={"steps": str(result["step"])})


def test_two_process_gloo_ranks_agree(tmp_path):
    toy_data(tmp_path / "data", clips=3)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2))
    assert r0.keys() == r1.keys() and len(r0) > 0
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    from safetensors import safe_open
    steps = [safe_open(str(tmp_path / f"rank{r}.safetensors"), "pt").metadata()["steps"] for r in range(2)]
    assert steps == ["3", "3"]
    assert (tmp_path / "vae" / "export" / "vae.safetensors").is_file()    # rank 0 exported
    # the weights moved away from the (seeded, identical) initialisation: gradients were applied
    from emu_video.trainer.build import vae_for_training
    torch.manual_seed(0)
    init = {f"vae.{k}": v for k, v in vae_for_training(config(tmp_path, "vae", tmp_path / "data")).named_parameters()}
    assert any(not torch.equal(init[k], r0[k]) for k in init)
