"""ComfyUI workflow formats and a headless executor.

Two formats exist (comfy_anchors.md §1.9):
  UI  ("save" format): {"nodes": [{id, type, inputs, outputs, widgets_values, mode, title}], "links": [...]};
      widget values are POSITIONAL, in the node's widget order, and only the frontend knows that order.
  API (what POST /prompt takes): {"<id>": {"class_type", "inputs": {name: value | [src_id, slot]}}}.

`ui_to_api` re-derives the frontend's widget order from each class's INPUT_TYPES() (as the ComfyUI
frontend does from /object_info), and `run_workflow` executes an API graph in dependency order by
calling the node classes directly, the way ComfyUI's execution.py does, so shipped workflows run
without a server. Outside ComfyUI, minimal stand-ins for core LoadImage / SaveImage / PreviewImage
let workflows that use them run too.
"""
from __future__ import annotations

import difflib
import inspect
import os
import sys
import time

from ..model.config import InputError
from . import host

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Frontend-only nodes: no backend class; the frontend drops them when it builds the API prompt.
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
# Upload options whose button widget the frontend stores in widgets_values right after the combo
# (LoadImage saves ["example.png", "image"]).
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")
# Inputs the frontend gives a control widget even without the option (useIntWidget.ts:
# `control_after_generate ?? ['seed', 'noise_seed'].includes(name)`).
SEED_NAMES = ("seed", "noise_seed")
MODE_MUTED, MODE_BYPASS = 2, 4


class WorkflowError(InputError):
    """A workflow that cannot be converted or run; the message names the node and what to fix."""


# --------------------------------------------------------------------------- input specs


def _input_kind(spec) -> str:
    """'INT', 'FLOAT', 'STRING', 'BOOLEAN', 'COMBO' or the socket type name."""
    head = spec[0] if isinstance(spec, (tuple, list)) and spec else spec
    if isinstance(head, (list, tuple)):
        return "COMBO"                        # a list of choices is a combo (V1)
    return str(head)


def _input_options(spec) -> dict:
    if isinstance(spec, (tuple, list)) and len(spec) > 1 and isinstance(spec[1], dict):
        return spec[1]
    return {}


def input_specs(cls) -> list[tuple[str, object, bool]]:
    """[(name, spec, required)] in the order the frontend creates widgets: required, then optional."""
    types = cls.INPUT_TYPES()
    return ([(n, s, True) for n, s in types.get("required", {}).items()]
            + [(n, s, False) for n, s in types.get("optional", {}).items()])


def is_widget(spec) -> bool:
    return _input_kind(spec) in WIDGET_TYPES and not _input_options(spec).get("forceInput")


def control_widgets(name: str, spec) -> int:
    """How many extra values the frontend stores after this widget's value.

    INT: one control combo ("fixed"/"increment"/"decrement"/"randomize") when the option is truthy,
    or when it is absent and the input is named seed/noise_seed. COMBO with the option: the control
    combo plus a "control_filter_list" string (scripts/widgets addValueControlWidgets). Upload
    inputs: the upload button's value.
    """
    kind, opts = _input_kind(spec), _input_options(spec)
    option = opts.get("control_after_generate")
    if kind == "INT" and (option if option is not None else name in SEED_NAMES):
        return 1
    if kind == "COMBO" and option:
        return 2
    if kind == "COMBO" and any(opts.get(o) for o in UPLOAD_OPTIONS):
        return 1
    return 0


def _default(spec):
    opts = _input_options(spec)
    if "default" in opts:
        return opts["default"]
    head = spec[0] if isinstance(spec, (tuple, list)) and spec else None
    if isinstance(head, (list, tuple)) and head:
        return head[0]
    if _input_kind(spec) == "COMBO" and opts.get("options"):
        return opts["options"][0]
    raise KeyError


def _close(name: str, choices) -> str:
    near = difflib.get_close_matches(name, list(choices), n=3)
    return f" (did you mean {', '.join(near)}?)" if near else ""


def _node_label(node_id, class_type: str, title: str | None = None) -> str:
    return f"node {node_id} ({class_type}{f' {title!r}' if title and title != class_type else ''})"


# --------------------------------------------------------------------------- UI -> API


def is_ui_workflow(workflow: dict) -> bool:
    return isinstance(workflow, dict) and isinstance(workflow.get("nodes"), list)


def _links_by_id(ui: dict) -> dict:
    """link id -> (src id, src slot, dst id, dst slot); accepts list links (v0.4) and dict links (v1)."""
    links = {}
    for link in ui.get("links") or []:
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"])
        else:
            links[link[0]] = (link[1], link[2], link[3], link[4])
    return links


class _UIGraph:
    """Follows UI links through Reroute, bypassed and PrimitiveNode nodes to what the backend sees."""

    def __init__(self, ui: dict):
        if (ui.get("definitions") or {}).get("subgraphs"):
            raise WorkflowError("this workflow contains subgraphs; open it in ComfyUI, unpack the subgraphs "
                                "(right-click → Unpack Subgraph), save, and try again")
        self.nodes = {n["id"]: n for n in ui["nodes"]}
        self.links = _links_by_id(ui)

    def source(self, link_id, depth: int = 0):
        """('link', src_id, slot) or ('value', v) or None (no live source) for a link id."""
        if link_id is None or link_id not in self.links or depth > 100:
            return None
        src_id, slot, _, _ = self.links[link_id]
        src = self.nodes.get(src_id)
        if src is None:
            raise WorkflowError(f"link {link_id} starts at node {src_id}, which is not in the workflow")
        if src.get("type") == "Reroute":
            return self.source(_input_link(src, 0), depth + 1)
        if src.get("type") == "PrimitiveNode":
            values = src.get("widgets_values") or []
            return ("value", values[0]) if values else None
        if src.get("mode") == MODE_MUTED:
            return None
        if src.get("mode") == MODE_BYPASS:
            return self.source(self._bypass_input(src, slot), depth + 1)
        return ("link", str(src_id), slot)

    def _bypass_input(self, node: dict, slot: int):
        """A bypassed node passes through its first input of the same type as the output (ComfyUI frontend)."""
        outputs = node.get("outputs") or []
        out_type = outputs[slot].get("type") if slot < len(outputs) else None
        for entry in node.get("inputs") or []:
            if entry.get("link") is not None and entry.get("type") == out_type:
                return entry["link"]
        return None


def _input_link(node: dict, slot: int):
    inputs = node.get("inputs") or []
    return inputs[slot].get("link") if slot < len(inputs) else None


def _widget_values(node: dict, cls, label: str) -> dict:
    """Map a node's positional widgets_values onto widget input names."""
    raw = node.get("widgets_values")
    specs = input_specs(cls)
    if isinstance(raw, dict):                       # some packs save values by name
        return {n: raw[n] for n, s, _ in specs if is_widget(s) and n in raw}
    raw = list(raw or [])
    linked_without_widget = {e["name"] for e in node.get("inputs") or []
                             if e.get("link") is not None and "widget" not in e}
    values, i = {}, 0
    for name, spec, _ in specs:
        # A linked widget input keeps its (ignored) value in widgets_values when the frontend still
        # has the widget (input entry carries "widget"); writers that drop it don't add that key.
        if not is_widget(spec) or name in linked_without_widget:
            continue
        if i < len(raw):
            values[name] = raw[i]
        else:
            try:
                values[name] = _default(spec)
            except KeyError:
                raise WorkflowError(f"{label}: widgets_values has {len(raw)} values but widget {name!r} needs "
                                    f"one; re-save the workflow with the current node version") from None
        i += 1 + control_widgets(name, spec)
    return values


def ui_to_api(ui_workflow: dict, node_classes: dict) -> dict:
    """Convert a UI-format workflow into API format using each class's INPUT_TYPES() for widget order.

    Notes/Reroutes/PrimitiveNodes vanish (primitive values are inlined), muted nodes are dropped,
    bypassed nodes are routed around, node titles go to `_meta.title`.
    """
    if not is_ui_workflow(ui_workflow):
        raise WorkflowError("not a UI-format workflow (expected a 'nodes' list); API-format workflows "
                            "need no conversion")
    classes = _with_fallbacks(node_classes)
    graph = _UIGraph(ui_workflow)
    prompt = {}
    for node in ui_workflow["nodes"]:
        class_type = node.get("type")
        if class_type in VIRTUAL_NODES or node.get("mode") in (MODE_MUTED, MODE_BYPASS):
            continue
        label = _node_label(node["id"], class_type, node.get("title"))
        cls = classes.get(class_type)
        if cls is None:
            raise WorkflowError(f"{label}: unknown node type{_close(class_type, classes)}; install the "
                                f"custom node pack that provides {class_type!r} or remove the node")
        inputs = _widget_values(node, cls, label)
        for entry in node.get("inputs") or []:
            src = graph.source(entry.get("link"))
            if src is None:
                continue
            inputs[entry["name"]] = [src[1], src[2]] if src[0] == "link" else src[1]
        prompt[str(node["id"])] = {"class_type": class_type, "inputs": inputs,
                                   "_meta": {"title": node.get("title") or class_type}}
    return prompt


# --------------------------------------------------------------------------- execution


def _is_link(value) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool))


def _title(node: dict) -> str | None:
    return (node.get("_meta") or {}).get("title")


def apply_overrides(prompt: dict, overrides: dict, classes: dict) -> dict:
    """{"NODE_ID_OR_TITLE.INPUT": value} → a copy of `prompt` with those inputs set."""
    prompt = {nid: {**node, "inputs": dict(node.get("inputs", {}))} for nid, node in prompt.items()}
    for key, value in (overrides or {}).items():
        target, sep, name = str(key).rpartition(".")
        if not sep or not target or not name:
            raise WorkflowError(f"override {key!r} must look like NODE.INPUT (node id or title, then the input)")
        ids = [target] if target in prompt else [nid for nid, n in prompt.items() if _title(n) == target]
        if not ids:
            titles = sorted({_title(n) for n in prompt.values() if _title(n)})
            raise WorkflowError(f"override {key!r}: no node with id or title {target!r}; ids: "
                                f"{', '.join(sorted(prompt, key=_id_order))}; titles: {', '.join(titles) or 'none'}")
        if len(ids) > 1:
            raise WorkflowError(f"override {key!r}: title {target!r} is shared by nodes {', '.join(ids)}; "
                                f"use a node id instead")
        node = prompt[ids[0]]
        cls = classes.get(node.get("class_type"))
        if cls is not None:
            known = [n for n, _, _ in input_specs(cls)]
            if name not in known:
                raise WorkflowError(f"override {key!r}: {node['class_type']} has no input {name!r}"
                                    f"{_close(name, known)}; inputs: {', '.join(known)}")
        node["inputs"][name] = value
    return prompt


def _id_order(node_id: str):
    return (0, int(node_id), "") if str(node_id).isdigit() else (1, 0, str(node_id))


def _dependencies(prompt: dict) -> dict:
    deps = {}
    for nid, node in prompt.items():
        srcs = set()
        for name, value in node.get("inputs", {}).items():
            if _is_link(value):
                src = str(value[0])
                if src not in prompt:
                    raise WorkflowError(f"{_node_label(nid, node.get('class_type'), _title(node))}: input "
                                        f"{name!r} is linked to node {src}, which is not in the workflow")
                srcs.add(src)
        deps[nid] = srcs
    return deps


def execution_order(prompt: dict, targets=None) -> list[str]:
    """Node ids in dependency order (only ancestors of `targets` when given); raises on a cycle."""
    deps = _dependencies(prompt)
    needed = set(prompt) if targets is None else set()
    stack = list(targets or [])
    while stack:
        nid = stack.pop()
        if nid not in needed:
            needed.add(nid)
            stack.extend(deps[nid])
    order, done, visiting = [], set(), []

    def visit(nid):
        if nid in done:
            return
        if nid in visiting:
            cycle = visiting[visiting.index(nid):] + [nid]
            names = " → ".join(_node_label(n, prompt[n].get("class_type"), _title(prompt[n])) for n in cycle)
            raise WorkflowError(f"the workflow has a cycle: {names}; break one of these links")
        visiting.append(nid)
        for src in sorted(deps[nid], key=_id_order):
            visit(src)
        visiting.pop()
        done.add(nid)
        order.append(nid)

    for nid in sorted(needed, key=_id_order):
        visit(nid)
    return order


def _hidden_value(kind, node_id: str, prompt: dict, extra_pnginfo: dict | None):
    return {"PROMPT": prompt, "UNIQUE_ID": node_id, "EXTRA_PNGINFO": extra_pnginfo or {}}.get(kind)


def _gather_inputs(node_id: str, node: dict, cls, results: dict, prompt: dict, extra_pnginfo, label: str) -> dict:
    given = node.get("inputs", {})
    kwargs = {}
    for name, spec, required in input_specs(cls):
        if name not in given:
            if required:
                raise WorkflowError(f"{label}: required input {name!r} is missing; connect it or give a value")
            continue
        value = given[name]
        if _is_link(value):
            src, slot = str(value[0]), value[1]
            outputs = results[src]
            if not 0 <= slot < len(outputs):
                raise WorkflowError(f"{label}: input {name!r} reads output {slot} of node {src}, which has "
                                    f"only {len(outputs)} output(s)")
            value = outputs[slot]
        kwargs[name] = value
    for name, kind in (cls.INPUT_TYPES().get("hidden") or {}).items():
        kwargs[name] = _hidden_value(kind, node_id, prompt, extra_pnginfo)
    return kwargs


def _validate(cls, kwargs: dict, given: dict, label: str) -> None:
    """Call the class's VALIDATE_INPUTS like ComfyUI: with the constant (unlinked) inputs it names."""
    check = getattr(cls, "VALIDATE_INPUTS", None)
    if check is None:
        return
    params = inspect.signature(check).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    args = {k: v for k, v in kwargs.items() if not _is_link(given.get(k)) and (takes_all or k in params)}
    verdict = check(**args)
    if verdict is not True:
        raise WorkflowError(f"{label}: invalid inputs: {verdict}")


def _normalise_result(raw, label: str) -> tuple[tuple, dict | None]:
    """(outputs tuple, ui dict or None) from a node's return value (tuple, or {"ui", "result"})."""
    if raw is None:
        return (), None
    if isinstance(raw, dict):
        return tuple(raw.get("result") or ()), raw.get("ui")
    if isinstance(raw, (tuple, list)):
        return tuple(raw), None
    raise WorkflowError(f"{label} returned {type(raw).__name__}; a node must return a tuple or "
                        f"{{'ui': ..., 'result': ...}}")


def run_api(prompt: dict, node_classes: dict, progress: bool = True, extra_pnginfo: dict | None = None) -> dict:
    """Execute an API-format prompt; returns {node_id: {"ui": ..., "result": tuple}} for its output nodes
    (OUTPUT_NODE classes; the graph's sink nodes when it has none)."""
    classes = _with_fallbacks(node_classes, for_run=True)
    for nid, node in prompt.items():
        class_type = node.get("class_type") if isinstance(node, dict) else None
        if class_type not in classes:
            raise WorkflowError(f"{_node_label(nid, class_type, _title(node) if isinstance(node, dict) else None)}: "
                                f"unknown node type{_close(str(class_type), classes)}; available: "
                                f"{', '.join(sorted(classes))}")
    outputs = [nid for nid, n in prompt.items() if getattr(classes[n["class_type"]], "OUTPUT_NODE", False)]
    if not outputs:
        used = {str(v[0]) for n in prompt.values() for v in n.get("inputs", {}).values() if _is_link(v)}
        outputs = [nid for nid in prompt if nid not in used]
    order = execution_order(prompt, outputs)
    results, report = {}, {}
    for step, nid in enumerate(order, 1):
        node = prompt[nid]
        cls = classes[node["class_type"]]
        label = _node_label(nid, node["class_type"], _title(node))
        host.check_cancelled()                       # between nodes, like ComfyUI's before_node_execution
        kwargs = _gather_inputs(nid, node, cls, results, prompt, extra_pnginfo, label)
        _validate(cls, kwargs, node.get("inputs", {}), label)
        if progress:
            print(f"[{step}/{len(order)}] {label}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            raw = getattr(cls(), cls.FUNCTION)(**kwargs)
        except Exception as e:
            if hasattr(e, "add_note"):
                e.add_note(f"while running {label}")
            raise
        results[nid], ui = _normalise_result(raw, label)
        if progress:
            print(f"    done in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
        if nid in outputs:
            report[nid] = {"ui": ui or {}, "result": results[nid]}
    return report


def run_workflow(workflow: dict, node_classes: dict, overrides: dict | None = None, progress: bool = True) -> dict:
    """Run a workflow in either format headlessly; see run_api for the result.

    overrides: {"NODE_ID_OR_TITLE.INPUT": value}, applied after UI→API conversion. The first Ctrl-C
    stops cleanly at the next step or node boundary.
    """
    if not isinstance(workflow, dict) or not workflow:
        raise WorkflowError("a workflow must be a non-empty JSON object (UI or API format)")
    classes = _with_fallbacks(node_classes, for_run=True)
    ui = workflow if is_ui_workflow(workflow) else None
    prompt = ui_to_api(workflow, classes) if ui else workflow
    prompt = apply_overrides(prompt, overrides or {}, classes)
    with host.cancel_on_sigint():
        if progress:
            return run_api(prompt, classes, progress=True, extra_pnginfo={"workflow": ui} if ui else None)
        with host.progress_disabled():
            return run_api(prompt, classes, progress=False, extra_pnginfo={"workflow": ui} if ui else None)


# --------------------------------------------------------------------------- core stand-ins (outside ComfyUI)


def _input_path(name: str) -> str:
    """ComfyUI's annotated names ("pic.png [input]") resolve in the input folder; outside ComfyUI an
    existing path (absolute or relative to the working directory) is accepted too."""
    name = str(name)
    for suffix in (" [input]", " [output]", " [temp]"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    candidates = [os.path.join(host.input_dir(), name)]
    if os.path.isabs(name) or not host.in_comfy():
        candidates.append(os.path.abspath(name))
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise InputError(f"image {name!r} not found in the input folder {host.input_dir()} (set EMU_VIDEO_INPUT, "
                     f"or pass a path that exists)")


def read_image(path: str):
    """First frame of a PNG/JPEG/WEBP (anything PyAV decodes) → (IMAGE [1,H,W,3], MASK [1,H,W]) floats 0..1.

    As in ComfyUI's LoadImage the mask is 1 - alpha (zeros without alpha)."""
    import av
    import torch

    try:
        with av.open(path) as container:
            frame = next(container.decode(video=0))
    except Exception as e:  # noqa: BLE001 - PyAV names codecs, not the user's mistake
        raise InputError(f"cannot read {path} as an image ({e}); use a PNG, JPEG or WEBP") from None
    fmt = frame.format
    has_alpha = fmt.has_palette or any(c.is_alpha for c in fmt.components)
    pixels = torch.from_numpy(frame.to_ndarray(format="rgba" if has_alpha else "rgb24")).float().div(255)
    image = pixels[..., :3].contiguous()[None]
    mask = (1.0 - pixels[..., 3])[None] if has_alpha else torch.zeros(1, *pixels.shape[:2])
    return image, mask


class LoadImage:
    """Headless stand-in for ComfyUI's core LoadImage (same name, inputs and outputs)."""
    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    @classmethod
    def INPUT_TYPES(cls):
        folder = host.input_dir()
        files = sorted(f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f))) \
            if os.path.isdir(folder) else []
        return {"required": {"image": (files, {"image_upload": True})}}

    def load_image(self, image):
        return read_image(_input_path(image))


class SaveImage:
    """Headless stand-in for core SaveImage: numbered PNGs in the output folder."""
    CATEGORY = "image"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save_images"
    FOLDER_TYPE = "output"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})}}

    def _root(self) -> str:
        return host.output_dir()

    def save_images(self, images, filename_prefix="ComfyUI"):
        from ..model.video_io import next_free_path, write_png

        root = os.path.abspath(self._root())
        sub, stem = os.path.split(str(filename_prefix).replace("\\", "/"))
        folder = os.path.abspath(os.path.join(root, sub))
        if os.path.commonpath([root, folder]) != root or not stem:
            raise InputError(f"filename_prefix {filename_prefix!r} must be a name (optionally 'subfolder/name') "
                             f"inside {root}")
        saved = []
        for image in images:
            path = write_png(image[None], next_free_path(folder, stem, ".png"))
            saved.append({"filename": os.path.basename(path), "subfolder": sub, "type": self.FOLDER_TYPE})
        return {"ui": {"images": saved}}


class PreviewImage(SaveImage):
    """Headless stand-in for core PreviewImage: PNGs in the temp folder."""
    FOLDER_TYPE = "temp"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    def _root(self) -> str:
        return host.temp_dir()

    def save_images(self, images, filename_prefix="preview"):
        return super().save_images(images, filename_prefix)


CORE_FALLBACKS = {"LoadImage": LoadImage, "SaveImage": SaveImage, "PreviewImage": PreviewImage}


def _with_fallbacks(node_classes: dict, for_run: bool = False) -> dict:
    """The given classes plus the core stand-ins they lack. Conversion always may use the stand-ins'
    INPUT_TYPES (same widgets as core); execution uses them only outside ComfyUI, where core is absent."""
    if for_run and host.in_comfy():
        return dict(node_classes)
    return {**CORE_FALLBACKS, **dict(node_classes)}
