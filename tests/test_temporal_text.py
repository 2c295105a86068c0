"""UNetConfig.temporal_text: the temporal attention blocks also cross-attend to the prompt (SVD's
layout, not the paper's), one copy of each clip's prompt for all of its spatial positions."""
from __future__ import annotations

import dataclasses

import torch

from _trainer_common import config, t2i_export, text_assets, tiny_vae, toy_data
from emu_video.model.attention import CrossAttention
from emu_video.model.checkpoint import load_model, save_model
from emu_video.model.config import UNetConfig, from_dict, to_dict
from emu_video.model.presets import tiny_config
from emu_video.model.temporal import cross_attend_per_clip
from emu_video.model.unet import EmuUNet, is_temporal_key
from emu_video.trainer.build import model_config
from emu_video.trainer.stages import make_stage
from emu_video.trainer.train import make_dataset
from test_unet import inputs, randomize


def make(temporal_text: bool, seed: int = 0) -> EmuUNet:
    cfg = dataclasses.replace(tiny_config().unet, temporal_text=temporal_text)
    torch.manual_seed(seed)
    return EmuUNet(cfg).eval()


def test_cross_attention_per_clip_equals_repeating_the_prompt_per_position():
    torch.manual_seed(0)
    attn = CrossAttention(24, 40, heads=2, dim_head=12)
    clips, positions, frames = 3, 5, 4
    x = torch.randn(clips * positions, frames, 24)
    prompt = torch.randn(clips, 7, 40)
    mask = torch.rand(clips, 7) > 0.4
    naive = attn(x, prompt.repeat_interleave(positions, 0), mask.repeat_interleave(positions, 0))
    torch.testing.assert_close(cross_attend_per_clip(attn, x, prompt, mask), naive)


@torch.no_grad()
def test_added_text_layers_are_temporal_and_change_nothing_until_trained():
    plain = randomize(randomize(make(False)), seed=3, temporal=True)   # trained spatial + temporal
    with_text = make(True)
    result = with_text.load_state_dict(plain.state_dict(), strict=False)
    assert result.missing_keys and not result.unexpected_keys
    assert all(is_temporal_key(k) and (".text_attn." in k or ".text_norm." in k) for k in result.missing_keys)
    x, t, ctx, masks = inputs()
    torch.testing.assert_close(with_text(x, t, ctx, masks), plain(x, t, ctx, masks))


@torch.no_grad()
def test_trained_text_layers_read_each_clips_own_prompt():
    model = randomize(randomize(make(True)), seed=3, temporal=True)
    x, t, ctx, masks = inputs()
    out = model(x, t, ctx, masks)

    silenced = make(True)
    silenced.load_state_dict(model.state_dict())
    for name, p in silenced.named_parameters():
        if ".text_attn." in name and ".to_out." in name:
            p.zero_()
    assert (silenced(x, t, ctx, masks) - out).abs().max() > 1e-4     # the branch is live

    for i in range(x.shape[0]):                                      # each clip as if it were alone
        alone = model(x[i:i + 1], t[i:i + 1], [c[i:i + 1] for c in ctx], [m if m is None else m[i:i + 1] for m in masks])
        torch.testing.assert_close(alone[0], out[i], atol=1e-5, rtol=1e-4)

    other = [c.clone() for c in ctx]
    for c in other:
        c[1] = torch.randn_like(c[1])                                # clip 1's prompt only
    out2 = model(x, t, other, masks)
    torch.testing.assert_close(out2[0], out[0])                      # clip 0 never sees clip 1's prompt
    assert (out2[1] - out[1]).abs().max() > 1e-4

    padded = [c.clone() for c in ctx]
    padded[0][:, 9:] = 100.0                                         # masked-out tokens (inputs(): first 9 kept)
    torch.testing.assert_close(model(x, t, padded, masks), out)


def test_configs_written_before_the_option_load_without_it(tmp_path):
    stored = to_dict(UNetConfig())
    del stored["temporal_text"]
    assert from_dict(UNetConfig, stored).temporal_text is False
    mc = tiny_config()
    mc.unet.temporal_text = True
    save_model(tmp_path / "m.safetensors", randomize(make(True)), mc)
    unet, loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.unet.temporal_text and any(".text_attn." in k for k in unet.state_dict())


def test_video_stage_trains_the_text_layers_and_later_stages_keep_them(tmp_path):
    data, vae = toy_data(tmp_path / "data"), str(tiny_vae(tmp_path / "vae.safetensors"))
    common = {"vae.path": vae, "text.paths": text_assets(tmp_path / "text"), "data.start": "center"}
    t2i = str(t2i_export(tmp_path / "t2i.safetensors"))
    cfg = config(tmp_path, "video", data, init_from=t2i, **common, **{"model.temporal_text": True})
    stage = make_stage(cfg, torch.device("cpu"), make_dataset(cfg), cfg.to_json())
    assert stage.model_config.unet.temporal_text
    text_params = [n for n in stage.trainable if ".text_attn." in n]
    assert text_params and all(is_temporal_key(n) for n in stage.trainable)   # spatial still frozen (§3.2)

    video = tmp_path / "video.safetensors"
    save_model(video, stage.unet, stage.model_config)
    interp = config(tmp_path, "interp", data, init_from=str(video), **common,
                    **{"data.num_frames": 5, "diffusion.interp_factor": 4})
    assert interp.model.temporal_text is False
    mc, state = model_config(interp)
    assert mc.unet.temporal_text and any(".text_attn." in k for k in state)   # trained layers never dropped
