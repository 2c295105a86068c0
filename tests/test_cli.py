"""`emu-video` CLI: init-models, generate, animate, run errors, subcommand hooks."""
import sys
import types

import pytest
import torch
from safetensors import safe_open

from emu_video import cli
from emu_video.model.video_io import probe


PROMPT = "a red circle moving quickly right on a black background"


def tensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_help_is_available(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in ("init-models", "run", "generate", "animate", "train", "toy-data", "select-hq", "bench", "eval"):
        assert command in out


def test_init_models_layout_and_determinism(model_dir, tmp_path, capsys):
    for rel in cli.TINY_FILES.values():
        assert (model_dir / rel).is_file()
    assert (model_dir / "input" / cli.EXAMPLE_IMAGE).is_file()
    assert cli.main(["init-models", "--preset", "tiny", "--out", str(tmp_path / "models")]) == 0
    # ComfyUI layout: the picture goes to <root>/input beside <root>/models
    assert (tmp_path / "input" / cli.EXAMPLE_IMAGE).is_file()
    for rel in cli.TINY_FILES.values():
        a, meta_a = tensors(model_dir / rel)
        b, meta_b = tensors(tmp_path / "models" / rel)
        assert meta_a == meta_b and a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_init_models_rejects_unknown_preset(tmp_path, capsys):
    assert cli.main(["init-models", "--preset", "huge", "--out", str(tmp_path)]) == 2
    assert "tiny" in capsys.readouterr().err


def test_random_models_have_active_temporal_layers(model_dir):
    """init-models nudges the identity-initialised temporal layers so they do something."""
    weights, _ = tensors(model_dir / cli.TINY_FILES["video"])
    conv = [v for k, v in weights.items() if k.startswith("input_blocks.0.0.cond.")]
    assert conv and all(v.abs().sum() > 0 for v in conv)


def test_generate_writes_an_mp4(model_dir, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    rc = cli.main(["generate", "--prompt", PROMPT, "--model", str(model_dir), "--out", str(out), "--steps", "2",
                   "--seed", "3"])
    assert rc == 0, capsys.readouterr().err
    info = probe(str(out))
    # 4 frames from F, interpolated ×2 → 7 frames at 4 fps × 2
    assert (info["frames"], info["width"], info["height"]) == (7, 32, 32)
    assert info["fps"] == pytest.approx(8)


def test_generate_draws_the_first_frame_with_its_own_guidance(model_dir, tmp_path, monkeypatch):
    from emu_video.model import pipeline

    used = {}

    def spy(name):
        original = getattr(pipeline, name)

        def call(unet, schedule, config, text, null, settings, *args, **kwargs):
            used[name] = settings.text_cfg
            return original(unet, schedule, config, text, null, settings, *args, **kwargs)
        monkeypatch.setattr(pipeline, name, call)
    spy("generate_first_frame")
    spy("generate_video")
    assert cli.main(["generate", "--prompt", PROMPT, "--model", str(model_dir), "--out", str(tmp_path / "c.mp4"),
                     "--steps", "2", "--text-cfg", "5", "--first-frame-cfg", "2", "--no-interp"]) == 0
    assert used == {"generate_first_frame": 2.0, "generate_video": 5.0}


def test_animate_any_picture(model_dir, tmp_path, capsys):
    from emu_video.model.video_io import write_png

    picture = write_png((torch.rand(48, 80, 3) * 255).to(torch.uint8).numpy(), str(tmp_path / "wide.png"))
    out = tmp_path / "anim.mp4"
    rc = cli.main(["animate", "--image", picture, "--prompt", PROMPT, "--model", str(model_dir), "--out", str(out),
                   "--steps", "2", "--no-interp"])
    assert rc == 0, capsys.readouterr().err
    assert probe(str(out))["frames"] == 4


def test_generate_without_models_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "DEMO_DIR", tmp_path / "no_demo")
    assert cli.main(["generate", "--prompt", PROMPT, "--out", str(tmp_path / "x.mp4")]) == 2
    assert "init-models" in capsys.readouterr().err
    assert cli.main(["animate", "--image", str(tmp_path / "none.png"), "--prompt", "x", "--model", str(tmp_path)]) == 2
    assert "image not found" in capsys.readouterr().err


def test_generate_bad_size_is_a_clear_error(model_dir, tmp_path, capsys):
    rc = cli.main(["generate", "--prompt", PROMPT, "--model", str(model_dir), "--out", str(tmp_path / "x.mp4"),
                   "--steps", "2", "--width", "34"])
    assert rc == 1
    assert "nearest valid widths are 32 and 36" in capsys.readouterr().err


def test_run_reports_bad_workflows_and_overrides(model_dir, tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "missing.json")]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli.main(["run", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    workflow = cli.PACKAGE_DIR / "workflows" / "api" / "text_to_video.json"
    assert cli.main(["run", str(workflow), "--models", str(model_dir), "--out", str(tmp_path),
                     "--set", "4.no_such_input=1"]) == 1
    assert "no_such_input" in capsys.readouterr().err


def test_parse_overrides_reads_json_values():
    assert cli.parse_overrides(["4.steps=2", "5.prompt=a cat", "8.image_cfg=1.5"]) == {
        "4.steps": 2, "5.prompt": "a cat", "8.image_cfg": 1.5}
    with pytest.raises(cli.CLIError, match="NODE.INPUT"):
        cli.parse_overrides(["steps=2"])


def test_hooks_dispatch_to_module_main(monkeypatch, capsys):
    seen = []
    fake = types.ModuleType("emu_video.fake_hook")
    fake.fake_main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "emu_video.fake_hook", fake)
    monkeypatch.setitem(cli.HOOKS, "train", ("fake_hook", "fake_main", "test"))
    assert cli.main(["train", "--config", "x.toml"]) == 0
    assert seen == [["--config", "x.toml"]]
    monkeypatch.setitem(cli.HOOKS, "eval", ("no_such_module", "main", "test"))
    assert cli.main(["eval"]) == 2
    assert "not available" in capsys.readouterr().err
