"""The shipped demo model set (demo/) and its assembly (trainer/demo.py)."""
import json
import shutil

import pytest
import torch
from safetensors import safe_open

from emu_video import cli
from emu_video.model.video_io import probe
from emu_video.trainer import demo

PROMPT = "a red circle moving quickly right on a black background"


@pytest.fixture()
def fake_runs(model_dir, tmp_path):
    """A demo chain's export folders, filled with the tiny random model set."""
    runs = tmp_path / "runs"
    for kind, rel in demo.EXPORTS.items():
        (runs / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_dir / cli.TINY_FILES[kind], runs / rel)
    return runs


def test_assemble_writes_a_loadable_set_with_fp16_unets(fake_runs, tmp_path):
    out = tmp_path / "demo"
    demo.assemble(fake_runs, out, dict(steps=7, text_cfg=3.0))
    paths = cli.find_model_set(out)
    assert set(paths) == set(demo.DEMO_FILES)
    with safe_open(str(paths["video"]), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.float16}
    models = cli.load_model_set(paths)
    assert next(models["video"].unet.parameters()).dtype == torch.float32    # cast back on load
    assert cli.model_set_sampling(out) == dict(steps=7, text_cfg=3.0)


def test_assemble_names_missing_exports(tmp_path):
    with pytest.raises(FileNotFoundError, match="make demo-model"):
        demo.assemble(tmp_path / "nothing", tmp_path / "demo")


def test_manifest_sampling_defaults_and_user_overrides(fake_runs, tmp_path):
    out = tmp_path / "demo"
    demo.assemble(fake_runs, out, dict(steps=7, text_cfg=3.0))
    args = cli.build_parser().parse_args(["generate", "--prompt", PROMPT, "--model", str(out), "--text-cfg", "2"])
    settings = cli.sampling_settings(args)
    assert settings["steps"] == 7 and settings["text_cfg"] == 2.0
    assert settings["image_cfg"] == cli.SAMPLING_FALLBACK["image_cfg"]
    assert settings["keep_known"] is True       # the picture / key frames come out as given unless asked
    args = cli.build_parser().parse_args(["animate", "--image", "x.png", "--prompt", PROMPT, "--model", str(out),
                                          "--no-keep-known"])
    assert cli.sampling_settings(args)["keep_known"] is False


def test_interpolation_guidance_is_its_own_setting(fake_runs, tmp_path):
    from emu_video.model.sampling import SamplerSettings

    out = tmp_path / "demo"
    video = SamplerSettings(steps=7, image_cfg=1.5, text_cfg=7.5)
    demo.assemble(fake_runs, out, dict(steps=7, interp_text_cfg=2.0))
    parse = cli.build_parser().parse_args
    interp = cli.interp_settings(parse(["generate", "--prompt", PROMPT, "--model", str(out)]), video)
    assert (interp.text_cfg, interp.image_cfg, interp.steps) == (2.0, cli.INTERP_FALLBACK["interp_image_cfg"], 7)
    assert (video.text_cfg, video.image_cfg) == (7.5, 1.5)          # the video's own scales are untouched
    interp = cli.interp_settings(parse(["generate", "--prompt", PROMPT, "--model", str(out),
                                        "--interp-text-cfg", "3", "--interp-image-cfg", "1.2"]), video)
    assert (interp.text_cfg, interp.image_cfg) == (3.0, 1.2)


def test_first_frame_guidance_is_its_own_setting(fake_runs, tmp_path):
    from emu_video.model.sampling import SamplerSettings

    video = SamplerSettings(steps=7, image_cfg=1.5, text_cfg=7.5)
    parse = cli.build_parser().parse_args
    plain, tuned = tmp_path / "plain", tmp_path / "tuned"
    demo.assemble(fake_runs, plain, dict(steps=7))
    demo.assemble(fake_runs, tuned, dict(steps=7, first_frame_cfg=2.0))
    # A set without the key (every set written before it) draws the picture with the video's guidance.
    assert cli.first_frame_settings(parse(["generate", "--prompt", PROMPT, "--model", str(plain)]), video) == video
    first = cli.first_frame_settings(parse(["generate", "--prompt", PROMPT, "--model", str(tuned)]), video)
    assert (first.text_cfg, first.image_cfg, first.steps) == (2.0, 1.5, 7)
    assert video.text_cfg == 7.5                                   # the video's own scale is untouched
    first = cli.first_frame_settings(parse(["generate", "--prompt", PROMPT, "--model", str(tuned),
                                            "--first-frame-cfg", "4"]), video)
    assert first.text_cfg == 4.0


def test_assembly_stores_first_frame_guidance_only_when_given(fake_runs, tmp_path):
    out = tmp_path / "demo"
    assert demo.main(["--runs", str(fake_runs), "--out", str(out), "--first-frame-cfg", "2"]) == 0
    assert cli.model_set_sampling(out)["first_frame_cfg"] == 2.0
    assert demo.main(["--runs", str(fake_runs), "--out", str(out)]) == 0
    assert "first_frame_cfg" not in cli.model_set_sampling(out)
    assert demo._optional_args({"first_frame_cfg": 2.0}) == " --first-frame-cfg 2.0"
    assert demo._optional_args({}) == ""


def test_interpolation_denoise_is_stored_and_read_back_for_the_in_betweens_only(fake_runs, tmp_path):
    from emu_video.model.sampling import SamplerSettings

    out = tmp_path / "demo"
    assert demo.main(["--runs", str(fake_runs), "--out", str(out), "--interp-denoise", "0.15"]) == 0
    assert cli.model_set_sampling(out)["interp_denoise"] == 0.15
    parse = cli.build_parser().parse_args
    args = parse(["generate", "--prompt", PROMPT, "--model", str(out)])
    video = SamplerSettings(**cli.sampling_settings(args))
    assert video.denoise == 1.0 and cli.interp_settings(args, video).denoise == 0.15     # the video starts from noise
    given = parse(["generate", "--prompt", PROMPT, "--model", str(out), "--interp-denoise", "1"])
    assert cli.interp_settings(given, video).denoise == 1.0
    assert demo._interp_denoise_arg({"interp_denoise": 0.15}) == " --interp-denoise 0.15"
    assert demo._interp_denoise_arg({"interp_denoise": 1.0}) == demo._interp_denoise_arg({}) == ""


def test_late_text_guidance_is_stored_and_read_back_for_the_video_only(fake_runs, tmp_path):
    from emu_video.model.sampling import SamplerSettings

    out = tmp_path / "demo"
    assert demo.main(["--runs", str(fake_runs), "--out", str(out), "--late-text-cfg", "3", "--late-below", "0.7"]) == 0
    parse = cli.build_parser().parse_args
    args = parse(["generate", "--prompt", PROMPT, "--model", str(out)])
    video = SamplerSettings(**cli.sampling_settings(args))
    assert (video.text_cfg, video.late_text_cfg, video.late_below) == (7.5, 3.0, 0.7)
    assert cli.interp_settings(args, video).late_text_cfg is None          # I has its own guidance
    assert demo._optional_args(cli.model_set_sampling(out)) == " --late-text-cfg 3.0 --late-below 0.7"
    given = parse(["generate", "--prompt", PROMPT, "--model", str(out), "--late-text-cfg", "1"])
    assert SamplerSettings(**cli.sampling_settings(given)).late_text_cfg == 1.0
    assert demo.main(["--runs", str(fake_runs), "--out", str(out)]) == 0
    assert SamplerSettings(**cli.sampling_settings(args)).late_text_cfg is None   # sets without it: one scale


def test_guidance_form_comes_from_the_flag_and_stays_the_videos(fake_runs, tmp_path):
    from emu_video.model.sampling import SamplerSettings

    out = tmp_path / "demo"
    assert demo.main(["--runs", str(fake_runs), "--out", str(out)]) == 0
    parse = cli.build_parser().parse_args
    assert SamplerSettings(**cli.sampling_settings(parse(["generate", "--prompt", PROMPT, "--model", str(out)]))).guidance == "cfg"
    args = parse(["generate", "--prompt", PROMPT, "--model", str(out), "--guidance", "cfg++"])
    video = SamplerSettings(**cli.sampling_settings(args))
    assert video.guidance == "cfg++" and cli.interp_settings(args, video).guidance == "cfg"
    with pytest.raises(SystemExit):
        parse(["generate", "--prompt", PROMPT, "--guidance", "cfgpp"])
    # a set can store its own form; the card's eval command then names it
    assert demo.main(["--runs", str(fake_runs), "--out", str(out), "--guidance", "cfg++"]) == 0
    assert cli.model_set_sampling(out)["guidance"] == "cfg++"
    assert SamplerSettings(**cli.sampling_settings(parse(["generate", "--prompt", PROMPT, "--model", str(out)]))).guidance == "cfg++"
    assert demo._optional_args({"guidance": "cfg++"}) == " --guidance cfg++" and demo._optional_args({"guidance": "cfg"}) == ""


def test_init_models_demo_copies_under_workflow_names(fake_runs, tmp_path, monkeypatch):
    source = tmp_path / "demo"
    demo.assemble(fake_runs, source, dict(steps=5))
    monkeypatch.setattr(cli, "DEMO_DIR", source)
    out = tmp_path / "models"
    assert cli.main(["init-models", "--preset", "demo", "--out", str(out)]) == 0
    paths = cli.find_model_set(out)
    for kind, rel in cli.TINY_FILES.items():
        assert paths[kind] == out / rel
        assert paths[kind].read_bytes() == (source / demo.DEMO_FILES[kind]).read_bytes()
    assert json.loads((out / cli.MANIFEST).read_text())["sampling"] == {"steps": 5}


def test_init_models_demo_without_shipped_set_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "DEMO_DIR", tmp_path / "no_demo")
    assert cli.main(["init-models", "--preset", "demo", "--out", str(tmp_path / "m")]) == 2
    assert "make demo-model" in capsys.readouterr().err


# --------------------------------------------------------------------------- the shipped set

def test_shipped_demo_set_loads_and_fits_the_budget():
    paths = cli.find_model_set(None)                 # None = the shipped demo/
    assert all(p.parent.is_relative_to(cli.DEMO_DIR) for p in paths.values())
    models = cli.load_model_set(paths)
    assert {"video", "interp", "vae", "text"} <= set(models)
    assert models["video"].config.kind == "video" and models["interp"].config.kind == "interp"
    total = sum(p.stat().st_size for p in cli.DEMO_DIR.rglob("*") if p.is_file())
    assert total <= 30 * 2**20
    assert not [p for p in cli.DEMO_DIR.rglob("*") if p.suffix in (".pt", ".pth", ".ckpt", ".bin")]
    assert (cli.DEMO_DIR / "MODEL_CARD.md").is_file()


def test_generate_defaults_to_the_shipped_demo(tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    assert cli.main(["generate", "--prompt", PROMPT, "--out", str(out), "--steps", "2"]) == 0, capsys.readouterr().err
    info = probe(str(out))
    video = cli.load_model_set(cli.find_model_set(None))
    factor = video["interp"].config.interp_factor
    assert info["frames"] == (video["video"].config.num_frames - 1) * factor + 1


def test_demo_chain_configs_load_in_the_makefile_order():
    """`make demo-model` trains DEMO_STAGES in order; the card lists the same stages, each config
    loads and writes where the next stage and the assembly (demo.EXPORTS) read it."""
    import re
    from pathlib import Path

    from emu_video.trainer.config import load_config

    make = (Path(__file__).parents[1] / "Makefile").read_text()
    stages = re.search(r"^DEMO_STAGES := (.*)$", make, re.M).group(1).split()
    assert tuple(stages) == demo.STAGES
    configs = {s: load_config(demo.CONFIG_DIR / f"demo_{s}.toml") for s in stages}
    assert all(c.name == f"demo_{s}" and c.out_dir == f"runs/demo/{s}" for s, c in configs.items())
    decoder = configs["vae_decoder"]
    assert decoder.vae.train_decoder_only and decoder.vae.path == "runs/demo/vae/export/vae.safetensors"
    assert demo.EXPORTS["vae"].startswith("vae_decoder/")
    assert all(configs[s].vae.path == "runs/demo/vae/export/vae.safetensors"       # the latents F and I learned
               for s in ("t2i", "video_stage1", "video_stage2", "interp"))


def _fake_stage_run(runs, stage, losses, it_per_s=2.0):
    folder = runs / stage
    (folder / "export").mkdir(parents=True, exist_ok=True)
    (folder / "export" / "models.json").write_text("{}")
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(dict(step=25 * (i + 1), loss=x, it_per_s=it_per_s))
                                                    for i, x in enumerate(losses)) + "\n")
    cfg = dict(data=dict(batch_size=4, size=64, num_frames=8, fps=4), optim=dict(lr=2e-4), model=dict(train_spatial=True))
    (folder / "config.json").write_text(json.dumps(cfg))


def test_card_keeps_stages_whose_runs_are_gone_from_its_training_log(fake_runs, tmp_path):
    """The card's training table is rewritten from the runs that are there and, for the others, from
    demo/training_log.json, which each rewrite updates: no stage row depends on runs/ surviving."""
    from pathlib import Path

    out = tmp_path / "demo"
    demo.assemble(fake_runs, out, dict(steps=7))
    eval_dir = Path(__file__).parents[1] / "docs" / "demo_eval"
    _fake_stage_run(fake_runs, "video_stage2", [0.5, 0.25, 0.125])
    card = demo.write_card(fake_runs, eval_dir, out).read_text()
    assert "| video_stage2 | demo_video_stage2.toml | 64 | 8 @ 4 | 4 | 0.0002 | yes | 75 | 0.6 | 0.5000 → 0.2917 |" in card
    assert "| interp | demo_interp.toml | | | | | | not run | | |" in card
    logged = json.loads((out / demo.TRAINING_LOG).read_text())
    assert set(logged) == {"video_stage2"} and logged["video_stage2"]["steps"] == 75
    shutil.rmtree(fake_runs / "video_stage2")                 # the run folder is gone (a fresh checkout)
    _fake_stage_run(fake_runs, "interp", [1.0, 0.5])
    again = demo.write_card(fake_runs, eval_dir, out).read_text()
    assert "| video_stage2 | demo_video_stage2.toml | 64 | 8 @ 4 | 4 | 0.0002 | yes | 75 | 0.6 |" in again
    assert "| interp | demo_interp.toml | 64 | 8 @ 4 | 4 | 0.0002 | yes | 50 |" in again
    assert set(json.loads((out / demo.TRAINING_LOG).read_text())) == {"video_stage2", "interp"}
