"""Each stage's objective learns: a few optimizer steps on one fixed batch (fixed noise/timesteps)
lower the loss, and only the parameters the paper trains are trainable (§3.3)."""
from __future__ import annotations

import pytest
import torch

from _trainer_common import config, t2i_export, text_assets, tiny_vae, toy_data
from emu_video.model.unet import is_temporal_key
from emu_video.trainer.build import model_config
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


def test_video_stage_trains_and_saves_its_image_fill(assets):
    stage, losses = overfit(stage_cfg(assets, "video", init_from=assets["t2i"], **{"diffusion.image_fill": "hold"}))
    assert sum(losses[-2:]) < sum(losses[:2])
    assert stage.model_config.image_fill == "hold"                       # saved with the weights
    interp = model_config(interp_cfg(assets, "blend", **{"diffusion.image_fill": "hold"}))[0]
    assert interp.image_fill == "zero"                                   # I conditions on key frames, not one image


def interp_cfg(assets, fill, **extra):
    no_image_drop = {"diffusion.p_drop_image": 0.0, "diffusion.p_drop_both": 0.0} if fill == "residual" else {}
    return stage_cfg(assets, "interp", init_from=assets["t2i"], **{"data.num_frames": 5, "diffusion.interp_factor": 4,
                                                                   "diffusion.interp_fill": fill}, **no_image_drop, **extra)


@pytest.mark.parametrize("fill", ["zero", "blend", "residual"])
def test_interp_stage_learns(assets, fill):
    stage, losses = overfit(interp_cfg(assets, fill))
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2])
    assert all(is_temporal_key(n) for n in stage.trainable)
    assert (stage.model_config.kind, stage.model_config.interp_fill) == ("interp", fill)   # saved with the weights


def test_residual_interp_stage_writes_its_validation_samples(assets, tmp_path):
    """validation.image_cfg (1.5 by default) cannot apply: the model has no branch without its key frames."""
    cfg = interp_cfg(assets, "residual", **{"validation.prompts": ["a red circle moving quickly right on a black "
                                                                   "background"], "validation.steps": 2})
    stage = make_stage(cfg, torch.device("cpu"), make_dataset(cfg), cfg.to_json())
    assert cfg.validation.image_cfg == 1.5 and stage._settings().image_cfg == 1.0
    written = stage.validate(tmp_path, ema=None)
    assert any(str(p).endswith(".mp4") for p in written)


def test_video_stage_with_focus_weighting_learns(assets):
    """diffusion.focus_weight and focus_dilate reach the loss module and the weighted loss still trains."""
    stage, losses = overfit(stage_cfg(assets, "video", init_from=assets["t2i"], **{"diffusion.focus_weight": 10.0,
                                                                                   "diffusion.focus_dilate": 1}))
    assert (stage.module.focus, stage.module.focus_dilate) == (10.0, 1)
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2])


def test_vae_decoder_only_keeps_the_latent_space(assets, tmp_path):
    """vae.train_decoder_only: the decoder learns, while the encoder and the latent scale the later
    stages were trained on stay bit for bit those of the source file."""
    from safetensors.torch import load_file

    from emu_video.model.vae import load_vae, save_vae
    from emu_video.trainer.train import train

    source = load_vae(assets["vae"])
    source.cfg.scale_factor = 0.37        # as a trained VAE's export stores it
    save_vae(source, tmp_path / "trained.safetensors")
    cfg = config(tmp_path, "vae", assets["data"], **{"vae.path": str(tmp_path / "trained.safetensors"),
                                                     "vae.train_decoder_only": True, "optim.lr": 3e-3})
    stage = make_stage(cfg, torch.device("cpu"), make_dataset(cfg), cfg.to_json())
    assert stage.trainable and all(n.startswith(("vae.decoder.", "vae.post_quant_conv.")) for n in stage.trainable)
    train(cfg, log=lambda *a: None)
    tuned, before = load_file(tmp_path / "vae" / "export" / "vae.safetensors"), source.state_dict()
    encoder = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    decoder = [k for k in before if k.startswith("decoder.")]
    assert encoder and all(torch.equal(tuned[k], before[k]) for k in encoder)
    assert any(not torch.equal(tuned[k], before[k]) for k in decoder)
    assert load_vae(tmp_path / "vae" / "export" / "vae.safetensors").cfg.scale_factor == pytest.approx(0.37)


@pytest.mark.parametrize("sets, needs", [({"stage": "vae"}, "vae.path"),
                                         ({"stage": "t2i", "vae.path": "v.safetensors"}, "stage = 'vae'")])
def test_vae_decoder_only_needs_a_vae_to_tune(assets, tmp_path, sets, needs):
    from emu_video.trainer.config import ConfigError
    with pytest.raises(ConfigError, match=needs):
        config(tmp_path, sets.pop("stage"), assets["data"], **{"vae.train_decoder_only": True, **sets})


def training_inputs(stage: str, *sets: str):
    """(latents [2,4,5,4,4], what objectives.STAGE_INPUTS[stage] makes of them) with no condition dropout."""
    from emu_video.model.conditioning import TextCondition
    from emu_video.model.schedule import NoiseSchedule
    from emu_video.trainer.config import load_config
    from emu_video.trainer.objectives import STAGE_INPUTS
    cfg = load_config(None, ["data.root=/tmp/x", f"stage={stage}", "vae.path=/tmp/vae.safetensors", "data.num_frames=5",
                             "diffusion.p_drop_text=0", "diffusion.p_drop_image=0", "diffusion.p_drop_both=0", *sets])
    latents, text = torch.randn(2, 4, 5, 4, 4), TextCondition([torch.randn(2, 3, 8)], [None])
    return latents, STAGE_INPUTS[stage](latents, text, text, cfg, NoiseSchedule(), torch.Generator().manual_seed(0))


@pytest.mark.parametrize("fill", ["zero", "hold"])
def test_video_training_inputs_hold_what_the_fill_says(fill):
    latents, out = training_inputs("video", f"diffusion.image_fill={fill}")
    assert torch.equal(out["cond"][:, :, 0], latents[:, :, 0])
    later = out["cond"][:, :, 1:]
    expected = latents[:, :, :1].expand_as(later) if fill == "hold" else torch.zeros_like(later)
    assert torch.equal(later, expected) and out["mask"][0, 0, :, 0, 0].tolist() == [1, 0, 0, 0, 0]


@pytest.mark.parametrize("fill", ["zero", "blend", "residual"])
def test_interp_training_inputs_hold_what_the_fill_says(fill):
    latents, out = training_inputs("interp", f"diffusion.interp_fill={fill}")
    assert out["mask"][:, :, ::4].eq(1).all() and out["mask"][:, :, 1:4].eq(0).all()
    assert bool(out["cond"][:, :, 1:4].eq(0).all()) == (fill == "zero")
    if fill == "residual":      # I learns the correction to the clean keys + blend: zero at the keys
        assert out["x0"][:, :, ::4].eq(0).all()
        blend = (latents[:, :, 0] + latents[:, :, 4]) / 2
        torch.testing.assert_close(out["x0"][:, :, 2], latents[:, :, 2] - blend)
    else:
        assert torch.equal(out["x0"], latents)
