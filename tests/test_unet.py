import math

import pytest
import torch

from emu_video.model import attention as attention_module
from emu_video.model.conditioning import TextCondition
from emu_video.model.config import InputError
from emu_video.model.presets import tiny_config
from emu_video.model.unet import EmuUNet, is_temporal_key

B, T, H, W = 2, 3, 8, 8




def make_model(temporal=True, seed=0):
    cfg = tiny_config().unet
    cfg.temporal = temporal
    torch.manual_seed(seed)
    return EmuUNet(cfg).eval()


@torch.no_grad()
def randomize(model, seed=1, temporal=False):
    """Give the chosen parameter group non-trivial random values (SD zero-inits out convs, so a
    fresh model would output zeros and every equivalence test would pass trivially)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if is_temporal_key(name) != temporal:
            continue
        if p.ndim == 1:
            base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
    return model


def inputs(seed=0, frames=T, channels=None, batch=B):
    g = torch.Generator().manual_seed(seed)
    cfg = tiny_config().unet
    c = cfg.in_channels if channels is None else channels
    x = torch.randn(batch, c, frames, H, W, generator=g)
    t = torch.tensor([10, 700][:batch])
    ctx = [torch.randn(batch, 16, d, generator=g) for d in cfg.context_dims]
    masks = [torch.arange(16)[None].expand(batch, 16) < 9, None]
    return x, t, ctx, masks


def test_keys_follow_sd_layout_with_nested_temporal_children():
    keys = set(make_model().state_dict())
    assert "input_blocks.0.0.weight" in keys and "input_blocks.0.0.cond.weight" in keys
    assert "input_blocks.1.0.temporal.conv.weight" in keys
    assert "middle_block.1.temporal.proj_out.weight" in keys
    assert "middle_block.1.transformer_blocks.0.attn2.to_k.weight" in keys
    assert "middle_block.1.transformer_blocks.0.extra_attn.0.to_k.weight" in keys
    assert {"time_embed.0.weight", "time_embed.2.weight", "out.0.weight", "out.2.weight"} <= keys
    spatial_keys = set(make_model(temporal=False).state_dict())
    assert not any(is_temporal_key(k) for k in spatial_keys)
    assert spatial_keys == {k for k in keys if not is_temporal_key(k)}


def test_first_conv_keeps_sd_shape():
    model = make_model()
    cfg = model.cfg
    assert model.input_blocks[0][0].weight.shape == (cfg.model_channels, cfg.latent_channels, 3, 3)
    assert model.input_blocks[0][0].cond.weight.shape == (cfg.model_channels, cfg.latent_channels + 1, 3, 3)


@torch.no_grad()
def test_video_equals_framewise_image_model_at_init():
    model = randomize(make_model())
    x, t, ctx, masks = inputs()
    video = model(x, t, ctx, masks)
    assert video.shape == (B, model.cfg.latent_channels, T, H, W)
    assert video.abs().mean() > 1e-2  # randomised weights: the output is not trivially zero
    for f in range(T):
        frame = model(x[:, :, f], t, ctx, masks, image_mode=True)
        torch.testing.assert_close(video[:, :, f], frame, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_image_mode_equals_spatial_only_model():
    video_model = randomize(make_model())
    randomize(video_model, seed=5, temporal=True)  # trained temporal layers must not leak into image mode
    spatial = make_model(temporal=False)
    sd = {k: v for k, v in video_model.state_dict().items() if not is_temporal_key(k)}
    spatial.load_state_dict(sd, strict=True)
    x, t, ctx, masks = inputs()
    c = video_model.cfg.latent_channels
    torch.testing.assert_close(video_model(x, t, ctx, masks, image_mode=True), spatial(x[:, :c], t, ctx, masks))


@torch.no_grad()
def test_trained_temporal_layers_mix_frames_and_use_conditioning():
    model = randomize(make_model())
    randomize(model, seed=3, temporal=True)
    x, t, ctx, masks = inputs()
    x2 = x.clone()
    x2[:, :, 0] += 1.0  # change only frame 0 (noisy latent and conditioning)
    out, out2 = model(x, t, ctx, masks), model(x2, t, ctx, masks)
    assert (out2[:, :, -1] - out[:, :, -1]).abs().max() > 1e-4  # the last frame sees frame 0
    img, img2 = (model(v, t, ctx, masks, image_mode=True) for v in (x, x2))
    torch.testing.assert_close(img[:, :, -1], img2[:, :, -1])  # image mode: frames independent

    c = model.cfg.latent_channels
    x3 = x.clone()
    x3[:, c:] = 0  # conditioning channels now matter in video mode only
    assert (model(x3, t, ctx, masks) - out).abs().max() > 1e-4
    torch.testing.assert_close(model(x3, t, ctx, masks, image_mode=True), img)


@torch.no_grad()
def test_latent_only_input_equals_zero_conditioning():
    model = randomize(make_model())
    randomize(model, seed=3, temporal=True)
    x, t, ctx, masks = inputs()
    c = model.cfg.latent_channels
    zero_cond = torch.cat([x[:, :c], torch.zeros_like(x[:, c:])], dim=1)
    torch.testing.assert_close(model(x[:, :c], t, ctx, masks), model(zero_cond, t, ctx, masks))


@torch.no_grad()
def test_padded_tokens_are_ignored_when_masked():
    model = randomize(make_model())
    x, t, ctx, masks = inputs()
    ctx2 = [ctx[0].clone(), ctx[1]]
    ctx2[0][:, 12:] += 5.0  # tokens 9.. are padding in masks[0]
    torch.testing.assert_close(model(x, t, ctx, masks), model(x, t, ctx2, masks))
    assert (model(x, t, ctx, None) - model(x, t, ctx2, None)).abs().max() > 1e-4
    # TextCondition is accepted directly
    torch.testing.assert_close(model(x, t, TextCondition(ctx, masks)), model(x, t, ctx, masks))


@torch.no_grad()
def test_attention_chunking_matches_single_call(monkeypatch):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(10, 2, 5, 8, generator=g) for _ in range(3))
    mask = torch.rand(10, 5, generator=g) > 0.3
    mask[3] = False  # fully masked row must not give NaN
    full = attention_module.attention(q, k, v, mask)
    monkeypatch.setattr(attention_module, "CHUNK_ROWS", 3)
    torch.testing.assert_close(attention_module.attention(q, k, v, mask), full)
    assert torch.isfinite(full).all()


def test_parameter_split_is_a_partition_and_freeze_spatial():
    model = randomize(make_model())
    spatial, temporal = model.spatial_parameters(), model.temporal_parameters()
    ids_s, ids_t = {id(p) for p in spatial}, {id(p) for p in temporal}
    assert ids_s.isdisjoint(ids_t) and ids_t
    assert ids_s | ids_t == {id(p) for p in model.parameters()}
    assert id(model.input_blocks[0][0].cond.weight) in ids_t
    model.freeze_spatial()
    assert {id(p) for p in model.parameters() if p.requires_grad} == ids_t
    x, t, ctx, masks = inputs(batch=1)
    model(x, t[:1], [c[:1] for c in ctx]).square().mean().backward()
    assert all(p.grad is None for p in spatial)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in temporal)


def test_gradient_checkpointing_gives_same_gradients():
    model = randomize(make_model())
    randomize(model, seed=3, temporal=True)
    model.freeze_spatial()
    x, t, ctx, masks = inputs(batch=1, frames=2)
    ctx = [c[:1] for c in ctx]

    def grads():
        model.zero_grad()
        model(x, t[:1], ctx).square().mean().backward()
        return [p.grad.clone() for p in model.temporal_parameters()]

    plain = grads()
    model.enable_gradient_checkpointing()
    for a, b in zip(plain, grads()):
        torch.testing.assert_close(a, b)


@torch.no_grad()
def test_same_seed_same_output():
    a, b = make_model(seed=7), make_model(seed=7)
    randomize(a), randomize(b)
    x, t, ctx, masks = inputs()
    assert torch.equal(a(x, t, ctx, masks), b(x, t, ctx, masks))


@pytest.mark.parametrize("case, match", [
    ("channels", "channels"),
    ("divisible", "not divisible by 2"),
    ("zero_frames", "0 frames"),
    ("too_many_frames", "frame-position table"),
    ("num_contexts", "2 text encoder"),
    ("context_dim", r"context\[1\] must be"),
    ("batch", r"context\[0\] must be \[B=2"),
    ("timesteps", "timesteps must have shape"),
    ("four_d_video", "4-D input"),
    ("mask_shape", r"context_masks\[0\]"),
])
def test_bad_inputs_raise_input_error(case, match):
    model = make_model()
    x, t, ctx, masks = inputs()
    c = model.cfg.latent_channels
    kwargs = {}
    if case == "channels":
        x = x[:, : c + 1]
    elif case == "divisible":
        x = x[..., :7]
    elif case == "zero_frames":
        x = x[:, :, :0]
    elif case == "too_many_frames":
        x = torch.zeros(1, c, model.cfg.max_frames + 1, 2, 2)
        t, ctx, masks = t[:1], [v[:1] for v in ctx], None
    elif case == "num_contexts":
        ctx, masks = ctx[:1], None
    elif case == "context_dim":
        ctx = [ctx[0], ctx[1][..., :8]]
    elif case == "batch":
        ctx = [ctx[0][:1], ctx[1]]
    elif case == "timesteps":
        t = torch.tensor([1, 2, 3])
    elif case == "four_d_video":
        x = x[:, :, 0]
    elif case == "mask_shape":
        masks = [masks[0][:, :5], None]
    with pytest.raises(InputError, match=match):
        model(x, t, ctx, masks, **kwargs)


def test_no_graph_breaks_under_dynamo():
    torch._dynamo.reset()
    model = make_model()
    x, t, ctx, masks = inputs(batch=1, frames=2)
    explanation = torch._dynamo.explain(model)(x, t[:1], [c[:1] for c in ctx], [masks[0][:1], None])
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()


@torch.no_grad()
def test_bf16_autocast_forward():
    model = randomize(make_model())
    x, t, ctx, masks = inputs(batch=1, frames=2)
    ctx = [c[:1] for c in ctx]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t[:1], ctx, [masks[0][:1], None])
    assert out.dtype == x.dtype and out.shape == (1, model.cfg.latent_channels, 2, H, W)
    assert torch.isfinite(out).all()
    ref = model(x, t[:1], ctx, [masks[0][:1], None])
    assert (out - ref).abs().mean() < 0.1 * ref.abs().mean() + 1e-3
