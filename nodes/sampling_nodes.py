"""Sampling nodes: text encode, first frame, image conditioning, scheduler, video, interpolation, extend.

Each node is a thin adapter over model/pipeline.py (§3.2's factorization): it moves the model to
the compute device for the run, reports progress every sampling step and honours Cancel between
steps (host.Progress / host.check_cancelled).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from ..cli import INTERP_FALLBACK, SAMPLING_FALLBACK
from ..model.config import GUIDANCE_FORMS
from . import host

CATEGORY = "Emu Video"
SEED = ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                "tooltip": "Noise seed. Noise is drawn on the CPU, so a seed gives the same video on any device."})
IMAGE_CFG = ("FLOAT", {"default": SAMPLING_FALLBACK["image_cfg"], "min": 0.0, "max": 20.0, "step": 0.05,
                       "tooltip": "s_I, image guidance: how strongly the known frames are followed "
                                  "(applied first, then text; 1 = no extra image guidance)."})
TEXT_CFG = ("FLOAT", {"default": SAMPLING_FALLBACK["text_cfg"], "min": 0.0, "max": 30.0, "step": 0.1,
                      "tooltip": "s_T, text guidance: how strongly the prompt is followed (1 = none)."})
FIRST_FRAME_TEXT_CFG = ("FLOAT", {**TEXT_CFG[1], "tooltip": (
    "s_T for the picture alone (1 = none). A scale tuned for the video can overshoot a single frame: the demo "
    "model draws the prompted shape far more often at 2 than at 7.5 (its manifest's first_frame_cfg, and the "
    "shipped workflows' value).")})
# Optional on the video sampler and extend: old workflows, saved without them, load with text_cfg throughout.
LATE_OFF = -1.0                 # the widgets' "no late scale" (a FLOAT widget cannot be None)
LATE_TEXT_CFG = ("FLOAT", {"default": LATE_OFF, "min": LATE_OFF, "max": 30.0, "step": 0.1, "tooltip": (
    "s_T on the late, nearly clean steps (t < late_below·T); -1 = text_cfg on every step. Not in the paper "
    "(guidance in a limited interval, Kynkäänniemi et al. 2024): strong text guidance late reshapes details the "
    "first frame fixes. On the demo model 3 below 0.7 kept more squares but lost held-out triangles, so its "
    "manifest and the shipped workflows keep text_cfg throughout (demo/MODEL_CARD.md).")})
LATE_BELOW = ("FLOAT", {"default": SAMPLING_FALLBACK["late_below"], "min": 0.01, "max": 1.0, "step": 0.05,
                        "tooltip": "Where the late steps start, as a fraction of the training timesteps T."})
GUIDANCE = (list(GUIDANCE_FORMS), {"default": SAMPLING_FALLBACK["guidance"], "tooltip": (
    "cfg: the paper's dual guidance. cfg++ (Chung et al. 2024, not in the paper): each step's x̂0 is guided but it "
    "is renoised with the unguided branch, so image_cfg/text_cfg act near 1 (1, 1 = x̂0 of the fully conditioned "
    "branch) and x̂0 is not pushed past the branches. On the demo model at 1 / 1 it kept more squares but fewer "
    "triangles than cfg at 3.5 / 7.5, so its manifest and the shipped workflows keep cfg (demo/MODEL_CARD.md).")})
LATE_INPUTS = {"late_text_cfg": LATE_TEXT_CFG, "late_below": LATE_BELOW, "guidance": GUIDANCE}
# The interpolation model's guidance defaults to off (cli.INTERP_FALLBACK): its ∅-image branch is untrained.
INTERP_IMAGE_CFG = ("FLOAT", {**IMAGE_CFG[1], "default": INTERP_FALLBACK["interp_image_cfg"]})
INTERP_TEXT_CFG = ("FLOAT", {**TEXT_CFG[1], "default": INTERP_FALLBACK["interp_text_cfg"],
                             "tooltip": "s_T for the in-betweens (1 = none, one forward per step; more blurred them "
                                        "on the demo model)."})
INTERP_DENOISE = ("FLOAT", {"default": INTERP_FALLBACK["interp_denoise"], "min": 0.01, "max": 1.0, "step": 0.01,
                            "tooltip": (
    "The fraction of the scheduler's steps run. 1 = every step from pure noise, as in the paper. Below 1 (not in "
    "the paper) the in-betweens start from the key frames' blend noised part-way and only the last steps run, at "
    "least one: diffusers' img2img strength, so fewer steps, unlike KSampler's denoise. The demo model ships 0.15 "
    "(3 of 25 steps), which scored higher than 1 on its eval (demo/MODEL_CARD.md).")})
SIZE_TOOLTIP = "Pixels; 0 = the model's training resolution. Must be a multiple of VAE × U-Net downsampling."
SPACINGS = ["trailing", "leading", "linspace"]
SCHEDULES = ["from model", "zero terminal SNR (v)", "standard (v)", "standard (eps)"]


# --------------------------------------------------------------------------- shared helpers

@contextmanager
def on_compute_device(module):
    """Move `module` to the compute device for a run, back to the offload device afterwards."""
    import torch

    device = torch.device(host.torch_device())
    module.to(device)
    try:
        yield device
    finally:
        offload = torch.device(host.offload_device())
        if offload != device:
            module.to(offload)
            host.soft_empty_cache()


def cancel_check() -> bool:
    """Called before every sampling step: raises the host's interruption (ComfyUI's
    InterruptProcessingException, or host.Cancelled outside ComfyUI) once Cancel was asked."""
    host.check_cancelled()
    return False


def step_progress(total: int, desc: str):
    progress = host.Progress(total, desc)
    return lambda *_: progress.update(1)


def vae_factor(vae) -> int:
    return vae.cfg.downsample_factor


def pixel_size(value: int, config) -> int:
    return int(value) if value else int(config.resolution)


@dataclass
class EmuScheduler:
    """What an EMU_SCHEDULER wire carries: the noise schedule choice and DDIM settings."""
    steps: int = SAMPLING_FALLBACK["steps"]
    spacing: str = "trailing"
    eta: float = 0.0
    rescale: float = SAMPLING_FALLBACK["rescale"]
    schedule: str = "from model"
    keep_known: bool = SAMPLING_FALLBACK["keep_known"]

    def noise_schedule(self, config):
        import dataclasses

        from ..model.config import InputError
        from ..model.schedule import NoiseSchedule

        base = config.schedule
        overrides = {"from model": None,
                     "zero terminal SNR (v)": dict(zero_terminal_snr=True, prediction_type="v"),
                     "standard (v)": dict(zero_terminal_snr=False, prediction_type="v"),
                     "standard (eps)": dict(zero_terminal_snr=False, prediction_type="eps")}
        if self.schedule not in overrides:
            raise InputError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        change = overrides[self.schedule]
        if change is None:
            return NoiseSchedule.from_config(base)
        return NoiseSchedule.from_config(dataclasses.replace(base, **change))

    def settings(self, image_cfg: float = 1.0, text_cfg: float = SAMPLING_FALLBACK["text_cfg"],
                 steps: int | None = None,
                 late_text_cfg: float = LATE_OFF, late_below: float = SAMPLING_FALLBACK["late_below"],
                 guidance: str = SAMPLING_FALLBACK["guidance"], denoise: float = 1.0):
        """late_text_cfg < 0 (the node's -1) = text_cfg on every step; guidance: "cfg" or "cfg++";
        denoise < 1 runs only the last steps, from a starting latent (the interpolation's)."""
        from ..model.sampling import SamplerSettings

        return SamplerSettings(steps=int(steps or self.steps), spacing=self.spacing, eta=float(self.eta),
                               image_cfg=float(image_cfg), text_cfg=float(text_cfg), rescale=float(self.rescale),
                               keep_known=bool(self.keep_known),
                               late_text_cfg=None if late_text_cfg < 0 else float(late_text_cfg),
                               late_below=float(late_below), guidance=str(guidance), denoise=float(denoise))


def make_latent(samples, fps: float, model) -> dict:
    return {"samples": samples, "fps": float(fps),
            "emu_video": {"latent_channels": int(samples.shape[1]), "model": model.name}}


def latent_samples(latent) -> object:
    from ..model.config import InputError

    if not isinstance(latent, dict) or "samples" not in latent:
        raise InputError("expected a LATENT dict with 'samples'; connect an Emu Video sampler's output")
    return latent["samples"]


def text_pair(text):
    from ..model.config import InputError

    if not isinstance(text, dict) or "cond" not in text:
        raise InputError("expected EMU_TEXT_COND from the 'Emu Video Text Encode' node")
    return text["cond"], text["null"]


def _sample(model, text, scheduler, image_cfg, text_cfg, steps, desc, run, options: dict | None = None):
    """Shared body: schedule + settings + progress + device placement around a pipeline call.
    `options`: optional EmuScheduler.settings inputs (the video's late_text_cfg / late_below / guidance,
    the interpolation's denoise)."""
    cond, null = text_pair(text)
    scheduler = scheduler or EmuScheduler()
    settings = scheduler.settings(image_cfg, text_cfg, steps, **(options or {}))
    schedule = scheduler.noise_schedule(model.config)
    settings.validate(schedule)
    with on_compute_device(model.unet):
        return run(schedule, settings, cond, null, step_progress(settings.steps_run, desc), cancel_check)


# --------------------------------------------------------------------------- nodes

class EmuVideoTextEncode:
    DESCRIPTION = ("Encodes a prompt with T5 and CLIP (§3.3). The negative prompt is the 'no text' branch of "
                   "guidance; leave it empty for the model's trained null (the empty prompt).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("EMU_TEXT_COND",)
    RETURN_NAMES = ("text",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoders": ("EMU_TEXT_ENCODERS",),
            "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "What the video shows."}),
            "negative": ("STRING", {"multiline": True, "default": "",
                                    "tooltip": "Optional negative prompt (empty = trained null text)."}),
        }}

    def encode(self, text_encoders, prompt, negative=""):
        from ..model.pipeline import encode_prompts

        with on_compute_device(text_encoders):
            cond, null = encode_prompts(text_encoders, prompt, negative)
        return ({"cond": cond.to("cpu"), "null": null.to("cpu"), "prompt": prompt},)


class EmuVideoScheduler:
    DESCRIPTION = ("DDIM settings for every Emu Video sampler: zero-terminal-SNR schedule with v-prediction "
                   "(§3.3) from the model file unless overridden, trailing timesteps so sampling starts at pure "
                   "noise, and CFG rescale (Lin et al.) against over-exposure.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("EMU_SCHEDULER",)
    RETURN_NAMES = ("scheduler",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "steps": ("INT", {"default": SAMPLING_FALLBACK["steps"], "min": 1, "max": 1000,
                              "tooltip": "DDIM steps (paper: 250)."}),
            "spacing": (SPACINGS, {"default": "trailing",
                                   "tooltip": "trailing starts at t = T−1 (needed for zero-SNR models)."}),
            "eta": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                              "tooltip": "0 = deterministic DDIM; 1 = DDPM-like noise."}),
            "rescale": ("FLOAT", {"default": SAMPLING_FALLBACK["rescale"], "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "Guidance rescale φ (0 = off; Lin et al. recommend 0.7 for zero-SNR)."}),
            "schedule": (SCHEDULES, {"default": "from model",
                                     "tooltip": "Noise schedule; 'from model' uses what the model was trained with."}),
        }, "optional": {
            "keep_known": ("BOOLEAN", {"default": SAMPLING_FALLBACK["keep_known"],
                                       "tooltip": "Known frames (your picture, key frames, context) come out exactly "
                                                  "as given (replacement method); off = the model redraws them."}),
        }}

    def build(self, steps, spacing="trailing", eta=0.0, rescale=SAMPLING_FALLBACK["rescale"], schedule="from model",
              keep_known=SAMPLING_FALLBACK["keep_known"]):
        from ..model.schedule import NoiseSchedule

        from ..model.config import InputError

        if schedule not in SCHEDULES:
            raise InputError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
        scheduler = EmuScheduler(int(steps), spacing, float(eta), float(rescale), schedule, bool(keep_known))
        scheduler.settings().validate(NoiseSchedule())  # bad spacing/eta/rescale fail here, not mid-run
        return (scheduler,)


class EmuVideoFirstFrame:
    DESCRIPTION = ("§3.2 step 1: the video model without its temporal layers is a text-to-image model; it makes "
                   "the first frame from the prompt (plain text guidance).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("EMU_VIDEO_MODEL",),
            "vae": ("EMU_VAE",),
            "text": ("EMU_TEXT_COND",),
            "steps": ("INT", {"default": 50, "min": 1, "max": 1000}),
            "text_cfg": FIRST_FRAME_TEXT_CFG,
            "seed": SEED,
            "width": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8, "tooltip": SIZE_TOOLTIP}),
            "height": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8, "tooltip": SIZE_TOOLTIP}),
        }, "optional": {
            "scheduler": ("EMU_SCHEDULER", {"tooltip": "Spacing/eta/rescale/schedule; steps come from this node."}),
        }}

    def generate(self, model, vae, text, steps, text_cfg, seed, width=0, height=0, scheduler=None):
        from ..model.pipeline import decode, generate_first_frame

        h, w = pixel_size(height, model.config), pixel_size(width, model.config)

        def run(schedule, settings, cond, null, callback, cancel):
            return generate_first_frame(model.unet, schedule, model.config, cond, null, settings, h, w, seed,
                                        vae_factor(vae), callback=callback, cancel=cancel)
        latent = _sample(model, text, scheduler, 1.0, text_cfg, steps, "first frame", run)
        with on_compute_device(vae):
            frames = decode(vae, latent, cancel=cancel_check)
        return (frames[:, 0],)


class EmuVideoImageConditioning:
    DESCRIPTION = ("Makes the first-frame conditioning (§3.2, Fig. 3) from any IMAGE (first-frame node or "
                   "LoadImage): resized to the model size, then VAE-encoded. Default resize: scale the short side "
                   "and centre crop.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("EMU_IMAGE_COND", "IMAGE")
    RETURN_NAMES = ("image_cond", "image")
    OUTPUT_TOOLTIPS = ("Encoded first frame for the video sampler.", "The resized image that was encoded.")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE",),
            "vae": ("EMU_VAE",),
            "model": ("EMU_VIDEO_MODEL", {"tooltip": "Used for its training size and to validate sizes."}),
            "resize_mode": (["crop", "pad", "stretch"], {
                "default": "crop", "tooltip": "crop: resize the short side and centre crop (default); pad: fit "
                                              "inside with black borders; stretch: ignore the aspect ratio."}),
            "width": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8, "tooltip": SIZE_TOOLTIP}),
            "height": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8, "tooltip": SIZE_TOOLTIP}),
        }}

    def encode(self, image, vae, model, resize_mode="crop", width=0, height=0):
        from ..model.pipeline import encode_image, latent_size, prepare_image

        h, w = pixel_size(height, model.config), pixel_size(width, model.config)
        latent_size(h, w, model.config, vae_factor(vae))  # clear error with the nearest valid sizes
        prepared = prepare_image(image, h, w, resize_mode)
        with on_compute_device(vae):
            latent = encode_image(vae, prepared).cpu()
        return ({"latent": latent, "height": h, "width": w}, prepared)


class EmuVideoSampler:
    DESCRIPTION = ("§3.2 step 2: generates the video conditioned on the text and the first frame, with separate "
                   "image and text guidance (image first, then text).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("EMU_VIDEO_MODEL",),
            "text": ("EMU_TEXT_COND",),
            "image_cond": ("EMU_IMAGE_COND",),
            "scheduler": ("EMU_SCHEDULER",),
            "image_cfg": IMAGE_CFG,
            "text_cfg": TEXT_CFG,
            "frames": ("INT", {"default": 0, "min": 0, "max": 1024,
                               "tooltip": "Frames to generate; 0 = what the model was trained on."}),
            "seed": SEED,
        }, "optional": dict(LATE_INPUTS)}

    def sample(self, model, text, image_cond, scheduler, image_cfg, text_cfg, frames, seed, late_text_cfg=LATE_OFF,
               late_below=SAMPLING_FALLBACK["late_below"], guidance=SAMPLING_FALLBACK["guidance"]):
        from ..model.pipeline import generate_video

        num_frames = int(frames) or int(model.config.num_frames)
        if not isinstance(image_cond, dict) or "latent" not in image_cond:
            from ..model.config import InputError
            raise InputError("expected EMU_IMAGE_COND from the 'Emu Video Image Conditioning' node")

        def run(schedule, settings, cond, null, callback, cancel):
            return generate_video(model.unet, schedule, model.config, cond, null, settings, image_cond["latent"],
                                  num_frames, seed, callback=callback, cancel=cancel)
        samples = _sample(model, text, scheduler, image_cfg, text_cfg, None, "video", run,
                          dict(late_text_cfg=late_text_cfg, late_below=late_below, guidance=guidance))
        return (make_latent(samples.cpu(), model.config.fps, model),)


class EmuVideoInterpolate:
    DESCRIPTION = ("Interpolation model I (§3.2): K frames → (K−1)·k+1 frames (raises the frame rate k×). The "
                   "known frames are noise-augmented to t = 100 as in the paper (§3.3). A model trained with "
                   "interp_fill = residual (the demo) draws corrections to the key frames' blend and needs "
                   "image_cfg = 1.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "interpolate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "interp_model": ("EMU_INTERP_MODEL",),
            "latent": ("LATENT",),
            "text": ("EMU_TEXT_COND",),
            "scheduler": ("EMU_SCHEDULER",),
            "image_cfg": INTERP_IMAGE_CFG,
            "text_cfg": INTERP_TEXT_CFG,
            "factor": ("INT", {"default": 0, "min": 0, "max": 16,
                               "tooltip": "k; 0 = the factor the interpolation model was trained with."}),
            "noise_aug": ("INT", {"default": 100, "min": 0, "max": 999,
                                  "tooltip": "Noise level of the known frames (paper: 100 at inference)."}),
            "seed": SEED,
        }, "optional": {"denoise": INTERP_DENOISE}}   # optional: workflows saved without it load with 1

    def interpolate(self, interp_model, latent, text, scheduler, image_cfg, text_cfg, factor, noise_aug, seed,
                    denoise=INTERP_FALLBACK["interp_denoise"]):
        from ..model.pipeline import interpolate

        samples = latent_samples(latent)
        k = int(factor) or int(interp_model.config.interp_factor)

        def run(schedule, settings, cond, null, callback, cancel):
            return interpolate(interp_model.unet, schedule, interp_model.config, samples, cond, null, settings,
                               seed, factor=k, noise_aug=int(noise_aug), callback=callback, cancel=cancel)
        out = _sample(interp_model, text, scheduler, image_cfg, text_cfg, None, "interpolation", run,
                      {"denoise": denoise})
        fps = float(latent.get("fps", interp_model.config.fps)) * k
        return (make_latent(out.cpu(), fps, interp_model),)


class EmuVideoExtend:
    DESCRIPTION = ("Longer videos (§4.3, Fig. 7): conditions on the last frames of a video and a new prompt and "
                   "appends new frames.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "extend"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("EMU_VIDEO_MODEL",),
            "latent": ("LATENT",),
            "text": ("EMU_TEXT_COND", {"tooltip": "The prompt for the continuation."}),
            "scheduler": ("EMU_SCHEDULER",),
            "image_cfg": IMAGE_CFG,
            "text_cfg": TEXT_CFG,
            "context_frames": ("INT", {"default": 0, "min": 0, "max": 1024,
                                       "tooltip": "Known frames taken from the end; 0 = half the model's length."}),
            "new_frames": ("INT", {"default": 0, "min": 0, "max": 1024,
                                   "tooltip": "Frames to add; 0 = the rest of the model's length."}),
            "seed": SEED,
        }, "optional": dict(LATE_INPUTS)}

    def extend(self, model, latent, text, scheduler, image_cfg, text_cfg, context_frames, new_frames, seed,
               late_text_cfg=LATE_OFF, late_below=SAMPLING_FALLBACK["late_below"],
               guidance=SAMPLING_FALLBACK["guidance"]):
        from ..model.pipeline import extend

        samples = latent_samples(latent)

        def run(schedule, settings, cond, null, callback, cancel):
            return extend(model.unet, schedule, model.config, samples, cond, null, settings, seed,
                          int(context_frames), int(new_frames), callback=callback, cancel=cancel)
        out = _sample(model, text, scheduler, image_cfg, text_cfg, None, "extend", run,
                      dict(late_text_cfg=late_text_cfg, late_below=late_below, guidance=guidance))
        return (make_latent(out.cpu(), latent.get("fps", model.config.fps), model),)


NODE_CLASS_MAPPINGS = {
    "EmuVideoTextEncode": EmuVideoTextEncode,
    "EmuVideoScheduler": EmuVideoScheduler,
    "EmuVideoFirstFrame": EmuVideoFirstFrame,
    "EmuVideoImageConditioning": EmuVideoImageConditioning,
    "EmuVideoSampler": EmuVideoSampler,
    "EmuVideoInterpolate": EmuVideoInterpolate,
    "EmuVideoExtend": EmuVideoExtend,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EmuVideoTextEncode": "Emu Video Text Encode",
    "EmuVideoScheduler": "Emu Video Scheduler (zero-SNR DDIM)",
    "EmuVideoFirstFrame": "Emu Video First Frame (text → image)",
    "EmuVideoImageConditioning": "Emu Video Image Conditioning",
    "EmuVideoSampler": "Emu Video Sampler (image + text → video)",
    "EmuVideoInterpolate": "Emu Video Interpolate",
    "EmuVideoExtend": "Emu Video Extend",
}
