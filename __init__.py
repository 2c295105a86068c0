"""comfyui-emu-video: Emu Video (arXiv 2311.10709) as a ComfyUI node pack and a trainer.

ComfyUI imports this file from custom_nodes/<any folder>/; installed, it is the package `emu_video`.
Importing it never imports ComfyUI, transformers, kornia or av, and never downloads anything: the
node modules import the model code lazily inside their functions.
"""
from .nodes import host as _host
from .nodes import loaders as _loaders
from .nodes import media_nodes as _media
from .nodes import sampling_nodes as _sampling

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _module in (_loaders, _sampling, _media):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)

if _host.in_comfy():
    try:
        _host.register_model_folders()  # adds models/emu_video to folder_paths
    except Exception as _e:  # noqa: BLE001 - a folder-registration problem must not hide every node
        print(f"[emu_video] could not register the models/emu_video folder ({_e!r}); "
              f"models/diffusion_models still works", file=__import__("sys").stderr)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
