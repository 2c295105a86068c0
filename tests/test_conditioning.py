import pytest
import torch

from emu_video.model.conditioning import (AUG_T_INFERENCE, TextCondition, condition_dropout, drop_image, drop_text,
                                          extension, first_frame, interpolation, interpolation_inputs,
                                          interpolation_offset, known_frames,
                                          model_input, noise_augment, sample_aug_timesteps)
from emu_video.model.config import InputError
from emu_video.model.schedule import NoiseSchedule


def lat(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_known_frames_places_latents_and_mask():
    x = lat(2, 3, 2, 4, 4)
    cond, mask = known_frames(x, [1, 4], 6)
    assert cond.shape == (2, 3, 6, 4, 4) and mask.shape == (2, 1, 6, 4, 4)
    assert torch.equal(cond[:, :, 1], x[:, :, 0]) and torch.equal(cond[:, :, 4], x[:, :, 1])
    assert mask[:, :, [1, 4]].eq(1).all() and mask[:, :, [0, 2, 3, 5]].eq(0).all()
    assert cond[:, :, [0, 2, 3, 5]].eq(0).all()


def test_first_frame_is_frame_zero_of_x0():
    x0 = lat(1, 8, 5, 4, 4)
    cond, mask = first_frame(x0[:, :, 0], 5)
    assert torch.equal(cond[:, :, 0], x0[:, :, 0]) and cond[:, :, 1:].eq(0).all()
    assert mask[:, 0, :, 0, 0].tolist() == [[1, 0, 0, 0, 0]]


def test_hold_fill_repeats_the_known_frame_in_every_unknown_slot():
    x0 = lat(2, 4, 5, 3, 3)
    cond, mask = first_frame(x0[:, :, 0], 5, fill="hold")
    for t in range(5):                                   # every slot shows the image ...
        assert torch.equal(cond[:, :, t], x0[:, :, 0])
    assert mask[:, 0, :, 0, 0].tolist() == [[1, 0, 0, 0, 0]] * 2    # ... but only slot 0 is marked known
    past = lat(1, 2, 4, 2, 2, seed=1)
    cond, mask = extension(past, 6, overlap=2, fill="hold")
    assert torch.equal(cond[:, :, :2], past[:, :, 2:])
    for t in range(2, 6):                                # new slots hold the last past frame
        assert torch.equal(cond[:, :, t], past[:, :, -1])
    assert mask[0, 0, :, 0, 0].tolist() == [1, 1, 0, 0, 0, 0]
    zero_cond, _ = extension(past, 6, overlap=2)
    assert zero_cond[:, :, 2:].eq(0).all()               # the default stays the paper's zero padding
    with pytest.raises(InputError, match="image fill must be one of"):
        first_frame(x0[:, :, 0], 5, fill="repeat")


def test_interpolation_interleaves_every_kth_slot():
    x = lat(1, 2, 3, 2, 2)
    cond, mask = interpolation(x, 4)
    assert cond.shape[2] == 9
    assert mask[0, 0, :, 0, 0].tolist() == [1, 0, 0, 0, 1, 0, 0, 0, 1]
    assert torch.equal(cond[:, :, [0, 4, 8]], x)


def test_extension_puts_the_last_past_frames_first():
    past = lat(1, 2, 4, 2, 2)
    cond, mask = extension(past, 6, overlap=2)
    assert torch.equal(cond[:, :, :2], past[:, :, 2:])
    assert mask[0, 0, :, 0, 0].tolist() == [1, 1, 0, 0, 0, 0]
    cond_all, _ = extension(past, 6)
    assert torch.equal(cond_all[:, :, :4], past)
    with pytest.raises(InputError, match="nothing to generate"):
        extension(past, 4)


def test_bad_frame_inputs_are_explained():
    x = lat(1, 2, 2, 2, 2)
    with pytest.raises(InputError, match="outside"):
        known_frames(x, [0, 9], 4)
    with pytest.raises(InputError, match="one position per frame"):
        known_frames(x, [0], 4)
    with pytest.raises(InputError, match="repeat"):
        known_frames(x, [1, 1], 4)
    with pytest.raises(InputError, match="unsqueeze"):
        known_frames(x[:, :, 0], [0], 4)
    with pytest.raises(InputError, match="factor"):
        interpolation(x, 0)
    with pytest.raises(InputError, match="mask"):
        model_input(x, x, x[:, :1, :1])


def test_model_input_concatenates_channels():
    noisy = lat(2, 3, 4, 2, 2)
    cond, mask = first_frame(lat(2, 3, 2, 2, seed=1), 4)
    x_in = model_input(noisy, cond, mask)
    assert x_in.shape == (2, 7, 4, 2, 2)
    assert torch.equal(x_in[:, :3], noisy) and torch.equal(x_in[:, 3:6], cond) and torch.equal(x_in[:, 6:], mask)


def test_noise_augment_formula_and_mask():
    s = NoiseSchedule()
    cond, mask = interpolation(lat(2, 3, 2, 2, 2), 3)
    out = noise_augment(cond, mask, s, AUG_T_INFERENCE, torch.Generator().manual_seed(5))
    n = torch.randn(cond.shape, generator=torch.Generator().manual_seed(5))
    ab = s.alphas_cumprod[AUG_T_INFERENCE].item()
    torch.testing.assert_close(out, mask * (ab ** 0.5 * cond + (1 - ab) ** 0.5 * n))
    assert out[:, :, 1:3].eq(0).all()  # unknown slots stay zero
    assert (ab ** 0.5, (1 - ab) ** 0.5) == pytest.approx((0.94168, 0.33651), abs=1e-4)
    # per-sample levels
    per = noise_augment(cond, mask, s, torch.tensor([0, 250]), torch.Generator().manual_seed(5))
    assert not torch.equal(per[0], per[1])
    taus = sample_aug_timesteps(1000, generator=torch.Generator().manual_seed(0))
    assert taus.min() >= 0 and taus.max() == 250


def test_blend_fill_puts_the_linear_blend_of_the_neighbouring_keys_between_them():
    x = lat(2, 3, 3, 2, 2)
    zero, mask0 = interpolation(x, 4)
    cond, mask = interpolation(x, 4, fill="blend")
    assert torch.equal(mask, mask0)                                   # only the key frames count as known
    assert torch.equal(cond[:, :, ::4], x) and torch.equal(zero[:, :, ::4], x)
    assert zero[:, :, 1:4].eq(0).all() and zero[:, :, 5:8].eq(0).all()
    for slot, (a, w) in {1: (0, 0.25), 2: (0, 0.5), 3: (0, 0.75), 6: (1, 0.5), 7: (1, 0.75)}.items():
        torch.testing.assert_close(cond[:, :, slot], (1 - w) * x[:, :, a] + w * x[:, :, a + 1])
    torch.testing.assert_close(interpolation(x, 4, fill="residual")[0], cond)   # same input, other target
    with pytest.raises(InputError, match="fill must be one of"):
        interpolation(x, 4, fill="nearest")


def test_only_the_residual_fill_moves_the_diffusion_target():
    cond, _ = interpolation(lat(1, 2, 2, 2, 2), 2, fill="residual")
    assert interpolation_offset(cond, "zero").eq(0).all() and interpolation_offset(cond, "blend").eq(0).all()
    assert torch.equal(interpolation_offset(cond, "residual"), cond)


@pytest.mark.parametrize("fill", ["zero", "blend", "residual"])
def test_interpolation_inputs_noise_every_slot_that_carries_a_latent(fill):
    s, x = NoiseSchedule(), lat(1, 2, 2, 2, 2)
    clean, noisy, mask = interpolation_inputs(x, 3, fill, s, AUG_T_INFERENCE, torch.Generator().manual_seed(1))
    torch.testing.assert_close(clean, interpolation(x, 3, fill)[0])
    assert torch.equal(noisy[:, :, 1:3].eq(0), torch.full_like(noisy[:, :, 1:3], fill == "zero", dtype=torch.bool))
    n = torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    ab = s.alphas_cumprod[AUG_T_INFERENCE].item()
    carried = mask if fill == "zero" else torch.ones_like(mask)
    torch.testing.assert_close(noisy, carried * (ab ** 0.5 * clean + (1 - ab) ** 0.5 * n))   # τ = 100 (§3.3)


def test_drop_image_zeroes_cond_and_mask_per_sample():
    cond, mask = first_frame(lat(3, 2, 2, 2), 3)
    c0, m0 = drop_image(cond, mask)
    assert c0.eq(0).all() and m0.eq(0).all()
    c1, m1 = drop_image(cond, mask, torch.tensor([True, False, True]))
    assert c1[[0, 2]].eq(0).all() and m1[[0, 2]].eq(0).all()
    assert torch.equal(c1[1], cond[1]) and torch.equal(m1[1], mask[1])


def test_drop_text_swaps_in_the_null_prompt():
    text = TextCondition([lat(3, 4, 5), lat(3, 2, 6, seed=1)], [torch.ones(3, 4, dtype=torch.bool), None])
    null = TextCondition([lat(1, 4, 5, seed=2), lat(1, 2, 6, seed=3)],
                         [torch.tensor([[True, False, False, False]]), None])
    out = drop_text(text, null, torch.tensor([False, True, False]))
    assert torch.equal(out.context[0][1], null.context[0][0]) and torch.equal(out.context[0][0], text.context[0][0])
    assert torch.equal(out.context[1][1], null.context[1][0])
    assert out.masks[0][1].tolist() == [True, False, False, False] and out.masks[0][0].all()
    assert out.masks[1] is None


def test_condition_dropout_is_disjoint_five_five_five():
    drop_t, drop_i = condition_dropout(200_000, generator=torch.Generator().manual_seed(0))
    text_only = (drop_t & ~drop_i).double().mean().item()
    image_only = (drop_i & ~drop_t).double().mean().item()
    both = (drop_t & drop_i).double().mean().item()
    for frac in (text_only, image_only, both):
        assert frac == pytest.approx(0.05, abs=0.004)
    again = condition_dropout(200_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], drop_t) and torch.equal(again[1], drop_i)
    t0, i0 = condition_dropout(100, 0, 0, 0)
    assert not t0.any() and not i0.any()
    with pytest.raises(InputError, match="sum"):
        condition_dropout(4, 0.5, 0.5, 0.5)
