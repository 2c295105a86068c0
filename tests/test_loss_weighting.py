"""Timestep weighting of the diffusion loss: Min-SNR-γ weights and logit-normal timestep sampling
(trainer options; both off by default, which is the paper's plain MSE over uniform timesteps)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _trainer_common import FixedAnswer
from emu_video.model.config import ConfigError, ScheduleConfig
from emu_video.model.schedule import NoiseSchedule
from emu_video.trainer.config import load_config
from emu_video.trainer.objectives import DiffusionLoss, min_snr_weights, timesteps

DEMO_T2I = Path(__file__).parents[1] / "trainer/configs/demo_t2i.toml"


def _snr(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    ab = schedule.alphas_cumprod[t].double()
    return ab / (1 - ab)


def test_min_snr_weights_for_v_cap_the_snr_and_zero_the_terminal_step():
    schedule = NoiseSchedule.from_config(ScheduleConfig())               # v, zero terminal SNR
    t = torch.tensor([0, 100, 300, 500, 800, 999])
    snr = _snr(schedule, t)
    w = min_snr_weights(schedule, t, gamma=5.0)
    torch.testing.assert_close(w.double(), snr.clamp(max=5) / (snr + 1), rtol=1e-5, atol=1e-7)
    assert w[-1] == 0                                                       # SNR 0 at the last step
    assert w[0] < 0.01 and w[2] > 0.5                                       # clean steps count far less
    assert torch.all(w <= 1)


def test_min_snr_weights_for_eps_divide_by_snr():
    schedule = NoiseSchedule.from_config(ScheduleConfig(zero_terminal_snr=False, prediction_type="eps"))
    t = torch.tensor([0, 400, 999])
    snr = _snr(schedule, t)
    torch.testing.assert_close(min_snr_weights(schedule, t, 5.0).double(), snr.clamp(max=5) / snr,
                               rtol=1e-5, atol=1e-7)




def _loss(t: torch.Tensor, err_in: int, snr_gamma: float, focus: float = 0.0) -> torch.Tensor:
    schedule = NoiseSchedule.from_config(ScheduleConfig())
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    out = schedule.training_target(x0, noise, t).clone()
    out[err_in] += 0.5
    loss = DiffusionLoss(FixedAnswer(out), schedule, image_mode=True, focus=focus, snr_gamma=snr_gamma)
    return loss(x0, noise, t, None, None)


def test_loss_scales_each_sample_by_its_weight():
    t = torch.tensor([50, 400])
    w = min_snr_weights(NoiseSchedule.from_config(ScheduleConfig()), t, 5.0)
    plain = _loss(t, 0, 0.0)
    torch.testing.assert_close(plain, torch.tensor(0.125))                  # 0.5² over half the batch
    torch.testing.assert_close(_loss(t, 0, 5.0), plain * w[0])
    torch.testing.assert_close(_loss(t, 1, 5.0), plain * w[1])
    torch.testing.assert_close(_loss(t, 1, 5.0, focus=10.0), _loss(t, 1, 0.0, focus=10.0) * w[1])


def test_uniform_sampling_is_the_unchanged_draw_and_logit_normal_favours_mid_noise():
    schedule = NoiseSchedule.from_config(ScheduleConfig())
    same = torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(timesteps(64, schedule, torch.Generator().manual_seed(3)), same)   # old runs resume alike
    t = timesteps(40000, schedule, torch.Generator().manual_seed(0), "logit_normal")
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) <= 999
    mid = ((t >= 250) & (t < 750)).float().mean().item()
    assert 0.70 < mid < 0.75                       # P(|u| < logit 0.75 = 1.0986) = 0.727; uniform gives 0.5
    again = timesteps(40000, schedule, torch.Generator().manual_seed(0), "logit_normal")
    assert torch.equal(t, again)


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_bad_snr_gamma_is_refused(value):
    with pytest.raises(ConfigError, match="diffusion.snr_gamma must be a finite number >= 0"):
        load_config(DEMO_T2I, [f"diffusion.snr_gamma={value}"])


def test_unknown_timestep_sampling_is_refused():
    with pytest.raises(ConfigError, match=r"diffusion.timestep_sampling = 'lognormal' is not one of"):
        load_config(DEMO_T2I, ["diffusion.timestep_sampling=lognormal"])


def test_options_reach_the_stage_loss_and_its_inputs(tmp_path):
    from _trainer_common import config, text_assets, tiny_vae, toy_data
    from emu_video.model.conditioning import TextCondition
    from emu_video.trainer.objectives import t2i_inputs, video_inputs
    from emu_video.trainer.stages import make_stage
    from emu_video.trainer.train import make_dataset

    cfg = config(tmp_path, "t2i", toy_data(tmp_path / "data"), **{
        "vae.path": str(tiny_vae(tmp_path / "vae.safetensors")), "text.paths": text_assets(tmp_path / "text"),
        "data.start": "center", "diffusion.snr_gamma": 5.0, "diffusion.timestep_sampling": "logit_normal"})
    dataset = make_dataset(cfg)
    stage = make_stage(cfg, torch.device("cpu"), dataset, cfg.to_json())
    assert stage.module.snr_gamma == 5.0
    assert torch.isfinite(stage.loss(stage.module, [dataset[0]], torch.Generator().manual_seed(0)))

    n = 4000
    text, null = TextCondition([torch.ones(n, 2, 3)], [None]), TextCondition([torch.zeros(1, 2, 3)], [None])
    schedule = NoiseSchedule.from_config(ScheduleConfig())
    for make in (t2i_inputs, video_inputs):
        t = make(torch.randn(n, 1, 2, 1, 1), text, null, cfg, schedule, torch.Generator().manual_seed(0))["t"]
        assert ((t >= 250) & (t < 750)).float().mean() > 0.68          # logit-normal, not uniform (0.5)
