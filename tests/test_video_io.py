import os

import av
import numpy as np
import pytest
import torch

from emu_video.model.config import InputError
from emu_video.model.video_io import (grid_image, next_free_path, probe, read_frames, write_mp4,
                                      write_png_grid)

STEP = 14   # grey level per frame index: frames stay identifiable after lossy H.264


def numbered_frames(n, h=16, w=16):
    return np.stack([np.full((h, w, 3), 10 + STEP * i, np.uint8) for i in range(n)])


def frame_ids(frames):
    return [int(round((float(f.astype(np.float32).mean()) - 10) / STEP)) for f in frames]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """16 frames at 8 fps: 2 s, frame i shows grey level 10 + 14 i."""
    path = str(tmp_path_factory.mktemp("io") / "clip.mp4")
    return write_mp4(numbered_frames(16), path, fps=8)


def test_round_trip_and_probe(clip):
    info = probe(clip)
    assert info == dict(fps=8.0, duration=2.0, width=16, height=16, frames=16, codec="h264")
    frames = read_frames(clip)
    assert frames.dtype == np.uint8 and frames.shape == (16, 16, 16, 3)
    assert frame_ids(frames) == list(range(16))


def test_resampling_by_timestamp(clip):
    assert frame_ids(read_frames(clip, fps=4, num_frames=8)) == list(range(0, 16, 2))
    assert frame_ids(read_frames(clip, fps=16, num_frames=6)) == [0, 0, 1, 1, 2, 2]
    assert frame_ids(read_frames(clip, fps=8, num_frames=4, start=1.0)) == [8, 9, 10, 11]
    assert frame_ids(read_frames(clip, fps=8, num_frames=8, start="center")) == list(range(4, 12))


def test_random_start_is_reproducible(clip):
    def draw(seed):
        return frame_ids(read_frames(clip, fps=8, num_frames=4, start="random", rng=np.random.default_rng(seed)))
    assert draw(3) == draw(3)
    starts = {draw(s)[0] for s in range(12)}
    assert len(starts) > 3 and all(0 <= s <= 12 for s in starts)
    g = torch.Generator().manual_seed(5)
    ids = frame_ids(read_frames(clip, fps=8, num_frames=4, start="random", rng=g))
    assert ids == list(range(ids[0], ids[0] + 4))


def test_resize_on_decode(clip):
    assert read_frames(clip, num_frames=2, size=(8, 12)).shape == (2, 8, 12, 3)
    assert read_frames(clip, num_frames=2, size=8).shape == (2, 8, 8, 3)


def test_variable_frame_rate_sampled_by_time(tmp_path):
    times = [0.0, 0.05, 0.1, 0.3, 0.35, 0.6, 0.8, 0.9]
    path = write_mp4(numbered_frames(len(times)), str(tmp_path / "vfr.mp4"), fps=8, timestamps=times)
    got = frame_ids(read_frames(path, fps=5, num_frames=5))
    # target t shows the last frame whose timestamp is <= t
    want = [max(i for i, s in enumerate(times) if s <= k / 5 + 1e-6) for k in range(5)]
    assert got == want == [0, 2, 4, 5, 6]


def test_float_tensor_and_odd_size(tmp_path):
    video = torch.rand(3, 15, 21, 3)
    path = write_mp4(video, str(tmp_path / "odd.mp4"), fps=10)
    info = probe(path)
    assert (info["height"], info["width"], info["frames"]) == (16, 22, 3)


def test_too_short_and_unreadable(clip, tmp_path):
    with pytest.raises(InputError, match="too short"):
        read_frames(clip, fps=4, num_frames=9)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(os.urandom(3000))
    for fn in (probe, read_frames):
        with pytest.raises(InputError, match="bad.mp4"):
            fn(str(bad))
    with pytest.raises(InputError, match="not found"):
        read_frames(str(tmp_path / "missing.mp4"))
    with pytest.raises(InputError, match=r"\[T,H,W,3\]"):
        write_mp4(np.zeros((2, 3, 8, 8), np.uint8), str(tmp_path / "x.mp4"), fps=8)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("encoder exploded")
    monkeypatch.setattr(av.VideoFrame, "from_ndarray", broken)
    with pytest.raises(RuntimeError):
        write_mp4(numbered_frames(2), str(tmp_path / "out.mp4"), fps=8)
    assert os.listdir(tmp_path) == []


def test_next_free_path_never_overwrites(tmp_path):
    first = next_free_path(str(tmp_path), "clip", "mp4")
    assert os.path.basename(first) == "clip_00001.mp4"
    open(first, "w").close()
    (tmp_path / "clip_00007.mp4").touch()
    (tmp_path / "other_00020.mp4").touch()
    assert os.path.basename(next_free_path(str(tmp_path), "clip", ".mp4")) == "clip_00008.mp4"


def test_png_grid(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    path = write_png_grid(frames, str(tmp_path / "grid.png"), cols=3)
    with av.open(path) as container:
        decoded = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert decoded.shape == (12, 21, 3)
    np.testing.assert_array_equal(decoded, grid_image(frames, 3))
    np.testing.assert_array_equal(decoded[6:12, 7:14], frames[4])
    assert decoded[6:12, 14:].max() == 0            # the empty slot is black


def test_atomic_path_publishes_readable_files_and_leaves_nothing_on_failure(tmp_path):
    import os

    from emu_video.model.video_io import atomic_path
    old = os.umask(0o022)
    try:
        with atomic_path(str(tmp_path / "out.txt")) as tmp:
            with open(tmp, "w") as f:
                f.write("done")
        with pytest.raises(RuntimeError):
            with atomic_path(str(tmp_path / "half.txt")) as tmp:
                with open(tmp, "w") as f:
                    f.write("half")
                raise RuntimeError("killed mid-write")
    finally:
        os.umask(old)
    assert (tmp_path / "out.txt").read_text() == "done"
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o644   # mkstemp's 0600 would hide it from others
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]                # no half file, no temp file


def test_lossless_mp4_reads_back_exactly(tmp_path):
    """lossless=True (RGB H.264, crf 0) returns every pixel; the default yuv420p does not on small
    coloured shapes, which is why toy data for pixel-exact training is written losslessly."""
    from emu_video.trainer.toy_world import render_clip

    frames = render_clip(dict(colour="red", shape="triangle", motion="right", speed="fast", background="navy"),
                         32, 4, seed=0)
    exact = read_frames(write_mp4(frames, str(tmp_path / "exact.mp4"), 8, lossless=True))
    lossy = read_frames(write_mp4(frames, str(tmp_path / "lossy.mp4"), 8))
    assert np.array_equal(exact, frames)
    assert not np.array_equal(lossy, frames)
