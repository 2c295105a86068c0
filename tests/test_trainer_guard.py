"""Non-finite loss guard: bad steps are skipped on every rank (weights untouched), and a run of them
stops training with advice instead of silently producing NaN weights."""
from __future__ import annotations

import json

import pytest
import torch

from _trainer_common import config, toy_data
from emu_video.trainer import stages
from emu_video.trainer.loop import NonFiniteLoss
from emu_video.trainer.train import train


def test_nan_steps_skipped_then_stop(tmp_path, monkeypatch):
    data = toy_data(tmp_path / "data", clips=2)
    real_loss = stages.VAEStage.loss
    calls = {"n": 0}

    def flaky(self, module, items, gen):
        calls["n"] += 1
        loss = real_loss(self, module, items, gen)
        return loss * float("nan") if calls["n"] == 2 else loss   # the 2nd step diverges once

    monkeypatch.setattr(stages.VAEStage, "loss", flaky)
    result = train(config(tmp_path, "vae", data, **{"loop.max_steps": 3}), log=lambda *a: None)
    logged = [json.loads(x) for x in (tmp_path / "vae" / "metrics.jsonl").read_text().splitlines()]
    assert [m["skipped"] for m in logged] == [0, 1, 0] and result["finished"]
    assert all(torch.isfinite(p).all() for p in result["params"].values())

    monkeypatch.setattr(stages.VAEStage, "loss", lambda self, m, i, g: real_loss(self, m, i, g) * float("inf"))
    with pytest.raises(NonFiniteLoss, match="lower optim.lr"):
        train(config(tmp_path / "b", "vae", data, **{"loop.max_steps": 10, "loop.max_bad_steps": 2}),
              log=lambda *a: None)
