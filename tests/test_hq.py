import json
import os
from fractions import Fraction

import av
import numpy as np
import pytest

from emu_video.model.video_io import write_mp4
from emu_video.trainer import toy_world as tw
from emu_video.trainer.data import VideoDataset
from emu_video.trainer.hq import motion_score, percentile_ranks, select_hq, select_hq_main


def clip_with(motion, speed, **rest):
    return dict(shape="square", colour="red", background="black", motion=motion, speed=speed, **rest)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Four fast, four slow and four static clips with known attributes."""
    root = tmp_path_factory.mktemp("hq")
    rows = []
    kinds = [("right", "fast"), ("left", "slow"), ("static", "none"), ("down", "fast"), ("up", "slow"), ("static", "none")]
    for i in range(12):
        a = clip_with(*kinds[i % len(kinds)])
        rel = f"clip_{i:02d}.mp4"
        write_mp4(tw.render_clip(a, size=64, num_frames=16, seed=i), str(root / rel), fps=8)
        rows.append(dict(path=rel, caption=tw.caption(a), attributes=a))
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(root), rows


def test_fast_clips_rank_above_static(toy):
    root, rows = toy
    report = select_hq(root, top=4)
    by_speed = {}
    for c in report["clips"]:
        by_speed.setdefault(c["attributes"]["speed"], []).append(c["motion"])
    assert max(by_speed["none"]) == 0.0
    assert min(by_speed["slow"]) > 0
    assert np.mean(by_speed["fast"]) > 1.5 * np.mean(by_speed["slow"])
    chosen = [json.loads(line) for line in open(os.path.join(root, "manifest_hq.jsonl"))]
    assert len(chosen) == 4 and all(c["attributes"]["speed"] == "fast" for c in chosen)
    assert report["passed_filters"] == 8            # static clips never pass the motion filter
    assert "4 of 12" in open(os.path.join(root, "hq_report.txt")).read()
    saved = json.load(open(os.path.join(root, "hq_report.json")))
    assert saved["selected"] == 4 and len(saved["clips"]) == 12
    ds = VideoDataset(root, num_frames=4, fps=8, size=16, manifest="manifest_hq.jsonl")
    assert len(ds) == 4 and "quickly" in ds[0]["caption"]


def test_clip_and_aesthetic_hooks(toy, tmp_path):
    root, rows = toy
    seen = []

    def fake_clip(caption, frame):           # pretend only captions about downward motion match
        seen.append((caption, frame.shape))
        return 0.9 if "down" in caption else 0.1

    report = select_hq(root, top=3, clip=fake_clip, aesthetic=lambda frame: float(frame.mean()),
                       min_clip=0.5, out=str(tmp_path))
    assert len(seen) == 12 and all(shape == (64, 64, 3) for _, shape in seen)
    chosen = [json.loads(line) for line in open(tmp_path / "manifest_hq.jsonl")]
    assert chosen and all(c["attributes"]["motion"] == "down" for c in chosen)
    assert all(os.path.isfile(tmp_path / c["path"]) for c in chosen)   # paths are relative to the output
    assert all(c["aesthetic"] is not None for c in report["clips"])


def test_non_h264_is_reencoded(tmp_path):
    frames = tw.render_clip(clip_with("right", "fast"), size=64, num_frames=12, seed=0)
    path = str(tmp_path / "mpeg4.mp4")
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 8)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    score = motion_score(path)
    assert score["reencoded"] and score["motion"] > 0 and score["frames_with_mvs"] > 5


def test_unreadable_clip_is_reported_not_raised(tmp_path):
    write_mp4(tw.render_clip(clip_with("left", "fast"), size=32, num_frames=8, seed=1), str(tmp_path / "ok.mp4"), 8)
    (tmp_path / "ok.txt").write_text("ok")
    (tmp_path / "bad.mp4").write_bytes(os.urandom(4000))
    (tmp_path / "bad.txt").write_text("bad")
    assert select_hq_main([str(tmp_path), "--top", "5"]) == 0
    report = json.load(open(tmp_path / "hq_report.json"))
    assert report["selected"] == 1 and [os.path.basename(s["path"]) for s in report["skipped"]] == ["bad.mp4"]


def test_percentile_ranks():
    np.testing.assert_allclose(percentile_ranks([3.0, 1.0, 2.0]), [1.0, 0.0, 0.5])
    np.testing.assert_allclose(percentile_ranks([1.0, 1.0, 5.0]), [0.25, 0.25, 1.0])


def test_real_clip_scorer_from_local_folder(tmp_path):
    """A tiny random transformers CLIP saved locally: the scorer loads it offline and scores."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    from emu_video.trainer.hq import clip_scorer

    words = ["<pad>", "<unk>", "<s>", "</s>", "a", "red", "blue", "square", "moving", "left", "right"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(tmp_path)
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(text_config=dict(small, vocab_size=len(words), max_position_embeddings=16, pad_token_id=0,
                                         bos_token_id=2, eos_token_id=3),
                        vision_config=dict(small, image_size=32, patch_size=8), projection_dim=8)
    CLIPModel(config).save_pretrained(tmp_path)
    score = clip_scorer(str(tmp_path))
    frame = tw.render_clip(clip_with("left", "fast"), size=48, num_frames=1, seed=0)[0]
    a, b = score("a red square moving left", frame), score("a blue square moving right", frame)
    assert -1 <= a <= 1 and -1 <= b <= 1 and a != b
    assert score("a red square moving left", frame) == a
