"""Everything that touches the host program, in one place.

Inside ComfyUI the pack uses ComfyUI's own machinery: `comfy.utils.ProgressBar` (every update is
also an interruption checkpoint, because the server's progress hook calls
`throw_exception_if_processing_interrupted`), `comfy.model_management` for devices and Cancel, and
`folder_paths` for model/input/output folders. Outside ComfyUI (the CLI, the headless workflow
runner, tests) the same functions fall back to tqdm, a module-level cancel flag that Ctrl-C sets,
torch's devices, and folders from environment variables:

    EMU_VIDEO_MODELS   models root laid out like ComfyUI's models/ (default ./models)
    EMU_VIDEO_OUTPUT   output folder (default ./output)
    EMU_VIDEO_INPUT    input pictures (default ./input)

Importing this module never imports ComfyUI (or torch): ComfyUI modules are looked up lazily, and
only when they are already loaded or importable.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import signal
import sys
import tempfile
import threading
from collections import OrderedDict
from contextlib import contextmanager

from ..model.config import InputError

# --------------------------------------------------------------------------- is ComfyUI here?


def _comfy_module(name: str):
    """The ComfyUI module `name` if this process runs inside ComfyUI, else None.

    A module already in sys.modules is the normal case (ComfyUI imports model_management before it
    loads custom nodes). Otherwise we import it only if its spec is findable, so a machine without
    ComfyUI never pays for (or breaks on) the attempt.
    """
    module = sys.modules.get(name)
    if module is not None:
        return module
    try:
        if importlib.util.find_spec(name.split(".")[0]) is None or importlib.util.find_spec(name) is None:
            return None
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a half-installed or foreign `comfy` package means "not ComfyUI"
        return None


def in_comfy() -> bool:
    """True when ComfyUI's `comfy.model_management` is loaded or importable."""
    if "comfy.model_management" in sys.modules:
        return True
    try:
        return (importlib.util.find_spec("comfy") is not None
                and importlib.util.find_spec("comfy.model_management") is not None)
    except (ImportError, ValueError):
        return False


def _mm():
    return _comfy_module("comfy.model_management") if in_comfy() else None


def _folder_paths():
    return _comfy_module("folder_paths") if in_comfy() else None


# --------------------------------------------------------------------------- progress

_progress_enabled = True


@contextmanager
def progress_disabled():
    """Silence the tqdm bars outside ComfyUI (e.g. `emu-video run --quiet`, tests)."""
    global _progress_enabled
    before, _progress_enabled = _progress_enabled, False
    try:
        yield
    finally:
        _progress_enabled = before


class Progress:
    """A progress bar for `total` steps: ComfyUI's ProgressBar in ComfyUI, tqdm (with it/s) elsewhere.

    Usable directly as a sampler callback: `progress(*anything)` advances one step.
    """

    def __init__(self, total: int, desc: str = ""):
        self.total = max(int(total), 0)
        self.desc = desc
        self.n = 0
        self._comfy = None
        self._tqdm = None
        utils = _comfy_module("comfy.utils") if in_comfy() else None
        if utils is not None and hasattr(utils, "ProgressBar"):
            self._comfy = utils.ProgressBar(self.total)
        else:
            from tqdm.auto import tqdm
            self._tqdm = tqdm(total=self.total, desc=desc, unit="it", leave=False,
                              disable=not _progress_enabled, file=sys.stderr)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._comfy is not None:
            self._comfy.update(n)         # also raises ComfyUI's InterruptProcessingException on Cancel
        else:
            self._tqdm.update(n)
            if self.n >= self.total:
                self.close()

    def __call__(self, *_args, **_kwargs) -> None:
        self.update(1)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------- cancellation


class Cancelled(KeyboardInterrupt):
    """Raised outside ComfyUI by check_cancelled() once a cancel was requested (Ctrl-C or request_cancel).

    A KeyboardInterrupt subclass so a cancelled CLI run exits like an interrupted one.
    """


_cancel = threading.Event()


def request_cancel() -> None:
    """Ask the running job to stop at its next checkpoint (outside ComfyUI: what Ctrl-C does)."""
    mm = _mm()
    if mm is not None:
        mm.interrupt_current_processing(True)
    else:
        _cancel.set()


def reset_cancel() -> None:
    _cancel.clear()


def cancel_requested() -> bool:
    """Has the user asked to stop? (ComfyUI: `processing_interrupted()`.) Does not clear the request."""
    mm = _mm()
    if mm is not None:
        return bool(mm.processing_interrupted())
    return _cancel.is_set()


def check_cancelled() -> None:
    """Raise if the user asked to stop, clearing the request (ComfyUI:
    `throw_exception_if_processing_interrupted()`, which the server reports as "interrupted")."""
    mm = _mm()
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()
    elif _cancel.is_set():
        _cancel.clear()
        raise Cancelled("cancelled by the user")


@contextmanager
def cancel_on_sigint():
    """While active (main thread, outside ComfyUI), the first Ctrl-C requests a clean stop at the next
    checkpoint (a finished step is never half-written); a second Ctrl-C interrupts immediately."""
    if in_comfy() or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _cancel.is_set():
            raise KeyboardInterrupt
        _cancel.set()
        print("\nemu-video: stopping after the current step (Ctrl-C again to abort now)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _cancel.clear()


# --------------------------------------------------------------------------- devices


def torch_device():
    """Where models compute: ComfyUI's choice (honours --cpu, --gpu-only ...), else cuda if available."""
    import torch

    mm = _mm()
    if mm is not None:
        return mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device():
    """Where idle models wait: ComfyUI's unet offload device (cpu unless --gpu-only/--highvram), else cpu."""
    import torch

    mm = _mm()
    if mm is not None:
        return mm.unet_offload_device()
    return torch.device("cpu")


def soft_empty_cache() -> None:
    """Give cached accelerator memory back after moving a model off the device."""
    mm = _mm()
    if mm is not None:
        mm.soft_empty_cache()
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- folders

MODEL_KINDS = ("diffusion_models", "vae", "text_encoders", "emu_video")
# Outside ComfyUI: sub-folders of $EMU_VIDEO_MODELS per kind, with ComfyUI's legacy names too
# (folder_paths maps unet -> diffusion_models and clip -> text_encoders).
_LOCAL_FOLDERS = {"diffusion_models": ("diffusion_models", "unet"), "vae": ("vae",),
                  "text_encoders": ("text_encoders", "clip"), "emu_video": ("emu_video",)}
WEIGHT_EXTENSIONS = (".safetensors",)   # safetensors only: never unpickle a checkpoint


class ModelNotFound(InputError):
    """A model file name that is not in any folder of its kind."""


def models_root() -> str:
    return os.path.abspath(os.environ.get("EMU_VIDEO_MODELS") or "models")


def register_model_folders() -> None:
    """Add ComfyUI/models/emu_video as the `emu_video` model folder (idempotent; no-op outside ComfyUI)."""
    fp = _folder_paths()
    if fp is None:
        return
    path = os.path.join(fp.models_dir, "emu_video")
    if path not in fp.get_folder_paths("emu_video"):
        fp.add_model_folder_path("emu_video", path, is_default=True)


def _check_kind(kind: str) -> None:
    if kind not in MODEL_KINDS:
        raise InputError(f"unknown model kind {kind!r}; use one of {', '.join(MODEL_KINDS)}")


def model_folders(kind: str) -> list[str]:
    """The folders searched for `kind`, in search order."""
    _check_kind(kind)
    fp = _folder_paths()
    if fp is not None:
        return list(fp.get_folder_paths(kind)) if kind in fp.folder_names_and_paths else []
    root = models_root()
    return [os.path.join(root, sub) for sub in _LOCAL_FOLDERS[kind]]


def _walk_weights(folder: str) -> list[str]:
    names = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if f.lower().endswith(WEIGHT_EXTENSIONS) and not f.startswith("."):
                names.append(os.path.relpath(os.path.join(dirpath, f), folder).replace(os.sep, "/"))
    return names


def list_models(kind: str) -> list[str]:
    """Weight files of `kind` (names relative to their folder, '/'-separated), sorted, no duplicates."""
    _check_kind(kind)
    fp = _folder_paths()
    if fp is not None:
        if kind not in fp.folder_names_and_paths:
            return []
        return sorted(n for n in fp.get_filename_list(kind) if n.lower().endswith(WEIGHT_EXTENSIONS))
    names: list[str] = []
    for folder in model_folders(kind):
        names += [n for n in _walk_weights(folder) if n not in names]
    return sorted(names)


def resolve_model(kind: str, name: str) -> str:
    """Absolute path of model file `name` of `kind`; the error lists where it looked and what exists."""
    _check_kind(kind)
    if not name or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise ModelNotFound(f"model name {name!r} must be a file name inside the {kind} folder "
                            f"(one of {_available(kind)}), not a path")
    for folder in model_folders(kind):
        path = os.path.abspath(os.path.join(folder, name))
        if os.path.isfile(path):
            return path
    where = ", ".join(model_folders(kind)) or "(no folder registered)"
    hint = ("put the file there" if in_comfy() else
            "put the file there, set EMU_VIDEO_MODELS to your models root, or run `emu-video init-models "
            "--out models` for a tiny random set")
    raise ModelNotFound(f"{kind} model {name!r} not found; looked in {where}. Available: {_available(kind)}; {hint}")


def _available(kind: str) -> str:
    names = list_models(kind)
    return ", ".join(names) if names else "none"


def output_dir() -> str:
    """Where results are saved: ComfyUI's output folder, else $EMU_VIDEO_OUTPUT or ./output (created)."""
    fp = _folder_paths()
    folder = fp.get_output_directory() if fp is not None else (os.environ.get("EMU_VIDEO_OUTPUT") or "output")
    folder = os.path.abspath(folder)
    os.makedirs(folder, exist_ok=True)
    return folder


def input_dir() -> str:
    """Where input pictures live: ComfyUI's input folder, else $EMU_VIDEO_INPUT or ./input."""
    fp = _folder_paths()
    folder = fp.get_input_directory() if fp is not None else (os.environ.get("EMU_VIDEO_INPUT") or "input")
    return os.path.abspath(folder)


def temp_dir() -> str:
    """Scratch folder for previews: ComfyUI's temp folder, else <system temp>/emu_video (created)."""
    fp = _folder_paths()
    folder = fp.get_temp_directory() if fp is not None else os.path.join(tempfile.gettempdir(), "emu_video")
    os.makedirs(folder, exist_ok=True)
    return os.path.abspath(folder)


# --------------------------------------------------------------------------- model cache

_cache: OrderedDict = OrderedDict()
_cache_lock = threading.Lock()


def cache_size() -> int:
    """How many loaded models stay cached (env EMU_VIDEO_CACHE_SIZE, default 8; 0 disables caching)."""
    try:
        return max(int(os.environ.get("EMU_VIDEO_CACHE_SIZE", "8")), 0)
    except ValueError:
        raise InputError(f"EMU_VIDEO_CACHE_SIZE must be an integer, got {os.environ['EMU_VIDEO_CACHE_SIZE']!r}")


def cached(key, loader):
    """`loader()` once per `key` (put the file's path and mtime in the key); least recently used evicted.

    The loader runs outside the lock, so a slow load never blocks cache hits for other keys.
    """
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    value = loader()
    limit = cache_size()
    if limit:
        with _cache_lock:
            _cache[key] = value
            _cache.move_to_end(key)
            while len(_cache) > limit:
                _cache.popitem(last=False)
    return value


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
