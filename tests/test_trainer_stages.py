"""Each stage's objective learns: a few optimizer steps on one fixed batch (fixed noise/timesteps)
lower the loss, and only the parameters the paper trains are trainable (§3.3)."""
from __future__ import annotations

import pytest
import torch

from _trainer_common import config, t2i_export, text_assets, tiny_vae, toy_data
from emu_video.model.unet import is_temporal_key
from emu_video.trainer.stages import make_stage
from emu_video.trainer.train import make_dataset


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stages")
    return dict(tmp=tmp, data=toy_data(tmp / "data"), vae=str(tiny_vae(tmp / "vae.safetensors")),
                text=text_assets(tmp / "text"), t2i=str(t2i_export(tmp / "t2i.safetensors")))


def overfit(cfg, steps=6, lr=3e-3):
    dataset = make_dataset(cfg)
    torch.manual_seed(0)
    stage = make_stage(cfg, torch.device("cpu"), dataset, cfg.to_json())
    opt = torch.optim.AdamW(list(stage.trainable.values()), lr=lr)
    items = [dataset[0]]
    losses = []
    for _ in range(steps):
        loss = stage.loss(stage.module, items, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return stage, losses


def stage_cfg(assets, stage, **extra):
    return config(assets["tmp"], stage, assets["data"], **{"vae.path": assets["vae"], "text.paths": assets["text"],
                                                            "data.start": "center"}, **extra)


def test_vae_stage_learns(assets):
    _, losses = overfit(stage_cfg(assets, "vae"))
    assert losses[-1] < 0.7 * losses[0]


def test_video_stage_learns_only_temporal(assets):
    stage, losses = overfit(stage_cfg(assets, "video", init_from=assets["t2i"]))
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2])
    names = set(stage.trainable)
    assert names and all(is_temporal_key(n) for n in names)              # spatial frozen (§3.2)
    assert any(n.startswith("input_blocks.0.0.cond.") for n in names)   # zero-init cond channels train


def test_video_stage_train_spatial_ablation(assets):
    cfg = stage_cfg(assets, "video", init_from=assets["t2i"], **{"model.train_spatial": True})
    dataset = make_dataset(cfg)
    stage = make_stage(cfg, torch.device("cpu"), dataset, cfg.to_json())
    assert any(not is_temporal_key(n) for n in stage.trainable)          # Table 1e: everything trains


def test_interp_stage_learns(assets):
    stage, losses = overfit(stage_cfg(assets, "interp", init_from=assets["t2i"],
                                      **{"data.num_frames": 5, "diffusion.interp_factor": 4}))
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2])
    assert all(is_temporal_key(n) for n in stage.trainable)
    assert stage.model_config.kind == "interp"


def test_video_stage_with_focus_weighting_learns(assets):
    """diffusion.focus_weight reaches the loss module and the focus-weighted loss still trains."""
    stage, losses = overfit(stage_cfg(assets, "video", init_from=assets["t2i"], **{"diffusion.focus_weight": 10.0}))
    assert stage.module.focus == 10.0
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2])
