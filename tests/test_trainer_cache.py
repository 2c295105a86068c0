"""Latent / text-embedding cache: filled on the first run, read on the next, and training on cached
inputs is identical to training on freshly encoded ones."""
from __future__ import annotations

import pytest

from _trainer_common import overrides, t2i_export, text_assets, tiny_vae, toy_data
from emu_video.model.config import ConfigError
from emu_video.trainer.config import load_config
from emu_video.trainer.train import train


def test_latent_cache_matches_fresh_encoding(tmp_path):
    chain = tmp_path
    data = toy_data(tmp_path / "data", clips=2)
    base = {"vae.path": str(tiny_vae(tmp_path / "vae.safetensors")), "data.start": "center",
            "text.paths": text_assets(tmp_path / "text"), "init_from": str(t2i_export(tmp_path / "t2i.safetensors")),
            "loop.max_steps": 2, "cache.dir": str(tmp_path / "cache")}
    runs, stats = {}, {}
    for name, cache in (("fresh", False), ("fill", True), ("hit", True)):
        cfg = load_config(None, overrides(chain / name, "video", data, **base, **{"cache.enabled": cache}))
        result = train(cfg, log=lambda *a: None)
        runs[name], stats[name] = result["losses"], result.get("cache")
    assert stats["fill"]["misses"] >= 1 and stats["hit"] == {"hits": 2, "misses": 0}
    assert len(list((chain / "cache").rglob("*.safetensors"))) >= 2
    assert runs["fresh"] == runs["fill"] == runs["hit"]


def test_cache_refuses_random_clips(tmp_path):
    with pytest.raises(ConfigError, match="data.start = 'center'"):
        load_config(None, overrides(tmp_path, "vae", tmp_path, **{"cache.enabled": True}))
