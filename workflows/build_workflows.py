"""Regenerate the shipped workflows: `python -m emu_video.workflows.build_workflows` is not possible
(workflows/ is data, not a package), so run `python workflows/build_workflows.py` from the repo root.

Each graph is written twice from ONE description with two independent writers:
  workflows/<name>.json      UI format (nodes / links / positional widgets_values) for dropping into ComfyUI
  workflows/api/<name>.json  API format ({id: {class_type, inputs}}) for POST /prompt
tests/test_workflows.py converts the UI file with nodes.workflow.ui_to_api and checks it equals the API
twin, so the positional widget order here and the host's converter check each other.
The model file names are the ones `emu-video init-models` writes (cli.TINY_FILES).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPT = "a red circle moving quickly right on a black background"
FILES = {"video": "emu_video_tiny.safetensors", "interp": "emu_video_interp_tiny.safetensors",
         "vae": "emu_video_vae_tiny.safetensors", "t5": "emu_video_t5_tiny.safetensors",
         "clip": "emu_video_clip_tiny.safetensors"}
EXAMPLE_IMAGE = "emu_video_example.png"
# Core LoadImage (not ours): its one widget plus the frontend's "upload" button value.
LOAD_IMAGE = {"inputs": [("image", "COMBO")], "outputs": [("IMAGE", "IMAGE"), ("MASK", "MASK")]}


def link(node_id: int, slot: int = 0) -> tuple[str, int]:
    return (str(node_id), slot)


def loaders() -> list[tuple]:
    return [
        (1, "EmuVideoTextEncodersLoader", {"t5_name": FILES["t5"], "clip_name": FILES["clip"], "dtype": "auto"}),
        (2, "EmuVideoModelLoader", {"model_name": FILES["video"], "dtype": "auto"}),
        (3, "EmuVideoVAELoader", {"vae_name": FILES["vae"], "dtype": "fp32"}),
        (4, "EmuVideoScheduler", {"steps": 25, "spacing": "trailing", "eta": 0.0, "rescale": 0.7,
                                  "schedule": "from model", "keep_known": True}),
        (5, "EmuVideoTextEncode", {"text_encoders": link(1), "prompt": PROMPT, "negative": ""}),
    ]


# The video's optional inputs as in the demo manifest: text_cfg on every step, the paper's dual guidance (cfg).
LATE_OFF = {"late_text_cfg": -1.0, "late_below": 0.5, "guidance": "cfg"}


def first_frame_and_video(image_source: tuple) -> list[tuple]:
    return [
        (7, "EmuVideoImageConditioning", {"image": image_source, "vae": link(3), "model": link(2),
                                          "resize_mode": "crop", "width": 0, "height": 0}),
        (8, "EmuVideoSampler", {"model": link(2), "text": link(5), "image_cond": link(7), "scheduler": link(4),
                                "image_cfg": 3.5, "text_cfg": 7.5, "frames": 0, "seed": 42, **LATE_OFF}),
    ]


# Scales are the demo manifest's (demo/MODEL_CARD.md; a test checks): the first frame's text_cfg 2, the video's image_cfg 3.5.
FIRST_FRAME = (6, "EmuVideoFirstFrame", {"model": link(2), "vae": link(3), "text": link(5), "steps": 25,
                                         "text_cfg": 2.0, "seed": 42, "width": 0, "height": 0})
INTERP = [
    (9, "EmuVideoInterpModelLoader", {"model_name": FILES["interp"], "dtype": "auto"}),
    (10, "EmuVideoInterpolate", {"interp_model": link(9), "latent": link(8), "text": link(5), "scheduler": link(4),
                                 "image_cfg": 1.0, "text_cfg": 1.0, "factor": 0, "noise_aug": 100, "seed": 42,
                                 "denoise": 0.15}),
]


def decode_save(first_id: int, latent: tuple, fps: float, prefix: str) -> list[tuple]:
    return [
        (first_id, "EmuVideoVAEDecode", {"vae": link(3), "latent": latent}),
        (first_id + 1, "EmuVideoSaveVideo", {"images": link(first_id), "fps": fps, "filename_prefix": prefix,
                                             "crf": 18}),
    ]


def graphs() -> dict[str, list[tuple]]:
    return {
        "text_to_video": loaders() + [FIRST_FRAME] + first_frame_and_video(link(6)) + INTERP
                         + decode_save(11, link(10), 8.0, "EmuVideo/text_to_video"),
        "animate_image": loaders() + [(6, "LoadImage", {"image": EXAMPLE_IMAGE})]
                         + first_frame_and_video(link(6)) + INTERP
                         + decode_save(11, link(10), 8.0, "EmuVideo/animate_image"),
        # The same clip before (model fps) and after the interpolation model (k× fps), side by side.
        "interpolate": loaders() + [FIRST_FRAME] + first_frame_and_video(link(6)) + INTERP
                       + decode_save(11, link(8), 4.0, "EmuVideo/before_interpolation")
                       + decode_save(13, link(10), 8.0, "EmuVideo/after_interpolation"),
        # Fig. 7: continue the clip with a new prompt.
        "extend_video": loaders() + [FIRST_FRAME] + first_frame_and_video(link(6))
                        + [(20, "EmuVideoTextEncode", {"text_encoders": link(1), "negative": "",
                                                       "prompt": "a red circle moving quickly down on a black background"}),
                           (21, "EmuVideoExtend", {"model": link(2), "latent": link(8), "text": link(20),
                                                   "scheduler": link(4), "image_cfg": 3.5, "text_cfg": 7.5,
                                                   "context_frames": 0, "new_frames": 0, "seed": 43, **LATE_OFF})]
                        + decode_save(22, link(21), 4.0, "EmuVideo/extend_video"),
    }


# --------------------------------------------------------------------------- API writer

def to_api(graph: list[tuple]) -> dict:
    return {str(nid): {"class_type": cls, "inputs": {k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in inputs.items()},
                       "_meta": {"title": cls}}
            for nid, cls, inputs in graph}


# --------------------------------------------------------------------------- UI writer

def _spec(cls_name: str, classes: dict):
    """([(input name, type, is seed-like)], [(output name, type)]) in INPUT_TYPES order."""
    if cls_name == "LoadImage":
        return [(n, t, False) for n, t in LOAD_IMAGE["inputs"]], LOAD_IMAGE["outputs"]
    cls = classes[cls_name]
    types = cls.INPUT_TYPES()
    inputs = []
    for section in ("required", "optional"):
        for name, spec in types.get(section, {}).items():
            kind = spec[0] if isinstance(spec[0], str) else "COMBO"
            opts = spec[1] if len(spec) > 1 else {}
            inputs.append((name, kind, bool(opts.get("control_after_generate"))))
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    return inputs, list(zip(names, cls.RETURN_TYPES))


WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def to_ui(graph: list[tuple], classes: dict) -> dict:
    nodes, links = [], []
    out_links: dict[tuple[int, int], list[int]] = {}
    order = {nid: i for i, (nid, _, _) in enumerate(graph)}
    specs = {nid: _spec(cls, classes) for nid, cls, _ in graph}
    for nid, cls, inputs in graph:
        for name, value in inputs.items():
            if isinstance(value, tuple):
                src, slot = int(value[0]), value[1]
                link_id = len(links) + 1
                links.append([link_id, src, slot, nid, None, specs[src][1][slot][1], name])
                out_links.setdefault((src, slot), []).append(link_id)
    for i, (nid, cls, inputs) in enumerate(graph):
        in_spec, out_spec = specs[nid]
        ui_inputs, widgets = [], []
        for name, kind, seed_like in in_spec:
            value = inputs.get(name)
            if isinstance(value, tuple):
                link_id = next(l[0] for l in links if l[3] == nid and l[6] == name)
                ui_inputs.append({"name": name, "type": kind, "link": link_id})
            elif kind in WIDGET_TYPES:
                if name not in inputs:
                    raise ValueError(f"{cls} #{nid}: widget {name} has no value")
                widgets.append(value)
                if seed_like:
                    widgets.append("fixed")     # the frontend's control_after_generate widget
        if cls == "LoadImage":
            widgets.append("image")            # the upload button's stored value
        for slot_in, entry in enumerate(ui_inputs):
            for l in links:
                if l[0] == entry["link"]:
                    l[4] = slot_in
        outputs = [{"name": n, "type": t, "links": out_links.get((nid, s), []), "slot_index": s}
                   for s, (n, t) in enumerate(out_spec)]
        col, row = divmod(i, 4)
        nodes.append({"id": nid, "type": cls, "pos": [40 + 360 * col, 40 + 260 * row], "size": [320, 200],
                      "flags": {}, "order": order[nid], "mode": 0, "inputs": ui_inputs, "outputs": outputs,
                      "properties": {"Node name for S&R": cls}, "widgets_values": widgets})
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": nodes,
            "links": [l[:6] for l in links], "groups": [], "config": {},
            "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4}


def main() -> int:
    import emu_video   # the editable install (pip install -e .)

    classes = emu_video.NODE_CLASS_MAPPINGS
    (HERE / "api").mkdir(exist_ok=True)
    for name, graph in graphs().items():
        (HERE / f"{name}.json").write_text(json.dumps(to_ui(graph, classes), indent=1) + "\n")
        (HERE / "api" / f"{name}.json").write_text(json.dumps(to_api(graph), indent=1) + "\n")
        print(f"wrote workflows/{name}.json and workflows/api/{name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
