"""`emu-video table1 --out DIR --steps N`: the paper's Table 1 design ablations at toy scale.

Each pair trains two video models with an EQUAL budget (same steps, data, seed, VAE, text
encoders), evaluates both with the analytic oracle (trainer/evaluate.py) and writes one markdown
report (docs/EVAL.md) whose every number and verdict comes from those runs:

  (a) factorized (first frame, then image + text → video)  vs  direct text-to-video
  (b) zero-terminal-SNR schedule                           vs  the standard (SD) schedule
  (c) multi-stage (stage 1 low res / high fps → stage 2)   vs  single-stage (stage 2 only)
  (e) frozen spatial weights                               vs  fine-tuning all of them

Layout under DIR: shared/{vae,t2i,baseline}, a_factorization/direct, b_schedule/{standard_t2i,standard},
c_stages/{stage1,multi_stage}, e_spatial/finetune_all; each run folder holds the trainer's output
(export/ included) and eval/ (report.md, metrics.json, contact sheets). The factorized, zero-SNR,
single-stage and frozen variants are one and the same recipe (stage-2 settings from the t2i
model, spatial frozen, zero terminal SNR), so it is trained once as shared/baseline. Rerunning the
command skips every run whose export (and metrics.json) already exist.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..model.config import ConfigError, InputError
from . import evaluate as ev
from .config import TrainConfig, config_from_json, load_config

# Per-role geometry, mirroring trainer/configs/toy_{vae,t2i,video_stage1,video_stage2}.toml (§3.3:
# stage 1 low resolution / high fps / 1 s, stage 2 higher resolution / lower fps / 2 s).
ROLES = {
    "vae": ("vae", {"data.size": 64, "data.num_frames": 2, "data.fps": 8, "data.batch_size": 8,
                    "vae.latent_channels": 4, "vae.base_channels": 32, "vae.channel_mult": [1, 2, 2],
                    "vae.norm_groups": 8, "optim.lr": 2e-4}),
    "t2i": ("t2i", {"data.size": 64, "data.num_frames": 2, "data.fps": 8, "data.batch_size": 16}),
    "stage1": ("video", {"data.size": 32, "data.num_frames": 8, "data.fps": 8}),
    "stage2": ("video", {"data.size": 64, "data.num_frames": 8, "data.fps": 4, "data.batch_size": 4}),
}


# --------------------------------------------------------------------------- the variants

def direct_t2v(cfg: TrainConfig) -> None:
    """Table 1a baseline: the image is dropped from EVERY sample (so the model never sees a first
    frame), the text as often as the factorized model drops it (condition_dropout draws r ~ U[0,1):
    [0, p_both) drops both, the rest drops the image only)."""
    d = cfg.diffusion
    text_drop = d.p_drop_text + d.p_drop_both
    image_only = 1.0 - text_drop
    while text_drop + image_only > 1.0:      # float rounding must not push the sum past 1 (validate)
        image_only = math.nextafter(image_only, 0.0)
    d.p_drop_text, d.p_drop_both, d.p_drop_image = 0.0, text_drop, image_only


def standard_schedule(cfg: TrainConfig) -> None:
    """Table 1b: SD's schedule (terminal SNR > 0); v-prediction kept so only the schedule differs."""
    cfg.model.zero_terminal_snr = False


def train_all_spatial(cfg: TrainConfig) -> None:
    """Table 1e: fine-tune the spatial (text-to-image) weights along with the temporal ones."""
    cfg.model.train_spatial = True


def table1_eval(**settings) -> ev.EvalSettings:
    """Table 1 compares what each arm's model itself makes of the known frame, so it is not pinned."""
    return ev.EvalSettings(keep_known=False, **settings)


@dataclass(frozen=True)
class Run:
    folder: str                                   # relative to DIR
    role: str                                     # key of ROLES
    steps: int
    init_from: str = ""                           # folder of the run whose export this one starts from
    variant: Callable[[TrainConfig], None] | None = None
    evaluate: bool = True
    direct: bool = False                          # evaluated as direct text-to-video


@dataclass(frozen=True)
class Pair:
    key: str
    title: str
    variants: tuple[tuple[str, str], tuple[str, str]]   # (name, run folder) ×2; the paper's winner first
    metrics: tuple[tuple[str, int], ...]                 # key metrics, +1 = higher is better, -1 = lower
    how: str


PAIRS = (
    Pair("a", "(a) factorized vs direct text-to-video",
         (("factorized", "shared/baseline"), ("direct", "a_factorization/direct")),
         (("text.held_out.all", 1), ("text.seen.all", 1), ("temporal.colour", 1), ("temporal.jerk", -1)),
         "Both from the same t2i model, frozen spatial weights, same steps. The direct model is trained with "
         "the image dropped from every sample and sampled with no first frame (`emu-video eval --direct`)."),
    Pair("b", "(b) zero terminal SNR vs the standard schedule",
         (("zero_snr", "shared/baseline"), ("standard", "b_schedule/standard")),
         (("zero_snr.black_mean", -1), ("zero_snr.white_mean", 1), ("text.held_out.background", 1),
          ("text.seen.background", 1)),
         "The schedule changes BOTH the t2i stage and the video stage: the first frame is sampled by the "
         "frozen spatial weights, so a zero-SNR t2i sampled on the standard schedule (or the reverse) would be "
         "a train/test mismatch, not a fair comparison. Each t2i gets the same steps; v-prediction in both."),
    Pair("c", "(c) multi-stage vs single-stage training",
         (("multi_stage", "c_stages/multi_stage"), ("single_stage", "shared/baseline")),
         (("text.held_out.all", 1), ("text.seen.all", 1), ("temporal.jerk", -1), ("temporal.size_cv", -1)),
         "Same total video steps: multi-stage spends a share at stage 1 (lower resolution, higher fps, "
         "cheaper per step) and the rest at stage 2; single-stage spends all of them at stage 2."),
    Pair("e", "(e) frozen spatial weights vs fine-tuning all of them",
         (("frozen", "shared/baseline"), ("finetune_all", "e_spatial/finetune_all")),
         (("text.held_out.all", 1), ("text.seen.all", 1), ("text.held_out.colour", 1),
          ("text.held_out.shape", 1)),
         "Both from the same t2i model, same steps; fine-tune-all also updates the spatial weights (and the "
         "first frame they generate)."),
)
# A key metric decides only when the variants differ by more than this (smaller gaps are noise at toy
# scale and count as ties): rates by 5 points, 0..255 background levels by 5, jerk / size CV as given.
MARGINS = {"text": 0.05, "temporal.colour": 0.05, "temporal.jerk": 0.005, "temporal.size_cv": 0.01, "zero_snr": 5.0}
EXPECTED = {"a": "factorized > direct", "b": "zero-SNR > standard at high resolution",
            "c": "multi-stage > single-stage at the same budget", "e": "frozen > fine-tune-all"}


def plan(steps: int, vae_steps: int, t2i_steps: int, stage1_fraction: float, train_vae: bool = True) -> list[Run]:
    """Every run in dependency order."""
    if steps < 2:
        raise InputError(f"--steps must be >= 2 (multi-stage splits it between two stages), got {steps}")
    if not 0 < stage1_fraction < 1:
        raise InputError(f"--stage1-fraction must be in (0, 1), got {stage1_fraction}")
    stage1 = min(steps - 1, max(1, round(steps * stage1_fraction)))
    runs = [Run("shared/vae", "vae", vae_steps, evaluate=False)] if train_vae else []
    return runs + [
        Run("shared/t2i", "t2i", t2i_steps, evaluate=False),
        Run("shared/baseline", "stage2", steps, "shared/t2i"),
        Run("a_factorization/direct", "stage2", steps, "shared/t2i", direct_t2v, direct=True),
        Run("b_schedule/standard_t2i", "t2i", t2i_steps, variant=standard_schedule, evaluate=False),
        Run("b_schedule/standard", "stage2", steps, "b_schedule/standard_t2i", standard_schedule),
        Run("c_stages/stage1", "stage1", stage1, "shared/t2i", evaluate=False),
        Run("c_stages/multi_stage", "stage2", steps - stage1, "c_stages/stage1"),
        Run("e_spatial/finetune_all", "stage2", steps, "shared/t2i", train_all_spatial),
    ]


# --------------------------------------------------------------------------- configs

def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)          # strings, numbers and lists of them are valid TOML literals too


def _split_sets(items: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """`--set key=v` applies to every run, `--set ROLE:key=v` to the runs of one role."""
    common, by_role = [], {role: [] for role in ROLES}
    for item in items:
        head = item.split("=", 1)[0]
        if ":" in head:
            role, rest = item.split(":", 1)
            if role not in ROLES:
                raise ConfigError(f"--set {item!r}: unknown role {role!r}; use one of {list(ROLES)} or no prefix")
            by_role[role].append(rest)
        else:
            common.append(item)
    return common, by_role


def _t2i_of(run: Run, runs: dict[str, Run]) -> str:
    while runs[run.folder].role != "t2i":
        run = runs[run.init_from]
    return run.folder


def run_config(run: Run, runs: dict[str, Run], out: Path, base: Path | None, sets: list[str], vae: Path) -> TrainConfig:
    """Base config → runner defaults → role geometry → user --set (all, then role) → the run's own
    structure (stage, folders, chaining, steps: never overridable, so budgets stay equal)."""
    common, by_role = _split_sets(sets)
    stage, geometry = ROLES[run.role]
    defaults = {"data.root": str(out / "data"), "validation.prompts": [], "validation.every": 0, **geometry}
    structure = {"stage": stage, "name": run.folder.replace("/", "_"), "out_dir": str(out / run.folder),
                 "loop.max_steps": run.steps}
    if stage != "vae":
        structure["vae.path"] = str(vae)
    if run.init_from:
        structure["init_from"] = str(out / run.init_from / "export" / "model.safetensors")
    if stage == "video":
        t2i = out / _t2i_of(run, runs) / "export"
        structure["text.paths"] = [str(t2i / "text_t5.safetensors"), str(t2i / "text_clip.safetensors")]
    elif stage == "t2i":
        structure.update({"text.paths": [], "text.build_tiny": True})
    overrides = [f"{k}={_toml(v)}" for k, v in defaults.items()] + common + by_role[run.role]
    overrides += [f"{k}={_toml(v)}" for k, v in structure.items()]
    cfg = load_config(base, overrides)
    if run.variant is not None:
        run.variant(cfg)
        cfg.validate()
    return cfg


# --------------------------------------------------------------------------- running

@dataclass
class Options:
    out: Path
    steps: int
    base_config: Path | None = None
    sets: list[str] = field(default_factory=list)
    vae_steps: int = 0              # 0 = --steps
    t2i_steps: int = 0              # 0 = --steps
    vae: str = ""                   # an existing VAE export instead of training shared/vae
    stage1_fraction: float = 0.75   # §3.3: most iterations at stage 1
    report: Path = Path("docs/EVAL.md")
    eval: ev.EvalSettings = field(default_factory=lambda: table1_eval(steps=25))
    held_out: int = 8
    background_prompts: int = 2     # extra prompts per black / white background (zero-SNR check)
    command: str = ""


def eval_prompts(held_out: int, per_background: int, seed: int) -> list[dict]:
    """The evaluation prompt set: N held-out + N seen (evaluate.default_prompts) plus prompts on black
    and white backgrounds (group "background": counted by the zero-SNR and temporal rows only)."""
    import numpy as np

    from . import toy_world as tw

    prompts = ev.default_prompts(held_out, seed)
    rng = np.random.default_rng([seed, 0xB6])
    for background in ("black", "white"):
        for _ in range(per_background):
            a = dict(tw.sample_attributes(rng), background=background)
            if tw.is_held_out(a):          # e.g. "up" on white: keep this group to seen combinations
                a["motion"], a["speed"] = "static", "none"
            prompts.append(dict(caption=tw.caption(a), attributes=a, group="background"))
    return prompts


def _same_config(folder: Path, cfg: TrainConfig) -> None:
    # Compared after loading through TrainConfig, so a field added later with a default (read back as
    # that default) is no change, while any real difference in steps, --set or base config is.
    stored = folder / "config.json"
    if stored.is_file() and json.loads(config_from_json(stored.read_text()).to_json()) != json.loads(cfg.to_json()):
        raise ConfigError(f"{folder} holds a run with a different config (steps, --set or base config changed); "
                          f"delete that folder or use another --out so budgets stay equal")


def _record(folder: Path) -> dict:
    path = folder / "ablation.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _save_record(folder: Path, record: dict) -> None:
    tmp = folder / "ablation.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, folder / "ablation.json")


def train_run(run: Run, cfg: TrainConfig, folder: Path, log) -> dict:
    from .train import train

    record = _record(folder)
    if (folder / "export" / "models.json").is_file():
        log(f"  trained already ({record.get('steps', '?')} steps), skipped")
        return record
    start = time.perf_counter()
    result = train(cfg, log=lambda *a, **k: None)
    if not result.get("export"):
        raise RuntimeError(f"{folder}: training stopped before max_steps (loop.stop_at?); rerun to continue")
    tail = result["losses"][-max(1, len(result["losses"]) // 10):]
    record = dict(record, steps=cfg.loop.max_steps, seed=cfg.seed, stage=cfg.stage,
                  train_wall_s=round(time.perf_counter() - start, 1),
                  final_loss=sum(tail) / len(tail) if tail else None)
    _save_record(folder, record)
    log(f"  trained {cfg.loop.max_steps} steps in {record['train_wall_s']:.1f} s, final loss "
        f"{record['final_loss'] if record['final_loss'] is None else round(record['final_loss'], 4)}")
    return record


def eval_run(run: Run, folder: Path, opts: Options, prompts: list[dict], log) -> dict:
    from dataclasses import replace

    settings = replace(opts.eval, direct=run.direct)
    metrics_path = folder / "eval" / "metrics.json"
    wanted = dict(seed=settings.seed, steps=settings.steps, prompts=len(prompts), direct=settings.direct)
    if metrics_path.is_file():
        result = json.loads(metrics_path.read_text())
        if {k: result["settings"].get(k) for k in wanted} == wanted:
            log("  evaluated already, skipped")
            return result
    start = time.perf_counter()
    result = ev.evaluate(folder / "export", folder / "eval", prompts, settings, progress=False)
    _save_record(folder, dict(_record(folder), eval_wall_s=round(time.perf_counter() - start, 1)))
    m = result["metrics"]
    log(f"  evaluated in {_record(folder)['eval_wall_s']:.1f} s: held-out all {ev._fmt('', m['text.held_out.all'])}, "
        f"seen all {ev._fmt('', m['text.seen.all'])}")
    return result


def run_table1(opts: Options, log=print) -> dict:
    """Train and evaluate every run (resumably), write the report; returns {folder: metrics.json dict}."""
    out = opts.out.resolve()
    base = Path(opts.base_config).resolve() if opts.base_config else None
    runs = plan(opts.steps, opts.vae_steps or opts.steps, opts.t2i_steps or opts.steps, opts.stage1_fraction,
                train_vae=not opts.vae)
    vae = Path(opts.vae).resolve() if opts.vae else out / "shared/vae/export/vae.safetensors"
    if opts.vae and not vae.is_file():
        raise InputError(f"--vae {opts.vae}: file not found; give a VAE export (vae.safetensors) or omit --vae")
    by_folder = {r.folder: r for r in runs}
    configs = {r.folder: run_config(r, by_folder, out, base, opts.sets, vae) for r in runs}   # fail early
    prompts = eval_prompts(opts.held_out, opts.background_prompts, opts.eval.seed)
    results, records = {}, {}
    for i, run in enumerate(runs, 1):
        folder, cfg = out / run.folder, configs[run.folder]
        log(f"[{i}/{len(runs)}] {run.folder}: {cfg.stage} ({run.role}), {run.steps} steps, seed {cfg.seed}")
        _same_config(folder, cfg)
        records[run.folder] = train_run(run, cfg, folder, log)
        if run.evaluate:
            results[run.folder] = eval_run(run, folder, opts, prompts, log)
        records[run.folder] = dict(_record(folder), role=run.role, init_from=run.init_from)
    text = render(opts, runs, configs, records, results)
    report = Path(opts.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    tmp = report.with_name(report.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, report)
    log(f"wrote {report}")
    return results


# --------------------------------------------------------------------------- verdicts and report

def margin(key: str) -> float:
    return next(m for prefix, m in MARGINS.items() if key.startswith(prefix))


def verdict(pair: Pair, metrics: dict[str, dict]) -> str:
    """One sentence from the pair's key metrics: who won how many, and whether that agrees with the paper."""
    (first, _), (second, _) = pair.variants
    wins, details = {first: 0, second: 0}, []
    for key, sign in pair.metrics:
        a, b = metrics[first].get(key), metrics[second].get(key)
        if a is None or b is None:
            continue
        if abs(a - b) > margin(key):
            wins[first if (a - b) * sign > 0 else second] += 1
        details.append(f"{key} {ev._fmt(key, a)} vs {ev._fmt(key, b)}")
    compared = ", ".join(details) or "no key metric was measurable"
    if wins[first] == wins[second]:
        return (f"Neither variant won ({first} {wins[first]}, {second} {wins[second]} of {len(details)} key metrics: "
                f"{compared}), so this run is INCONCLUSIVE about the paper's finding ({EXPECTED[pair.key]}).")
    winner = max(wins, key=wins.get)
    loser = second if winner == first else first
    agree = "AGREES" if winner == first else "DISAGREES"
    return (f"**{winner}** won {wins[winner]} of {len(details)} key metrics against {loser} ({compared}); "
            f"this {agree} with the paper ({EXPECTED[pair.key]}).")


def render(opts: Options, runs: list[Run], configs: dict, records: dict, results: dict) -> str:
    e = opts.eval
    lines = ["# Table 1 at toy scale (generated)", "",
             "Written by `emu-video table1`; every number and verdict below comes from the runs it lists. "
             "Rerun the command to regenerate (finished runs are skipped).", "",
             "```", opts.command or "emu-video table1", "```", "",
             f"Budget per video run: {opts.steps} steps (multi-stage: split between its two stages); "
             f"t2i runs: {opts.t2i_steps or opts.steps} steps; "
             + (f"VAE: {opts.vae} (given). " if opts.vae else f"VAE: {opts.vae_steps or opts.steps} steps. ")
             + f"Evaluation: {opts.held_out} held-out + {opts.held_out} seen prompts + {opts.background_prompts} "
             f"per black/white background, {e.steps} DDIM steps, seed {e.seed}, image CFG {e.image_cfg}, "
             f"text CFG {e.text_cfg}.", "",
             "## Runs", "",
             "| run | stage | from | steps | seed | size | fps | frames | batch | train s | eval s | final loss |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        c, r = configs[run.folder], records.get(run.folder, {})
        loss = r.get("final_loss")
        lines.append(f"| {run.folder} | {c.stage} | {run.init_from or '-'} | {c.loop.max_steps} | {c.seed} | "
                     f"{c.data.size} | {c.data.fps} | {c.data.num_frames} | {c.data.batch_size} | "
                     f"{r.get('train_wall_s', 'n/a')} | {r.get('eval_wall_s', '-')} | "
                     f"{'n/a' if loss is None else f'{loss:.4f}'} |")
    for pair in PAIRS:
        names = [name for name, _ in pair.variants]
        metrics = {name: results[folder]["metrics"] for name, folder in pair.variants}
        key_list = ", ".join(f"{k} ({'higher' if s > 0 else 'lower'} is better, ties within {margin(k):g})"
                             for k, s in pair.metrics)
        lines += ["", f"## {pair.title}", "", f"Paper: {EXPECTED[pair.key]}. {pair.how}", "",
                  " vs ".join(f"{n} = `{f}`" for n, f in pair.variants) + f". Key metrics: {key_list}.", "",
                  ev.compare_reports([results[f] for _, f in pair.variants], names=names),
                  f"Verdict: {verdict(pair, metrics)}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emu-video table1", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for every run (resumable)")
    p.add_argument("--steps", type=int, required=True, help="training steps of every video run (equal budget)")
    p.add_argument("--base-config", default="toy_base",
                   help="base TOML every run starts from (data, model preset, optimiser, loop): a path or a "
                        "shipped name in trainer/configs/")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="[ROLE:]SECTION.KEY=VALUE",
                   help=f"override for every run, or for one role ({', '.join(ROLES)}), e.g. --set stage1:data.size=32")
    p.add_argument("--vae-steps", type=int, default=0, help="steps of the shared VAE (default: --steps)")
    p.add_argument("--t2i-steps", type=int, default=0, help="steps of each t2i run (default: --steps)")
    p.add_argument("--vae", default="", help="reuse this VAE export instead of training one")
    p.add_argument("--stage1-fraction", type=float, default=0.75, help="(c): share of --steps spent in stage 1")
    p.add_argument("--report", default="docs/EVAL.md", help="markdown report to write")
    p.add_argument("--held-out", type=int, default=8, help="eval: N held-out + N seen prompts")
    p.add_argument("--background-prompts", type=int, default=2, help="eval: extra prompts per black/white background")
    p.add_argument("--eval-steps", type=int, default=25, help="eval: DDIM steps per sampling run")
    p.add_argument("--eval-seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu / cuda for training and eval (default: cuda if available)")
    return p


def table1_main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    from .train import resolve_config_path

    sets = list(args.sets) + ([f"loop.device={_toml(args.device)}"] if args.device else [])
    try:
        base = resolve_config_path(args.base_config)
    except ConfigError as e:
        print(f"emu-video table1: {e}", file=sys.stderr)
        return 2
    opts = Options(out=Path(args.out), steps=args.steps, base_config=base, sets=sets, vae_steps=args.vae_steps,
                   t2i_steps=args.t2i_steps, vae=args.vae,
                   stage1_fraction=args.stage1_fraction, report=Path(args.report),
                   eval=table1_eval(seed=args.eval_seed, steps=args.eval_steps, device=args.device),
                   held_out=args.held_out, background_prompts=args.background_prompts,
                   command="emu-video table1 " + shlex.join(argv))
    try:
        run_table1(opts)
    except ValueError as e:         # InputError / ConfigError / CheckpointError: written for users
        print(f"emu-video table1: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(table1_main())
