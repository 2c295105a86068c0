from dataclasses import replace

import pytest
import torch

from emu_video.model.conditioning import TextCondition, first_frame, known_frames, model_input, pin_known_frames
from emu_video.model.config import InputError
from emu_video.model.guidance import cfg, dual_guidance
from emu_video.model.sampling import (SamplerSettings, SamplingCancelled, SamplingDiverged, make_noise, sample_image,
                                      sample_video)
from emu_video.model.schedule import NoiseSchedule

C = 3
SCHEDULE = NoiseSchedule()


class FakeDenoiser:
    """Deterministic, per-sample function of every input (so each branch gives a different v)."""

    def __init__(self):
        self.calls = []

    def __call__(self, x_in, timesteps, context, context_masks, image_mode=False):
        self.calls.append((x_in.shape[0], image_mode))
        x = x_in[:, :C]
        text = context[0].mean(dim=(1, 2)).reshape(-1, 1, 1, 1, 1)
        t = (timesteps.double() / 1000).reshape(-1, 1, 1, 1, 1).to(x)
        out = 0.3 * x + 0.2 * torch.tanh(x) * t + 0.1 * text
        if not image_mode:
            assert x_in.shape[1] == 2 * C + 1
            out = out + 0.25 * x_in[:, C:2 * C] - 0.15 * x_in[:, 2 * C:]
        else:
            assert x_in.shape[1] == C
        return out


def texts(batch=2):
    g = torch.Generator().manual_seed(11)
    text = TextCondition([torch.randn(batch, 4, 6, generator=g)], [torch.ones(batch, 4, dtype=torch.bool)])
    null = TextCondition([torch.randn(1, 4, 6, generator=g)], [torch.tensor([[True, False, False, False]])])
    return text, null


def video_inputs(batch=2, frames=3):
    noise = make_noise((batch, C, frames, 4, 4), seed=0)
    cond, mask = first_frame(make_noise((batch, C, 4, 4), seed=1), frames)
    return noise, cond, mask


def three_branches(denoiser, x, t, cond, mask, text, null):
    """v(I,T), v(I,∅), v(∅,∅) as three separate forwards."""
    tt, null = torch.full((x.shape[0],), t), null.repeat(x.shape[0])
    return (denoiser(model_input(x, cond, mask), tt, text.context, text.masks, image_mode=False),
            denoiser(model_input(x, cond, mask), tt, null.context, null.masks, image_mode=False),
            denoiser(model_input(x, 0 * cond, 0 * mask), tt, null.context, null.masks, image_mode=False))


def reference_video(denoiser, noise, cond, mask, text, null, settings, init=None):
    """Three separate forwards per step and the full dual-guidance formula; with denoise < 1 the last
    ⌊steps·denoise⌋ steps only, from `init` noised to the first of them (SDEdit)."""
    ts = SCHEDULE.timesteps(settings.steps, settings.spacing)
    x = noise
    if settings.denoise < 1:
        ts = ts[len(ts) - max(1, int(settings.steps * settings.denoise)):]
        x = SCHEDULE.add_noise(init, noise, int(ts[0]))
    for t, t_prev in zip(ts.tolist(), SCHEDULE.previous_timesteps(ts).tolist()):
        full, image, uncond = three_branches(denoiser, x, t, cond, mask, text, null)
        late = settings.late_text_cfg is not None and t < settings.late_below * SCHEDULE.num_train_timesteps
        s_t = settings.late_text_cfg if late else settings.text_cfg
        x, _ = SCHEDULE.ddim_step(x, dual_guidance(uncond, image, full, settings.image_cfg, s_t), t, t_prev)
    return x


@pytest.mark.parametrize("s_i,s_t", [(1.5, 7.5), (1.0, 7.5), (1.0, 1.0), (2.0, 0.0), (3.0, 3.0)])
def test_one_batched_forward_equals_three_separate_branches(s_i, s_t):
    noise, cond, mask = video_inputs()
    text, null = texts()
    settings = SamplerSettings(steps=4, image_cfg=s_i, text_cfg=s_t, keep_known=False)
    denoiser = FakeDenoiser()
    out = sample_video(denoiser, SCHEDULE, noise, cond, mask, text, null, settings)
    expected = reference_video(FakeDenoiser(), noise, cond, mask, text, null, settings)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    n_branches = {(1.5, 7.5): 3, (1.0, 7.5): 2, (1.0, 1.0): 1, (2.0, 0.0): 2, (3.0, 3.0): 2}[(s_i, s_t)]
    assert denoiser.calls == [(2 * n_branches, False)] * 4  # one forward per step, only needed branches


@pytest.mark.parametrize("s_i,s_t,late,n_branches", [(3.5, 7.5, 3.0, 3), (1.0, 7.5, 1.0, 2), (1.0, 1.0, 4.0, 2)])
def test_late_text_guidance_applies_on_the_late_steps_only(s_i, s_t, late, n_branches):
    """4 trailing steps of T = 1000 are t = 999, 749, 499, 249: below 0.5·T the late scale applies.
    The batch holds every branch either scale needs (image guidance 1 and text 1 need only `full`)."""
    noise, cond, mask = video_inputs()
    text, null = texts()
    settings = SamplerSettings(steps=4, image_cfg=s_i, text_cfg=s_t, late_text_cfg=late, late_below=0.5,
                               keep_known=False, rescale=0.0)
    denoiser = FakeDenoiser()
    out = sample_video(denoiser, SCHEDULE, noise, cond, mask, text, null, settings)
    torch.testing.assert_close(out, reference_video(FakeDenoiser(), noise, cond, mask, text, null, settings),
                               atol=1e-5, rtol=1e-5)
    assert denoiser.calls == [(2 * n_branches, False)] * 4
    unchanged = sample_video(FakeDenoiser(), SCHEDULE, noise, cond, mask, text, null,
                             SamplerSettings(steps=4, image_cfg=s_i, text_cfg=s_t, keep_known=False, rescale=0.0))
    assert not torch.allclose(out, unchanged)


def test_late_text_guidance_on_every_step_is_that_text_guidance():
    noise, cond, mask = video_inputs()
    text, null = texts()
    everywhere = SamplerSettings(steps=5, image_cfg=3.5, text_cfg=7.5, late_text_cfg=3.0, late_below=1.0)
    plain = SamplerSettings(steps=5, image_cfg=3.5, text_cfg=3.0)
    torch.testing.assert_close(sample_video(FakeDenoiser(), SCHEDULE, noise, cond, mask, text, null, everywhere),
                               sample_video(FakeDenoiser(), SCHEDULE, noise, cond, mask, text, null, plain))


def test_late_text_guidance_leaves_the_first_frame_alone():
    noise = make_noise((2, C, 4, 4), seed=3)
    text, null = texts()
    late = SamplerSettings(steps=4, text_cfg=2.0, late_text_cfg=9.0, late_below=1.0)
    torch.testing.assert_close(sample_image(FakeDenoiser(), SCHEDULE, noise, text, null, late),
                               sample_image(FakeDenoiser(), SCHEDULE, noise, text, null, SamplerSettings(steps=4, text_cfg=2.0)))


def reference_cfgpp(denoiser, noise, cond, mask, text, null, settings):
    """CFG++ (Chung et al. 2024, Algorithm 1) with dual guidance, three separate forwards per step:
    x̂0 from the guided v, the step back toward x_prev with the unguided branch's ε̂."""
    ts = SCHEDULE.timesteps(settings.steps, settings.spacing)
    x = noise
    for t, t_prev in zip(ts.tolist(), SCHEDULE.previous_timesteps(ts).tolist()):
        full, image, uncond = three_branches(denoiser, x, t, cond, mask, text, null)
        x0, _ = SCHEDULE.pred_x0_eps(x, dual_guidance(uncond, image, full, settings.image_cfg, settings.text_cfg), t)
        _, eps_uncond = SCHEDULE.pred_x0_eps(x, uncond, t)
        ab_prev = SCHEDULE.alpha_bar(t_prev, x)
        x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps_uncond
    return x


@pytest.mark.parametrize("s_i,s_t", [(1.0, 1.0), (1.0, 0.8), (1.5, 1.2)])
def test_cfgpp_renoises_with_the_unguided_branch(s_i, s_t):
    noise, cond, mask = video_inputs()
    text, null = texts()
    settings = SamplerSettings(steps=4, image_cfg=s_i, text_cfg=s_t, keep_known=False, guidance="cfg++")
    denoiser = FakeDenoiser()
    out = sample_video(denoiser, SCHEDULE, noise, cond, mask, text, null, settings)
    torch.testing.assert_close(out, reference_cfgpp(FakeDenoiser(), noise, cond, mask, text, null, settings),
                               atol=1e-5, rtol=1e-5)
    assert denoiser.calls[0][0] >= 2 * 2        # v(∅,∅) is run even where its guidance weight is 0 (s_I = 1)
    plain = sample_video(FakeDenoiser(), SCHEDULE, noise, cond, mask, text, null, replace(settings, guidance="cfg"))
    assert not torch.allclose(out, plain, atol=1e-3)


def test_cfgpp_keeps_the_known_frames_exactly():
    noise, cond, mask = video_inputs()
    out = sample_video(FakeDenoiser(), SCHEDULE, noise, cond, mask, *texts(),
                       SamplerSettings(steps=5, image_cfg=1.0, text_cfg=1.0, guidance="cfg++"))
    torch.testing.assert_close(out[:, :, 0], cond[:, :, 0])


def test_ddim_step_renoises_with_the_given_prediction():
    x, v, v_ref = (make_noise((1, C, 2, 4, 4), seed=s) for s in (4, 5, 6))
    x0, _ = SCHEDULE.pred_x0_eps(x, v, 500)
    _, eps_ref = SCHEDULE.pred_x0_eps(x, v_ref, 500)
    ab_prev = SCHEDULE.alpha_bar(250, x)
    x_prev, x0_out = SCHEDULE.ddim_step(x, v, 500, 250, renoise_out=v_ref)
    torch.testing.assert_close(x_prev, ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps_ref)
    torch.testing.assert_close(x0_out, x0)
    torch.testing.assert_close(SCHEDULE.ddim_step(x, v, 500, 250, renoise_out=v)[0], SCHEDULE.ddim_step(x, v, 500, 250)[0])


@pytest.mark.parametrize("steps,denoise,run", [(25, 0.15, 3), (4, 0.5, 2), (10, 0.3, 3), (6, 1.0, 6), (2, 0.15, 1)])
def test_denoise_runs_the_last_steps_from_the_start_latent(steps, denoise, run):
    """denoise < 1 (diffusers' img2img strength): the last ⌊steps·denoise⌋ steps of the same schedule (at
    least one), starting from `init` noised to the first of them; the denoiser is called once per step run."""
    noise, cond, mask = video_inputs()
    text, null = texts()
    init = make_noise(noise.shape, seed=7)
    settings = SamplerSettings(steps=steps, image_cfg=1.5, text_cfg=3.0, keep_known=False, denoise=denoise)
    denoiser, seen = FakeDenoiser(), []
    out = sample_video(denoiser, SCHEDULE, noise, cond, mask, text, null, settings, init=init,
                       callback=lambda i, n, x0: seen.append(n))
    assert settings.steps_run == run and len(denoiser.calls) == run and seen == [run] * run
    torch.testing.assert_close(out, reference_video(FakeDenoiser(), noise, cond, mask, text, null, settings, init),
                               atol=1e-5, rtol=1e-5)
    if denoise < 1:     # the start matters: another init, another result
        other = sample_video(FakeDenoiser(), SCHEDULE, noise, cond, mask, text, null, settings, init=-init)
        assert not torch.allclose(out, other)


def test_denoise_needs_a_start_latent_and_a_value_in_range():
    noise, cond, mask = video_inputs()
    text, null = texts()
    with pytest.raises(InputError, match="needs a latent to start from; only the interpolation"):
        sample_video(FakeDenoiser(), SCHEDULE, noise, cond, mask, text, null, SamplerSettings(steps=4, denoise=0.5))
    with pytest.raises(InputError, match="needs a latent to start from"):
        sample_image(FakeDenoiser(), SCHEDULE, noise[:, :, 0], text, null, SamplerSettings(steps=4, denoise=0.5))
    with pytest.raises(InputError, match="must match the noise"):
        sample_video(FakeDenoiser(), SCHEDULE, noise, cond, mask, text, null, SamplerSettings(steps=4, denoise=0.5),
                     init=noise[:, :, :1])
    for bad, message in [(0.0, "denoise must be in \\(0, 1\\]"), (1.5, "denoise must be in"), (-0.5, "must be in")]:
        with pytest.raises(InputError, match=message):
            SamplerSettings(steps=4, denoise=bad).validate(SCHEDULE)


def test_first_frame_settings_keep_plain_cfg():
    from emu_video.model.sampling import first_frame_settings

    assert first_frame_settings(SamplerSettings(guidance="cfg++"), 2.0).guidance == "cfg"


@pytest.mark.parametrize("bad,message", [(dict(guidance="cfgpp"), "unknown guidance form 'cfgpp'; choose one of cfg, cfg\\+\\+"),
                                         (dict(late_text_cfg=-1.0), "late text guidance must be >= 0"),
                                         (dict(late_below=0.0), "late_below must be in"),
                                         (dict(late_below=1.5), "late_below must be in")])
def test_bad_late_text_guidance_is_refused(bad, message):
    with pytest.raises(InputError, match=message):
        SamplerSettings(**bad).validate(SCHEDULE)


def test_callback_once_per_step_with_x0():
    noise, cond, mask = video_inputs()
    seen = []
    out = sample_video(FakeDenoiser(), SCHEDULE, noise, cond, mask, *texts(), SamplerSettings(steps=5),
                       callback=lambda i, n, x0: seen.append((i, n, x0.clone())))
    assert [(i, n) for i, n, _ in seen] == [(i, 5) for i in range(5)]
    assert seen[0][2].shape == noise.shape
    torch.testing.assert_close(seen[-1][2], out)  # the last step lands on alpha_bar = 1: x0


def test_cancel_is_honoured_within_one_step():
    noise, cond, mask = video_inputs()
    denoiser = FakeDenoiser()
    asked = []

    def cancel():
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(SamplingCancelled, match="3/6"):
        sample_video(denoiser, SCHEDULE, noise, cond, mask, *texts(), SamplerSettings(steps=6), cancel=cancel)
    assert len(denoiser.calls) == 2


def test_nan_raises_a_clear_error_naming_the_step():
    noise, cond, mask = video_inputs()

    def broken(x_in, t, context, masks, image_mode=False):
        out = FakeDenoiser()(x_in, t, context, masks, image_mode)
        return out * float("nan") if int(t[0]) < 700 else out

    with pytest.raises(SamplingDiverged, match=r"step 4/10 \(t=699\).*float32.*guidance"):
        sample_video(broken, SCHEDULE, noise, cond, mask, *texts(), SamplerSettings(steps=10))


def test_same_seed_same_video_with_stochastic_steps():
    def run(seed, eta_seed):
        noise, cond, mask = video_inputs()
        noise = make_noise(noise.shape, seed)
        return sample_video(FakeDenoiser(), SCHEDULE, noise, cond, mask, *texts(), SamplerSettings(steps=3, eta=1.0),
                            generator=torch.Generator().manual_seed(eta_seed))

    assert torch.equal(run(0, 1), run(0, 1))
    assert not torch.equal(run(0, 1), run(0, 2)) and not torch.equal(run(0, 1), run(5, 1))
    assert torch.equal(make_noise((2, 3), 4), make_noise((2, 3), 4))


def oracle(x0, image_mode):
    """Returns the exact v for a known x0 whatever the conditioning: v = (√ᾱ·x_t − x0)/√(1−ᾱ)."""
    def denoiser(x_in, t, context, masks, image_mode=image_mode):
        x_t = x_in[:, :C]
        target = x0.repeat(x_t.shape[0] // x0.shape[0], *([1] * (x0.ndim - 1)))
        ab = SCHEDULE.alpha_bar(t, x_t)
        return (ab.sqrt() * x_t - target) / (1 - ab).sqrt()
    return denoiser


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_oracle_denoiser_recovers_x0(eta):
    noise, cond, mask = video_inputs()
    x0 = make_noise(noise.shape, seed=9)
    out = sample_video(oracle(x0, False), SCHEDULE, noise, cond, mask, *texts(),
                       SamplerSettings(steps=7, eta=eta, rescale=0.7, keep_known=False),
                       generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)
    image_x0 = make_noise((2, C, 4, 4), seed=10)
    img = sample_image(oracle(image_x0.unsqueeze(2), True), SCHEDULE, make_noise((2, C, 4, 4), 3), *texts(),
                       SamplerSettings(steps=4))
    torch.testing.assert_close(img, image_x0, atol=1e-5, rtol=0)


def test_direct_text_to_video_without_known_frames_equals_zero_conditioning():
    noise, cond, mask = video_inputs()
    settings = SamplerSettings(steps=3)
    a = sample_video(FakeDenoiser(), SCHEDULE, noise, None, None, *texts(), settings)
    b = sample_video(FakeDenoiser(), SCHEDULE, noise, 0 * cond, 0 * mask, *texts(), settings)
    torch.testing.assert_close(a, b)


def test_sample_image_is_plain_text_cfg_in_image_mode():
    text, null = texts()
    noise = make_noise((2, C, 4, 4), seed=2)
    settings = SamplerSettings(steps=3, text_cfg=5.0, image_cfg=123.0)  # image scale is irrelevant here
    denoiser = FakeDenoiser()
    out = sample_image(denoiser, SCHEDULE, noise, text, null, settings)
    assert out.shape == noise.shape and denoiser.calls == [(4, True)] * 3
    ref, x = FakeDenoiser(), noise.unsqueeze(2)
    null = null.repeat(2)
    ts = SCHEDULE.timesteps(3)
    for t, t_prev in zip(ts.tolist(), SCHEDULE.previous_timesteps(ts).tolist()):
        tt = torch.full((2,), t)
        v = cfg(ref(x, tt, null.context, null.masks, True), ref(x, tt, text.context, text.masks, True), 5.0)
        x, _ = SCHEDULE.ddim_step(x, v, t, t_prev)
    torch.testing.assert_close(out, x.squeeze(2), atol=1e-5, rtol=1e-5)


def test_bad_inputs_are_reported_before_any_forward():
    noise, cond, mask = video_inputs()
    denoiser = FakeDenoiser()
    with pytest.raises(InputError, match="B, C, T, h, w"):
        sample_video(denoiser, SCHEDULE, noise[:, :, 0], cond, mask, *texts())
    with pytest.raises(InputError, match="same shape"):
        sample_video(denoiser, SCHEDULE, noise, cond[:, :, :2], mask, *texts())
    text, null = texts(batch=3)
    with pytest.raises(InputError, match="batch"):
        sample_video(denoiser, SCHEDULE, noise, cond, mask, text, null)
    with pytest.raises(InputError, match="steps"):
        sample_video(denoiser, SCHEDULE, noise, cond, mask, *texts(), SamplerSettings(steps=0))
    with pytest.raises(InputError, match="B, C, h, w"):
        sample_image(denoiser, SCHEDULE, noise, *texts())
    assert denoiser.calls == []


class TemporalFakeDenoiser(FakeDenoiser):
    """FakeDenoiser plus a frame average, so each frame's prediction depends on the others (as with temporal layers)."""

    def __call__(self, x_in, timesteps, context, context_masks, image_mode=False):
        out = super().__call__(x_in, timesteps, context, context_masks, image_mode)
        return out + 0.2 * x_in[:, :C].mean(dim=2, keepdim=True)


def test_keep_known_returns_the_known_frames_exactly_and_samples_the_rest_beside_them():
    noise, cond, mask = video_inputs(frames=4)
    text, null = texts()
    kept = sample_video(TemporalFakeDenoiser(), SCHEDULE, noise, cond, mask, text, null, SamplerSettings(steps=5))
    free = sample_video(TemporalFakeDenoiser(), SCHEDULE, noise, cond, mask, text, null,
                        SamplerSettings(steps=5, keep_known=False))
    torch.testing.assert_close(kept[:, :, 0], cond[:, :, 0], atol=1e-5, rtol=0)   # the default: pinned
    assert (free[:, :, 0] - cond[:, :, 0]).abs().max() > 0.1                      # the fake model redraws it
    # the other frames are still sampled (not copied), and they saw the pinned frame at every step
    assert (kept[:, :, 1:] - free[:, :, 1:]).abs().max() > 1e-4
    assert (kept[:, :, 1:] - cond[:, :, :1]).abs().max() > 0.1


def test_keep_known_pins_to_the_clean_frames_when_cond_is_noise_augmented():
    noise = make_noise((1, C, 5, 4, 4), seed=0)
    clean, mask = known_frames(make_noise((1, C, 2, 4, 4), seed=1), [0, 4], 5)
    augmented = clean + 0.3 * make_noise(clean.shape, seed=2) * mask
    out = sample_video(FakeDenoiser(), SCHEDULE, noise, augmented, mask, *texts(batch=1), SamplerSettings(steps=4),
                       known=clean)
    torch.testing.assert_close(out[:, :, [0, 4]], clean[:, :, [0, 4]], atol=1e-5, rtol=0)


@pytest.mark.parametrize("t", [999, 500, 0])
def test_pin_changes_nothing_where_the_prediction_already_says_the_known_frame(t):
    """Idempotence: a v that already decodes to x̂0 = known at the known slots comes back unchanged,
    and the unknown slots are never touched."""
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(1, C, 3, 4, 4, generator=g), torch.randn(1, C, 3, 4, 4, generator=g)
    known, mask = known_frames(x0[:, :, :1], [0], 3)
    x_t = SCHEDULE.add_noise(x0, eps, t)
    v = SCHEDULE.v_target(x0, eps, t)
    torch.testing.assert_close(pin_known_frames(SCHEDULE, x_t, v, t, known, mask), v, atol=1e-4, rtol=0)
    other = torch.randn(v.shape, generator=g)
    pinned = pin_known_frames(SCHEDULE, x_t, other, t, known, mask)
    torch.testing.assert_close(pinned[:, :, 1:], other[:, :, 1:])
    torch.testing.assert_close(SCHEDULE.pred_x0_eps(x_t, pinned, t)[0][:, :, 0], x0[:, :, 0], atol=1e-4, rtol=0)


def test_known_frames_of_the_wrong_shape_are_refused():
    noise, cond, mask = video_inputs()
    with pytest.raises(InputError, match="known frames"):
        sample_video(FakeDenoiser(), SCHEDULE, noise, cond, mask, *texts(), SamplerSettings(steps=2),
                     known=cond[:, :, :1])
