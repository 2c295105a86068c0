import pytest

from emu_video.model.config import ConfigError, ModelConfig, UNetConfig, from_json, to_json


def test_model_config_json_round_trip():
    cfg = ModelConfig(unet=UNetConfig(channel_mult=(1, 2), model_channels=32, norm_groups=8), num_frames=16,
                      interp_fill="blend")
    back = from_json(ModelConfig, to_json(cfg))
    assert back == cfg
    assert isinstance(back.unet.channel_mult, tuple)


def test_checkpoints_written_before_interp_fill_load_as_the_papers_zero_interleaving():
    import json
    stored = json.loads(to_json(ModelConfig(kind="interp")))
    del stored["interp_fill"]
    assert from_json(ModelConfig, json.dumps(stored)).interp_fill == "zero"


def test_checkpoints_written_before_image_fill_load_as_the_papers_zero_padding():
    import json
    stored = json.loads(to_json(ModelConfig(image_fill="hold")))
    assert from_json(ModelConfig, json.dumps(stored)).image_fill == "hold"
    del stored["image_fill"]
    assert from_json(ModelConfig, json.dumps(stored)).image_fill == "zero"
    with pytest.raises(ConfigError, match="image_fill must be one of"):
        ModelConfig(image_fill="repeat").validate()


def test_unknown_keys_are_rejected_with_a_clear_message():
    with pytest.raises(ConfigError, match="unknown keys"):
        from_json(UNetConfig, '{"latent_channels": 4, "bogus": 1}')


def test_validate_names_the_problem():
    with pytest.raises(ConfigError, match="norm_groups"):
        UNetConfig(model_channels=30, norm_groups=32).validate()
