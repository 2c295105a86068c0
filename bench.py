"""`emu-video bench`: speed and memory against references measured in the same run.

Every number is a ratio against a reference run here and now (never an absolute timing in a test):
  1. U-Net forward and forward+backward vs diffusers' UNet3DConditionModel (same pseudo-3D family)
     at a matched size: time ratio (goal <= 0.8) and peak-memory ratio (goal <= 1.0).
  2. One dual-guidance sampling step vs a single forward of the 3x batch: overhead (goal <= 5%).
  3. VAE decode of 64 frames vs 8 frames: peak-memory ratio (goal <= 1.2).
  4. torch.compile graph breaks (goal 0) and a bf16 autocast forward.
Peak memory is the CUDA allocator's peak on GPU, and on CPU the process's resident-set growth (sampled
every millisecond in a fresh subprocess whose large allocations are mmap-backed, so RSS tracks live tensors). diffusers is a dev extra, used here only as reference.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch

SIZES = {  # latent side, frames, batch, model width
    "small": dict(latent=16, frames=8, batch=1, width=32),
    "medium": dict(latent=32, frames=8, batch=1, width=64),
    "large": dict(latent=64, frames=16, batch=2, width=128),   # a GPU's size: 512 px frames under an 8x VAE
}


# ----------------------------------------------------------------------------- models

def ours(width: int, latent_channels: int = 4, context_dim: int = 64):
    from .model.config import UNetConfig
    from .model.unet import EmuUNet
    cfg = UNetConfig(latent_channels=latent_channels, model_channels=width, channel_mult=(1, 2, 4, 4),
                     num_res_blocks=2, attention_levels=(0, 1, 2), num_heads=8, norm_groups=32,
                     context_dims=(context_dim,), temporal_head_dim=min(64, width))
    return EmuUNet(cfg)


def reference(width: int, latent_channels: int = 4, context_dim: int = 64):
    try:
        from diffusers import UNet3DConditionModel
    except ImportError:
        sys.exit("emu-video bench needs diffusers as its reference: pip install 'comfyui-emu-video[dev]'")
    return UNet3DConditionModel(
        in_channels=2 * latent_channels + 1, out_channels=latent_channels,
        block_out_channels=tuple(width * m for m in (1, 2, 4, 4)), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
        cross_attention_dim=context_dim, attention_head_dim=8, norm_num_groups=32)


def unet_inputs(size: dict, latent_channels=4, context_dim=64, device="cpu"):
    g = torch.Generator().manual_seed(0)
    b, t, s = size["batch"], size["frames"], size["latent"]
    x = torch.randn(b, 2 * latent_channels + 1, t, s, s, generator=g).to(device)
    ctx = torch.randn(b, 16, context_dim, generator=g).to(device)
    ts = torch.full((b,), 500, device=device)
    return x, ts, ctx


def call(model, kind, x, ts, ctx):
    if kind == "ours":
        return model(x, ts, [ctx])
    return model(x, ts, encoder_hidden_states=ctx).sample


def step_fn(model, kind, mode, x, ts, ctx):
    if mode == "fwd":
        with torch.no_grad():
            call(model, kind, x, ts, ctx)
    else:
        out = call(model, kind, x, ts, ctx)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- measuring

def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fns: dict, device, repeats: int) -> dict:
    """Median seconds per call of each fn, calls interleaved so drift (clock, cache, other load)
    hits every candidate alike; one warm-up call each first."""
    for fn in fns.values():
        fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def reset_peak_rss() -> bool:
    """Linux (>= 4.0): writing 5 to clear_refs resets VmHWM, the peak RSS, to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def peak_growth(fn, device) -> float:
    """Peak memory (MiB) above what was resident before `fn` ran."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = rss_bytes()
    if reset_peak_rss():     # the kernel's own peak: a polling thread can miss a short spike on a busy CPU
        fn()
        return (peak_rss_bytes() - base) / 2**20
    peak, done = [0], threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.001)
    thread = threading.Thread(target=poll)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    peak[0] = max(peak[0], rss_bytes())
    return (peak[0] - base) / 2**20


def worker(args) -> dict:
    """Runs in a fresh process so one measurement's allocations never hide another's."""
    torch.manual_seed(0)
    device, size = args.device, SIZES[args.size]
    if args.worker.startswith("unet"):
        _, kind, mode = args.worker.split(":")
        model = (ours if kind == "ours" else reference)(size["width"]).to(device)
        x, ts, ctx = unet_inputs(size, device=device)
        step_fn(model, kind, mode, x, ts, ctx)  # warm-up: lazy inits and allocator pools
        import gc
        gc.collect()
        return {"peak_mib": peak_growth(lambda: step_fn(model, kind, mode, x, ts, ctx), device)}
    if args.worker.startswith("vae"):
        from .model.config import VAEConfig
        from .model.vae import AutoencoderKL
        frames = int(args.worker.split(":")[1])
        vae = AutoencoderKL(VAEConfig(latent_channels=4, base_channels=32, channel_mult=(1, 2, 4, 4),
                                      num_res_blocks=1, decode_chunk=8)).to(device).eval()
        lat = torch.randn(1, 4, frames, 16, 16, device=device)
        with torch.no_grad():
            vae.decode_video(lat[:, :, :8])  # warm-up
            return {"peak_mib": peak_growth(lambda: _decode(vae, lat), device)}
    raise SystemExit(f"unknown worker {args.worker}")


def _decode(vae, lat):
    with torch.no_grad():
        vae.decode_video(lat)


def in_subprocess(name: str, args) -> dict:
    cmd = [sys.executable, "-m", "emu_video.bench", "--worker", name, "--size", args.size, "--device", args.device]
    # glibc keeps freed heap memory mapped, so RSS would hide or inflate allocations depending on
    # what the warm-up left behind; serving every allocation over 64 KiB by mmap (returned to the
    # OS on free) makes resident memory track live tensors.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"bench worker {name} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the four checks

def bench_unet(args, rows):
    size, device = SIZES[args.size], args.device
    torch.manual_seed(0)
    models = {"ours": ours(size["width"]).to(device), "diffusers": reference(size["width"]).to(device)}
    x, ts, ctx = unet_inputs(size, device=device)
    params = {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in models.items()}
    rows.append(("U-Net parameters (M), ours / diffusers UNet3D", f"{params['ours']:.1f} / {params['diffusers']:.1f}",
                 f"{params['ours'] / params['diffusers']:.2f}", "matched layout"))
    for mode, label in (("fwd", "forward"), ("train", "forward+backward")):
        t = timed({kind: (lambda m=model, k=kind: step_fn(m, k, mode, x, ts, ctx)) for kind, model in models.items()},
                  device, args.repeats)
        rows.append((f"U-Net {label} time (s), ours / diffusers", f"{t['ours']:.3f} / {t['diffusers']:.3f}",
                     f"{t['ours'] / t['diffusers']:.2f}", "<= 0.8"))
        m = {kind: in_subprocess(f"unet:{kind}:{mode}", args)["peak_mib"] for kind in models}
        rows.append((f"U-Net {label} peak memory (MiB), ours / diffusers", f"{m['ours']:.0f} / {m['diffusers']:.0f}",
                     f"{m['ours'] / max(m['diffusers'], 1e-9):.2f}", "<= 1.0"))
    return models["ours"], (x, ts, ctx)


def bench_guidance(args, rows, model, inputs):
    from .model.conditioning import TextCondition
    from .model.sampling import SamplerSettings, sample_video
    from .model.schedule import NoiseSchedule
    x, ts, ctx = inputs
    c = model.cfg.latent_channels
    noise, cond, mask = x[:, :c], x[:, c:2 * c], x[:, 2 * c:]
    text, null = TextCondition([ctx], [None]), TextCondition([torch.zeros_like(ctx)], [None])
    settings = SamplerSettings(steps=1, image_cfg=1.5, text_cfg=7.5)
    schedule = NoiseSchedule()
    x3, ts3, ctx3 = x.repeat(3, 1, 1, 1, 1), ts.repeat(3), ctx.repeat(3, 1, 1)
    with torch.no_grad():
        t = timed({"step": lambda: sample_video(model, schedule, noise, cond, mask, text, null, settings),
                   "forward": lambda: model(x3, ts3, [ctx3])}, args.device, args.repeats)
    t_step, t_fwd = t["step"], t["forward"]
    rows.append(("dual-guidance step vs one 3x-batch forward (s)", f"{t_step:.3f} / {t_fwd:.3f}",
                 f"{t_step / t_fwd - 1:+.1%}", "<= +5%"))


def bench_vae(args, rows):
    m8 = in_subprocess("vae:8", args)["peak_mib"]
    m64 = in_subprocess("vae:64", args)["peak_mib"]
    rows.append(("VAE decode peak memory (MiB), 64 / 8 frames", f"{m64:.0f} / {m8:.0f}",
                 f"{m64 / max(m8, 1e-9):.2f}", "<= 1.2"))


def bench_compile(args, rows, model, inputs):
    import torch._dynamo as dynamo
    x, ts, ctx = inputs
    explanation = dynamo.explain(model)(x, ts, [ctx])
    rows.append(("torch.compile graph breaks (U-Net forward)", str(explanation.graph_break_count), "", "0"))
    dtype = torch.bfloat16
    with torch.no_grad(), torch.autocast(device_type=torch.device(args.device).type, dtype=dtype):
        out = model(x, ts, [ctx])
    rows.append(("bf16 autocast forward finite", str(bool(torch.isfinite(out).all())), "", "True"))


def bench_main(argv=None):
    p = argparse.ArgumentParser(prog="emu-video bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="medium")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", help="also write the rows as JSON here")
    p.add_argument("--params", action="store_true",
                   help="only print each preset's spatial/temporal parameter counts (built on the meta device)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.params:
        from .model.presets import PRESETS, count_parameters
        print("| preset | spatial (frozen) | temporal (trainable) |\n|---|---|---|")
        for name, make in PRESETS.items():
            n = count_parameters(make())
            print(f"| {name} | {n['spatial'] / 1e6:,.2f}M | {n['temporal'] / 1e6:,.2f}M |")
        return 0
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    print(f"emu-video bench: size={args.size} {SIZES[args.size]} device={args.device} "
          f"torch={torch.__version__} threads={torch.get_num_threads()}", flush=True)
    rows: list[tuple[str, str, str, str]] = []
    model, inputs = bench_unet(args, rows)
    bench_guidance(args, rows, model, inputs)
    bench_vae(args, rows)
    bench_compile(args, rows, model, inputs)
    print("| measurement | values | ratio | goal |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dict(zip(("measurement", "values", "ratio", "goal"), r)) for r in rows], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(bench_main())
