import itertools
import json
import os

import numpy as np
import pytest

from emu_video.model.video_io import read_frames
from emu_video.trainer import toy_world as tw


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("toy"))
    assert tw.toy_data_main([out, "--clips", "24", "--seed", "1", "--include-held-out"]) == 0
    with open(os.path.join(out, "manifest.jsonl")) as f:
        return out, [json.loads(line) for line in f]


def test_vocabulary_is_distinct():
    assert {"black", "white"} <= set(tw.BACKGROUNDS)
    palette = {**tw.COLOURS, **tw.BACKGROUNDS}
    for a, b in itertools.combinations(palette, 2):
        if a in tw.BACKGROUNDS and b in tw.BACKGROUNDS:
            continue
        assert np.linalg.norm(np.subtract(palette[a], palette[b])) > 100, (a, b)


def test_manifest_and_files(toy):
    out, rows = toy
    assert len(rows) == 24
    for row in rows:
        a = row["attributes"]
        assert set(a) == {"shape", "colour", "motion", "background", "speed"}
        assert row["caption"] == tw.caption(a) and a["colour"] in row["caption"] and a["shape"] in row["caption"]
        assert (row["fps"], row["frames"]) == (8, 16)
        assert os.path.isfile(os.path.join(out, row["path"]))
    assert tw.caption(dict(shape="circle", colour="red", motion="left", background="black", speed="slow")) == \
        "a red circle moving slowly left on a black background"


def test_deterministic_for_a_seed(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    tw.generate(a, 3, size=32, num_frames=4, seed=7)
    tw.generate(b, 4, size=32, num_frames=4, seed=7)     # clip i depends on (seed, i) only
    lines_a = open(os.path.join(a, "manifest.jsonl")).read().splitlines()
    lines_b = open(os.path.join(b, "manifest.jsonl")).read().splitlines()
    assert lines_a == lines_b[:3]
    np.testing.assert_array_equal(read_frames(os.path.join(a, "clips/clip_00002.mp4")),
                                  read_frames(os.path.join(b, "clips/clip_00002.mp4")))
    attrs = json.loads(lines_a[0])["attributes"]
    np.testing.assert_array_equal(tw.render_clip(attrs, seed=3), tw.render_clip(attrs, seed=3))
    assert not np.array_equal(tw.render_clip(attrs, seed=3), tw.render_clip(attrs, seed=4))


def test_held_out_combinations_never_in_training_data():
    rng = np.random.default_rng(0)
    train = [tw.sample_attributes(rng) for _ in range(400)]
    assert not any(tw.is_held_out(a) for a in train)
    for key in ("shape", "colour", "motion", "background"):      # every value still appears
        vocab = {"shape": tw.SHAPES, "colour": tw.COLOURS, "motion": tw.MOTIONS, "background": tw.BACKGROUNDS}[key]
        assert {a[key] for a in train} == set(vocab)
    held = tw.sample_prompts(30, seed=2, held_out=True)
    assert all(tw.is_held_out(p["attributes"]) for p in held)
    assert not any(tw.is_held_out(p["attributes"]) for p in tw.sample_prompts(30, seed=2))
    assert tw.sample_prompts(5, seed=9) == tw.sample_prompts(5, seed=9)
    assert tw.is_held_out(dict(colour="red", shape="triangle", motion="left", background="gray", speed="fast"))


def test_oracle_on_rendered_clips():
    for i in range(60):
        rng = np.random.default_rng([11, i])
        a = tw.sample_attributes(rng, "include")
        verdict = tw.judge(tw.render_clip(a, seed=rng), a)
        assert verdict["all_ok"], (a, verdict["seen"])


def test_oracle_after_mp4_round_trip(toy):
    out, rows = toy
    verdicts = [tw.judge(read_frames(os.path.join(out, r["path"])), r["attributes"]) for r in rows]
    assert np.mean([v["all_ok"] for v in verdicts]) >= 0.95


def test_oracle_rejects_wrong_attributes():
    a = dict(shape="circle", colour="red", motion="left", background="black", speed="fast")
    frames = tw.render_clip(a, seed=0)
    assert tw.judge(frames, a)["all_ok"]
    for key, wrong in [("shape", "square"), ("colour", "blue"), ("background", "white"), ("motion", "right")]:
        verdict = tw.judge(frames, {**a, key: wrong})
        assert not verdict[f"{key}_ok"] and not verdict["all_ok"]
    assert tw.judge(frames[::-1], a)["seen"]["motion"] == "right"
    assert tw.judge(frames[:1].repeat(16, 0), a)["seen"]["motion"] == "static"
    m = tw.measure_frames(frames)[0]
    assert m["colour"] == "red" and m["background"] == "black" and m["size"] > 20


def test_oracle_on_empty_frame():
    blank = np.full((4, 32, 32, 3), 255, np.uint8)
    verdict = tw.judge(blank, dict(shape="circle", colour="red", motion="static", background="white", speed="none"))
    assert verdict["background_ok"] and not verdict["colour_ok"] and not verdict["all_ok"]


def test_lossless_toy_data_holds_the_rendered_pixels(tmp_path):
    """toy-data --lossless / data.toy_lossless: the clips read back as rendered (clip i from (seed, i))."""
    assert tw.toy_data_main([str(tmp_path), "--clips", "2", "--size", "32", "--frames", "4", "--lossless"]) == 0
    line = json.loads(open(os.path.join(tmp_path, "manifest.jsonl")).read().splitlines()[1])
    rng = np.random.default_rng([0, 1])
    attributes = tw.sample_attributes(rng)
    assert attributes == line["attributes"]
    np.testing.assert_array_equal(read_frames(os.path.join(tmp_path, line["path"])),
                                  tw.render_clip(attributes, 32, 4, seed=rng))
