"""Everything model-shaped, shared by the ComfyUI nodes and the trainer."""
