import pytest

from emu_video.model.config import ConfigError, ModelConfig, from_json, to_json
from emu_video.model.presets import PRESETS, count_parameters, get_preset, paper_config, tiny_config
from emu_video.model.unet import EmuUNet


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate_and_round_trip_json(name):
    cfg = get_preset(name)
    assert from_json(ModelConfig, to_json(cfg)) == cfg
    assert tuple(e.dim for e in cfg.text_encoders) == tuple(cfg.unet.context_dims)


def test_paper_config_matches_the_papers_parameter_counts():
    # §3.3: 2.7B frozen spatial + 1.7B trainable temporal parameters.
    counts = count_parameters(paper_config())
    assert abs(counts["spatial"] / 2.7e9 - 1) < 0.10, counts
    assert abs(counts["temporal"] / 1.7e9 - 1) < 0.10, counts
    cfg = paper_config()
    assert cfg.unet.latent_channels == 8 and tuple(cfg.unet.context_dims) == (2048, 768)


def test_count_parameters_matches_a_real_model():
    cfg = tiny_config()
    model = EmuUNet(cfg.unet)
    counts = count_parameters(cfg)
    assert counts["spatial"] == sum(p.numel() for p in model.spatial_parameters())
    assert counts["temporal"] == sum(p.numel() for p in model.temporal_parameters())
    assert counts["spatial"] + counts["temporal"] == sum(p.numel() for p in model.parameters())
    assert not any(p.is_meta for p in model.parameters())  # meta device was local to count_parameters


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ConfigError, match="tiny"):
        get_preset("huge")
    assert get_preset("tiny") is not get_preset("tiny")  # fresh objects: callers may mutate them
