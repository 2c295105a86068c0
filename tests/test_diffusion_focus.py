"""Contrast (focus) weighting of the diffusion loss: latent pixels unlike the frame's background
cost more, read off the clean latents so cached latents need no pixels."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _trainer_common import FixedAnswer
from emu_video.model.config import ConfigError, ScheduleConfig
from emu_video.model.schedule import NoiseSchedule
from emu_video.trainer.objectives import DiffusionLoss, latent_focus_weights


def _object_latents(batch: int = 1) -> torch.Tensor:
    z = torch.full((batch, 4, 8, 8), 0.3)                 # flat background latent
    z[:, 1, 3:5, 3:5] = 2.3                                # an object: 2 away in one channel
    z[:, 2, 3, 3] = 1.3                                    # ... with one pixel 1 further away
    return z


def test_latent_focus_weights_scale_with_distance_from_the_border():
    z = _object_latents()
    w = latent_focus_weights(z, focus=10.0)
    assert w.shape == (1, 1, 8, 8)
    assert torch.all(w[..., :3, :] == 1) and torch.all(w[..., 5:, :] == 1)     # background: weight 1
    torch.testing.assert_close(w[0, 0, 3, 3], torch.tensor(11.0))               # farthest pixel: 1 + focus
    torch.testing.assert_close(w[0, 0, 4, 4], torch.tensor(1 + 10 * 2 / 5 ** 0.5))
    assert torch.all(latent_focus_weights(torch.ones(2, 4, 8, 8), 10.0) == 1)    # flat frame: uniform
    assert torch.all(latent_focus_weights(z, 0.0) == 1)


def test_video_latents_are_weighted_frame_by_frame():
    frames = [_object_latents(), torch.full((1, 4, 8, 8), -1.0), 3 * _object_latents()]
    video = torch.stack(frames, dim=2)                                          # [B,C,T,h,w]
    w = latent_focus_weights(video, focus=10.0)
    assert w.shape == (1, 1, 3, 8, 8)
    for t, frame in enumerate(frames):
        torch.testing.assert_close(w[:, :, t], latent_focus_weights(frame, 10.0))




def test_dilated_focus_weights_are_flat_over_each_pixels_neighbourhood():
    z = _object_latents()
    plain, dilated = latent_focus_weights(z, 10.0), latent_focus_weights(z, 10.0, dilate=1)
    torch.testing.assert_close(dilated[0, 0, 2:5, 2:5], torch.full((3, 3), 11.0))   # the farthest pixel's 3×3
    assert dilated[0, 0, 5, 5] == plain[0, 0, 4, 4] > 1                           # the object's edge, one out
    assert torch.all(dilated[..., :2, :] == 1) and torch.all(dilated[..., 6:, :] == 1)
    assert torch.all(dilated >= plain)
    torch.testing.assert_close(latent_focus_weights(z, 10.0, dilate=0), plain)


def _weighted_optimum(candidates: list[torch.Tensor], dilate: int) -> torch.Tensor:
    """The output minimising the focus-weighted MSE when x0 is one of `candidates`, equally likely."""
    x0 = torch.stack(candidates)
    w = latent_focus_weights(x0, 10.0, dilate)
    return (w * x0).sum(0) / w.sum(0)


def test_dilation_stops_the_weights_pulling_an_uncertain_edge_toward_the_object():
    """The object ends at column 4 or 5, equally likely: column 5's best guess is the midpoint, which
    the plain MSE finds; weights read off the clean target pull it toward the object (objects grow),
    unless they are flat across the edge."""
    narrow = torch.zeros(4, 8, 8)
    narrow[0, 2:6, 2:5] = 2.0
    wide = narrow.clone()
    wide[0, 2:6, 5] = 2.0
    midpoint = 1.0
    assert _weighted_optimum([narrow, wide], dilate=0)[0, 3, 5] > midpoint + 0.5
    torch.testing.assert_close(_weighted_optimum([narrow, wide], dilate=1)[0, 3, 5], torch.tensor(midpoint))


def _loss_with_error_at(focus: float, where: tuple[int, int]) -> torch.Tensor:
    schedule = NoiseSchedule.from_config(ScheduleConfig())
    x0, noise, t = _object_latents(), torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    out = schedule.training_target(x0, noise, t).clone()
    out[:, :, where[0], where[1]] += 0.5
    return DiffusionLoss(FixedAnswer(out), schedule, image_mode=True, focus=focus)(x0, noise, t, None, None)


def test_focus_makes_object_errors_cost_more_than_background_errors():
    on_object, on_background = (3, 3), (0, 0)
    torch.testing.assert_close(_loss_with_error_at(0.0, on_object), _loss_with_error_at(0.0, on_background))
    ratio = _loss_with_error_at(10.0, on_object) / _loss_with_error_at(10.0, on_background)
    torch.testing.assert_close(ratio, torch.tensor(11.0))


def test_negative_diffusion_focus_weight_or_dilation_is_refused():
    from emu_video.trainer.config import load_config
    demo_t2i = Path(__file__).parents[1] / "trainer/configs/demo_t2i.toml"
    with pytest.raises(ConfigError, match="diffusion.focus_weight must be >= 0"):
        load_config(demo_t2i, ["diffusion.focus_weight=-1"])
    with pytest.raises(ConfigError, match="diffusion.focus_dilate must be a whole number of latent pixels >= 0"):
        load_config(demo_t2i, ["diffusion.focus_dilate=-1"])
