import itertools

import pytest
import torch

from emu_video.model.config import InputError
from emu_video.model.guidance import (cfg, combine_branches, dual_guidance, guidance_branches, guidance_weights,
                                      rescale_cfg)

diffusers_sd = pytest.importorskip("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion")


def three_preds(seed=0, shape=(2, 4, 3, 5, 5)):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=g, dtype=torch.float64) for name in ("uncond", "image", "full")}


def test_dual_guidance_is_image_first_then_text():
    p = three_preds()
    out = dual_guidance(p["uncond"], p["image"], p["full"], image_scale=1.5, text_scale=7.5)
    manual = p["uncond"] + 1.5 * (p["image"] - p["uncond"]) + 7.5 * (p["full"] - p["image"])
    torch.testing.assert_close(out, manual)
    # scales of 1 return the fully conditioned prediction, 0 the unconditional one
    torch.testing.assert_close(dual_guidance(p["uncond"], p["image"], p["full"], 1, 1), p["full"])
    torch.testing.assert_close(dual_guidance(p["uncond"], p["image"], p["full"], 0, 0), p["uncond"])


def test_plain_cfg():
    p = three_preds()
    torch.testing.assert_close(cfg(p["uncond"], p["full"], 3.0), p["uncond"] + 3.0 * (p["full"] - p["uncond"]))


SCALES = [0.0, 1.0, 1.5, 7.5, -0.5]


@pytest.mark.parametrize("s_i,s_t", list(itertools.product(SCALES, SCALES)))
def test_skipping_branches_equals_the_three_branch_formula(s_i, s_t):
    p = three_preds(seed=1)
    needed = guidance_branches(s_i, s_t)
    assert needed and set(needed) <= {"full", "image", "uncond"}
    # the branches left out really have zero weight, so garbage there must not matter
    partial = {name: (p[name] if name in needed else torch.full_like(p[name], float("nan"))) for name in p}
    expected = dual_guidance(p["uncond"], p["image"], p["full"], s_i, s_t)
    torch.testing.assert_close(combine_branches(partial, s_i, s_t), expected)
    assert sum(guidance_weights(s_i, s_t).values()) == pytest.approx(1.0)


def test_branch_skipping_cases():
    assert guidance_branches(1.5, 7.5) == ("full", "image", "uncond")
    assert guidance_branches(1.0, 7.5) == ("full", "image")      # uncond cancels
    assert guidance_branches(1.0, 1.0) == ("full",)
    assert guidance_branches(1.5, 0.0) == ("image", "uncond")     # text term off
    assert guidance_branches(7.5, 7.5) == ("full", "uncond")      # image branch cancels: plain CFG
    assert guidance_branches(0.0, 0.0) == ("uncond",)


def test_missing_branch_is_a_clear_error():
    p = three_preds()
    with pytest.raises(InputError, match="uncond"):
        combine_branches({"full": p["full"], "image": p["image"]}, 1.5, 7.5)


def test_rescale_matches_diffusers_on_4d():
    p = three_preds(seed=2, shape=(3, 4, 8, 8))
    guided = cfg(p["uncond"], p["full"], 7.5)
    ours = rescale_cfg(guided, p["full"], 0.7)
    theirs = diffusers_sd.rescale_noise_cfg(guided, p["full"], guidance_rescale=0.7)
    torch.testing.assert_close(ours, theirs)


def test_rescale_uses_one_std_per_sample_on_5d():
    p = three_preds(seed=3)
    guided = dual_guidance(p["uncond"], p["image"], p["full"], 1.5, 7.5)
    out = rescale_cfg(guided, p["full"], 1.0)
    # phi = 1: every sample's std becomes exactly the reference's
    torch.testing.assert_close(out.flatten(1).std(1), p["full"].flatten(1).std(1))
    # and it is the same as rescaling each sample flattened (not per-column, as dims (1,2,3) would)
    flat = rescale_cfg(guided.flatten(1), p["full"].flatten(1), 1.0)
    torch.testing.assert_close(out.flatten(1), flat)
    assert rescale_cfg(guided, p["full"], 0.0) is guided
    const = torch.ones(2, 3)
    assert torch.isfinite(rescale_cfg(const, torch.randn(2, 3), 0.7)).all()
    with pytest.raises(InputError, match="rescale"):
        rescale_cfg(guided, p["full"], 1.5)


def test_text_scale_at_switches_to_the_late_scale_below_the_threshold():
    from emu_video.model.guidance import text_scale_at
    assert [text_scale_at(t, 1000, 7.5, 3.0, 0.7) for t in (999, 700, 699, 0)] == [7.5, 7.5, 3.0, 3.0]
    assert text_scale_at(0, 1000, 7.5, None, 0.7) == 7.5                      # None: one scale throughout
    assert text_scale_at(999, 1000, 7.5, 1.0, 1.0) == 1.0                     # late_below 1: every step
