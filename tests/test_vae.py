"""AutoencoderKL: SD key layout checked against diffusers (independent reference), loaders,
chunked video encode/decode and input errors. Tiny configs only."""

import pytest
import torch
from safetensors.torch import save_file

from emu_video.model.config import ConfigError, InputError, VAEConfig
from emu_video.model.vae import AutoencoderKL, Cancelled, load_vae, save_vae

TINY = dict(latent_channels=4, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, norm_groups=4,
            scale_factor=0.5, shift_factor=0.1, decode_chunk=3)


def tiny_vae(seed=0, **kw) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = AutoencoderKL(VAEConfig(**{**TINY, **kw})).eval()
    with torch.no_grad():  # perturb norms and biases too, so a mis-mapped key cannot go unnoticed
        for p in vae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return vae


def images(b=2, size=16, seed=1):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def diffusers_tiny(**kw):
    diffusers = pytest.importorskip("diffusers")
    cfg = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
               up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
               latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.5, shift_factor=0.1)
    cfg.update(kw)
    return diffusers.AutoencoderKL(**cfg).eval(), cfg


# --------------------------------------------------------------------------- layout vs diffusers

def test_ldm_keys_match_diffusers_converter():
    single_file_utils = pytest.importorskip("diffusers.loaders.single_file_utils")
    ours = tiny_vae()
    ref, cfg = diffusers_tiny()
    ldm = {f"first_stage_model.{k}": v for k, v in ours.state_dict().items()}
    converted = single_file_utils.convert_ldm_vae_checkpoint(ldm, cfg)
    missing, unexpected = ref.load_state_dict(converted, strict=True)
    assert not missing and not unexpected
    x = images()
    with torch.no_grad():
        z = ours.encode(x)
        z_ref = ref.encode(x).latent_dist.mode()
        torch.testing.assert_close(z, (z_ref - 0.1) * 0.5, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.decode(z), ref.decode(z / 0.5 + 0.1).sample, atol=1e-5, rtol=1e-4)


def test_diffusers_folder_loads_with_same_outputs(tmp_path):
    torch.manual_seed(3)
    ref, _ = diffusers_tiny()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ref.save_pretrained(tmp_path / "vae", safe_serialization=True)
    vae = load_vae(tmp_path / "vae")
    assert vae.cfg.channel_mult == (1, 2) and vae.cfg.scale_factor == 0.5 and vae.cfg.norm_groups == 4
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(vae.encode(x), (ref.encode(x).latent_dist.mode() - 0.1) * 0.5,
                                   atol=1e-5, rtol=1e-4)
        z = torch.randn(1, 4, 8, 8)
        torch.testing.assert_close(vae.decode(z), ref.decode(z / 0.5 + 0.1).sample, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- our files and SD files

def test_save_load_roundtrip(tmp_path):
    vae = tiny_vae()
    save_vae(vae, tmp_path / "vae.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["vae.safetensors"]   # no temp file left behind
    back = load_vae(tmp_path / "vae.safetensors")
    assert back.cfg == vae.cfg
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        assert torch.equal(back.decode(z), vae.decode(z))


@pytest.mark.parametrize("prefix", ["", "first_stage_model."])
def test_sd_single_file_infers_config(tmp_path, prefix):
    vae = tiny_vae()
    sd = {prefix + k: v.contiguous() for k, v in vae.state_dict().items()}
    sd["model.diffusion_model.out.2.weight"] = torch.zeros(4, 8, 3, 3)   # a whole SD checkpoint
    save_file(sd, tmp_path / "sd.safetensors")
    back = load_vae(tmp_path / "sd.safetensors", norm_groups=4, scale_factor=0.5, shift_factor=0.1)
    assert back.cfg.channel_mult == (1, 2) and back.cfg.base_channels == 8 and back.cfg.num_res_blocks == 1
    x = images(1)
    with torch.no_grad():
        torch.testing.assert_close(back.encode(x), vae.encode(x))


def test_sd_default_scale_and_linear_attention_weights(tmp_path):
    vae = tiny_vae()
    sd = {k: (v[:, :, 0, 0] if ".attn_1." in k and v.ndim == 4 else v).contiguous()
          for k, v in vae.state_dict().items()}   # older LDM files store attention as linear weights
    save_file(sd, tmp_path / "vae.safetensors")
    back = load_vae(tmp_path / "vae.safetensors", norm_groups=4)
    assert back.cfg.scale_factor == pytest.approx(0.18215) and back.cfg.shift_factor == 0.0
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(back.decoder(back.post_quant_conv(z)), vae.decoder(vae.post_quant_conv(z)))


def test_loader_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_vae(tmp_path / "nope.safetensors")
    (tmp_path / "vae.ckpt").write_bytes(b"not really")
    with pytest.raises(InputError, match="safetensors"):
        load_vae(tmp_path / "vae.ckpt")
    (tmp_path / "junk.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a readable"):
        load_vae(tmp_path / "junk.safetensors")
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(2)}, tmp_path / "unet.safetensors")
    with pytest.raises(InputError, match="no VAE weights"):
        load_vae(tmp_path / "unet.safetensors")
    save_file({"x": torch.zeros(1)}, tmp_path / "other.safetensors", metadata={"format": "emu_video", "kind": "unet"})
    with pytest.raises(InputError, match="not a VAE"):
        load_vae(tmp_path / "other.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="config.json"):
        load_vae(tmp_path / "empty")
    sd = {k: v for k, v in tiny_vae().state_dict().items() if "mid.attn_1" not in k}
    save_file(sd, tmp_path / "partial.safetensors")
    with pytest.raises(InputError, match="missing"):
        load_vae(tmp_path / "partial.safetensors", norm_groups=4)
    with pytest.raises(ConfigError, match="norm_groups"):
        AutoencoderKL(VAEConfig(base_channels=12, channel_mult=(1,), norm_groups=8))


# --------------------------------------------------------------------------- behaviour

def test_shapes_and_sampling_reproducible():
    vae = tiny_vae()
    x = images()
    with torch.no_grad():
        z = vae.encode(x)
        assert z.shape == (2, 4, 8, 8)
        s1 = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(5))
        s2 = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(5))
        assert torch.equal(s1, s2) and not torch.allclose(s1, z)
        assert vae.decode(z).shape == x.shape


def test_input_errors():
    vae = tiny_vae()
    with pytest.raises(InputError, match="colour channels"):
        vae.encode(torch.zeros(1, 4, 16, 16))
    with pytest.raises(InputError, match="multiples of 2"):
        vae.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(InputError, match=r"\[B, 3, H, W\]"):
        vae.encode(torch.zeros(3, 16, 16))
    with pytest.raises(InputError, match="latent channels"):
        vae.decode(torch.zeros(1, 8, 4, 4))
    with pytest.raises(InputError, match="T, h, w"):
        vae.decode_video(torch.zeros(1, 4, 4, 4))
    with pytest.raises(InputError, match="encode_video"):
        vae.encode_video(torch.zeros(1, 3, 16, 16))


def test_video_is_chunked_and_equals_framewise():
    vae = tiny_vae()   # decode_chunk = 3
    calls = []
    decoder_forward = vae.decoder.forward
    vae.decoder.forward = lambda z: calls.append(z.shape[0]) or decoder_forward(z)
    lat = torch.randn(2, 4, 5, 2, 2, generator=torch.Generator().manual_seed(0))
    progress = []
    with torch.no_grad():
        video = vae.decode_video(lat, callback=lambda done, total: progress.append((done, total)))
        assert max(calls) <= 3 and sum(calls) == 10
        # frames are independent (§3.2): the video equals each frame decoded alone, in order
        per_frame = torch.stack([vae.decode(lat[:, :, t]) for t in range(5)], dim=2)
    torch.testing.assert_close(video, per_frame, atol=1e-5, rtol=1e-4)
    assert progress == [(3, 10), (6, 10), (9, 10), (10, 10)]
    calls.clear()
    with torch.no_grad():   # 4x more frames: still no decoder call above the chunk size
        vae.decode_video(lat[:1].repeat(1, 1, 4, 1, 1))
    assert max(calls) <= 3


def test_encode_video_matches_encode_and_cancel():
    vae = tiny_vae()
    video = torch.rand(1, 3, 4, 16, 16) * 2 - 1
    with torch.no_grad():
        z = vae.encode_video(video)
        assert z.shape == (1, 4, 4, 8, 8)
        torch.testing.assert_close(z[:, :, 2], vae.encode(video[:, :, 2]), atol=1e-5, rtol=1e-4)
        with pytest.raises(Cancelled):
            vae.decode_video(z, cancel=lambda: True)
        done = []
        with pytest.raises(KeyboardInterrupt):   # a cancel() that raises itself is honoured too
            def cancel():
                if done:
                    raise KeyboardInterrupt
            vae.decode_video(z, callback=lambda d, t: done.append(d), cancel=cancel)
        assert done == [3]
