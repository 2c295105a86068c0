"""`emu-video train --config FILE.toml [--set section.key=value ...]`: run one stage of Emu Video's
multi-stage training (§3.3) — resumable, DDP-ready (torchrun), exporting node-loadable files.

    emu-video train --config trainer/configs/smoke_vae.toml
    torchrun --nproc_per_node 2 -m emu_video.cli train --config ... --set loop.max_steps=1000
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..model.config import ConfigError, InputError
from ..model.video_io import atomic_path
from . import distributed as dist_lib
from . import loop
from .config import TrainConfig, load_config
from .data import MANIFEST, VideoDataset
from .ema import EMA
from .stages import make_stage
from .state import full_tensor

CONFIG_DIR = Path(__file__).parent / "configs"


def prepare_data(cfg: TrainConfig, info) -> None:
    """Generate toy-world clips into data.root when asked and the folder has none (rank 0 only)."""
    root = Path(cfg.data.root)
    if cfg.data.toy_clips > 0 and info.is_main and not (root / MANIFEST).is_file():
        from .toy_world import generate
        generate(str(root), cfg.data.toy_clips, size=cfg.data.toy_size, num_frames=cfg.data.toy_frames,
                 fps=cfg.data.toy_fps, seed=cfg.seed, lossless=cfg.data.toy_lossless)
    dist_lib.barrier(info)


def make_dataset(cfg: TrainConfig) -> VideoDataset:
    d = cfg.data
    return VideoDataset(d.root, d.num_frames, d.fps, d.size, start=d.start, augment=d.augment or None,
                        seed=cfg.seed, manifest=d.manifest or MANIFEST)


def train(cfg: TrainConfig, log=print) -> dict:
    """Run the stage; returns {"step", "losses", "export": {...} (when finished), "samples": [...]}."""
    info = dist_lib.setup(cfg.loop.device, cfg.dist.backend)
    log = log if info.is_main else (lambda *a, **k: None)
    try:
        out_dir = Path(cfg.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        config_json = cfg.to_json()
        if info.is_main:
            (out_dir / "config.json").write_text(json.dumps(json.loads(config_json), indent=2) + "\n")
        prepare_data(cfg, info)
        dataset = make_dataset(cfg)
        log(f"data: {dataset.summary()}")
        if info.is_main and dataset.skipped:
            (out_dir / "skipped.jsonl").write_text("".join(json.dumps(s) + "\n" for s in dataset.skipped))
        torch.manual_seed(cfg.seed)      # identical fresh weights on every rank
        stage = make_stage(cfg, info.device, dataset, config_json)
        result = loop.run(cfg, stage, dataset, info, out_dir, config_json, log)
        result["skipped"] = len(dataset.skipped)
        if stage.cache is not None:     # counted in this process (num_workers = 0) or its workers
            result["cache"] = {"hits": stage.cache.hits, "misses": stage.cache.misses}
        if result["finished"]:
            if info.enabled and cfg.dist.strategy == "fsdp":
                stage, result = unsharded(stage, result, cfg, info, dataset, config_json)
            result["export"] = export(stage, out_dir, result["ema"], info, cfg)
            result["samples"] = loop.validate(stage, out_dir, result["step"], result["ema"], info)
            log(f"exported {result['export']}")
        return result
    finally:
        dist_lib.cleanup()


def unsharded(stage, result: dict, cfg: TrainConfig, info, dataset, config_json: str):
    """FSDP2: every rank gathers the full trained weights and EMA (a collective); rank 0 loads them
    into a fresh, unsharded copy of the stage, so export and sampling — rank 0 alone — run as they do
    in a single process. Returns (stage, result) with result["params"] / ["ema"] holding full tensors."""
    full = {k: full_tensor(p.detach()) for k, p in result["params"].items()}
    ema = result["ema"]
    shadow = {k: full_tensor(v) for k, v in ema.shadow.items()} if ema is not None else None
    if not info.is_main:
        return stage, {**result, "params": full, "ema": None}
    torch.manual_seed(cfg.seed)          # the same frozen weights as the sharded copy started from
    fresh = make_stage(cfg, info.device, dataset, config_json)
    with torch.no_grad():
        for k, p in fresh.trainable.items():
            p.copy_(full[k])
    if ema is not None:
        ema = EMA(fresh.trainable, cfg.ema.decay, cfg.ema.warmup)
        ema.load_state(shadow, result["ema"].num_updates)
    return fresh, {**result, "params": fresh.trainable, "ema": ema}


def export(stage, out_dir: Path, ema, info, cfg: TrainConfig) -> dict:
    folder = out_dir / "export"
    paths = {}
    if info.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        paths = stage.export(folder, ema)
        manifest = {"stage": cfg.stage, "name": cfg.name, **paths}
        with atomic_path(str(folder / "models.json")) as tmp:      # written last: its presence means "exported"
            Path(tmp).write_text(json.dumps(manifest, indent=2) + "\n")
    dist_lib.barrier(info)
    return paths


def parse_args(argv):
    p = argparse.ArgumentParser(prog="emu-video train", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True,
                   help=f"stage config (.toml); a bare name is looked up in {CONFIG_DIR}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable), e.g. --set optim.lr=3e-4")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p.parse_args(argv)


def resolve_config_path(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / (name if name.endswith(".toml") else f"{name}.toml")
    if shipped.is_file():
        return shipped
    available = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
    raise ConfigError(f"config {name!r} not found (as a path or in {CONFIG_DIR}); shipped: {available}")


def train_main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(resolve_config_path(args.config), args.overrides)
        if args.print_config:
            print(json.dumps(json.loads(cfg.to_json()), indent=2))
            return 0
        train(cfg)
    except (ConfigError, InputError) as e:
        print(f"emu-video train: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
