"""`emu-video table1`: run plan, per-variant configs, verdicts, and one tiny end-to-end smoke run."""
import json
import re

import pytest

from emu_video import cli
from emu_video.model.config import ConfigError, InputError
from emu_video.trainer import ablations as ab


TINY_BASE = """
seed = 0
[model]
preset = "tiny"
[data]
toy_clips = 4
toy_size = 16
toy_frames = 8
toy_fps = 8
[optim]
lr = 1e-3
[loop]
checkpoint_every = 0
progress = false
tensorboard = false
[ema]
decay = 0.9
"""
# every role shrunk to the tiny preset (VAE ×2 · U-Net ×2: sizes are multiples of 4)
TINY_SETS = ["data.batch_size=1", "vae:data.size=16", "vae:vae.base_channels=8", "vae:vae.channel_mult=[1, 2]",
             "vae:vae.norm_groups=4", "t2i:data.size=16", "stage1:data.size=8", "stage1:data.num_frames=4",
             "stage2:data.size=16", "stage2:data.num_frames=4"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("table1_cfg") / "tiny_base.toml"
    path.write_text(TINY_BASE)
    return path


def configs(tmp_path, base, steps=4):
    runs = ab.plan(steps, steps, steps, 0.75)
    by = {r.folder: r for r in runs}
    vae = tmp_path / "shared/vae/export/vae.safetensors"
    return {r.folder: ab.run_config(r, by, tmp_path, base, TINY_SETS, vae) for r in runs}


# --------------------------------------------------------------------------- plan and configs

def test_equal_budgets_and_chaining(tmp_path, base):
    c = configs(tmp_path, base, steps=8)
    videos = {k: v for k, v in c.items() if v.stage == "video" and not k.startswith("c_stages")}
    assert {v.loop.max_steps for v in videos.values()} == {8}
    assert c["c_stages/stage1"].loop.max_steps + c["c_stages/multi_stage"].loop.max_steps == 8
    assert c["c_stages/stage1"].loop.max_steps == 6                    # 0.75 of the budget at stage 1
    assert c["c_stages/multi_stage"].init_from.endswith("c_stages/stage1/export/model.safetensors")
    assert c["c_stages/stage1"].data.size < c["c_stages/multi_stage"].data.size
    assert c["c_stages/stage1"].data.fps > c["c_stages/multi_stage"].data.fps
    assert len({v.seed for v in c.values()}) == 1 and len({v.data.root for v in c.values()}) == 1
    assert len({v.vae.path for k, v in c.items() if v.stage != "vae"}) == 1
    assert all(not v.validation.prompts for v in c.values())


def test_each_variant_changes_only_its_own_setting(tmp_path, base):
    c = configs(tmp_path, base)
    baseline, direct = c["shared/baseline"], c["a_factorization/direct"]
    d = direct.diffusion
    assert d.p_drop_text == 0 and d.p_drop_image + d.p_drop_both == pytest.approx(1.0)
    # text is dropped as often as in the factorized model (for classifier-free guidance)
    assert d.p_drop_both == pytest.approx(baseline.diffusion.p_drop_text + baseline.diffusion.p_drop_both)
    assert baseline.model.zero_terminal_snr and not baseline.model.train_spatial
    assert not c["b_schedule/standard"].model.zero_terminal_snr
    assert not c["b_schedule/standard_t2i"].model.zero_terminal_snr          # the first frame's model too
    assert "b_schedule/standard_t2i/export" in c["b_schedule/standard"].text.paths[0]
    assert c["e_spatial/finetune_all"].model.train_spatial
    strip = {"name", "out_dir", "diffusion", "model"}
    plain = {k: v for k, v in json.loads(baseline.to_json()).items() if k not in strip}
    for name in ("a_factorization/direct", "e_spatial/finetune_all"):
        assert {k: v for k, v in json.loads(c[name].to_json()).items() if k not in strip} == plain


def test_bad_options_are_clear_errors(tmp_path, base):
    with pytest.raises(InputError, match="--steps must be >= 2"):
        ab.plan(1, 1, 1, 0.75)
    with pytest.raises(InputError, match="stage1-fraction"):
        ab.plan(4, 4, 4, 1.0)
    runs = ab.plan(4, 4, 4, 0.5)
    with pytest.raises(ConfigError, match="unknown role 'stage3'"):
        ab.run_config(runs[0], {r.folder: r for r in runs}, tmp_path, base, ["stage3:data.size=8"], tmp_path)


# --------------------------------------------------------------------------- verdicts

PAIR_A = next(p for p in ab.PAIRS if p.key == "a")


def test_verdict_agrees_disagrees_or_is_inconclusive():
    good = {"text.held_out.all": 0.5, "text.seen.all": 0.75, "temporal.colour": 0.9, "temporal.jerk": 0.01}
    bad = {"text.held_out.all": 0.25, "text.seen.all": 0.5, "temporal.colour": 0.8, "temporal.jerk": 0.05}
    agrees = ab.verdict(PAIR_A, {"factorized": good, "direct": bad})
    assert "AGREES" in agrees and "**factorized** won 4 of 4" in agrees and "50% vs 25%" in agrees
    disagrees = ab.verdict(PAIR_A, {"factorized": bad, "direct": good})
    assert "DISAGREES" in disagrees and "**direct** won 4 of 4" in disagrees
    # lower jerk wins; equal and unmeasured metrics count for nobody
    tie = ab.verdict(PAIR_A, {"factorized": dict(good, **{"text.seen.all": 0.5, "temporal.colour": None}),
                              "direct": dict(bad, **{"temporal.jerk": 0.001, "text.seen.all": 0.5})})
    assert "INCONCLUSIVE" in tie and "of 3 key metrics" in tie
    # gaps within the noise margin decide nothing
    noise = ab.verdict(PAIR_A, {"factorized": good, "direct": dict(good, **{"temporal.jerk": 0.0113,
                                                                            "text.seen.all": 0.74})})
    assert "INCONCLUSIVE" in noise and "factorized 0, direct 0 of 4" in noise
    assert all(ab.margin(k) > 0 for p in ab.PAIRS for k, _ in p.metrics)


# --------------------------------------------------------------------------- end to end

def test_smoke_run_writes_report_and_resumes(tmp_path, base, capsys):
    out, report = tmp_path / "t1", tmp_path / "EVAL.md"
    argv = ["--out", str(out), "--steps", "2", "--base-config", str(base), "--report", str(report),
            "--held-out", "1", "--background-prompts", "1", "--eval-steps", "2", "--device", "cpu"]
    argv += [x for s in TINY_SETS for x in ("--set", s)]
    assert cli.main(["table1", *argv]) == 0
    text = report.read_text()
    assert "emu-video table1 --out" in text and "--steps 2" in text
    runs_table = text.split("## Runs")[1].split("\n## ")[0]
    assert len(re.findall(r"^\| (shared|a_|b_|c_|e_)", runs_table, re.M)) == 9
    for pair in ab.PAIRS:
        section = text.split(f"## {pair.title}")[1].split("\n## ")[0]
        (first, _), (second, _) = pair.variants
        assert f"| metric | {first} | {second} |" in section
        assert re.search(r"Verdict: .*(AGREES|DISAGREES|INCONCLUSIVE) .*paper", section)
    direct = json.loads((out / "a_factorization/direct/eval/metrics.json").read_text())
    assert direct["settings"]["direct"] is True and direct["metrics"]["animate.psnr_frame0"] is None
    baseline = json.loads((out / "shared/baseline/eval/metrics.json").read_text())["metrics"]
    assert baseline["zero_snr.n_black"] >= 1 and baseline["zero_snr.n_white"] >= 1
    assert baseline["animate.psnr_frame0"] is not None
    record = json.loads((out / "c_stages/multi_stage/ablation.json").read_text())
    assert record["steps"] == 1 and record["train_wall_s"] >= 0
    capsys.readouterr()

    # resumable: nothing is retrained or re-evaluated, the report is rebuilt identically
    export = out / "shared/baseline/export/model.safetensors"
    stamp = export.stat().st_mtime_ns
    assert cli.main(["table1", *argv]) == 0
    log = capsys.readouterr().out
    assert log.count("trained already") == 9 and log.count("evaluated already") == 5
    assert export.stat().st_mtime_ns == stamp and report.read_text() == text

    # a run stored before a config field existed (here model.snr_shift) reads it as its default: still equal
    stored = out / "shared/baseline/config.json"
    old = json.loads(stored.read_text())
    assert old["model"].pop("snr_shift") == 1.0
    stored.write_text(json.dumps(old))
    assert cli.main(["table1", *argv]) == 0
    assert capsys.readouterr().out.count("trained already") == 9

    # a changed budget in the same folder would make the pairs unequal: refused
    assert cli.main(["table1", *[a if a != "2" else "3" for a in argv]]) == 2
    assert "different config" in capsys.readouterr().err
