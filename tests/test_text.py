"""Text encoders: offline tokenizers, tiny T5 + CLIP, padding/masks, null prompt, and loading
round trips (HF folder, self-contained single file, single file + tokenizer folder)."""
import pytest
import torch
import transformers
from safetensors.torch import save_file

from emu_video.model.config import ConfigError, InputError, TextEncoderConfig
from emu_video.model.text import TextEncoder, TextEncoders, load_text_encoder, save_text_encoder
from emu_video.model.tokenizer_build import build_tiny_text_encoders, train_clip_tokenizer, train_t5_tokenizer

CORPUS = ["a red ball rolls to the left", "a blue cube jumps over the green ball",
          "the camera pans right across a yellow floor", "two small spheres bounce"]
PROMPTS = ["a red ball rolls", "Two BLUE cubes jump!", ""]


@pytest.fixture(scope="module")
def encoders():
    return build_tiny_text_encoders(CORPUS, max_length=16, seed=0)


def same(a: TextEncoder, b: TextEncoder, prompts=PROMPTS):
    ca, ma = a(prompts)
    cb, mb = b(prompts)
    assert torch.equal(ma, mb)
    torch.testing.assert_close(ca, cb, atol=0, rtol=0)


# --------------------------------------------------------------------------- tokenizers & building

def test_tokenizers_have_the_real_special_token_layout():
    t5 = train_t5_tokenizer(CORPUS)
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)
    assert t5("a red ball")["input_ids"][-1] == 1                       # `$A </s>`
    clip = train_clip_tokenizer(CORPUS, vocab_size=600)
    ids = clip("a red ball")["input_ids"]
    assert ids[0] == clip.bos_token_id and ids[-1] == clip.eos_token_id
    assert len(clip) <= 600 and clip.convert_ids_to_tokens(ids[1]) == "a</w>"
    odd = clip("Zebra #42 ü")["input_ids"]   # byte-level: nothing is unknown (CLIP's unk is its eos)
    assert odd.count(clip.unk_token_id) == 1 and odd[-1] == clip.eos_token_id
    assert t5.unk_token_id not in t5("Zebra #42!")["input_ids"]
    assert train_t5_tokenizer(CORPUS).backend_tokenizer.to_str() == t5.backend_tokenizer.to_str()


def test_t5_tokenizer_keeps_every_corpus_word_whole():
    """One token per known word, so a 10-word toy caption fits T5's short max_length (the old
    UnigramTrainer pieces split it into ~40 fragments and truncation cut direction and background)."""
    from emu_video.trainer.build import toy_corpus
    t5 = train_t5_tokenizer(toy_corpus())
    caption = "a magenta triangle moving quickly right on a white background"
    assert t5.tokenize(caption) == ["▁" + w for w in caption.split()]
    assert len(t5(caption)["input_ids"]) == 11                           # 10 words + </s>
    assert t5.tokenize("a zebra") == ["▁a", "▁", "z", "e", "b", "r", "a"]  # unknown word: ASCII fallback
    assert t5.decode(t5("a zebra")["input_ids"], skip_special_tokens=True) == "a zebra"
    assert len(train_t5_tokenizer(toy_corpus(), vocab_size=100)) <= 100
    with pytest.raises(InputError, match="vocab_size"):
        train_t5_tokenizer(CORPUS, vocab_size=50)


def test_every_toy_world_caption_is_whole_words_within_max_length():
    """Every caption the toy world can write — static clips' "standing still" included — is one
    token per word in both tokenizers and fits max_length 16, so no caption loses its background."""
    import itertools

    from emu_video.trainer import toy_world as tw
    from emu_video.trainer.build import toy_corpus
    t5, clip = train_t5_tokenizer(toy_corpus()), train_clip_tokenizer(toy_corpus())
    for c, s, m, v, b in itertools.product(tw.COLOURS, tw.SHAPES, tw.MOTIONS, tw.SPEEDS, tw.BACKGROUNDS):
        caption = tw.caption(dict(colour=c, shape=s, motion=m, speed=v, background=b))
        words = caption.split()
        assert t5.tokenize(caption) == ["▁" + w for w in words], caption
        assert clip.tokenize(caption) == [w + "</w>" for w in words], caption
        assert len(t5(caption)["input_ids"]) == len(words) + 1 <= 16
        assert len(clip(caption)["input_ids"]) == len(words) + 2 <= 16


def test_build_is_deterministic_and_leaves_global_rng(encoders):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    again = build_tiny_text_encoders(CORPUS, max_length=16, seed=0)
    assert torch.equal(torch.rand(1), before)
    for a, b in zip(encoders.encoders, again.encoders):
        same(a, b)
    other = build_tiny_text_encoders(CORPUS, max_length=16, seed=1)
    assert not torch.allclose(other.encode(["a red ball"]).context[0], encoders.encode(["a red ball"]).context[0])
    assert [c.kind for c in encoders.configs] == ["t5", "clip"]


# --------------------------------------------------------------------------- encode

def test_padding_truncation_and_masks(encoders):
    long = " ".join(["the red ball"] * 20)
    cond = encoders.encode(["a red ball", long])
    for cfg, ctx, mask, enc in zip(encoders.configs, cond.context, cond.masks, encoders.encoders):
        assert ctx.shape == (2, 16, cfg.dim) and mask.shape == (2, 16) and mask.dtype == torch.bool
        ids = enc.tokenizer("a red ball")["input_ids"]
        assert mask[0].sum() == len(ids) and mask[0, :len(ids)].all()     # real tokens first, then padding
        assert mask[1].all()                                              # truncated to max_length
        end = enc.tokenizer([long], truncation=True, max_length=16)["input_ids"][0][-1]
        assert end == enc.tokenizer.eos_token_id                          # truncation keeps the end token


def test_null_is_the_empty_prompt_not_zeros(encoders):
    null = encoders.null(3)
    empty = encoders.encode([""])
    assert null.batch_size == 3
    for n, e in zip(null.context, empty.context):
        assert torch.equal(n, e.expand_as(n)) and n.abs().sum() > 0
    assert all(m[:, 0].all() and not m[:, -1].any() for m in null.masks)


def test_frozen_and_movable(encoders):
    encoders.train()
    assert not any(m.training for m in encoders.modules())
    assert not any(p.requires_grad for p in encoders.parameters())
    # bf16, a dtype the loaders offer (float64 CLIP cannot run on transformers 4.x: its causal mask
    # overflows). Restore fp32 even on failure: the fixture is shared by the whole module.
    try:
        cond = encoders.to(torch.bfloat16).encode(["a red ball"])
        assert all(c.dtype == torch.bfloat16 for c in cond.context)
    finally:
        encoders.to(torch.float32)
    with pytest.raises(InputError, match="list of strings"):
        encoders.encode([1, 2])


# --------------------------------------------------------------------------- loading round trips

def test_hf_folder_roundtrip(encoders, tmp_path):
    for enc in encoders.encoders:
        folder = tmp_path / enc.cfg.name
        enc.model.save_pretrained(folder, safe_serialization=True)
        enc.tokenizer.save_pretrained(folder)
        back = load_text_encoder(folder, max_length=16)
        assert back.cfg == enc.cfg
        same(enc, back)


def test_diffusers_pipeline_layout_finds_sibling_tokenizer(encoders, tmp_path):
    enc = encoders["clip"]
    enc.model.save_pretrained(tmp_path / "text_encoder_2", safe_serialization=True)
    enc.tokenizer.save_pretrained(tmp_path / "tokenizer_2")
    same(enc, load_text_encoder(tmp_path / "text_encoder_2", max_length=16))


def test_single_file_with_embedded_tokenizer(encoders, tmp_path):
    for enc in encoders.encoders:
        save_text_encoder(enc, tmp_path / f"{enc.cfg.name}.safetensors")
        back = load_text_encoder(tmp_path / f"{enc.cfg.name}.safetensors")
        assert back.cfg == enc.cfg
        same(enc, back)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.safetensors", "t5.safetensors"]


def _comfy_style_clip(seed=0):
    """A CLIP whose config follows the shape-inference rules (64-dim heads, gelu below 768)."""
    tok = train_clip_tokenizer(CORPUS, vocab_size=600)
    torch.manual_seed(seed)
    cfg = transformers.CLIPTextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=1, max_position_embeddings=16, hidden_act="gelu",
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id)
    model = transformers.CLIPTextModel(cfg)
    return TextEncoder(TextEncoderConfig("clip", "clip", 64, 16), tok, model)


def _bare(state_dict):
    return {k.removeprefix("text_model."): v.contiguous() for k, v in state_dict.items() if "position_ids" not in k}


@pytest.mark.parametrize("prefix", ["text_model.", "", "cond_stage_model.transformer.text_model."])
def test_clip_single_file_inferred_config_and_tokenizer_folder(tmp_path, prefix):
    enc = _comfy_style_clip()
    save_file({prefix + k: v for k, v in _bare(enc.model.state_dict()).items()}, tmp_path / "clip_l.safetensors")
    enc.tokenizer.save_pretrained(tmp_path / "clip_l_tokenizer")              # found next to the file
    same(enc, load_text_encoder(tmp_path / "clip_l.safetensors", max_length=16))
    enc.tokenizer.save_pretrained(tmp_path / "elsewhere")                     # or given explicitly
    same(enc, load_text_encoder(tmp_path / "clip_l.safetensors", max_length=16, tokenizer=tmp_path / "elsewhere"))


def test_t5_single_file_inferred_config(encoders, tmp_path):
    enc = encoders["t5"]
    sd = {k: v.contiguous() for k, v in enc.model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file(sd, tmp_path / "t5.safetensors")
    back = load_text_encoder(tmp_path / "t5.safetensors", max_length=16, tokenizer=enc.tokenizer)
    assert back.model.config.num_heads == enc.model.config.num_heads
    same(enc, back)


# --------------------------------------------------------------------------- errors

def test_loader_errors(encoders, tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_text_encoder(tmp_path / "missing.safetensors")
    (tmp_path / "t5.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="pickle"):
        load_text_encoder(tmp_path / "t5.bin")
    save_file({"foo.weight": torch.zeros(2)}, tmp_path / "odd.safetensors")
    with pytest.raises(InputError, match="unknown text-encoder key layout"):
        load_text_encoder(tmp_path / "odd.safetensors")
    enc = encoders["t5"]
    sd = {k: v.contiguous() for k, v in enc.model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file(sd, tmp_path / "t5.safetensors")
    with pytest.raises(InputError, match=r"looked for .*t5_tokenizer.*tokenizer\.json"):
        load_text_encoder(tmp_path / "t5.safetensors")
    with pytest.raises(InputError, match="kind='clip'"):
        load_text_encoder(tmp_path / "t5.safetensors", kind="clip", tokenizer=enc.tokenizer)
    with pytest.raises(ConfigError, match="positions"):
        TextEncoder(TextEncoderConfig("clip", "clip", 32, 77), encoders["clip"].tokenizer, encoders["clip"].model)
    with pytest.raises(ConfigError, match="unique"):
        TextEncoders([encoders["t5"], encoders["t5"]])
