import json
import os

import numpy as np
import pytest
import torch

from emu_video.model.config import InputError
from emu_video.model.video_io import probe, write_mp4
from emu_video.trainer import toy_world as tw
from emu_video.trainer.data import VideoDataset, swap_left_right

STEP = 14


def numbered_frames(n, h=24, w=32):
    return np.stack([np.full((h, w, 3), 10 + STEP * i, np.uint8) for i in range(n)])


def frame_ids(video):
    """video [3,T,H,W] in -1..1 -> the index each frame was written with."""
    levels = (video.mean(dim=(0, 2, 3)) + 1) / 2 * 255
    return [int(round((float(v) - 10) / STEP)) for v in levels]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("toy"))
    tw.generate(out, 6, size=48, num_frames=16, fps=8, seed=4)
    return out


def test_manifest_dataset_items(toy):
    ds = VideoDataset(toy, num_frames=8, fps=8, size=32, start="center")
    assert len(ds) == 6 and ds.skipped == []
    item = ds[2]
    assert item["video"].shape == (3, 8, 32, 32) and item["video"].dtype == torch.float32
    assert -1 <= item["video"].min() and item["video"].max() <= 1 and item["video"].std() > 0.05
    rows = [json.loads(line) for line in open(os.path.join(toy, "manifest.jsonl"))]
    assert item["caption"] == rows[2]["caption"] and item["index"] == 2


def test_pairs_with_bad_files_are_skipped(tmp_path):
    def pair(name, frames, caption="a caption", fps=8):
        write_mp4(frames, str(tmp_path / f"{name}.mp4"), fps=fps)
        if caption is not None:
            (tmp_path / f"{name}.txt").write_text(caption + "\n")
    pair("good", numbered_frames(16), "a good clip")
    pair("short", numbered_frames(4))
    pair("uncaptioned", numbered_frames(16), caption=None)
    (tmp_path / "corrupt.mp4").write_bytes(os.urandom(5000))
    (tmp_path / "corrupt.txt").write_text("garbage")
    ds = VideoDataset(str(tmp_path), num_frames=8, fps=8, size=16, start="center")
    assert len(ds) == 1 and ds[0]["caption"] == "a good clip"
    reasons = {os.path.basename(s["path"]): s["reason"] for s in ds.skipped}
    assert set(reasons) == {"short.mp4", "uncaptioned.mp4", "corrupt.mp4"}
    assert reasons["short.mp4"].startswith("too short") and reasons["corrupt.mp4"].startswith("unreadable")
    assert "1 usable videos, 3 skipped" in ds.summary()


def test_no_usable_video_is_a_clear_error(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"not a video")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(InputError, match="no usable videos"):
        VideoDataset(str(tmp_path), num_frames=4, fps=8, size=16)


def test_file_that_breaks_later_is_replaced_not_raised(tmp_path):
    write_mp4(numbered_frames(8), str(tmp_path / "a.mp4"), fps=8)
    (tmp_path / "b.mp4").write_bytes(os.urandom(2000))
    lines = [dict(path="b.mp4", caption="broken"), dict(path="a.mp4", caption="fine")]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "{oops\n")
    ds = VideoDataset(str(tmp_path), num_frames=4, fps=8, size=16, scan=False)
    assert ds[0]["caption"] == "fine"
    assert any(s["path"].endswith("b.mp4") and "failed at load" in s["reason"] for s in ds.skipped)
    assert any("invalid JSON" in s["reason"] for s in ds.skipped)


def test_variable_frame_rate_decoded_at_target_fps(tmp_path):
    times = [0.0, 0.1, 0.15, 0.3, 0.55, 0.6, 0.9, 1.0, 1.2, 1.45, 1.5, 1.7, 1.9]
    path = write_mp4(numbered_frames(len(times)), str(tmp_path / "vfr.mp4"), fps=8, timestamps=times)
    (tmp_path / "vfr.txt").write_text("vfr")
    ds = VideoDataset(str(tmp_path), num_frames=4, fps=4, size=16, start="center")
    t0 = (probe(path)["duration"] - 1.0) / 2
    want = [max(i for i, s in enumerate(times) if s <= t0 + k / 4 + 1e-6) for k in range(4)]
    assert frame_ids(ds[0]["video"]) == want


def test_deterministic_per_seed_epoch_index(toy):
    ds = VideoDataset(toy, num_frames=4, fps=8, size=16, augment="flip", seed=3)
    first = [ds[i]["video"] for i in range(len(ds))]
    again = VideoDataset(toy, num_frames=4, fps=8, size=16, augment="flip", seed=3)
    assert all(torch.equal(a, again[i]["video"]) for i, a in enumerate(first))
    ds.set_epoch(1)
    assert not all(torch.equal(a, ds[i]["video"]) for i, a in enumerate(first))
    # the order items are asked in (and so the number of workers) does not matter
    ds.set_epoch(0)
    assert all(torch.equal(first[i], ds[i]["video"]) for i in reversed(range(len(ds))))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    batched = torch.cat([b["video"] for b in loader])
    assert torch.equal(batched, torch.stack(first))


def test_flip_swaps_left_and_right(toy):
    plain = VideoDataset(toy, num_frames=4, fps=8, size=16, seed=5)
    flip = VideoDataset(toy, num_frames=4, fps=8, size=16, seed=5, augment="flip")
    flipped = 0
    for epoch in range(2):
        plain.set_epoch(epoch)
        flip.set_epoch(epoch)
        for i in range(len(flip)):
            a, b = plain[i], flip[i]
            if torch.equal(a["video"], b["video"]):
                assert a["caption"] == b["caption"]
            else:
                assert torch.equal(a["video"].flip(-1), b["video"])
                assert b["caption"] == swap_left_right(a["caption"])
                flipped += 1
    assert 0 < flipped < 2 * len(flip)
    assert swap_left_right("Left to right, not bright") == "Right to left, not bright"


def test_callable_augment_is_seeded(toy):
    def jitter(video):          # [1,3,T,H,W]; one random brightness per clip
        return video * (0.5 + torch.rand(()))
    ds = VideoDataset(toy, num_frames=4, fps=8, size=16, start="center", augment=jitter)
    plain = VideoDataset(toy, num_frames=4, fps=8, size=16, start="center")
    assert torch.equal(ds[1]["video"], ds[1]["video"])
    assert not torch.equal(ds[1]["video"], plain[1]["video"])
    assert not torch.equal(ds[1]["video"], ds[2]["video"])


def test_color_augment_is_one_kornia_transform_per_clip(toy):
    from emu_video.trainer.data import color_jitter
    still = torch.rand(1, 3, 1, 16, 16).repeat(1, 1, 6, 1, 1)          # six identical frames
    torch.manual_seed(0)
    out = color_jitter(0.3)(still)
    assert out.shape == still.shape and not torch.allclose(out, still)
    assert torch.allclose(out, out[:, :, :1].expand_as(out)), "every frame must get the same jitter"
    ds = VideoDataset(toy, num_frames=4, fps=8, size=16, start="center", augment="color")
    plain = VideoDataset(toy, num_frames=4, fps=8, size=16, start="center")
    assert torch.equal(ds[1]["video"], ds[1]["video"])                  # seeded per (seed, epoch, index)
    assert not torch.equal(ds[1]["video"], plain[1]["video"])
