"""Frozen text encoders (§3.3: T5 and CLIP, each attended by its own cross-attention).

Each encoder is a (TextEncoderConfig, tokenizer, transformers model) triple. Prompts are always
padded to the encoder's max_length, and the null condition is the empty prompt "" (not zeros).
Loaded from local files only: a Hugging Face folder, or one .safetensors file in ComfyUI's
`text_encoders` layout with the transformers config inferred from tensor shapes.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
import torch.nn as nn
import transformers
from safetensors import safe_open
from tokenizers import Tokenizer

from .conditioning import TextCondition
from .config import ConfigError, InputError, TextEncoderConfig, from_json, to_json
from .checkpoint import atomic_save, refuse_pickle

KINDS = ("t5", "clip")
_MODEL_CLASS = {"t5": transformers.T5EncoderModel, "clip": transformers.CLIPTextModel}
_CONFIG_CLASS = {"t5": transformers.T5Config, "clip": transformers.CLIPTextConfig}
_DEFAULT_SPECIALS = {"t5": {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"},
                     "clip": {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                              "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}}
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
# Marker keys (after their prefix) that identify each single-file layout.
_MARKERS = {"clip": "encoder.layers.0.mlp.fc1.weight", "t5": "encoder.block.0.layer.0.SelfAttention.q.weight"}


# --------------------------------------------------------------------------- encoders

class TextEncoder(nn.Module):
    """One frozen encoder: tokenizes to exactly cfg.max_length tokens, returns the last hidden state."""

    def __init__(self, cfg: TextEncoderConfig, tokenizer, model: nn.Module):
        super().__init__()
        if cfg.kind not in KINDS:
            raise ConfigError(f"text encoder kind must be one of {KINDS}, got {cfg.kind!r}")
        hidden = model.config.hidden_size if cfg.kind == "clip" else model.config.d_model
        if cfg.dim != hidden:
            raise ConfigError(f"text encoder '{cfg.name}': config dim {cfg.dim} != model hidden size {hidden}")
        positions = getattr(model.config, "max_position_embeddings", None)
        if cfg.kind == "clip" and cfg.max_length > positions:
            raise ConfigError(f"text encoder '{cfg.name}': max_length {cfg.max_length} exceeds CLIP's "
                              f"{positions} positions; use max_length <= {positions}")
        self.cfg, self.tokenizer, self.model = cfg, tokenizer, model
        self.model.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)   # frozen (§3.3): never switch dropout on

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> context [B, max_length, dim], mask [B, max_length] bool (True = real token)."""
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.cfg.max_length,
                                return_tensors="pt")
        ids, mask = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
        if self.cfg.kind == "t5":
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        else:
            # CLIP is causal, so padding cannot change real tokens; SD and ComfyUI pass no mask.
            hidden = self.model(input_ids=ids).last_hidden_state
        return hidden, mask.bool()


class TextEncoders(nn.Module):
    """The ordered encoders whose embeddings feed the U-Net's cross-attentions, in the order of
    ModelConfig.text_encoders / UNetConfig.context_dims."""

    def __init__(self, encoders):
        super().__init__()
        encoders = [e if isinstance(e, TextEncoder) else TextEncoder(*e) for e in encoders]
        if not encoders:
            raise ConfigError("TextEncoders needs at least one encoder")
        names = [e.cfg.name for e in encoders]
        if len(set(names)) != len(names):
            raise ConfigError(f"text encoder names must be unique, got {names}")
        self.encoders = nn.ModuleList(encoders)

    @property
    def configs(self) -> tuple[TextEncoderConfig, ...]:
        return tuple(e.cfg for e in self.encoders)

    def __getitem__(self, name: str) -> TextEncoder:
        for e in self.encoders:
            if e.cfg.name == name:
                return e
        raise KeyError(f"no text encoder named {name!r}; have {[e.cfg.name for e in self.encoders]}")

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextCondition:
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise InputError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        outs = [e(list(prompts)) for e in self.encoders]
        return TextCondition([c for c, _ in outs], [m for _, m in outs])

    def null(self, batch: int = 1) -> TextCondition:
        """The unconditional input for classifier-free guidance: the empty prompt."""
        return self.encode([""]).repeat(batch)


# --------------------------------------------------------------------------- loading

def load_text_encoder(path: str | os.PathLike, kind: str | None = None, name: str | None = None,
                      max_length: int | None = None, tokenizer=None) -> TextEncoder:
    """Load one encoder from a Hugging Face folder or a single .safetensors file.

    tokenizer: a tokenizer object or a folder; if omitted, the HF folder itself, or for a single
    file the folder `<stem>_tokenizer/` next to it, then a `tokenizer.json` in the file's metadata.
    kind/name/max_length override what the file says (defaults: name = kind, max_length 77).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"text encoder not found: {path}")
    if kind is not None and kind not in KINDS:
        raise InputError(f"kind must be one of {KINDS}, got {kind!r}")
    if path.is_dir():
        stored, model = None, _model_from_folder(path, kind)
        kind = "clip" if isinstance(model, transformers.CLIPTextModel) else "t5"
        tok = _tokenizer_from_arg(tokenizer) if tokenizer is not None else _tokenizer_near_folder(path, kind)
    else:
        stored, model, meta, kind = _model_from_file(path, kind)
        tok = _tokenizer_for_file(path, tokenizer, meta, kind)
    cfg = TextEncoderConfig(name=name or (stored.name if stored else kind), kind=kind,
                            dim=model.config.hidden_size if kind == "clip" else model.config.d_model,
                            max_length=max_length or (stored.max_length if stored else _default_length(model, kind)))
    return TextEncoder(cfg, tok, model)


def _default_length(model, kind: str) -> int:
    length = TextEncoderConfig.max_length
    return min(length, model.config.max_position_embeddings) if kind == "clip" else length


def _model_from_folder(folder: Path, kind: str | None):
    cfg_file = folder / "config.json"
    if not cfg_file.exists():
        raise InputError(f"{folder}: not a Hugging Face model folder (no config.json)")
    if not any(folder.glob("*.safetensors")):
        raise InputError(f"{folder}: no .safetensors weights (pickle .bin files are not loaded; convert them)")
    model_type = json.loads(cfg_file.read_text()).get("model_type", "")
    detected = "t5" if model_type in ("t5", "mt5", "umt5") else "clip" if model_type.startswith("clip") else None
    if detected is None:
        raise InputError(f"{folder}: model_type {model_type!r} is neither a T5 nor a CLIP text model")
    if kind is not None and kind != detected:
        raise InputError(f"{folder} holds a {detected} model, but kind={kind!r} was requested")
    return _MODEL_CLASS[detected].from_pretrained(folder, local_files_only=True, use_safetensors=True)


def _model_from_file(path: Path, kind: str | None):
    refuse_pickle(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta, sd = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:   # safetensors raises several types for a non-safetensors file
        raise InputError(f"{path.name} is not a readable .safetensors file ({e})") from None
    stored = None
    if meta.get("format") == "emu_video":
        if meta.get("kind") != "text_encoder":
            raise InputError(f"{path.name} is an Emu Video '{meta.get('kind')}' file, not a text encoder")
        stored = from_json(TextEncoderConfig, meta["config"])
    detected, sd = _normalise_keys(sd, path)
    if kind is not None and kind != detected:
        raise InputError(f"{path.name} holds a {detected} encoder, but kind={kind!r} was requested")
    if "hf_config" in meta:
        hf = _CONFIG_CLASS[detected].from_dict(json.loads(meta["hf_config"]))
    else:
        hf = _infer_t5_config(sd) if detected == "t5" else _infer_clip_config(sd)
    model = _MODEL_CLASS[detected](hf)
    _load_weights(model, sd, path.name)
    return stored, model, meta, detected


def _normalise_keys(sd: dict, path: Path) -> tuple[str, dict]:
    """Find the layout and strip any prefix, giving bare HF names (`encoder.layers.0...` for CLIP)."""
    for kind, marker in _MARKERS.items():
        hit = next((k for k in sd if k.endswith(marker)), None)
        if hit is None:
            continue
        # e.g. `text_model.` (ComfyUI, transformers 4.x), `cond_stage_model.transformer.text_model.` (SD1)
        prefix = hit[:-len(marker)]
        bare = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if kind == "t5":
            if "shared.weight" not in bare and "encoder.embed_tokens.weight" in bare:
                bare["shared.weight"] = bare["encoder.embed_tokens.weight"]
            bare.pop("encoder.embed_tokens.weight", None)   # tied to shared.weight
        else:
            for extra in ("embeddings.position_ids", "text_projection.weight", "logit_scale"):
                bare.pop(extra, None)
        return kind, bare
    raise InputError(f"{path.name}: unknown text-encoder key layout; expected CLIP "
                     f"('[text_model.]{_MARKERS['clip']}') or T5 ('{_MARKERS['t5']}' with 'shared.weight')")


def _count(sd: dict, pattern: str) -> int:
    return 1 + max(int(m.group(1)) for k in sd if (m := re.match(pattern, k)))


def _infer_clip_config(sd: dict) -> transformers.CLIPTextConfig:
    vocab, hidden = sd["embeddings.token_embedding.weight"].shape
    # Heads are not visible in shapes: every released CLIP text tower uses 64 channels per head.
    # OpenAI CLIP-L (768) uses quick_gelu, the OpenCLIP towers (1024, 1280) use gelu.
    return transformers.CLIPTextConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=sd["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_count(sd, r"encoder\.layers\.(\d+)\."), num_attention_heads=max(1, hidden // 64),
        max_position_embeddings=sd["embeddings.position_embedding.weight"].shape[0],
        hidden_act="quick_gelu" if hidden == 768 else "gelu", bos_token_id=vocab - 2, eos_token_id=vocab - 1,
        pad_token_id=vocab - 1)


def _infer_t5_config(sd: dict) -> transformers.T5Config:
    vocab, d_model = sd["shared.weight"].shape
    buckets, heads = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in sd
    d_ff = sd[f"encoder.block.0.layer.1.DenseReluDense.{'wi_0' if gated else 'wi'}.weight"].shape[0]
    return transformers.T5Config(
        vocab_size=vocab, d_model=d_model, d_kv=sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0] // heads,
        d_ff=d_ff, num_layers=_count(sd, r"encoder\.block\.(\d+)\."), num_heads=heads,
        relative_attention_num_buckets=buckets, feed_forward_proj="gated-gelu" if gated else "relu",
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def _load_weights(model: nn.Module, bare: dict, where: str) -> None:
    own = model.state_dict()
    # CLIPTextModel names start with `text_model.` on transformers 4.x and are bare on 5.x.
    prefix = "text_model." if any(k.startswith("text_model.") for k in own) else ""
    sd = {prefix + k: v for k, v in bare.items()}
    tied = {"encoder.embed_tokens.weight"}
    missing = sorted(set(own) - set(sd) - tied - {k for k in own if k.endswith("position_ids")})
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise InputError(f"{where}: weights do not fit the inferred model; missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    wrong = [k for k in sd if sd[k].shape != own[k].shape]
    if wrong:
        raise InputError(f"{where}: tensor shapes do not fit the inferred config at {wrong[:5]}")
    model.load_state_dict(sd, strict=False)
    if hasattr(model, "shared"):   # T5: make sure the encoder reads the loaded embedding
        model.encoder.embed_tokens.weight = model.shared.weight


# --------------------------------------------------------------------------- tokenizers

def _tokenizer_from_arg(tokenizer):
    if isinstance(tokenizer, (str, os.PathLike)):
        folder = Path(tokenizer)
        if not folder.is_dir():
            raise InputError(f"tokenizer folder not found: {folder}")
        return _tokenizer_from_folder(folder)
    return tokenizer


def _tokenizer_from_folder(folder: Path):
    try:
        return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{folder}: could not load a tokenizer from it ({e})") from None


def _tokenizer_near_folder(folder: Path, kind: str):
    """An HF model folder holds its tokenizer, or (diffusers pipelines) text_encoder_N/ sits next to tokenizer_N/."""
    candidates = [folder, folder.parent / folder.name.replace("text_encoder", "tokenizer")]
    for c in candidates:
        if any((c / n).exists() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model")):
            return _tokenizer_from_folder(c)
    raise InputError(f"no {kind} tokenizer found; looked in {', '.join(str(c) for c in candidates)}. "
                     f"Pass tokenizer=<folder with tokenizer files>")


def _tokenizer_for_file(path: Path, tokenizer, meta: dict, kind: str):
    if tokenizer is not None:
        return _tokenizer_from_arg(tokenizer)
    sibling = path.with_name(path.stem + "_tokenizer")
    if sibling.is_dir():
        return _tokenizer_from_folder(sibling)
    if "tokenizer.json" in meta:
        specials = json.loads(meta.get("tokenizer_special_tokens", "null")) or _DEFAULT_SPECIALS[kind]
        return transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(meta["tokenizer.json"]),
                                                    **specials)
    raise InputError(f"no tokenizer for {path.name}: looked for (1) a tokenizer argument, (2) the folder "
                     f"{sibling}, (3) 'tokenizer.json' in the file's metadata. Put the tokenizer files in {sibling}")


# --------------------------------------------------------------------------- saving

def save_text_encoder(encoder: TextEncoder, path: str | os.PathLike) -> None:
    """One self-contained .safetensors: weights in ComfyUI's names (CLIP with `text_model.`), plus
    metadata with our config, the transformers config and the tokenizer, written atomically."""
    backend = getattr(encoder.tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise InputError("save_text_encoder needs a fast (tokenizers-backed) tokenizer to embed tokenizer.json")
    sd = {k: v.detach().contiguous().cpu() for k, v in encoder.model.state_dict().items()
          if k != "encoder.embed_tokens.weight" and not k.endswith("position_ids")}   # tied / buffers
    if encoder.cfg.kind == "clip":
        sd = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in sd.items()}
    specials = {k: str(getattr(encoder.tokenizer, k)) for k in _SPECIAL_KEYS if getattr(encoder.tokenizer, k, None)}
    meta = {"format": "emu_video", "kind": "text_encoder", "config": to_json(encoder.cfg),
            "hf_config": encoder.model.config.to_json_string(), "tokenizer.json": backend.to_str(),
            "tokenizer_special_tokens": json.dumps(specials)}
    atomic_save(sd, path, meta)
