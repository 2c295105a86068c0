"""Every node called directly (no ComfyUI) on the tiny model set, plus registration and bad inputs."""
import subprocess
import sys

import pytest
import torch

import emu_video
from emu_video import cli
from emu_video.model.checkpoint import CheckpointError
from emu_video.model.config import InputError
from emu_video.model.video_io import probe
from emu_video.nodes import host
from emu_video.nodes import loaders as L
from emu_video.nodes import media_nodes as M
from emu_video.nodes import sampling_nodes as S


PROMPT = "a red circle moving quickly right on a black background"


@pytest.fixture(autouse=True)
def env(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EMU_VIDEO_MODELS", str(model_dir))
    monkeypatch.setenv("EMU_VIDEO_OUTPUT", str(tmp_path / "out"))
    with host.progress_disabled():
        yield
    host.reset_cancel()


@pytest.fixture
def m():
    """Loaded models + text + scheduler through the loader nodes."""
    files = {k: v.split("/")[-1] for k, v in cli.TINY_FILES.items()}
    encoders = L.EmuVideoTextEncodersLoader().load(files["t5"], files["clip"])[0]
    return dict(model=L.EmuVideoModelLoader().load(files["video"])[0],
                interp=L.EmuVideoInterpModelLoader().load(files["interp"])[0],
                vae=L.EmuVideoVAELoader().load(files["vae"])[0],
                encoders=encoders,
                text=S.EmuVideoTextEncode().encode(encoders, PROMPT)[0],
                scheduler=S.EmuVideoScheduler().build(2)[0])


def first_frame(m, seed=0, **kw):
    return S.EmuVideoFirstFrame().generate(m["model"], m["vae"], m["text"], 2, 5.0, seed, **kw)[0]


def video(m, seed=0, frames=0, image=None):
    image = first_frame(m, seed) if image is None else image
    cond = S.EmuVideoImageConditioning().encode(image, m["vae"], m["model"])[0]
    return S.EmuVideoSampler().sample(m["model"], m["text"], cond, m["scheduler"], 1.5, 5.0, frames, seed)[0]


# --------------------------------------------------------------------------- registration

def test_registration_is_complete_and_consistent():
    nodes = emu_video.NODE_CLASS_MAPPINGS
    assert len(nodes) >= 13 and set(nodes) == set(emu_video.NODE_DISPLAY_NAME_MAPPINGS)
    for name, cls in nodes.items():
        assert name.startswith("EmuVideo")
        assert cls.CATEGORY == "Emu Video" and cls.DESCRIPTION
        assert callable(getattr(cls, cls.FUNCTION)) and isinstance(cls.RETURN_TYPES, tuple)
        assert "required" in cls.INPUT_TYPES()


def test_package_import_stays_light():
    code = ("import sys, emu_video; heavy = [m for m in ('transformers', 'kornia', 'av', 'comfy', 'torch') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# --------------------------------------------------------------------------- loaders

def test_loaders_list_files_and_cache(m):
    names = L.EmuVideoModelLoader.INPUT_TYPES()["required"]["model_name"][0]
    assert "emu_video_tiny.safetensors" in names
    again = L.EmuVideoModelLoader().load("emu_video_tiny.safetensors")[0]
    assert again is m["model"]                                    # cached, not reloaded


def test_loader_errors_are_clear():
    with pytest.raises(InputError, match="not found.*Available"):
        L.EmuVideoModelLoader().load("missing.safetensors")
    with pytest.raises(CheckpointError, match="'interp' file.*video"):
        L.EmuVideoModelLoader().load("emu_video_interp_tiny.safetensors")
    with pytest.raises(InputError, match="dtype"):
        L.EmuVideoModelLoader().load("emu_video_tiny.safetensors", dtype="fp64")


# --------------------------------------------------------------------------- the full chain

def test_scheduler_keep_known_pins_the_first_frame_and_can_be_switched_off(m):
    cond = S.EmuVideoImageConditioning().encode(first_frame(m), m["vae"], m["model"])[0]

    def frame0(scheduler):
        lat = S.EmuVideoSampler().sample(m["model"], m["text"], cond, scheduler, 1.5, 5.0, 0, 0)[0]
        return lat["samples"][:, :, 0]
    torch.testing.assert_close(frame0(m["scheduler"]), cond["latent"], atol=1e-4, rtol=0)   # default: on
    off = S.EmuVideoScheduler().build(2, keep_known=False)[0]
    assert (frame0(off) - cond["latent"]).abs().max() > 1e-2                             # the model redraws it



def test_video_sampler_late_text_guidance_is_optional_and_reaches_the_settings(m, monkeypatch):
    from emu_video.model import pipeline

    assert set(S.EmuVideoSampler.INPUT_TYPES()["optional"]) == set(S.EmuVideoExtend.INPUT_TYPES()["optional"]) \
        == {"late_text_cfg", "late_below", "guidance"}
    used = []
    monkeypatch.setattr(pipeline, "generate_video", lambda unet, schedule, config, text, null, settings, *a, **k:
                        used.append(settings) or torch.zeros(1, 4, 2, 4, 4))
    cond = S.EmuVideoImageConditioning().encode(first_frame(m), m["vae"], m["model"])[0]
    S.EmuVideoSampler().sample(m["model"], m["text"], cond, m["scheduler"], 3.5, 7.5, 2, 0)        # as saved before
    S.EmuVideoSampler().sample(m["model"], m["text"], cond, m["scheduler"], 3.5, 7.5, 2, 0, 3.0, 0.7)
    assert [(s.text_cfg, s.late_text_cfg, s.late_below) for s in used] == [(7.5, None, 0.5), (7.5, 3.0, 0.7)]
    S.EmuVideoSampler().sample(m["model"], m["text"], cond, m["scheduler"], 1.0, 1.0, 2, 0, guidance="cfg++")
    assert [s.guidance for s in used] == ["cfg", "cfg", "cfg++"]                   # old workflows: plain cfg
    assert S.EmuVideoSampler.INPUT_TYPES()["optional"]["guidance"][0] == ["cfg", "cfg++"]


def test_widget_defaults_sample_as_the_cli_does_without_a_manifest(m, monkeypatch, tmp_path):
    """A graph left at its widget defaults samples the video with the settings `emu-video generate` uses
    on a model set whose manifest recommends nothing: both read cli.SAMPLING_FALLBACK."""
    from emu_video.model import pipeline
    from emu_video.model.sampling import SamplerSettings

    def defaults(node):
        return {name: spec[1]["default"] for part in node.INPUT_TYPES().values() for name, spec in part.items()
                if len(spec) > 1 and "default" in spec[1]}
    used = []
    monkeypatch.setattr(pipeline, "generate_video", lambda unet, schedule, config, text, null, settings, *a, **k:
                        used.append(settings) or torch.zeros(1, 4, 2, 4, 4))
    scheduler = S.EmuVideoScheduler().build(**defaults(S.EmuVideoScheduler))[0]
    cond = S.EmuVideoImageConditioning().encode(first_frame(m), m["vae"], m["model"])[0]
    S.EmuVideoSampler().sample(m["model"], m["text"], cond, scheduler, **defaults(S.EmuVideoSampler))
    args = cli.build_parser().parse_args(["generate", "--prompt", PROMPT, "--model", str(tmp_path)])
    assert used == [SamplerSettings(**cli.sampling_settings(args))]
    assert used[0].rescale == cli.SAMPLING_FALLBACK["rescale"] > 0        # Lin et al. §3.4's φ, on by default


def test_interpolate_denoise_is_optional_and_reaches_the_settings(m, monkeypatch):
    from emu_video.model import pipeline

    assert set(S.EmuVideoInterpolate.INPUT_TYPES()["optional"]) == {"denoise"}
    used = []
    monkeypatch.setattr(pipeline, "interpolate", lambda unet, schedule, config, latents, text, null, settings, *a, **k:
                        used.append(settings) or torch.zeros(1, 4, 7, 4, 4))
    lat = {"samples": torch.zeros(1, 4, 4, 4, 4), "fps": 4.0}
    S.EmuVideoInterpolate().interpolate(m["interp"], lat, m["text"], m["scheduler"], 1.0, 1.0, 0, 100, 0)  # as saved before
    S.EmuVideoInterpolate().interpolate(m["interp"], lat, m["text"], m["scheduler"], 1.0, 1.0, 0, 100, 0, denoise=0.5)
    S.EmuVideoInterpolate().interpolate(m["interp"], lat, m["text"], m["scheduler"], 1.0, 1.0, 0, 100, 0, denoise=0.1)
    assert [(s.denoise, s.steps_run) for s in used] == [(1.0, 2), (0.5, 1), (0.1, 1)]   # at least one step
    with pytest.raises(InputError, match="denoise must be in"):
        S.EmuVideoInterpolate().interpolate(m["interp"], lat, m["text"], m["scheduler"], 1.0, 1.0, 0, 100, 0,
                                            denoise=0.0)


def test_full_chain_text_to_video_interpolate_extend_decode_save(m, tmp_path):
    image = first_frame(m)
    assert image.shape == (1, 32, 32, 3) and 0 <= image.min() and image.max() <= 1
    lat = video(m, image=image)
    assert lat["samples"].shape == (1, 4, 4, 16, 16) and lat["fps"] == 4
    more = S.EmuVideoInterpolate().interpolate(m["interp"], lat, m["text"], m["scheduler"], 1.5, 5.0, 0, 100, 0)[0]
    assert more["samples"].shape[2] == 7 and more["fps"] == 8
    longer = S.EmuVideoExtend().extend(m["model"], more, m["text"], m["scheduler"], 1.5, 5.0, 2, 3, 1)[0]
    assert longer["samples"].shape[2] == 10 and torch.equal(longer["samples"][:, :, :7], more["samples"])
    frames = M.EmuVideoVAEDecode().decode(m["vae"], longer)[0]
    assert frames.shape == (10, 32, 32, 3) and frames.dtype == torch.float32
    out = M.EmuVideoSaveVideo().save(frames, fps=8.0, filename_prefix="clips/test")
    assert out["result"] == () and out["ui"]["animated"] == (True,)
    mp4 = tmp_path / "out" / "clips" / out["ui"]["video"][0]["filename"]
    assert out["ui"]["video"][0]["subfolder"] == "clips"
    assert probe(str(mp4))["frames"] == 10 and probe(str(mp4))["fps"] == pytest.approx(8)
    second = M.EmuVideoSaveVideo().save(frames, fps=8.0, filename_prefix="clips/test")
    assert second["ui"]["video"][0]["filename"] != out["ui"]["video"][0]["filename"]   # never overwrites


def test_same_seed_same_video_and_seed_matters(m):
    a = video(m, seed=5)["samples"]
    assert torch.equal(a, video(m, seed=5)["samples"])
    assert not torch.allclose(a, video(m, seed=6)["samples"])


def test_vae_encode_node_roundtrips_shapes(m):
    frames = torch.rand(5, 32, 32, 3)
    lat = M.EmuVideoVAEEncode().encode(m["vae"], frames, 6.0)[0]
    assert lat["samples"].shape == (1, 4, 5, 16, 16) and lat["fps"] == 6.0
    assert M.EmuVideoVAEDecode().decode(m["vae"], lat)[0].shape == frames.shape


def test_image_conditioning_crops_any_picture(m):
    cond, prepared = S.EmuVideoImageConditioning().encode(torch.rand(1, 50, 70, 3), m["vae"], m["model"])
    assert prepared.shape == (1, 32, 32, 3) and cond["latent"].shape == (1, 4, 16, 16)


# --------------------------------------------------------------------------- progress and cancel

def test_progress_moves_every_step(m, monkeypatch):
    counts = []

    class Counting:
        def __init__(self, total, desc=""):
            counts.append([total, 0])

        def update(self, n=1):
            counts[-1][1] += n
    monkeypatch.setattr(host, "Progress", Counting)
    video(m)
    assert counts and all(total == done for total, done in counts)
    assert [2, 2] in counts


def test_cancel_stops_sampling(m):
    image = first_frame(m)
    host.request_cancel()
    with pytest.raises(host.Cancelled):
        video(m, image=image)
    host.reset_cancel()


# --------------------------------------------------------------------------- bad inputs

def test_bad_inputs_give_clear_errors(m):
    with pytest.raises(InputError, match="nearest valid widths are 32 and 36"):
        S.EmuVideoImageConditioning().encode(torch.rand(1, 32, 32, 3), m["vae"], m["model"], width=34)
    with pytest.raises(InputError, match="more than this model supports"):
        video(m, frames=m["model"].config.unet.max_frames + 1, image=torch.rand(1, 32, 32, 3))
    alien = {"samples": torch.zeros(1, 8, 4, 16, 16), "fps": 4.0}
    with pytest.raises(InputError, match="another model"):
        S.EmuVideoInterpolate().interpolate(m["interp"], alien, m["text"], m["scheduler"], 1.5, 5.0, 0, 100, 0)
    with pytest.raises(InputError, match="LATENT"):
        M.EmuVideoVAEDecode().decode(m["vae"], torch.zeros(1, 4, 4, 16, 16))
    with pytest.raises(InputError, match="spacing"):
        S.EmuVideoScheduler().build(2, spacing="sideways")
    with pytest.raises(InputError, match="inside the output folder"):
        M.EmuVideoSaveVideo().save(torch.rand(2, 32, 32, 3), filename_prefix="../escape")
