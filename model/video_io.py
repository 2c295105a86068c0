"""Video files in and out: H.264 mp4 writing, timestamp-based decoding, probing, PNG contact sheets.

One implementation shared by the ComfyUI Save Video node, the trainer's dataset and the CLI.
Decoding samples frames by *presentation time* (`frame.time`), never by frame index, so
variable-frame-rate files and files whose native fps differs from the target fps (§3.3 trains at
8 and 4 fps from the same sources) come out with correctly spaced frames.
"""
from __future__ import annotations

import math
import os
import re
import struct
import tempfile
import zlib
from contextlib import contextmanager
from fractions import Fraction

import numpy as np

from .config import InputError

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
_EPS = 1e-4   # seconds; absorbs pts rounding when comparing frame times with target times


# --------------------------------------------------------------------------- frames <-> uint8

def to_uint8_frames(frames) -> np.ndarray:
    """Accept uint8 [T,H,W,3] (numpy or torch) or float 0..1 (torch or numpy); return uint8 numpy."""
    if hasattr(frames, "detach"):                      # torch tensor, without importing torch here
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim == 3:                               # a single image
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4):
        raise InputError(f"frames must be [T,H,W,3] (channels last), got shape {tuple(frames.shape)}; "
                         "permute a [T,3,H,W] tensor with .permute(0,2,3,1) first")
    if frames.shape[0] == 0:
        raise InputError("frames is empty (T=0): nothing to write")
    frames = frames[..., :3]
    if frames.dtype == np.uint8:
        return np.ascontiguousarray(frames)
    if np.issubdtype(frames.dtype, np.floating):
        return np.ascontiguousarray(np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8))
    raise InputError(f"frames must be uint8 0..255 or float 0..1, got dtype {frames.dtype}")


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """yuv420p halves chroma resolution, so H.264 needs even sizes; repeat the last row/column."""
    t, h, w, _ = frames.shape
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


# --------------------------------------------------------------------------- atomic files

@contextmanager
def atomic_path(path: str):
    """Yield a temp name next to `path`; os.replace it into place only if the body succeeds."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        # mkstemp makes 0600 (and some writers, safetensors among them, recreate the file 0600 too):
        # an output should be readable like any other file
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def next_free_path(folder: str, prefix: str, ext: str) -> str:
    """`folder/prefix_00001.ext`, numbered one past the highest existing number: never overwrites."""
    ext = ext if ext.startswith(".") else "." + ext
    os.makedirs(folder, exist_ok=True)
    pattern = re.compile(rf"^{re.escape(prefix)}_(\d+){re.escape(ext)}$")
    numbers = [int(m.group(1)) for name in os.listdir(folder) if (m := pattern.match(name))]
    counter = max(numbers, default=0) + 1
    while os.path.exists(path := os.path.join(folder, f"{prefix}_{counter:05d}{ext}")):
        counter += 1
    return path


# --------------------------------------------------------------------------- writing

def write_mp4(frames, path: str, fps: float, crf: int = 18, timestamps=None, preset: str = "medium",
              lossless: bool = False) -> str:
    """Encode frames as H.264 (libx264, yuv420p) mp4, atomically. Returns `path`.

    `timestamps` (seconds, one per frame, increasing) writes a variable-frame-rate file instead.
    `lossless` writes H.264 in RGB at crf 0 (libx264rgb): the frames read back bit for bit. Plain
    yuv420p halves the colour resolution, which on a 64 px toy frame blurs a 6 px object's colour
    edges; most players cannot show these files, training reads them.
    """
    import av

    frames = _pad_to_even(to_uint8_frames(frames))
    if not fps or fps <= 0:
        raise InputError(f"fps must be positive, got {fps}")
    if timestamps is not None:
        timestamps = [float(t) for t in timestamps]
        if len(timestamps) != len(frames) or any(b <= a for a, b in zip(timestamps, timestamps[1:])):
            raise InputError("timestamps must give one strictly increasing time (seconds) per frame")
    rate = Fraction(fps).limit_denominator(1001)
    time_base = Fraction(1, 1000) if timestamps is not None else 1 / rate
    with atomic_path(path) as tmp:
        with av.open(tmp, "w", format="mp4") as container:
            stream = container.add_stream("libx264rgb" if lossless else "libx264", rate=rate)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "rgb24" if lossless else "yuv420p"
            stream.codec_context.time_base = time_base
            stream.options = {"crf": "0" if lossless else str(crf), "preset": preset}
            if timestamps is not None:   # B-frame reordering makes the muxer under-report a VFR file's duration
                stream.options = {**stream.options, "bf": "0"}
            for i, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = round(timestamps[i] * 1000) if timestamps is not None else i
                frame.time_base = time_base
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


# --------------------------------------------------------------------------- reading

@contextmanager
def _open_video(path: str):
    import av

    if not os.path.isfile(path):
        raise InputError(f"video file not found: {path}")
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot open {path} as a video ({e}); is it a complete, supported video file?") from e
    try:
        if not container.streams.video:
            raise InputError(f"{path} has no video stream")
        yield container, container.streams.video[0]
    finally:
        container.close()


def _stream_duration(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return 0.0


def probe(path: str) -> dict:
    """dict(fps, duration (s), width, height, frames, codec) from the container, without decoding."""
    import av

    with _open_video(path) as (container, stream):
        try:
            frames = stream.frames or sum(1 for p in container.demux(stream) if p.size)
        except av.error.FFmpegError as e:
            raise InputError(f"cannot read {path}: {e}") from e
        rate = stream.average_rate or stream.guessed_rate
        info = dict(fps=float(rate) if rate else 0.0, duration=_stream_duration(container, stream),
                    width=stream.codec_context.width, height=stream.codec_context.height,
                    frames=int(frames), codec=stream.codec_context.name)
    if info["frames"] == 0 or info["width"] == 0:
        raise InputError(f"{path} contains no decodable video frames")
    if info["duration"] <= 0 and info["fps"] > 0:
        info["duration"] = info["frames"] / info["fps"]
    return info


def _uniform(rng) -> float:
    """A U[0,1) draw from a numpy Generator, a torch.Generator or (None) fresh entropy."""
    if rng is None:
        return float(np.random.default_rng().random())
    if hasattr(rng, "manual_seed"):                    # torch.Generator
        import torch
        return float(torch.rand((), generator=rng))
    return float(rng.random())


def clip_start(start, duration: float, span: float, rng=None) -> float:
    """Resolve `start` (None | "random" | "center" | seconds) to seconds for a clip of length `span`."""
    room = duration - span
    if start is None:
        return 0.0
    if isinstance(start, str):
        if start not in ("random", "center"):
            raise InputError(f"start must be None, 'random', 'center' or seconds, got {start!r}")
        room = max(room, 0.0)
        return room / 2 if start == "center" else _uniform(rng) * room
    if start < 0:
        raise InputError(f"start must be >= 0 seconds, got {start}")
    return float(start)


def _resize_args(size, width: int, height: int) -> dict:
    """size: None | int (short side, aspect kept) | (height, width)."""
    if size is None:
        return {}
    if isinstance(size, int):
        scale = size / min(width, height)
        return dict(width=max(1, round(width * scale)), height=max(1, round(height * scale)))
    h, w = size
    return dict(width=int(w), height=int(h))


def read_frames(path: str, fps: float | None = None, num_frames: int | None = None, start=None,
                size=None, rng=None) -> np.ndarray:
    """Decode frames as uint8 [T,H,W,3], sampled at `fps` by presentation timestamps.

    fps None keeps the native frames. Target time k is t0 + k/fps; it gets the frame on screen at
    that moment (the last frame whose time is <= the target), so VFR sources are handled.
    start: None (0 s) | "random" (uniform over the valid range, drawn from `rng`) | "center" | seconds.
    size: None | int (short side) | (height, width). Raises InputError if the clip is too short.
    """
    import av

    if num_frames is not None and num_frames < 1:
        raise InputError(f"num_frames must be >= 1, got {num_frames}")
    if fps is not None and fps <= 0:
        raise InputError(f"fps must be positive, got {fps}")
    with _open_video(path) as (container, stream):
        native = float(stream.average_rate or stream.guessed_rate or 25)
        step = 1.0 / fps if fps else 1.0 / native
        span = (num_frames or 0) * step
        duration = _stream_duration(container, stream)
        t0 = clip_start(start, duration, span, rng)
        origin = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        stream.thread_type = "AUTO"
        if t0 > 0:
            container.seek(int((t0 + origin) / stream.time_base), stream=stream, backward=True, any_frame=False)
        resize = _resize_args(size, stream.codec_context.width, stream.codec_context.height)
        try:
            picked = _pick_frames(container.decode(stream), origin, t0, fps, num_frames, 1.0 / native)
        except av.error.FFmpegError as e:
            raise InputError(f"cannot decode {path}: {e}") from e
        # converted while the container is open: a PyAV frame must not outlive its decoder
        arrays = [frame.to_ndarray(format="rgb24", **resize) for frame in picked]
    if not picked or (num_frames is not None and len(picked) < num_frames):
        want = f"{num_frames} frames" if num_frames else "any frame"
        rate = f" at {fps} fps" if fps else ""
        raise InputError(f"{path} is too short: wanted {want}{rate} from t={t0:.2f}s, got {len(picked)} "
                         f"(clip lasts ~{duration:.2f}s); use fewer frames, a lower fps or a longer clip")
    return np.stack(arrays)


def _pick_frames(decoded, origin: float, t0: float, fps, num_frames, native_step: float) -> list:
    """Walk decoded frames in time order and return the frame object for every target time."""
    limit = num_frames if num_frames is not None else math.inf
    picked, prev, prev_time = [], None, None
    for frame in decoded:
        if frame.time is None:
            continue
        t = frame.time - origin
        if fps is None:                                 # native frames from t0 on
            if t >= t0 - _EPS:
                picked.append(frame)
                if len(picked) >= limit:
                    break
            continue
        # Every target time before this frame is shown by the previous frame.
        while len(picked) < limit and t0 + len(picked) / fps < t - _EPS:
            picked.append(prev if prev is not None else frame)
        if len(picked) >= limit:
            break
        prev, prev_time = frame, t
    if fps is not None and prev is not None:            # the last frame stays on screen one frame period
        end = prev_time + native_step
        while len(picked) < limit and t0 + len(picked) / fps < end - _EPS:
            picked.append(prev)
    return picked[:num_frames] if num_frames is not None else picked


# --------------------------------------------------------------------------- PNG contact sheet

def grid_image(frames, cols: int, pad: int = 0) -> np.ndarray:
    """Tile frames [T,H,W,3] into one uint8 image, `cols` per row, black where rows run short."""
    frames = to_uint8_frames(frames)
    if cols < 1:
        raise InputError(f"cols must be >= 1, got {cols}")
    t, h, w, _ = frames.shape
    cols = min(cols, t)
    rows = -(-t // cols)
    sheet = np.zeros((rows * (h + pad) - pad, cols * (w + pad) - pad, 3), np.uint8)
    for i, image in enumerate(frames):
        r, c = divmod(i, cols)
        sheet[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = image
    return sheet


def _png_bytes(image: np.ndarray) -> bytes:
    """Minimal RGB8 PNG encoder (filter 0 on every row) so no imaging library is needed."""
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def write_png(image, path: str) -> str:
    image = to_uint8_frames(image)[0]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(_png_bytes(image))
    return path


def write_png_grid(frames, path: str, cols: int = 8, pad: int = 0) -> str:
    """Contact sheet of a clip's frames as one PNG (atomic write). Returns `path`."""
    return write_png(grid_image(frames, cols, pad), path)
