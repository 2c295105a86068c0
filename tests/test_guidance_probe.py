"""emu-video guidance-probe: one step of each dual-guidance branch on noised true toy clips."""
import pytest

from emu_video import cli
from emu_video.model.config import InputError
from emu_video.trainer import guidance_probe as gp
from emu_video.trainer import toy_world as tw


def test_parse_scales_reads_pairs_and_rejects_the_rest():
    assert gp.parse_scales("3.5,7.5") == (3.5, 7.5)
    for bad in ("3.5", "a,b", "1,2,3", "-1,2"):
        with pytest.raises(InputError, match="scales"):
            gp.parse_scales(bad)


def test_probe_clips_give_the_asked_shapes_from_seen_combinations():
    clips = gp.probe_clips(["square", "diamond"], 3, seed=5)
    assert [c[0] for c in clips] == ["square"] * 3 + ["diamond"] * 3
    assert all(c[2]["shape"] == c[0] and not tw.is_held_out(c[2]) for c in clips)
    assert clips == gp.probe_clips(["square", "diamond"], 3, seed=5)
    assert clips != gp.probe_clips(["square", "diamond"], 3, seed=6)


def test_cli_prints_a_row_per_shape_and_timestep(model_dir, capsys):
    argv = ["--model", str(model_dir), "--shapes", "square,circle", "--per-shape", "1", "--timesteps", "100,500",
            "--scales", "1,1", "3,5", "--quiet"]
    assert cli.main(["guidance-probe", *argv]) == 0
    table = capsys.readouterr().out
    rows = [r for r in table.splitlines() if r.startswith("| square") or r.startswith("| circle")]
    assert [r.split("|")[1:3] for r in rows] == [[" square ", " 100 "], [" square ", " 500 "],
                                                 [" circle ", " 100 "], [" circle ", " 500 "]]
    assert "image 3, text 5" in table.splitlines()[0]
    assert cli.main(["guidance-probe", *argv]) == 0
    assert capsys.readouterr().out == table            # same seed, same table


def test_identity_scales_equal_the_branch_alone(model_dir, monkeypatch):
    """(1,1) must be v(I,T) alone and (1,0) v(I,∅) alone: the probe's rows for the raw branches."""
    import torch
    from emu_video.model import conditioning as C
    from emu_video.trainer.evaluate import EvalPipeline, EvalSettings

    pipe = EvalPipeline(cli.load_model_set(cli.find_model_set(model_dir), device=torch.device("cpu")), EvalSettings())
    torch.manual_seed(0)
    with torch.no_grad():        # the random set zero-inits its conditioning paths: make the branches differ
        for param in pipe.F.unet.parameters():
            param.add_(0.05 * torch.randn_like(param))
    judged = []
    decode = pipe._pixels
    monkeypatch.setattr(pipe, "_pixels", lambda x0: judged.append(x0.clone()) or decode(x0))
    gp.run_probe(pipe, ["square"], 1, [300], [(1.0, 1.0), (1.0, 0.0), (2.0, 4.0)], progress=False)

    _, _, a, clip_seed = gp.probe_clips(["square"], 1, 5)[0]
    latents = pipe._clip_latents(tw.render_clip(a, size=pipe.size, num_frames=pipe.frames, seed=clip_seed))
    text, null = pipe._text(tw.caption(a))
    cond, mask = C.first_frame(latents[:, :, 0], pipe.frames, pipe.F.config.image_fill)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(300))
    x_t = pipe.schedule.add_noise(latents, noise, 300)
    v = gp.branch_predictions(pipe, x_t, 300, cond, mask, text, null)
    mixed = v["uncond"] + 2 * (v["image"] - v["uncond"]) + 4 * (v["full"] - v["image"])
    for got, want in zip(judged, (v["full"], v["image"], mixed)):
        assert torch.allclose(got, pipe.schedule.pred_x0_eps(x_t, want, 300)[0], atol=1e-5)
    assert not torch.allclose(judged[0], judged[1])     # the branches differ, so the check above means something


@pytest.mark.parametrize("args, message", [
    (["--shapes", "hexagon"], "unknown"),
    (["--timesteps", "5000"], "outside"),
    (["--timesteps", "a"], "integers"),
    (["--per-shape", "0"], "per-shape"),
    (["--scales", "7.5"], "IMAGE,TEXT"),
])
def test_bad_arguments_are_clear_errors(model_dir, capsys, args, message):
    assert cli.main(["guidance-probe", "--model", str(model_dir), "--quiet", *args]) == 2
    assert message in capsys.readouterr().err
