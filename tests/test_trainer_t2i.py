"""The t2i stage: the spatial U-Net in image mode (no temporal layers) learns with text dropout."""
from __future__ import annotations

import torch

from _trainer_common import config, text_assets, tiny_vae, toy_data
from emu_video.trainer.objectives import t2i_inputs
from emu_video.trainer.stages import make_stage
from emu_video.trainer.train import make_dataset


def test_t2i_stage_learns(tmp_path):
    cfg = config(tmp_path, "t2i", toy_data(tmp_path / "data"), **{
        "vae.path": str(tiny_vae(tmp_path / "vae.safetensors")), "text.paths": text_assets(tmp_path / "text"),
        "data.start": "center"})
    dataset = make_dataset(cfg)
    torch.manual_seed(0)
    stage = make_stage(cfg, torch.device("cpu"), dataset, cfg.to_json())
    assert not stage.model_config.unet.temporal and stage.module.image_mode
    opt = torch.optim.AdamW(list(stage.trainable.values()), lr=3e-3)
    items, losses = [dataset[0]], []
    for _ in range(8):
        loss = stage.loss(stage.module, items, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3])


def test_t2i_text_dropout_rate(tmp_path):
    """Text is replaced by the empty prompt at p_drop_text + p_drop_both (CFG training)."""
    class Cfg:
        class diffusion:
            p_drop_text, p_drop_both, timestep_sampling = 0.3, 0.2, "uniform"

    class Schedule:
        num_train_timesteps = 1000

    from emu_video.model.conditioning import TextCondition
    n = 4000
    text = TextCondition([torch.ones(n, 2, 3)], [None])
    null = TextCondition([torch.zeros(1, 2, 3)], [None])
    out = t2i_inputs(torch.randn(n, 1, 2, 1, 1), text, null, Cfg, Schedule, torch.Generator().manual_seed(0))
    dropped = (out["context"][0][:, 0, 0] == 0).float().mean().item()
    assert abs(dropped - 0.5) < 0.03 and out["x0"].shape == (n, 1, 1, 1)
