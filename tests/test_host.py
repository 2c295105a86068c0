"""nodes/host.py outside ComfyUI: model folders from $EMU_VIDEO_MODELS, output folder, cache, cancel."""
import pytest

from emu_video.nodes import host


@pytest.fixture
def models(tmp_path, monkeypatch):
    for rel in ("diffusion_models/a.safetensors", "unet/sub/b.safetensors", "diffusion_models/c.ckpt",
                "vae/v.safetensors", "clip/t.safetensors"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    monkeypatch.setenv("EMU_VIDEO_MODELS", str(tmp_path))
    return tmp_path


def test_not_in_comfy_here():
    assert host.in_comfy() is False


def test_list_models_uses_comfy_layout_and_legacy_names(models):
    assert host.list_models("diffusion_models") == ["a.safetensors", "sub/b.safetensors"]   # no pickles
    assert host.list_models("text_encoders") == ["t.safetensors"]                           # clip/ alias
    assert host.list_models("emu_video") == []


def test_resolve_model_finds_files_and_explains_misses(models):
    assert host.resolve_model("diffusion_models", "sub/b.safetensors") == str(models / "unet/sub/b.safetensors")
    with pytest.raises(host.ModelNotFound, match=r"looked in .*vae.*Available: v\.safetensors"):
        host.resolve_model("vae", "missing.safetensors")
    with pytest.raises(host.ModelNotFound, match="not a path"):
        host.resolve_model("vae", "../vae/v.safetensors")
    with pytest.raises(ValueError, match="unknown model kind"):
        host.list_models("loras")


def test_output_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("EMU_VIDEO_OUTPUT", str(tmp_path / "out"))
    assert host.output_dir() == str(tmp_path / "out") and (tmp_path / "out").is_dir()


def test_cached_loads_once_per_key_and_evicts_least_recent(monkeypatch):
    monkeypatch.setenv("EMU_VIDEO_CACHE_SIZE", "2")
    host.clear_cache()
    loads = []

    def loader(k):
        return lambda: loads.append(k) or k.upper()

    assert host.cached("a", loader("a")) == "A" and host.cached("a", loader("a")) == "A"
    host.cached("b", loader("b"))
    host.cached("a", loader("a"))          # refreshes a
    host.cached("c", loader("c"))          # evicts b
    host.cached("b", loader("b"))
    assert loads == ["a", "b", "c", "b"]
    host.clear_cache()


def test_cancel_flag_raises_once_and_progress_counts():
    host.reset_cancel()
    host.check_cancelled()                 # nothing requested: no-op
    host.request_cancel()
    assert host.cancel_requested()
    with pytest.raises(host.Cancelled):
        host.check_cancelled()
    assert not host.cancel_requested()
    with host.progress_disabled():
        bar = host.Progress(3, "t")
        for _ in range(3):
            bar()
    assert bar.n == 3
