import math

import pytest
import torch

from emu_video.model.config import ConfigError, InputError, ScheduleConfig
from emu_video.model.schedule import NoiseSchedule

diffusers = pytest.importorskip("diffusers")


def reference_scheduler(**overrides):
    kwargs = dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction",
                  clip_sample=False, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  set_alpha_to_one=True, num_train_timesteps=1000)
    kwargs.update(overrides)
    return diffusers.DDIMScheduler(**kwargs)


def fake_model(x, t):
    """Deterministic stand-in for a v-predicting network."""
    return 0.3 * x + 0.1 * math.sin(float(t) / 97.0) + 0.05 * torch.tanh(x * 2)


def test_zero_terminal_snr_matches_diffusers_and_ends_at_zero():
    ours, ref = NoiseSchedule(), reference_scheduler()
    assert ours.alphas_cumprod.dtype == torch.float64
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod.double(), atol=1e-6, rtol=0)
    assert ours.alphas_cumprod[-1].item() == 0.0
    assert ours.betas[-1].item() == pytest.approx(1.0)
    assert ours.alphas_cumprod[0] == pytest.approx(1 - 0.00085)  # the first step is kept


@pytest.mark.parametrize("name", ["linear", "squaredcos_cap_v2"])
def test_other_beta_schedules_match_diffusers(name):
    ours = NoiseSchedule(beta_schedule=name, beta_start=1e-4, beta_end=0.02, zero_terminal_snr=False,
                         prediction_type="eps")
    ref = reference_scheduler(beta_schedule=name, beta_start=1e-4, beta_end=0.02, rescale_betas_zero_snr=False)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod.double(), atol=1e-6, rtol=0)


def test_from_config_uses_every_field():
    s = NoiseSchedule.from_config(ScheduleConfig(zero_terminal_snr=False, num_train_timesteps=500))
    assert s.num_train_timesteps == 500 and s.alphas_cumprod[-1] > 0


def test_ten_step_v_trajectory_matches_diffusers():
    ours, ref = NoiseSchedule(), reference_scheduler()
    ref.set_timesteps(10)
    ts = ours.timesteps(10)
    assert ts.tolist() == ref.timesteps.tolist()
    x = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x_ref = x.clone()
    for t, t_prev in zip(ts.tolist(), ours.previous_timesteps(ts).tolist()):
        x, _ = ours.ddim_step(x, fake_model(x, t), t, t_prev)
        x_ref = ref.step(fake_model(x_ref, t), t, x_ref).prev_sample
    torch.testing.assert_close(x, x_ref, atol=1e-5, rtol=0)


def test_eta_one_step_matches_diffusers_with_the_same_noise():
    ours, ref = NoiseSchedule(), reference_scheduler()
    ref.set_timesteps(10)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 2, 8, 8, generator=gen)
    z = torch.randn(x.shape, generator=gen)
    for t, t_prev in [(899, 799), (499, 399)]:  # at t=999 diffusers itself can NaN (pitfall 6)
        mine, _ = ours.ddim_step(x, fake_model(x, t), t, t_prev, eta=1.0, noise=z)
        theirs = ref.step(fake_model(x, t), t, x, eta=1.0, variance_noise=z).prev_sample
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)


def test_previous_timestep_comes_from_the_list_when_steps_do_not_divide_T():
    s = NoiseSchedule()
    ts = s.timesteps(7)
    expected = [round(1000 - k * 1000 / 7) - 1 for k in range(7)]
    assert ts.tolist() == expected and ts[0] == 999
    prev = s.previous_timesteps(ts)
    assert prev.tolist() == expected[1:] + [-1]
    # diffusers would jump 856 -> 714 (t - 1000//7); the list says 713.
    x = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    out = fake_model(x, 856)
    x_prev, x0 = s.ddim_step(x, out, 856, int(prev[1]))
    ab, ab_prev = s.alphas_cumprod[856].item(), s.alphas_cumprod[713].item()
    eps = math.sqrt(1 - ab) * x + math.sqrt(ab) * out
    torch.testing.assert_close(x_prev, math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps, atol=1e-6, rtol=0)
    # The last step (prev = -1) lands on alpha_bar = 1: it returns x0 exactly, not alpha_bar_0.
    last, x0_last = s.ddim_step(x, out, int(ts[-1]), -1)
    torch.testing.assert_close(last, x0_last, atol=0, rtol=0)


def test_leading_and_linspace_spacings_follow_their_formulas():
    s = NoiseSchedule()
    for n in (1, 7, 10, 50):
        assert s.timesteps(n, "leading").tolist() == [(n - 1 - k) * (1000 // n) for k in range(n)]
        assert s.timesteps(n, "leading", offset=1).tolist() == [(n - 1 - k) * (1000 // n) + 1 for k in range(n)]
        lin = [round(999 * k / (n - 1)) if n > 1 else 0 for k in range(n)][::-1]
        assert s.timesteps(n, "linspace").tolist() == lin
        assert s.timesteps(n).dtype == torch.long


def test_v_round_trip_and_zero_snr_endpoint():
    s = NoiseSchedule()
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(3, 4, 2, 4, 4, generator=g), torch.randn(3, 4, 2, 4, 4, generator=g)
    t = torch.tensor([0, 500, 999])
    x_t = s.add_noise(x0, noise, t)
    x0_hat, eps_hat = s.pred_x0_eps(x_t, s.v_target(x0, noise, t), t)
    torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(eps_hat, noise, atol=1e-5, rtol=0)
    # At t = 999 the input is pure noise and v = -x0.
    torch.testing.assert_close(x_t[2], noise[2])
    torch.testing.assert_close(s.v_target(x0, noise, 999), -x0)


def test_eta_at_zero_snr_stays_finite():
    """Pitfall 6: the direction radicand at alpha_bar_t = 0 is 0 and must not go negative."""
    s = NoiseSchedule()
    x = torch.randn(1, 4, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    x_prev, x0 = s.ddim_step(x, fake_model(x, 999), 999, 99, eta=1.0, noise=z)
    ab_prev = s.alphas_cumprod[99].item()
    torch.testing.assert_close(x_prev, math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * z, atol=1e-5, rtol=0)


def test_eta_noise_is_reproducible_from_a_generator():
    s = NoiseSchedule()
    x = torch.randn(1, 4, 1, 4, 4, generator=torch.Generator().manual_seed(6))
    a, _ = s.ddim_step(x, x, 500, 400, eta=0.5, generator=torch.Generator().manual_seed(7))
    b, _ = s.ddim_step(x, x, 500, 400, eta=0.5, generator=torch.Generator().manual_seed(7))
    c, _ = s.ddim_step(x, x, 500, 400, eta=0.5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ConfigError, match="beta_schedule"):
        NoiseSchedule(beta_schedule="cosine-ish")
    with pytest.raises(ConfigError, match="zero_terminal_snr"):
        NoiseSchedule(prediction_type="eps")
    with pytest.raises(ConfigError, match="prediction_type"):
        NoiseSchedule(prediction_type="x0")
    s = NoiseSchedule()
    with pytest.raises(InputError, match="spacing"):
        s.timesteps(10, "karras")
    for n in (0, 1001, 2.5):
        with pytest.raises(InputError, match="1..1000"):
            s.timesteps(n)
    with pytest.raises(InputError, match="offset"):
        s.timesteps(10, "leading", offset=200)
    with pytest.raises(InputError, match="eta"):
        s.ddim_step(torch.zeros(1, 1), torch.zeros(1, 1), 10, 5, eta=-1)


@pytest.mark.parametrize("zero_snr,prediction", [(True, "v"), (False, "v"), (False, "eps")])
def test_model_output_inverts_pred_x0_eps(zero_snr, prediction):
    s = NoiseSchedule(zero_terminal_snr=zero_snr, prediction_type=prediction)
    g = torch.Generator().manual_seed(5)
    x0, eps = torch.randn(3, 4, 2, 4, 4, generator=g), torch.randn(3, 4, 2, 4, 4, generator=g)
    t = torch.tensor([0, 400, 998])
    out = s.model_output(x0, eps, t)
    torch.testing.assert_close(out, s.training_target(x0, eps, t), atol=1e-5, rtol=0)
    x0_hat, eps_hat = s.pred_x0_eps(s.add_noise(x0, eps, t), out, t)
    torch.testing.assert_close(x0_hat, x0, atol=1e-4, rtol=0)
    torch.testing.assert_close(eps_hat, eps, atol=1e-4, rtol=0)


@pytest.mark.parametrize("shift", [0.25, 9.0])
def test_snr_shift_multiplies_snr_and_keeps_zero_terminal_snr(shift):
    base, shifted = NoiseSchedule(), NoiseSchedule(snr_shift=shift)
    ab, ab_s = base.alphas_cumprod[:-1], shifted.alphas_cumprod[:-1]
    torch.testing.assert_close(ab_s / (1 - ab_s), shift * ab / (1 - ab), rtol=1e-9, atol=0)
    assert shifted.alphas_cumprod[-1].item() == 0.0              # zero terminal SNR survives the shift
    # The β table is re-derived, so anything reading β sees the same process as ᾱ.
    torch.testing.assert_close(torch.cumprod(1 - shifted.betas, 0), shifted.alphas_cumprod, rtol=0, atol=1e-12)
    # More signal at every intermediate t for shift > 1, less for shift < 1.
    assert bool(((ab_s > ab) if shift > 1 else (ab_s < ab))[1:].all())


def test_snr_shift_of_one_is_the_unshifted_schedule_and_bad_shifts_are_refused():
    assert torch.equal(NoiseSchedule(snr_shift=1.0).alphas_cumprod, NoiseSchedule().alphas_cumprod)
    s = NoiseSchedule.from_config(ScheduleConfig(snr_shift=4.0))
    assert s.snr_shift == 4.0 and "snr_shift=4" in repr(s)
    for bad in (0.0, -2.0, float("nan")):
        with pytest.raises(ConfigError, match="snr_shift must be > 0"):
            NoiseSchedule(snr_shift=bad)
