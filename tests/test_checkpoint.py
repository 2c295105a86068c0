"""Our checkpoint format: round trip, metadata, and every refusal says what to do."""
import os

import pytest
import torch
from safetensors.torch import save_file

from emu_video.model.checkpoint import CheckpointError, load_model, read_metadata, save_model
from emu_video.model.presets import tiny_config
from emu_video.model.unet import EmuUNet


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    cfg = tiny_config()
    unet = EmuUNet(cfg.unet)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_model(path, unet, cfg, extra={"latent_scale": 0.5})
    return path, unet, cfg


def test_round_trip_restores_weights_config_and_metadata(saved):
    path, unet, cfg = saved
    loaded, cfg2 = load_model(path)
    assert cfg2 == cfg
    for (k, a), (k2, b) in zip(unet.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    meta = read_metadata(path)
    assert meta["format"] == "emu_video" and meta["kind"] == "video" and meta["latent_scale"] == "0.5"
    assert meta["zero_terminal_snr"] == "true" and meta["prediction_type"] == "v"
    assert os.stat(path).st_mode & 0o044, "model files must be readable by others like any file (not 0600)"
    assert not [f for f in os.listdir(path.parent) if ".tmp" in f], "no temp file left behind"


def test_schedule_shift_round_trips_and_old_configs_default_to_unshifted(tmp_path):
    import dataclasses
    import json

    from emu_video.model.config import ConfigError, ScheduleConfig, from_json, to_json
    cfg = dataclasses.replace(tiny_config(), schedule=ScheduleConfig(snr_shift=9.0))
    path = save_model(tmp_path / "shifted.safetensors", EmuUNet(cfg.unet), cfg)
    assert load_model(path)[1].schedule.snr_shift == 9.0 and read_metadata(path)["snr_shift"] == "9"
    data = json.loads(to_json(tiny_config()))
    del data["schedule"]["snr_shift"]                      # a file written before the field existed
    assert from_json(type(cfg), json.dumps(data)).schedule.snr_shift == 1.0
    with pytest.raises(ConfigError, match="snr_shift"):
        dataclasses.replace(tiny_config(), schedule=ScheduleConfig(snr_shift=0.0)).validate()


def test_wrong_kind_is_refused_naming_the_right_loader(saved):
    path, _, _ = saved
    with pytest.raises(CheckpointError, match="'video' file.*interp"):
        load_model(path, kinds=("interp",))


def test_foreign_pickle_missing_and_mismatched_files(tmp_path, saved):
    path, unet, cfg = saved
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    foreign = tmp_path / "sd.safetensors"
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(1)}, str(foreign))
    with pytest.raises(CheckpointError, match="not an Emu Video checkpoint.*SD import"):
        load_model(foreign)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(broken)
    # weights that do not match the stored config: drop one tensor
    from emu_video.model.checkpoint import atomic_save, model_metadata
    state = dict(unet.state_dict())
    state.pop("out.2.weight")
    edited = tmp_path / "edited.safetensors"
    atomic_save(state, edited, model_metadata(cfg))
    with pytest.raises(CheckpointError, match="missing.*out.2.weight"):
        load_model(edited)
