"""Media nodes: VAE decode (chunked, with progress) and Save Video (H.264 mp4 + animated preview)."""
from __future__ import annotations

import os

from . import host
from .sampling_nodes import CATEGORY, cancel_check, latent_samples, on_compute_device


class EmuVideoVAEDecode:
    DESCRIPTION = ("Decodes Emu Video latents frame by frame (§3.2: frames are independent images to the "
                   "autoencoder), a few frames at a time so memory does not grow with the video length.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("Frames as an IMAGE batch [frames, H, W, 3] (several videos are concatenated).",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": ("EMU_VAE",), "latent": ("LATENT",)}}

    def decode(self, vae, latent):
        from ..model.pipeline import decode

        samples = latent_samples(latent)
        frames_total = samples.shape[0] * (samples.shape[2] if samples.ndim == 5 else 1)
        progress = host.Progress(-(-frames_total // vae.cfg.decode_chunk), "decode")
        with on_compute_device(vae):
            video = decode(vae, samples, callback=lambda *_: progress.update(1), cancel=cancel_check)
        return (video.reshape(-1, *video.shape[2:]),)


class EmuVideoVAEEncode:
    DESCRIPTION = ("Encodes frames (an IMAGE batch, e.g. from core Load Video → Get Video Components) into an Emu "
                   "Video LATENT, so your own clips can be interpolated or extended. Frames must already be at a "
                   "size the model accepts (multiple of VAE × U-Net downsampling).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("EMU_VAE",),
            "images": ("IMAGE", {"tooltip": "Frames [T, H, W, 3] in 0..1: one video."}),
            "fps": ("FLOAT", {"default": 8.0, "min": 0.1, "max": 240.0, "step": 0.1,
                              "tooltip": "Frame rate of these frames (carried in the LATENT)."}),
        }}

    def encode(self, vae, images, fps=8.0):
        from ..model.pipeline import as_image_batch

        frames = as_image_batch(images)
        video = (frames.permute(3, 0, 1, 2)[None] * 2 - 1)          # [1, 3, T, H, W] in -1..1
        with on_compute_device(vae):
            import torch
            with torch.no_grad():
                latent = vae.encode_video(video.to(vae.device, vae.dtype), cancel=cancel_check).float().cpu()
        return ({"samples": latent, "fps": float(fps), "emu_video": {"latent_channels": int(latent.shape[1])}},)


def _output_folder(filename_prefix: str) -> tuple[str, str, str]:
    """(absolute folder, subfolder relative to the output dir, file stem); refuses paths leaving it."""
    from ..model.config import InputError

    root = os.path.abspath(host.output_dir())
    prefix = filename_prefix.strip().replace("\\", "/") or "EmuVideo"
    sub, stem = os.path.split(prefix)
    folder = os.path.abspath(os.path.join(root, sub))
    if os.path.isabs(sub) or os.path.commonpath([root, folder]) != root or not stem:
        raise InputError(f"filename_prefix {filename_prefix!r} must be a name (optionally 'subfolder/name') "
                         f"inside the output folder {root}")
    subfolder = os.path.relpath(folder, root).replace(os.sep, "/")
    return folder, "" if subfolder == "." else subfolder, stem


def write_preview(frames, path: str, fps: float) -> str:
    """Small animated WEBP (what ComfyUI's image widget can play); first-frame PNG if libwebp is absent."""
    import av

    from ..model.video_io import atomic_path, to_uint8_frames, write_png

    frames = to_uint8_frames(frames)
    try:
        av.codec.Codec("libwebp_anim", "w")
    except Exception:  # noqa: BLE001 - PyAV builds without libwebp: fall back to a still
        return write_png(frames[0], os.path.splitext(path)[0] + ".png")
    with atomic_path(path) as tmp:
        with av.open(tmp, "w", format="webp") as container:
            stream = container.add_stream("libwebp_anim", rate=max(1, round(fps)))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuva420p"
            stream.options = {"loop": "0", "quality": "80"}
            for image in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


class EmuVideoSaveVideo:
    DESCRIPTION = ("Saves frames as an H.264 mp4 in ComfyUI's output folder (names are numbered, never "
                   "overwritten) and shows an animated WEBP preview.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Frames [T, H, W, 3] in 0..1 (e.g. from Emu Video VAE Decode)."}),
            "fps": ("FLOAT", {"default": 16.0, "min": 0.1, "max": 240.0, "step": 0.1,
                              "tooltip": "Frame rate (paper: 16 fps after interpolation)."}),
            "filename_prefix": ("STRING", {"default": "EmuVideo", "tooltip": "Name, optionally 'subfolder/name'."}),
            "crf": ("INT", {"default": 18, "min": 0, "max": 51, "tooltip": "H.264 quality: lower = better/larger."}),
        }}

    def save(self, images, fps=16.0, filename_prefix="EmuVideo", crf=18):
        from ..model.pipeline import as_image_batch
        from ..model.video_io import next_free_path, write_mp4

        frames = as_image_batch(images)
        folder, subfolder, stem = _output_folder(filename_prefix)
        path = write_mp4(frames, next_free_path(folder, stem, ".mp4"), float(fps), crf=int(crf))
        preview = write_preview(frames, os.path.splitext(path)[0] + ".webp", float(fps))

        def entry(p):
            return {"filename": os.path.basename(p), "subfolder": subfolder, "type": "output"}
        return {"ui": {"images": [entry(preview)], "animated": (preview.endswith(".webp"),),
                       "video": [entry(path)]},
                "result": ()}


NODE_CLASS_MAPPINGS = {"EmuVideoVAEDecode": EmuVideoVAEDecode, "EmuVideoVAEEncode": EmuVideoVAEEncode,
                       "EmuVideoSaveVideo": EmuVideoSaveVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"EmuVideoVAEDecode": "Emu Video VAE Decode", "EmuVideoVAEEncode": "Emu Video VAE Encode",
                              "EmuVideoSaveVideo": "Emu Video Save Video"}
