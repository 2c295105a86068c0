"""model/pipeline.py: the §3.2 factorization steps on the tiny random model set (32 px, 4 frames)."""
import copy
import dataclasses

import pytest
import torch

from emu_video.cli import find_model_set, load_model_set
from emu_video.model import pipeline
from emu_video.model.config import InputError
from emu_video.model.sampling import SamplerSettings, SamplingCancelled


PROMPT = "a red circle moving quickly right on a black background"
SETTINGS = SamplerSettings(steps=2, image_cfg=1.5, text_cfg=3.0, rescale=0.7)


@pytest.fixture(scope="module")
def models(model_dir):
    return load_model_set(find_model_set(model_dir))


@pytest.fixture(scope="module")
def texts(models):
    return pipeline.encode_prompts(models["text"], PROMPT)


def first_frame(models, texts, seed=0, **kw):
    F, vae = models["video"], models["vae"]
    return pipeline.generate_first_frame(F.unet, F.schedule, F.config, *texts, SETTINGS, 32, 32, seed,
                                         vae.cfg.downsample_factor, **kw)


def video(models, texts, seed=0, frames=4, **kw):
    F = models["video"]
    image_latent = first_frame(models, texts, seed)
    return pipeline.generate_video(F.unet, F.schedule, F.config, *texts, SETTINGS, image_latent, frames, seed, **kw)


# --------------------------------------------------------------------------- inputs

def test_prepare_image_crop_keeps_centre_and_pad_adds_borders():
    wide = torch.zeros(1, 20, 40, 3)
    wide[:, :, 10:30] = 1.0                                  # white centre band, black sides
    crop = pipeline.prepare_image(wide, 16, 16, "crop")
    assert crop.shape == (1, 16, 16, 3)
    assert crop.mean() > 0.9                                  # the centre survives, the sides are cut
    pad = pipeline.prepare_image(wide, 16, 16, "pad")
    assert pad.shape == (1, 16, 16, 3)
    assert pad[:, :4].max() == 0 and pad[:, -4:].max() == 0   # black bars above and below
    stretch = pipeline.prepare_image(wide, 16, 16, "stretch")
    assert stretch[:, :, :3].mean() < 0.2 and stretch[:, :, 6:10].mean() > 0.9


def test_prepare_image_accepts_rgba_grey_and_unbatched():
    assert pipeline.prepare_image(torch.rand(8, 8, 4), 8, 8).shape == (1, 8, 8, 3)
    grey = pipeline.prepare_image(torch.rand(2, 8, 8, 1), 8, 8)
    assert torch.equal(grey[..., 0], grey[..., 2])


@pytest.mark.parametrize("bad, match", [(torch.rand(8, 8), "IMAGE"), (torch.rand(1, 8, 8, 5), "3 colour")])
def test_prepare_image_rejects_bad_images(bad, match):
    with pytest.raises(InputError, match=match):
        pipeline.prepare_image(bad, 8, 8)


def test_prepare_image_rejects_unknown_mode():
    with pytest.raises(InputError, match="crop"):
        pipeline.prepare_image(torch.rand(1, 8, 8, 3), 8, 8, "zoom")


def test_sizes_must_fit_vae_and_unet_factors(models):
    cfg = models["video"].config
    assert pipeline.latent_size(32, 40, cfg, 2) == (16, 20)
    with pytest.raises(InputError, match="nearest valid heights are 32 and 36"):
        pipeline.latent_size(34, 32, cfg, 2)


def test_frame_limits(models):
    cfg = models["video"].config
    with pytest.raises(InputError, match=">= 1"):
        pipeline.check_frames(0, cfg)
    with pytest.raises(InputError, match="more than this model supports"):
        pipeline.check_frames(cfg.unet.max_frames + 1, cfg)


def test_latent_from_another_model_is_named(models, texts):
    F = models["video"]
    wrong = torch.zeros(1, F.config.unet.latent_channels + 4, 4, 16, 16)
    with pytest.raises(InputError, match="another model"):
        pipeline.interpolate(models["interp"].unet, F.schedule, models["interp"].config, wrong, *texts, SETTINGS, 0)


def test_memory_estimate_refuses_hopeless_requests(models):
    cfg = models["video"].config
    small = pipeline.estimate_memory(cfg, 1, 4, 16, 16)
    assert pipeline.estimate_memory(cfg, 1, 8, 16, 16) > small        # grows with frames
    assert pipeline.estimate_memory(cfg, 1, 4, 32, 32) > small        # and with size
    with pytest.raises(pipeline.MemoryEstimateError, match="fewer frames"):
        pipeline.check_memory(cfg, 1, 4, 16, 16, "cpu", torch.float32, available=small // 2)
    pipeline.check_memory(cfg, 1, 4, 16, 16, "cpu", torch.float32, available=small * 2)


def test_null_text_is_the_empty_prompt_unless_negative_given(models):
    encoders = models["text"]
    _, null = pipeline.encode_prompts(encoders, PROMPT)
    assert torch.equal(null.context[0], encoders.null(1).context[0])
    _, negative = pipeline.encode_prompts(encoders, PROMPT, negative="a blue square")
    assert not torch.equal(negative.context[0], null.context[0])


# --------------------------------------------------------------------------- sampling steps

def test_first_frame_and_video_shapes_and_seed_reproducibility(models, texts):
    C = models["video"].config.unet.latent_channels
    a = video(models, texts, seed=3)
    assert a.shape == (1, C, 4, 16, 16)
    assert torch.equal(a, video(models, texts, seed=3))
    assert not torch.allclose(a, video(models, texts, seed=4))


def test_progress_called_every_step_and_cancel_honoured(models, texts):
    calls = []
    first_frame(models, texts, callback=lambda i, n, x0: calls.append((i, n)))
    assert calls == [(0, 2), (1, 2)]
    with pytest.raises(SamplingCancelled):
        video(models, texts, cancel=lambda: True)


def test_interpolate_gives_k_times_more_frames(models, texts):
    I = models["interp"]
    lat = video(models, texts)
    out = pipeline.interpolate(I.unet, I.schedule, I.config, lat, *texts, SETTINGS, seed=0, factor=2)
    assert out.shape[2] == (4 - 1) * 2 + 1
    assert torch.isfinite(out).all()
    # keep_known (the default) returns the key frames as given, not their noise-augmented copies
    torch.testing.assert_close(out[:, :, ::2], lat, atol=1e-4, rtol=0)
    with pytest.raises(InputError, match="at least 2"):
        pipeline.interpolate(I.unet, I.schedule, I.config, lat[:, :, :1], *texts, SETTINGS, seed=0)


@pytest.mark.parametrize("fill", ["zero", "residual"])
def test_interpolate_with_denoise_refines_the_key_frames_blend(models, texts, fill):
    """denoise < 1 starts the in-betweens from the keys' linear blend noised part-way (for a residual
    model, from zero correction): with one step of 25 at t = 39 they stay near the blend, where a full run
    from pure noise draws them anew."""
    I = models["interp"]
    config = dataclasses.replace(I.config, interp_fill=fill)
    unet, lat = awake_copy(I.unet), video(models, texts)
    settings = dataclasses.replace(SETTINGS, image_cfg=1.0, steps=25)
    blend = pipeline.cond_lib.linear_blend(lat, 2)
    gap = {}
    for denoise in (1.0, 0.04):
        out = pipeline.interpolate(unet, I.schedule, config, lat, *texts, dataclasses.replace(settings, denoise=denoise),
                                   seed=0, factor=2)
        torch.testing.assert_close(out[:, :, ::2], lat, atol=1e-4, rtol=0)     # keys as given either way
        gap[denoise] = (out - blend)[:, :, 1::2].abs().mean().item()
    assert gap[0.04] < 0.5 * gap[1.0], gap


@pytest.mark.parametrize("fill", ["zero", "residual"])
def test_interpolate_returns_on_the_models_device(models, texts, monkeypatch, fill):
    """The sample comes back on the model's device (a GPU) while the conditioning is built on the CPU:
    the residual model's offset must follow it there (a CUDA generate once failed here). The meta
    device stands in for the GPU."""
    I = models["interp"]
    config = dataclasses.replace(I.config, interp_fill=fill)
    lat = video(models, texts)
    monkeypatch.setattr(pipeline, "_sample_conditioned",
                        lambda *a, **k: torch.zeros(a[6].shape, device="meta"))     # a[6]: cond
    out = pipeline.interpolate(I.unet, I.schedule, config, lat, *texts,
                               dataclasses.replace(SETTINGS, image_cfg=1.0), seed=0, factor=2)
    assert out.device.type == "meta" and out.shape == (1, lat.shape[1], 2 * lat.shape[2] - 1, *lat.shape[3:])


def awake_copy(unet):
    """A copy whose conditioning input and output (zero at init in the tiny model) are random, so the
    conditioning visibly changes the sample."""
    unet = copy.deepcopy(unet)
    with torch.no_grad():
        for weight in (unet.input_blocks[0][0].cond.weight, unet.out[-1].weight):
            weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    return unet


def record_fills(monkeypatch, name: str) -> list:
    """Spy on conditioning.<name>: the list collects the fill (third argument) of every call."""
    fills, real = [], getattr(pipeline.cond_lib, name)
    monkeypatch.setattr(pipeline.cond_lib, name, lambda *a, **k: fills.append(a[2]) or real(*a, **k))
    return fills


def test_interpolate_conditions_as_the_model_was_trained(models, texts, monkeypatch):
    """ModelConfig.interp_fill (saved in the checkpoint) decides what the in-between slots hold."""
    I = models["interp"]
    unet, lat = awake_copy(I.unet), video(models, texts)
    fills = record_fills(monkeypatch, "interpolation_inputs")
    settings = dataclasses.replace(SETTINGS, image_cfg=1.0)
    configs = [dataclasses.replace(I.config, interp_fill=fill) for fill in ("zero", "blend", "residual")]
    out = {cfg.interp_fill: pipeline.interpolate(unet, I.schedule, cfg, lat, *texts, settings, seed=0, factor=2)
           for cfg in configs}
    assert fills == ["zero", "blend", "residual"]
    assert not torch.allclose(out["zero"][:, :, 1::2], out["blend"][:, :, 1::2])
    assert not torch.allclose(out["blend"][:, :, 1::2], out["residual"][:, :, 1::2])
    for fill in ("blend", "residual"):      # the key frames come out as given, whatever the target
        torch.testing.assert_close(out[fill][:, :, ::2], lat, atol=1e-4, rtol=0)
    with pytest.raises(InputError, match="set its image guidance to 1"):
        pipeline.interpolate(I.unet, I.schedule, configs[2], lat, *texts, SETTINGS, seed=0, factor=2)


def test_video_conditions_on_its_image_as_the_model_was_trained(models, texts, monkeypatch):
    """ModelConfig.image_fill (saved in the checkpoint) decides what F's unknown slots hold."""
    F = models["video"]
    unet, image = awake_copy(F.unet), first_frame(models, texts)
    fills = record_fills(monkeypatch, "first_frame")
    out = {fill: pipeline.generate_video(unet, F.schedule, dataclasses.replace(F.config, image_fill=fill), *texts,
                                         SETTINGS, image, 4, seed=0) for fill in ("zero", "hold")}
    assert fills == ["zero", "hold"]
    assert not torch.allclose(out["zero"][:, :, 1:], out["hold"][:, :, 1:])
    torch.testing.assert_close(out["hold"][:, :, 0], image, atol=1e-4, rtol=0)   # frame 0 kept as given


def test_extend_keeps_the_past_and_appends(models, texts):
    F = models["video"]
    lat = video(models, texts)
    longer = pipeline.extend(F.unet, F.schedule, F.config, lat, *texts, SETTINGS, seed=1, context_frames=2,
                             new_frames=3)
    assert longer.shape[2] == 4 + 3
    assert torch.equal(longer[:, :, :4], lat)
    with pytest.raises(InputError, match="only 4 frames"):
        pipeline.extend(F.unet, F.schedule, F.config, lat, *texts, SETTINGS, seed=1, context_frames=5)


def test_decode_is_chunked_and_in_unit_range(models, texts):
    vae = models["vae"]
    lat = video(models, texts)
    chunks = []
    frames = pipeline.decode(vae, lat, callback=lambda done, total: chunks.append(done))
    assert frames.shape == (1, 4, 32, 32, 3) and frames.dtype == torch.float32
    assert 0 <= frames.min() and frames.max() <= 1
    assert chunks[-1] == 4 and len(chunks) == -(-4 // vae.cfg.decode_chunk)


def test_encode_image_matches_video_latent_space(models):
    vae = models["vae"]
    image = torch.rand(1, 32, 32, 3)
    latent = pipeline.encode_image(vae, image)
    assert latent.shape == (1, vae.cfg.latent_channels, 16, 16)
    # same frame through the video path (frame 0 of a clip) gives the same latent (§3.2 latents)
    clip = (image.permute(3, 0, 1, 2)[None] * 2 - 1)
    assert torch.allclose(vae.encode_video(clip)[:, :, 0], latent, atol=1e-5)
