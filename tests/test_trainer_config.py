"""Trainer config loading/overrides, LR schedule, EMA, deterministic batches, state round trip."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from emu_video.model.config import ConfigError, ModelConfig
from emu_video.trainer.batches import StepBatches
from emu_video.trainer.config import load_config, parse_override
from emu_video.trainer.ema import EMA
from emu_video.trainer.lr import lr_at
from emu_video.trainer.state import latest_state, load_state, save_state
from emu_video.trainer.train import CONFIG_DIR, resolve_config_path

SHIPPED = sorted(p.stem for p in CONFIG_DIR.glob("*.toml") if not p.stem.endswith("_base"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load(name):
    cfg = load_config(resolve_config_path(name))
    assert cfg.stage in ("vae", "t2i", "video", "interp")


def test_paper_stage_structure():
    """§3.3: stage 1 at lower resolution and higher fps than stage 2; same frame count."""
    s1, s2 = load_config(resolve_config_path("toy_video_stage1")), load_config(resolve_config_path("toy_video_stage2"))
    assert s1.data.size < s2.data.size and s1.data.fps > s2.data.fps
    assert s2.init_from.endswith("model.safetensors") and "stage1" in s2.init_from
    assert not s1.model.train_spatial and s1.model.prediction_type == "v" and s1.model.zero_terminal_snr


def test_overrides_are_typed_and_checked(tmp_path):
    base = ["data.root=/tmp/x", "stage=vae"]
    cfg = load_config(None, base + ["optim.lr=3e-4", "loop.max_steps=7", "validation.prompts=['a b']",
                                    "out_dir=runs/some where"])
    assert cfg.optim.lr == 3e-4 and cfg.loop.max_steps == 7 and cfg.validation.prompts == ("a b",)
    assert cfg.out_dir == "runs/some where"
    assert load_config(None, base + ["optim.lr=1"]).optim.lr == 1.0          # int accepted for float
    with pytest.raises(ConfigError, match="loop.max_steps: expected int"):
        load_config(None, base + ["loop.max_steps=fast"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lrr'\].*valid keys"):
        load_config(None, base + ["optim.lrr=1e-4"])
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="loop.precision"):
        load_config(None, base + ["loop.precision=fp8"])
    with pytest.raises(ConfigError, match="needs vae.path"):
        load_config(None, base + ["stage=video"])


def test_snr_shift_reaches_the_model_schedule_and_bad_values_are_refused():
    from emu_video.trainer.build import model_config
    base = ["data.root=/tmp/x", "stage=t2i", "model.preset=tiny", "vae.path=/tmp/vae.safetensors"]
    mc, _ = model_config(load_config(None, base + ["model.snr_shift=9"]))
    assert mc.schedule.snr_shift == 9.0 and mc.schedule.zero_terminal_snr
    assert model_config(load_config(None, base))[0].schedule.snr_shift == 1.0
    with pytest.raises(ConfigError, match="model.snr_shift must be > 0"):
        load_config(None, base + ["model.snr_shift=0"])


def test_bad_interp_fills_are_refused():
    """(test_trainer_stages checks that a good one reaches the exported model's config)"""
    base = ["data.root=/tmp/x", "stage=interp", "vae.path=/tmp/vae.safetensors", "data.num_frames=9"]
    assert load_config(None, base).diffusion.interp_fill == "zero"                  # the paper's default
    with pytest.raises(ConfigError, match="diffusion.interp_fill = 'nearest' is not one of"):
        load_config(None, base + ["diffusion.interp_fill=nearest"])
    with pytest.raises(ConfigError, match="set diffusion.p_drop_image = 0"):       # defaults drop 5% + 5%
        load_config(None, base + ["diffusion.interp_fill=residual"])
    residual = base + ["diffusion.interp_fill=residual", "diffusion.p_drop_image=0", "diffusion.p_drop_both=0"]
    assert load_config(None, residual).diffusion.interp_fill == "residual"
    with pytest.raises(ConfigError, match="interp_fill must be one of"):
        ModelConfig(interp_fill="nearest").validate()


def test_bad_image_fills_are_refused():
    base = ["data.root=/tmp/x", "stage=video", "vae.path=/tmp/vae.safetensors"]
    assert load_config(None, base).diffusion.image_fill == "zero"                   # the paper's default
    assert load_config(None, base + ["diffusion.image_fill=hold"]).diffusion.image_fill == "hold"
    with pytest.raises(ConfigError, match="diffusion.image_fill = 'repeat' is not one of"):
        load_config(None, base + ["diffusion.image_fill=repeat"])


def test_extends_merges_sections(tmp_path):
    (tmp_path / "base.toml").write_text('seed = 3\n[data]\nroot = "d"\nsize = 48\n[optim]\nlr = 0.5\n')
    (tmp_path / "child.toml").write_text('extends = "base.toml"\nstage = "vae"\n[data]\nsize = 64\n')
    cfg = load_config(tmp_path / "child.toml", ["optim.lr=0.25"])
    assert (cfg.seed, cfg.data.root, cfg.data.size, cfg.optim.lr, cfg.stage) == (3, "d", 64, 0.25, "vae")
    (tmp_path / "bad.toml").write_text('[data]\nroot = "d"\nsizes = 3\n')
    with pytest.raises(ConfigError, match="sizes"):
        load_config(tmp_path / "bad.toml")


def test_lr_warmup_then_cosine():
    lrs = [lr_at(s, 1.0, 10, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1) for s in range(11)]
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[2] == 1.0
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and abs(lrs[10] - 0.1) < 1e-9


def test_ema_tracks_with_warmup():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA({"p": p}, decay=0.9, warmup=True)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update()                                  # decay min(0.9, 1/10) = 0.1
    assert torch.allclose(ema.shadow["p"], torch.full((3,), 0.9))
    with torch.no_grad():
        p.fill_(0.0)
    ema2 = EMA({"p": p}, decay=0.9, warmup=False)
    with torch.no_grad():
        p.fill_(1.0)
    ema2.update()
    assert torch.allclose(ema2.shadow["p"], torch.full((3,), 1.0 - 0.9 * 1.0))


def test_batches_equal_shards_and_resume_position():
    full = StepBatches(n=5, seed=1, start_step=0, end_step=6, rank=0, world=1, accum=1, batch=4)
    ranks = [StepBatches(5, 1, 0, 6, rank=r, world=2, accum=1, batch=2) for r in range(2)]
    for step in range(6):
        global_batch = full.keys(step, 0)
        assert ranks[0].keys(step, 0) + ranks[1].keys(step, 0) == global_batch   # equal, disjoint shards
    resumed = list(StepBatches(5, 1, 3, 6, 0, 1, 1, 4))
    assert resumed == list(full)[3:]
    epochs = [e for b in full for e, _ in b]
    assert sorted(i for b in full for e, i in b if e == 0) == list(range(5))  # a permutation per epoch
    assert max(epochs) >= 3


def test_state_round_trip_restores_everything(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW(params.values(), lr=0.1)
    ema = EMA(params, 0.5)
    for _ in range(2):
        model(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
        ema.update()
    save_state(tmp_path, 2, params, opt, ema, '{"x": 1}', {"k": "v"}, keep_last=1)
    expected = (torch.rand(2), np.random.rand(), random.random())
    save_state(tmp_path, 3, params, opt, ema, '{"x": 1}', {"k": "v"}, keep_last=1)
    assert latest_state(tmp_path).name == "state_00000003.safetensors"
    assert len(list(Path(tmp_path).glob("state_*"))) == 1                       # keep_last pruned

    torch.manual_seed(123)
    fresh = torch.nn.Linear(3, 2)
    fparams = dict(fresh.named_parameters())
    fopt = torch.optim.AdamW(fparams.values(), lr=0.1)
    fema = EMA(fparams, 0.5)
    info = load_state(latest_state(tmp_path), fparams, fopt, fema)
    assert info["step"] == 3 and info["extra"] == {"k": "v"}
    for k in params:
        assert torch.equal(params[k], fparams[k]) and torch.equal(ema.shadow[k], fema.shadow[k])
        for s in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[params[k]][s], fopt.state[fparams[k]][s])
    assert fema.num_updates == 2
    # RNG streams continue exactly where the saved ones were (state saved after `expected` was drawn
    # from the step-2 states, so re-draw from the step-3 states and compare to a fresh draw sequence)
    after = (torch.rand(2), np.random.rand(), random.random())
    load_state(latest_state(tmp_path), fparams, fopt, fema)
    again = (torch.rand(2), np.random.rand(), random.random())
    assert torch.equal(after[0], again[0]) and after[1:] == again[1:]
    assert not torch.equal(expected[0], after[0])
