"""Offline tokenizers and tiny random text encoders (no model hub).

Tests, `emu-video init-models` and the demo-model trainer need a T5 and a CLIP encoder (§3.3)
that exist without downloads: we train tokenizers of the real kinds on a small corpus (the toy
world's vocabulary) and build tiny randomly initialised transformers models around them.
"""
from __future__ import annotations

import json
import math
import string
import tempfile
from collections import Counter
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers.pre_tokenizers import ByteLevel

from .config import InputError, TextEncoderConfig
from .text import TextEncoder, TextEncoders

CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
T5_SPECIALS = ("<pad>", "</s>", "<unk>")   # ids 0, 1, 2 as in T5's sentencepiece vocabulary
# transformers 5 merged the fast class into CLIPTokenizer; 4.x still has both.
_CLIPFast = getattr(transformers, "CLIPTokenizerFast", transformers.CLIPTokenizer)


def _check_corpus(corpus) -> list[str]:
    corpus = [corpus] if isinstance(corpus, str) else list(corpus)
    if not corpus or not all(isinstance(s, str) for s in corpus):
        raise InputError("corpus must be a non-empty list of strings (the sentences the tokenizer should cover)")
    return corpus


# --------------------------------------------------------------------------- CLIP: byte-level BPE

def _clip_from_vocab(vocab: list[str], merges: list[tuple[str, str]]):
    """Load through vocab.json + merges.txt, the files every transformers version understands."""
    with tempfile.TemporaryDirectory() as d:
        Path(d, "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
        Path(d, "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        return _CLIPFast.from_pretrained(d, local_files_only=True)


def train_clip_tokenizer(corpus: list[str], vocab_size: int = 1000):
    """CLIP-style tokenizer: lower-cased byte-level BPE, `</w>` marks word ends, 256 byte symbols in
    both forms first (so no input is ever unknown), merges next, then the two specials."""
    corpus = _check_corpus(corpus)
    alphabet = sorted(ByteLevel.alphabet())
    base = alphabet + [c + "</w>" for c in alphabet]
    if vocab_size < len(base) + 2:
        raise InputError(f"CLIP vocab_size must be at least {len(base) + 2} (byte symbols + specials), got {vocab_size}")
    # Train with the exact normaliser and pre-tokeniser the finished CLIP tokenizer uses.
    backend = Tokenizer.from_str(_clip_from_vocab(base + [CLIP_BOS, CLIP_EOS], []).backend_tokenizer.to_str())
    backend.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, end_of_word_suffix="</w>", initial_alphabet=alphabet,
        special_tokens=[CLIP_BOS, CLIP_EOS], show_progress=False))
    raw = json.loads(backend.to_str())["model"]["merges"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in raw]  # tokenizers <0.20 used "a b"
    vocab, seen = list(base), set(base)
    for a, b in merges:
        if len(vocab) >= vocab_size - 2:
            break
        if a + b not in seen:
            vocab.append(a + b)
            seen.add(a + b)
    merges = [(a, b) for a, b in merges if a + b in seen]
    return _clip_from_vocab(vocab + [CLIP_BOS, CLIP_EOS], merges)


# --------------------------------------------------------------------------- T5: Unigram

def train_t5_tokenizer(corpus: list[str], vocab_size: int = 256):
    """T5-style tokenizer: Unigram over Metaspace pieces, `<pad>`=0 `</s>`=1 `<unk>`=2, every
    sequence ends in `</s>`. `vocab_size` is an upper bound (a tiny corpus yields fewer pieces).

    The pieces are the corpus's whole words (a Unigram model fitted by counting: log unigram
    frequency), with printable ASCII below them as the fallback, so every word the world knows is
    ONE token and unknown words still tokenize. tokenizers' UnigramTrainer on a corpus this small
    kept mostly sub-word fragments, which spread a 10-word caption over ~40 tokens: past any short
    max_length, T5 never saw the direction or background words.
    """
    corpus = _check_corpus(corpus)
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.model = models.Unigram(_word_pieces(tok, corpus, vocab_size), unk_id=2, byte_fallback=False)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                unk_token="<unk>")


def _word_pieces(tok: Tokenizer, corpus: list[str], vocab_size: int) -> list[tuple[str, float]]:
    """Specials, then whole-word pieces by descending count (ties alphabetical: reproducible ids),
    then the ASCII fallback scored below every word. Scores are log frequencies, so the Viterbi
    segmentation of a known word is the word itself (one piece beats any split into characters)."""
    split = tok.pre_tokenizer.pre_tokenize_str
    counts = Counter(piece for line in corpus for piece, _ in split(tok.normalizer.normalize_str(line)))
    fallback = ["▁"] + list(string.ascii_letters + string.digits + string.punctuation)
    room = vocab_size - len(T5_SPECIALS) - len(fallback)
    if room < 1:
        raise InputError(f"T5 vocab_size must exceed {len(T5_SPECIALS) + len(fallback)} (specials + ASCII fallback), got {vocab_size}")
    words = sorted((w for w in counts if w not in fallback), key=lambda w: (-counts[w], w))[:room]
    total = sum(counts[w] for w in words) or 1
    pieces = [(w, round(math.log(counts[w] / total), 6)) for w in words]
    floor = min((s for _, s in pieces), default=0.0) - 10.0
    pieces += [(c, floor - 0.01 * i) for i, c in enumerate(fallback)]
    return [(p, 0.0) for p in T5_SPECIALS] + pieces


# --------------------------------------------------------------------------- tiny encoders

def tiny_t5(tokenizer, dim: int) -> transformers.T5EncoderModel:
    heads = 4 if dim % 4 == 0 else 1
    cfg = transformers.T5Config(vocab_size=len(tokenizer), d_model=dim, d_kv=dim // heads, d_ff=2 * dim,
                                num_layers=2, num_heads=heads, relative_attention_num_buckets=8,
                                feed_forward_proj="gated-gelu", pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    return transformers.T5EncoderModel(cfg)


def tiny_clip(tokenizer, dim: int, max_length: int) -> transformers.CLIPTextModel:
    heads = 4 if dim % 4 == 0 else 1
    # eos_token_id must be the real one: the pooled output is read at the first EOS.
    cfg = transformers.CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=dim, intermediate_size=2 * dim,
                                      num_hidden_layers=2, num_attention_heads=heads,
                                      max_position_embeddings=max_length, hidden_act="quick_gelu",
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id)
    return transformers.CLIPTextModel(cfg)


def build_tiny_text_encoders(corpus: list[str], t5_dim: int = 32, clip_dim: int = 32, max_length: int = 16,
                             seed: int = 0) -> TextEncoders:
    """Random tiny [T5, CLIP] encoders (in that order: ModelConfig.text_encoders and the U-Net's
    context_dims must list them the same way). Same corpus and seed -> same weights and token ids."""
    corpus = _check_corpus(corpus)
    t5_tok, clip_tok = train_t5_tokenizer(corpus), train_clip_tokenizer(corpus)
    with torch.random.fork_rng(devices=[]):   # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        t5, clip = tiny_t5(t5_tok, t5_dim), tiny_clip(clip_tok, clip_dim, max_length)
    return TextEncoders([
        TextEncoder(TextEncoderConfig(name="t5", kind="t5", dim=t5_dim, max_length=max_length), t5_tok, t5),
        TextEncoder(TextEncoderConfig(name="clip", kind="clip", dim=clip_dim, max_length=max_length), clip_tok, clip),
    ])
