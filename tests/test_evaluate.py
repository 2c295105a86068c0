"""`emu-video eval`: metric functions on rendered ground truth, and one tiny end-to-end run."""
import json

import numpy as np
import pytest

from emu_video import cli
from emu_video.model.config import InputError
from emu_video.trainer import eval_metrics as em
from emu_video.trainer import evaluate as ev
from emu_video.trainer import toy_world as tw



def attrs(**kw):
    base = dict(colour="red", shape="circle", motion="right", background="black", speed="fast")
    return {**base, **kw}


# --------------------------------------------------------------------------- oracle and prompts

def test_oracle_is_exact_on_rendered_clips():
    prompts = tw.sample_prompts(12, seed=3, held_out=True) + tw.sample_prompts(12, seed=3)
    judgements = [tw.judge(tw.render_clip(p["attributes"], 64, 8, seed=i), p["attributes"])
                  for i, p in enumerate(prompts)]
    rates = em.text_faithfulness(judgements)
    assert rates == {**{k: 1.0 for k in (*em.ATTRIBUTES, "all")}, "n": 24}


def test_text_faithfulness_counts_each_attribute():
    wrong_motion = tw.judge(tw.render_clip(attrs(motion="left"), 64, 8), attrs(motion="right"))
    right = tw.judge(tw.render_clip(attrs(), 64, 8), attrs())
    rates = em.text_faithfulness([wrong_motion, right])
    assert rates["motion"] == 0.5 and rates["all"] == 0.5 and rates["colour"] == 1.0 and rates["n"] == 2
    assert em.text_faithfulness([])["all"] is None


def test_judge_image_reads_one_picture_and_leaves_motion_unjudged():
    frame = tw.render_clip(attrs(shape="triangle"), 64, 2)[0]
    right = tw.judge_image(frame, attrs(shape="triangle"))
    wrong = tw.judge_image(frame, attrs(shape="square"))
    assert right["all_ok"] and right["seen"]["shape"] == "triangle" and "motion_ok" not in right
    assert not wrong["shape_ok"] and wrong["colour_ok"] and not wrong["all_ok"]
    rates = em.text_faithfulness([right, wrong])
    assert rates["shape"] == 0.5 and rates["all"] == 0.5 and rates["colour"] == 1.0 and rates["motion"] is None


def test_parse_caption_inverts_caption():
    for p in tw.sample_prompts(30, seed=1) + tw.sample_prompts(10, seed=1, held_out=True):
        assert em.parse_caption(p["caption"]) == p["attributes"]
    with pytest.raises(InputError, match="toy-world caption"):
        em.parse_caption("a purple dragon flying")


def test_prompt_sets(tmp_path):
    prompts = ev.default_prompts(3, seed=0)
    assert [p["group"] for p in prompts] == ["held_out"] * 3 + ["seen"] * 3
    assert all(tw.is_held_out(p["attributes"]) == (p["group"] == "held_out") for p in prompts)
    f = tmp_path / "prompts.txt"
    f.write_text("# eval\na red triangle standing still on a gray background\n\n"
                 "a green circle moving quickly up on a navy background\n")
    read = ev.read_prompts(f)
    assert [p["group"] for p in read] == ["held_out", "seen"]
    assert read[0]["attributes"]["motion"] == "static"
    with pytest.raises(InputError, match="not found"):
        ev.read_prompts(tmp_path / "missing.txt")


# --------------------------------------------------------------------------- PSNR and interpolation

def test_psnr_identical_noise_and_known_offset():
    clip = tw.render_clip(attrs(), 32, 4)
    assert em.psnr(clip, clip) == float("inf")
    noise = np.random.default_rng(0).integers(0, 256, clip.shape, dtype=np.uint8)
    assert em.psnr(noise, clip) < 12
    shifted = clip.astype(np.int16) + np.where(clip < 255, 1, -1)
    assert em.psnr(shifted, clip) == pytest.approx(20 * np.log10(255), abs=1e-6)   # MSE = 1
    with pytest.raises(InputError, match="equally shaped"):
        em.psnr(clip, clip[:2])


def test_linear_blend_crossfades_between_key_frames():
    known = np.stack([np.full((2, 2, 3), v, np.uint8) for v in (0, 100, 20)])
    blended = em.linear_blend(known, 4)
    assert blended.shape == (9, 2, 2, 3) and blended.dtype == np.uint8
    assert blended[:, 0, 0, 0].tolist() == [0, 25, 50, 75, 100, 80, 60, 40, 20]
    assert em.keyframe_indices(9, 4) == [0, 4, 8] and em.inbetween_indices(9, 4) == [1, 2, 3, 5, 6, 7]
    with pytest.raises(InputError):
        em.keyframe_indices(8, 4)


def test_linear_blend_of_a_static_clip_is_exact_and_of_motion_is_not():
    static = tw.render_clip(attrs(motion="static", speed="none"), 32, 7)
    assert em.psnr(em.linear_blend(static[::2], 2), static) == float("inf")
    moving = tw.render_clip(attrs(), 32, 7)
    middle = em.inbetween_indices(7, 2)
    assert em.psnr(em.linear_blend(moving[::2], 2)[middle], moving[middle]) < 40


# --------------------------------------------------------------------------- zero-SNR and temporal

def test_zero_snr_means_on_black_and_white_clips():
    clips = [(tw.render_clip(attrs(background=bg), 64, 4, seed=i), attrs(background=bg))
             for i, bg in enumerate(("black", "white", "black", "gray"))]
    check = em.zero_snr_check(clips)
    assert check["black_mean"] < 0.5 and check["white_mean"] > 254.5
    assert (check["n_black"], check["n_white"]) == (2, 1)
    assert em.background_intensity(clips[3][0]) == pytest.approx(128, abs=0.5)
    assert em.zero_snr_check(clips[3:])["black_mean"] is None


def test_temporal_consistency_of_rendered_and_broken_clips():
    clip = tw.render_clip(attrs(shape="square"), 64, 8, seed=2)
    smooth = em.clip_consistency(tw.measure_frames(clip), 64)
    assert smooth["visible"] == 1.0 and smooth["colour"] == 1.0
    assert smooth["size_cv"] < 0.05 and smooth["jerk"] < 0.01
    # shuffled frames jump back and forth; recoloured frames flicker
    shuffled = em.clip_consistency(tw.measure_frames(clip[[0, 7, 1, 6, 2, 5, 3, 4]]), 64)
    assert shuffled["jerk"] > 10 * smooth["jerk"] + 0.05
    flicker = clip.copy()
    flicker[::2] = tw.render_clip(attrs(shape="square", colour="blue"), 64, 8, seed=2)[::2]
    assert em.clip_consistency(tw.measure_frames(flicker), 64)["colour"] == 0.5
    empty = em.clip_consistency(tw.measure_frames(np.zeros((3, 32, 32, 3), np.uint8)), 32)
    assert empty == dict(visible=0.0, colour=None, size_cv=None, jerk=None)
    assert em.temporal_consistency([tw.measure_frames(clip)], 64)["colour"] == 1.0


def test_shape_kept_counts_the_frames_after_the_first_per_prompted_shape():
    square = tw.measure_frames(tw.render_clip(attrs(shape="square"), 64, 4, seed=1))
    circle = tw.measure_frames(tw.render_clip(attrs(shape="circle"), 64, 4, seed=1))
    rounded = [square[0]] + circle[1:]                   # a square picture the video turns round
    kept = em.shape_kept([(square, "square"), (rounded, "square"), (circle, "circle")], tw.SHAPES)
    assert kept["square"] == 0.5 and kept["circle"] == 1.0 and kept["triangle"] is None
    assert kept["all"] == pytest.approx(6 / 9)           # frame 0 (the given picture) never counts
    assert em.shape_kept([(rounded[:1], "square")], tw.SHAPES)["all"] is None


# --------------------------------------------------------------------------- end to end

def test_eval_main_writes_report_metrics_and_sheets(model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert ev.eval_main(["--model", str(model_dir), "--out", str(out), "--held-out", "1", "--steps", "2",
                         "--quiet"]) == 0
    report = (out / "report.md").read_text()
    assert "| prompts | n | colour | shape | motion | background | all |" in report
    assert "| metric | value | what it measures |" in report
    for key in ev.METRICS:
        assert f"| {key} |" in report
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["steps"] == 2 and metrics["settings"]["video_file"].endswith(".safetensors")
    m = metrics["metrics"]
    assert m["text.held_out.n"] == 1 and m["text.seen.n"] == 1 and m["interp.n"] == 1
    assert 0.0 <= m["text.held_out.all"] <= 1.0 and np.isfinite(m["interp.psnr_linear"])
    assert np.isfinite(m["interp.psnr_latent_blend"])
    # the VAE-ceiling rows are real round trips: the tiny random VAE cannot reproduce a clip exactly
    assert 0 < m["animate.psnr_vae"] < 40 and 0 < m["interp.psnr_vae"] < 40
    # keep_known: frame 0 is the picture's own latent, so it equals the VAE round trip; the model's
    # own redraw is a separate sampling run (keep_known off), so it measures something else
    assert m["animate.psnr_frame0"] == pytest.approx(m["animate.psnr_vae"], abs=1e-3)
    assert abs(m["animate.psnr_frame0_model"] - m["animate.psnr_frame0"]) > 1e-3
    assert 0.0 <= m["animate.shape_kept"] <= 1.0          # frames 1.. of the 2 animate clips
    assert m["text.vae.n"] == 2 and 0.0 <= m["text.vae.all"] <= 1.0   # the VAE round trip of every prompt is judged too
    # each text→video clip's first frame (the text→image step) is judged on its own; motion needs a clip
    assert m["text.first_frame.n"] == 2 and m["text.first_frame.motion"] is None
    assert 0.0 <= m["text.first_frame.shape"] <= 1.0 and "| their first frames alone" in report
    assert all(set(c["first_frame"]) >= {"colour_ok", "shape_ok", "background_ok", "all_ok"} for c in metrics["clips"])
    assert [c["group"] for c in metrics["clips"]] == ["held_out", "seen"]
    for name in ("t2v_held_out.png", "t2v_seen.png", "animate.png", "interp.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in report

    table = ev.compare_reports([out / "metrics.json", metrics], names=["a", "b"])
    header, _, *rows = table.strip().splitlines()
    assert header == "| metric | a | b |" and len(rows) == len(ev.METRICS) + 5 * len(ev.GROUPS)
    assert all(row.count("|") == 4 for row in rows)


def test_eval_is_reproducible_for_a_seed(model_dir):
    pipe = ev.EvalPipeline(cli.load_model_set(cli.find_model_set(model_dir)), ev.EvalSettings(steps=2))
    picture = tw.render_clip(attrs(), pipe.size, 1)[0]
    a, b = (pipe.animate(picture, tw.caption(attrs()), seed=5) for _ in range(2))
    assert a.shape == (pipe.frames, pipe.size, pipe.size, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, pipe.animate(picture, tw.caption(attrs()), seed=6))
    frames, first = pipe.text_to_video(tw.caption(attrs()), seed=5)
    assert first.shape == (pipe.size, pipe.size, 3) and first.dtype == np.uint8
    again, first_again = pipe.text_to_video(tw.caption(attrs()), seed=5)
    assert np.array_equal(first, first_again) and np.array_equal(frames, again)
    direct = ev.EvalPipeline(pipe.models, ev.EvalSettings(steps=2, direct=True))
    frames, first = direct.text_to_video(tw.caption(attrs()), seed=5)     # Table 1a's baseline: no first frame
    assert first is None and frames.shape[1:] == (pipe.size, pipe.size, 3)


def test_missing_or_incomplete_model_dir_is_a_clear_error(model_dir, tmp_path, capsys):
    assert cli.main(["eval", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "model folder not found" in capsys.readouterr().err
    (tmp_path / "partial" / "vae").mkdir(parents=True)
    assert cli.main(["eval", "--model", str(tmp_path / "partial"), "--out", str(tmp_path / "o")]) == 2
    assert "incomplete" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_bad_prompt_file_is_a_clear_error(model_dir, tmp_path, capsys):
    f = tmp_path / "p.txt"
    f.write_text("a cat on a mat\n")
    assert ev.eval_main(["--model", str(model_dir), "--out", str(tmp_path / "o"), "--prompts", str(f)]) == 1
    assert "toy-world caption" in capsys.readouterr().err


def test_pooled_psnr_stays_finite_when_one_clip_is_exact():
    from emu_video.trainer.eval_metrics import pooled_psnr
    assert pooled_psnr([0.0, 0.0]) == float("inf")
    assert pooled_psnr([0.0, 65.025]) == pytest.approx(10 * np.log10(255 ** 2 / 32.5125))


def test_interpolation_runs_with_its_own_guidance(model_dir):
    pipe = ev.EvalPipeline(cli.load_model_set(cli.find_model_set(model_dir)),
                           ev.EvalSettings(steps=2, text_cfg=6.0, interp_text_cfg=2.5, late_text_cfg=3.0, late_below=0.7))
    assert (pipe.sampler.text_cfg, pipe.interp_sampler.text_cfg, pipe.interp_sampler.image_cfg) == (6.0, 2.5, 1.0)
    assert pipe.interp_sampler.steps == 2 and pipe.interp_sampler.keep_known
    assert (pipe.sampler.late_text_cfg, pipe.sampler.late_below) == (3.0, 0.7)       # the video's late steps
    assert pipe.interp_sampler.late_text_cfg is None                                 # not the in-betweens'
    cfgpp = ev.EvalPipeline(cli.load_model_set(cli.find_model_set(model_dir)), ev.EvalSettings(steps=2, guidance="cfg++"))
    assert (cfgpp.sampler.guidance, cfgpp.interp_sampler.guidance, cfgpp.first_sampler.guidance) == ("cfg++", "cfg", "cfg")
    part = ev.EvalPipeline(cli.load_model_set(cli.find_model_set(model_dir)), ev.EvalSettings(steps=4, interp_denoise=0.5))
    assert (part.sampler.denoise, part.interp_sampler.denoise, part.interp_sampler.steps_run) == (1.0, 0.5, 2)
    assert ev.build_parser().parse_args(["--model", "m", "--out", "o", "--interp-denoise", "0.2"]).interp_denoise == 0.2
    with pytest.raises(InputError, match="denoise must be in"):
        ev.EvalPipeline(cli.load_model_set(cli.find_model_set(model_dir)), ev.EvalSettings(steps=2, interp_denoise=1.5))


def test_first_frames_use_their_own_guidance(model_dir, monkeypatch):
    from emu_video.model import pipeline

    models = cli.load_model_set(cli.find_model_set(model_dir))
    same = ev.EvalPipeline(models, ev.EvalSettings(steps=2, text_cfg=6.0))
    own = ev.EvalPipeline(models, ev.EvalSettings(steps=2, text_cfg=6.0, first_frame_cfg=1.5))
    assert same.first_sampler == same.sampler
    assert (own.first_sampler.text_cfg, own.sampler.text_cfg, own.first_sampler.steps) == (1.5, 6.0, 2)
    used = []
    original = pipeline.generate_first_frame

    def spy(unet, schedule, config, text, null, settings, *args, **kwargs):
        used.append(settings.text_cfg)
        return original(unet, schedule, config, text, null, settings, *args, **kwargs)
    monkeypatch.setattr(pipeline, "generate_first_frame", spy)
    caption = tw.caption(attrs())
    _, first = own.text_to_video(caption, seed=4)          # text→video draws its picture with the same scale
    assert np.array_equal(first, own.first_frame(caption, seed=4))
    same.first_frame(caption, seed=4)
    assert used == [1.5, 1.5, 6.0]


def test_latent_blend_baseline_decodes_the_keys_and_blends_between_them(model_dir):
    from emu_video.trainer import toy_world as tw
    pipe = ev.EvalPipeline(cli.load_model_set(cli.find_model_set(model_dir)), ev.EvalSettings(steps=2))
    k = pipe.factor
    attributes = tw.sample_prompts(1, 0)[0]["attributes"]
    known = tw.render_clip(attributes, pipe.size, 3, seed=[0, 1])
    out = pipe.latent_blend(known)
    assert out.shape[0] == 2 * k + 1 and out.dtype == np.uint8
    np.testing.assert_array_equal(out[::k], pipe.round_trip(known))        # key slots: the keys' own latents
    half = pipe._pixels(pipe._clip_latents(known[:2]).mean(dim=2, keepdim=True))[0]
    assert k % 2 == 0                                                       # the tiny set interpolates ×2
    assert np.abs(out[k // 2].astype(int) - half.astype(int)).max() <= 1   # the midpoint: the latents' mean


# --------------------------------------------------------------------------- the text→image step alone

def test_first_frames_only_judges_the_same_first_frames_as_the_full_eval(model_dir, tmp_path, capsys):
    pipe = ev.EvalPipeline(cli.load_model_set(cli.find_model_set(model_dir)), ev.EvalSettings(steps=2))
    _, first = pipe.text_to_video(tw.caption(attrs()), seed=4)
    assert np.array_equal(pipe.first_frame(tw.caption(attrs()), seed=4), first)

    full, alone = tmp_path / "full", tmp_path / "alone"
    args = ["--model", str(model_dir), "--held-out", "1", "--steps", "2", "--quiet"]
    assert ev.eval_main([*args, "--out", str(full)]) == 0
    assert ev.eval_main([*args, "--out", str(alone), "--first-frames-only"]) == 0
    assert "first frames: shape" in capsys.readouterr().out
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (full, alone))
    firsts = {k: v for k, v in a["metrics"].items() if k.startswith("text.first_frame.")}
    assert firsts and {k: b["metrics"][k] for k in firsts} == firsts
    assert [c["first_frame"] for c in a["clips"]] == [c["first_frame"] for c in b["clips"]]
    assert b["settings"]["first_frames_only"] and "text.held_out.all" not in b["metrics"]
    assert b["metrics"]["text.ceiling.shape"] == 1.0 and b["metrics"]["text.ceiling.motion"] is None
    report = (alone / "report.md").read_text()
    assert "| their first frames alone" in report and "held-out (generalisation)" not in report
    assert "animate.psnr_frame0" not in report and "| zero_snr.black_mean |" in report
    for name in ("t2i_held_out.png", "t2i_seen.png"):
        assert (alone / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in report
    assert not (alone / "animate.png").exists()

    assert ev.eval_main([*args, "--out", str(tmp_path / "x"), "--first-frames-only", "--direct"]) == 1
    assert "no first frame to judge" in capsys.readouterr().err


def _t2i_export(model_dir, folder):
    """A trainer export of a t2i model (no temporal layers): models.json as `emu-video train` writes
    it, the model listed under the path of the folder it ran in, the rest elsewhere (absolute)."""
    import dataclasses

    from emu_video.model.checkpoint import load_model, save_model
    from emu_video.model.unet import EmuUNet

    paths = cli.find_model_set(model_dir)
    video, cfg = load_model(paths["video"])
    t2i_cfg = dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, temporal=False), num_frames=1)
    t2i = EmuUNet(t2i_cfg.unet)
    t2i.load_state_dict({k: v for k, v in video.state_dict().items() if k in t2i.state_dict()})
    folder.mkdir(parents=True)
    save_model(folder / "model.safetensors", t2i, t2i_cfg)
    (folder / "models.json").write_text(json.dumps(dict(
        stage="t2i", name="t", model="runs/elsewhere/t2i/export/model.safetensors", vae=str(paths["vae"].resolve()),
        text=[str(paths["t5"].resolve()), str(paths["clip"].resolve())])))
    return folder


def test_a_t2i_export_folder_is_a_model_and_is_judged_on_first_frames(model_dir, tmp_path, capsys):
    export = _t2i_export(model_dir, tmp_path / "t2i" / "export")
    assert cli.find_model_set(export)["video"] == export / "model.safetensors"
    out = tmp_path / "eval"
    assert cli.main(["eval", "--model", str(export), "--out", str(out), "--held-out", "1", "--steps", "2",
                     "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["settings"]["first_frames_only"] and m["metrics"]["text.first_frame.n"] == 2

    interp = tmp_path / "interp_export"
    interp.mkdir()
    (interp / "models.json").write_text(json.dumps(dict(stage="interp", model="m.safetensors", vae="v",
                                                        text=["a", "b"])))
    assert cli.main(["eval", "--model", str(interp), "--out", str(out)]) == 2
    assert "interpolation model's export" in capsys.readouterr().err
    (export / "models.json").write_text(json.dumps(dict(stage="t2i", model="model.safetensors", vae="gone/vae.st",
                                                        text=["a", "b"])))
    assert cli.main(["eval", "--model", str(export), "--out", str(out)]) == 2
    assert "lists files that are not there" in capsys.readouterr().err


def test_generate_from_a_t2i_export_says_it_draws_pictures(model_dir, tmp_path, capsys):
    export = _t2i_export(model_dir, tmp_path / "t2i" / "export")
    out = tmp_path / "clip.mp4"
    assert cli.main(["generate", "--model", str(export), "--prompt", "a red circle", "--out", str(out),
                     "--steps", "2"]) == 2
    assert "text-to-image model (no temporal layers)" in capsys.readouterr().err and not out.exists()
