"""SD weight import, checked against an independent implementation: diffusers' UNet2DConditionModel
(outputs) and diffusers' own LDM -> diffusers key converter (names)."""
import math

import pytest
import torch
from safetensors.torch import save_file

diffusers = pytest.importorskip("diffusers")
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint  # noqa: E402

from emu_video.model.config import InputError  # noqa: E402
from emu_video.model.sd_import import (convert_diffusers_to_ldm, diffusers_heads, import_sd_single_file,  # noqa: E402
                                       import_sd_unet, infer_unet_config, read_ldm_unet_state_dict)
from emu_video.model.unet import EmuUNet, is_temporal_key  # noqa: E402

VARIANTS = {
    # SD 1.x style: conv proj_in, fixed head count, attention on the lower level only
    "sd1": dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=2,
                use_linear_projection=False, cross_attention_dim=24),
    # SD 2.x style: linear proj_in, fixed head width (16), attention on the upper level only
    "sd2": dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
                use_linear_projection=True, cross_attention_dim=40),
}




@torch.no_grad()
def diffusers_unet(variant: str):
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                          block_out_channels=(32, 64), norm_num_groups=8, **VARIANTS[variant]).eval()
    g = torch.Generator().manual_seed(1)
    for name, p in unet.named_parameters():  # non-trivial values everywhere (no zero-initialised layers)
        if p.ndim == 1:
            p.copy_((1.0 if "norm" in name and name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
    return unet


def sample(unet, batch=2):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    t = torch.tensor([3, 811][:batch])
    ctx = torch.randn(batch, 7, unet.config.cross_attention_dim, generator=g)
    return x, t, ctx


@torch.no_grad()
def assert_same_outputs(ours: EmuUNet, unet):
    x, t, ctx = sample(unet)
    expected = unet(x, t, encoder_hidden_states=ctx).sample
    torch.testing.assert_close(ours(x, t, [ctx], image_mode=True), expected, atol=1e-5, rtol=1e-4)
    # the 5-D image-mode path and the video path at init (identity temporal layers) agree too
    video = ours(x[:, :, None].expand(-1, -1, 2, -1, -1), t, [ctx])
    torch.testing.assert_close(video[:, :, 1], expected, atol=1e-5, rtol=1e-4)


def ldm_names_from_diffusers_converter(unet) -> dict[str, str]:
    """diffusers key -> LDM key, as diffusers' own single-file converter maps them.

    The converter is fed our LDM key names with unique marker values; any name it does not
    recognise would leave a diffusers parameter uncovered, which the caller checks."""
    ours = EmuUNet(import_diffusers_unet_config(unet))
    markers = {k: torch.empty(0) for k in ours.state_dict()}
    converted = convert_ldm_unet_checkpoint({"model.diffusion_model." + k: v for k, v in markers.items()},
                                            dict(unet.config))
    by_id = {id(v): k for k, v in markers.items()}
    names = {dk: by_id[id(v)] for dk, v in converted.items()}
    assert set(names) == set(unet.state_dict()), "diffusers' converter does not cover every parameter"
    return names


def import_diffusers_unet_config(unet):
    """The spatial UNetConfig matching `unet` (heads from its config, the rest from shapes)."""
    heads, head_dim = diffusers_heads(dict(unet.config))
    sd = convert_diffusers_to_ldm(unet.state_dict(), dict(unet.config))
    return infer_unet_config(sd, num_heads=heads, head_dim=head_dim, norm_groups=8, temporal=False)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_diffusers_folder_import_matches_diffusers(tmp_path, variant):
    unet = diffusers_unet(variant)
    unet.save_pretrained(tmp_path, safe_serialization=True)
    ours = import_sd_unet(tmp_path, temporal_head_dim=16, max_frames=8)
    assert ours.cfg.use_linear_proj == (variant == "sd2")
    assert ours.cfg.attention_levels == ((1,) if variant == "sd1" else (0,))
    assert_same_outputs(ours, unet)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_our_key_mapping_inverts_diffusers_converter(variant):
    unet = diffusers_unet(variant)
    reference = ldm_names_from_diffusers_converter(unet)
    ours = convert_diffusers_to_ldm({k: torch.empty(0) for k in reference}, dict(unet.config))
    assert set(ours) == set(reference.values())
    markers = {k: torch.empty(0) for k in reference}
    mapped = convert_diffusers_to_ldm(markers, dict(unet.config))
    assert {dk: next(lk for lk, v in mapped.items() if v is markers[dk]) for dk in markers} == reference


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_single_file_import_matches_diffusers(tmp_path, variant):
    unet = diffusers_unet(variant)
    names = ldm_names_from_diffusers_converter(unet)
    file = {"model.diffusion_model." + names[k]: v.contiguous() for k, v in unet.state_dict().items()}
    file["first_stage_model.decoder.conv_in.weight"] = torch.zeros(2)  # other components of a single file
    file["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.zeros(2)
    path = tmp_path / "sd.safetensors"
    save_file(file, str(path))
    heads = dict(num_heads=2) if variant == "sd1" else dict(head_dim=16)
    ours = import_sd_single_file(path, norm_groups=8, temporal_head_dim=16, **heads)
    assert ours.cfg.context_dims == (unet.config.cross_attention_dim,)
    assert_same_outputs(ours, unet)
    # only temporal/conditioning parameters were left at their initial values
    loaded = read_ldm_unet_state_dict(path)
    assert set(loaded) == {k for k in ours.state_dict() if not is_temporal_key(k)}


def test_bare_unet_file_and_wrong_heads_are_distinguished(tmp_path):
    unet = diffusers_unet("sd1")
    names = ldm_names_from_diffusers_converter(unet)
    path = tmp_path / "bare.safetensors"
    save_file({names[k]: v.contiguous() for k, v in unet.state_dict().items()}, str(path))
    ours = import_sd_single_file(path, norm_groups=8, num_heads=2)
    assert_same_outputs(ours, unet)
    wrong = import_sd_single_file(path, norm_groups=8, num_heads=4)  # heads are not in the shapes
    x, t, ctx = sample(unet)
    with torch.no_grad():
        assert not torch.allclose(wrong(x, t, [ctx], image_mode=True), ours(x, t, [ctx], image_mode=True))


def test_pickle_checkpoints_are_refused(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"not read")
    with pytest.raises(InputError, match="safetensors"):
        import_sd_unet(path)


def test_foreign_keys_give_a_clear_error(tmp_path):
    unet = diffusers_unet("sd1")
    names = ldm_names_from_diffusers_converter(unet)
    file = {"model.diffusion_model." + names[k]: v.contiguous() for k, v in unet.state_dict().items()}
    extra = dict(file, **{"model.diffusion_model.middle_block.1.bogus.weight": torch.zeros(2)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(InputError, match="unexpected keys"):
        import_sd_single_file(tmp_path / "extra.safetensors", norm_groups=8, num_heads=2)
    missing = {k: v for k, v in file.items() if "middle_block.1.transformer_blocks.0.ff" not in k}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(InputError, match="missing spatial keys"):
        import_sd_single_file(tmp_path / "missing.safetensors", norm_groups=8, num_heads=2)
    save_file({"first_stage_model.x": torch.zeros(1)}, str(tmp_path / "vae.safetensors"))
    with pytest.raises(InputError, match="no Stable Diffusion U-Net"):
        import_sd_single_file(tmp_path / "vae.safetensors")
