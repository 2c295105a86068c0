"""The smoke chain end to end through `train_main`: vae → t2i → video → interp, each export loads
with model.checkpoint.load_model and drives one sampling call; corrupt videos are counted and
skipped."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _trainer_common import overrides, toy_data
from emu_video.model import pipeline
from emu_video.model.checkpoint import load_model, read_metadata
from emu_video.model.sampling import SamplerSettings
from emu_video.model.schedule import NoiseSchedule
from emu_video.model.text import TextEncoders, load_text_encoder
from emu_video.model.vae import load_vae
from emu_video.trainer.train import train_main

PROMPT = "a red circle moving right on a black background"


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chain")
    data = toy_data(tmp / "data", clips=3, frames=16, fps=16)
    with open(data / "manifest.jsonl", "a") as f:          # one corrupt file in the manifest
        f.write(json.dumps({"path": "clips/broken.mp4", "caption": "a broken clip"}) + "\n")
    (data / "clips" / "broken.mp4").write_bytes(b"\x00garbage" * 64)
    vae = tmp / "vae" / "export" / "vae.safetensors"
    t2i = tmp / "t2i" / "export"
    text = [str(t2i / "text_t5.safetensors"), str(t2i / "text_clip.safetensors")]
    video = tmp / "video" / "export" / "model.safetensors"
    runs = [("smoke_vae", "vae", {}),
            ("smoke_t2i", "t2i", {"vae.path": str(vae), "text.build_tiny": True}),
            ("smoke_video", "video", {"vae.path": str(vae), "text.paths": text,
                                      "init_from": str(t2i / "model.safetensors"),
                                      "validation.prompts": [PROMPT], "validation.seeds": [3]}),
            ("smoke_interp", "interp", {"vae.path": str(vae), "text.paths": text, "init_from": str(video),
                                        "data.num_frames": 5, "data.fps": 16, "diffusion.interp_factor": 4})]
    for name, stage, extra in runs:
        sets = overrides(tmp, stage, data, **{"loop.max_steps": 2, **extra})
        args = ["--config", name] + [a for s in sets for a in ("--set", s)]
        assert train_main(args) == 0, name
    return tmp


def test_every_stage_exported(chain):
    assert (chain / "vae" / "export" / "vae.safetensors").is_file()
    for stage, kind in (("t2i", "video"), ("video", "video"), ("interp", "interp")):
        meta = read_metadata(chain / stage / "export" / "model.safetensors")
        assert meta["kind"] == kind and meta["prediction_type"] == "v" and meta["zero_terminal_snr"] == "true"
        assert json.loads(meta["train_config"])["stage"] == stage          # resolved config stored verbatim
        state_cfg = json.loads((chain / stage / "config.json").read_text())
        assert state_cfg == json.loads(meta["train_config"])
    models = json.loads((chain / "video" / "export" / "models.json").read_text())
    assert set(models) >= {"model", "vae", "text"}


def test_corrupt_video_counted_and_skipped(chain):
    skipped = [json.loads(line) for line in (chain / "vae" / "skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == 1 and skipped[0]["path"].endswith("broken.mp4") and "unreadable" in skipped[0]["reason"]


def test_validation_samples_written(chain):
    step_dir = chain / "video" / "samples" / "step_00000002"
    assert (step_dir / "prompt00_seed3.mp4").stat().st_size > 0
    assert (step_dir / "prompt00_seed3.png").stat().st_size > 0
    assert (chain / "vae" / "samples" / "step_00000002" / "recon.png").is_file()


def test_export_loads_and_samples(chain):
    unet, mc = load_model(chain / "video" / "export" / "model.safetensors")
    assert mc.kind == "video" and mc.num_frames == 4 and mc.resolution == 16 and mc.unet.temporal
    vae = load_vae(chain / "vae" / "export" / "vae.safetensors")
    encoders = TextEncoders([load_text_encoder(chain / "t2i" / "export" / f"text_{n}.safetensors")
                             for n in ("t5", "clip")])
    schedule = NoiseSchedule.from_config(mc.schedule)
    text, null = pipeline.encode_prompts(encoders, [PROMPT])
    settings = SamplerSettings(steps=2)
    f = vae.cfg.downsample_factor
    image = pipeline.generate_first_frame(unet, schedule, mc, text, null, settings, 16, 16, 0, f)
    latents = pipeline.generate_video(unet, schedule, mc, text, null, settings, image, 4, 0)
    frames = pipeline.decode(vae, latents)
    assert frames.shape[:2] == (1, 4) and torch.isfinite(frames).all()
    interp, imc = load_model(chain / "interp" / "export" / "model.safetensors")
    out = pipeline.interpolate(interp, schedule, imc, latents[:, :, :2], text, null, settings, 0, 4)
    assert out.shape[2] == 5


def test_exports_run_in_the_shipped_workflow_through_the_nodes_loaders(chain, tmp_path, monkeypatch):
    """The trainer's exports, placed under the file names the workflows use, load through the
    ComfyUI nodes' own loaders and sample end to end (text → first frame → video → interp → mp4)."""
    from emu_video import cli

    exports = {"video": chain / "video" / "export" / "model.safetensors",
               "interp": chain / "interp" / "export" / "model.safetensors",
               "vae": chain / "vae" / "export" / "vae.safetensors",
               "t5": chain / "t2i" / "export" / "text_t5.safetensors",
               "clip": chain / "t2i" / "export" / "text_clip.safetensors"}
    models = tmp_path / "models"
    for key, rel in cli.TINY_FILES.items():
        (models / rel).parent.mkdir(parents=True, exist_ok=True)
        (models / rel).symlink_to(exports[key])
    for var in ("EMU_VIDEO_MODELS", "EMU_VIDEO_OUTPUT", "EMU_VIDEO_INPUT"):   # restored after the test
        monkeypatch.delenv(var, raising=False)
    workflow = Path(cli.__file__).parent / "workflows" / "api" / "text_to_video.json"
    results = cli.run_workflow_file(workflow, overrides={"4.steps": 2}, models=models, out=tmp_path / "out",
                                    progress=False)
    written = [p for p in (tmp_path / "out").rglob("*.mp4")]
    assert results and written, "the workflow wrote no video"
