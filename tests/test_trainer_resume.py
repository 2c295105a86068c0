"""Exact resume: N steps straight == N/2, a simulated kill (fresh objects), resume, N/2 more."""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from _trainer_common import config, t2i_export, text_assets, tiny_vae, toy_data
from emu_video.trainer.state import latest_state
from emu_video.trainer.train import train


def test_resume_is_bit_exact(tmp_path):
    data = toy_data(tmp_path / "data")
    common = {"vae.path": str(tiny_vae(tmp_path / "vae.safetensors")), "text.paths": text_assets(tmp_path / "text"),
              "init_from": str(t2i_export(tmp_path / "t2i.safetensors")), "loop.max_steps": 4,
              "optim.grad_accum": 2, "optim.warmup_steps": 2, "optim.schedule": "cosine",
              "diffusion.p_drop_text": 0.3, "diffusion.p_drop_image": 0.3, "diffusion.p_drop_both": 0.2}
    straight = train(config(tmp_path / "a", "video", data, **common), log=lambda *a: None)
    assert straight["finished"] and straight["step"] == 4

    killed = train(config(tmp_path / "b", "video", data, **common, **{"loop.stop_at": 2}), log=lambda *a: None)
    assert not killed["finished"] and killed["step"] == 2 and "export" not in killed
    resumed = train(config(tmp_path / "b", "video", data, **common), log=lambda *a: None)
    assert resumed["finished"] and resumed["losses"] == straight["losses"][2:]

    a = load_file(str(latest_state(tmp_path / "a" / "video" / "checkpoints")))
    b = load_file(str(latest_state(tmp_path / "b" / "video" / "checkpoints")))
    weights = [k for k in a if k.startswith(("model.", "ema.", "optim."))]
    assert weights and set(weights) <= set(b)
    for k in weights:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "video" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]                 # nothing logged twice across the kill
    exported = load_file(str(tmp_path / "b" / "video" / "export" / "model.safetensors"))
    reference = load_file(str(tmp_path / "a" / "video" / "export" / "model.safetensors"))
    assert all(torch.equal(exported[k], reference[k]) for k in reference)
