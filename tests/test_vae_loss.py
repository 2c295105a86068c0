"""The VAE stage's loss: plain L1 + L2 + KL, and the contrast (focus) weighting that keeps small
objects on plain backgrounds from being drawn as background-coloured blobs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emu_video.model.config import ConfigError, VAEConfig
from emu_video.model.vae import AutoencoderKL
from emu_video.trainer.objectives import VAELoss, focus_weights


def _square_on_black() -> torch.Tensor:
    frames = torch.full((1, 3, 16, 16), -1.0)          # black background in -1..1
    frames[:, 0, 6:10, 6:10] = 1.0                       # a red square: R = 1, G = B = -1
    return frames


def test_focus_weights_mark_pixels_unlike_the_border():
    frames = _square_on_black()
    w = focus_weights(frames, focus=30.0)
    assert w.shape == (1, 1, 16, 16)
    assert torch.all(w[..., :6, :] == 1) and torch.all(w[..., 10:, :] == 1)     # background: weight 1
    # red vs black differs by 2 in one channel: distance 2 / (2*sqrt(3)) of the largest possible
    torch.testing.assert_close(w[0, 0, 7, 7], torch.tensor(1 + 30.0 / 3 ** 0.5))
    assert torch.all(focus_weights(torch.zeros(2, 3, 8, 8), 30.0) == 1)           # flat frame: uniform
    assert torch.all(focus_weights(frames, 0.0) == 1)


class _Fixed(torch.nn.Module):
    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out

    def forward(self, z):
        return self.out


def _loss_of_error_at(loss: VAELoss, frames: torch.Tensor, where: tuple[int, int]) -> torch.Tensor:
    """The loss when the decoder's output is the input plus 0.5 at one pixel (encoder bypassed)."""
    recon = frames.clone()
    recon[:, :, where[0], where[1]] += 0.5
    loss.vae.decoder = _Fixed(recon)                   # only the reconstruction matters here
    return loss(frames, torch.zeros(1, 4, 4, 4))


def test_focus_makes_object_errors_cost_more_than_background_errors():
    torch.manual_seed(0)
    cfg = VAEConfig(latent_channels=4, base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, norm_groups=8)
    frames = _square_on_black()
    plain, focused = VAELoss(AutoencoderKL(cfg), 1, 1, 0, focus=0.0), VAELoss(AutoencoderKL(cfg), 1, 1, 0, focus=30.0)
    on_object, on_background = (7, 7), (1, 1)
    torch.testing.assert_close(_loss_of_error_at(plain, frames, on_object),
                               _loss_of_error_at(plain, frames, on_background))
    ratio = _loss_of_error_at(focused, frames, on_object) / _loss_of_error_at(focused, frames, on_background)
    torch.testing.assert_close(ratio, torch.tensor(1 + 30.0 / 3 ** 0.5))


def test_negative_focus_weight_is_refused():
    from emu_video.trainer.config import load_config
    with pytest.raises(ConfigError, match="focus_weight must be >= 0"):
        load_config(Path(__file__).parents[1] / "trainer/configs/demo_vae.toml", ["vae.focus_weight=-1"])
