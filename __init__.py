"""comfyui-emu-video: Emu Video (arXiv 2311.10709) as a ComfyUI node pack and a trainer.

ComfyUI imports this file from custom_nodes/<any folder>/; installed, it is the package `emu_video`.
Importing it never imports ComfyUI and never downloads anything.
"""
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
