"""nodes/workflow.py: UI→API conversion, the headless executor and the core LoadImage stand-in.

Fake node classes defined here stand in for real ones so the tests say exactly what the converter and
executor must do, independent of the model code.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from emu_video.nodes import host
from emu_video.nodes.workflow import (LoadImage, WorkflowError, control_widgets, execution_order, run_workflow,
                                      ui_to_api)

CALLS = []


class Number:
    RETURN_TYPES = ("NUM",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 1}),
                             "seed": ("INT", {"default": 0, "control_after_generate": True})}}

    def make(self, value, seed):
        CALLS.append(("Number", value, seed))
        return (value + seed,)


class Add:
    RETURN_TYPES = ("NUM", "STRING")
    FUNCTION = "add"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("NUM",), "b": ("INT", {"default": 0}), "op": (["add", "sub"],)},
                "optional": {"scale": ("FLOAT", {"default": 1.0}), "extra": ("NUM",)}}

    def add(self, a, b, op, scale=1.0, extra=0):
        CALLS.append(("Add", a, b, op, scale, extra))
        out = (a + b if op == "add" else a - b) * scale + extra
        return (out, f"{op}={out}")


class Show:
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "show"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("NUM",)}, "hidden": {"unique_id": "UNIQUE_ID"}}

    def show(self, value, unique_id=None):
        CALLS.append(("Show", value, unique_id))
        return {"ui": {"text": [str(value)]}, "result": (value,)}


CLASSES = {"Number": Number, "Add": Add, "Show": Show}


@pytest.fixture(autouse=True)
def _reset():
    CALLS.clear()
    host.reset_cancel()
    yield
    host.reset_cancel()


def ui_node(nid, type_, widgets=(), inputs=(), outputs=(), **extra):
    return {"id": nid, "type": type_, "pos": [0, 0], "size": [200, 100], "flags": {}, "order": 0, "mode": 0,
            "inputs": list(inputs), "outputs": list(outputs), "properties": {}, "widgets_values": list(widgets),
            **extra}


def api(prompt):
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


# --------------------------------------------------------------------------- control widgets (frontend rules)

@pytest.mark.parametrize("name, spec, extra", [
    ("seed", ("INT", {"control_after_generate": True}), 1),
    ("seed", ("INT", {}), 1),                                  # the frontend adds it to seed/noise_seed by name
    ("noise_seed", ("INT",), 1),
    ("seed", ("INT", {"control_after_generate": False}), 0),   # an explicit False wins
    ("steps", ("INT", {"default": 20}), 0),
    ("count", ("INT", {"control_after_generate": "fixed"}), 1),
    ("choice", (["a", "b"], {"control_after_generate": True}), 2),   # control + filter-list widgets
    ("image", (["x.png"], {"image_upload": True}), 1),               # the upload button's stored value
    ("cfg", ("FLOAT", {"default": 7.0}), 0),
])
def test_control_widget_counts_follow_the_frontend(name, spec, extra):
    assert control_widgets(name, spec) == extra


# --------------------------------------------------------------------------- UI -> API

def sample_ui():
    """Number(1) → Reroute → Add(2) → Show(3), a PrimitiveNode driving Add.b, a Note and a muted node."""
    return {
        "nodes": [
            ui_node(1, "Number", [5, 7, "randomize"], outputs=[{"name": "NUM", "type": "NUM", "links": [1]}]),
            ui_node(2, "Add", [99, "sub", 0.5],                 # b's stale widget value stays; the link wins
                    inputs=[{"name": "a", "type": "NUM", "link": 2},
                            {"name": "extra", "type": "NUM", "link": None},
                            {"name": "b", "type": "INT", "link": 4, "widget": {"name": "b"}}],
                    outputs=[{"name": "NUM", "type": "NUM", "links": [3]}], title="My adder"),
            ui_node(3, "Show", inputs=[{"name": "value", "type": "NUM", "link": 3}]),
            ui_node(4, "Reroute", inputs=[{"name": "", "type": "*", "link": 1}],
                    outputs=[{"name": "", "type": "NUM", "links": [2]}]),
            ui_node(5, "PrimitiveNode", [11, "fixed"], outputs=[{"name": "INT", "type": "INT", "links": [4]}]),
            ui_node(6, "Note", ["a comment"]),
            ui_node(7, "Show", inputs=[{"name": "value", "type": "NUM", "link": 5}], mode=2),
        ],
        "links": [[1, 1, 0, 4, 0, "NUM"], [2, 4, 0, 2, 0, "NUM"], [3, 2, 0, 3, 0, "NUM"],
                  [4, 5, 0, 2, 2, "INT"], [5, 1, 0, 7, 0, "NUM"]],
        "version": 0.4,
    }


def test_ui_to_api_maps_widgets_links_and_frontend_only_nodes():
    prompt = ui_to_api(sample_ui(), CLASSES)
    assert api(prompt) == {
        "1": {"class_type": "Number", "inputs": {"value": 5, "seed": 7}},       # "randomize"/"fixed" skipped
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 11, "op": "sub", "scale": 0.5}},
        "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}},
    }
    assert prompt["2"]["_meta"]["title"] == "My adder"


def test_linked_widget_without_widget_entry_takes_no_slot():
    """Writers that drop a linked widget's value (no "widget" key on the input) shift nothing."""
    ui = {"nodes": [ui_node(1, "Number", [3, 4, "fixed"]),
                    ui_node(2, "Add", ["add", 2.0], inputs=[{"name": "a", "type": "NUM", "link": 1},
                                                            {"name": "b", "type": "INT", "link": 2}])],
          "links": [[1, 1, 0, 2, 0, "NUM"], [2, 1, 0, 2, 1, "INT"]]}
    assert ui_to_api(ui, CLASSES)["2"]["inputs"] == {"a": ["1", 0], "b": ["1", 0], "op": "add", "scale": 2.0}


def test_short_widgets_values_fall_back_to_defaults_and_dict_links_work():
    ui = {"nodes": [ui_node(1, "Number", [3]), ui_node(2, "Show", inputs=[{"name": "value", "link": 9}])],
          "links": [{"id": 9, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "NUM"}]}
    prompt = ui_to_api(ui, CLASSES)
    assert prompt["1"]["inputs"] == {"value": 3, "seed": 0}
    assert prompt["2"]["inputs"] == {"value": ["1", 0]}


def test_ui_to_api_unknown_node_names_it():
    ui = {"nodes": [ui_node(8, "Nummber", [1])], "links": []}
    with pytest.raises(WorkflowError, match=r"node 8 \(Nummber\).*Number"):
        ui_to_api(ui, CLASSES)


def test_shipped_ui_workflows_convert_to_their_api_twins():
    import emu_video

    root = Path(emu_video.__file__).resolve().parent / "workflows"
    pairs = [(p, root / "api" / p.name) for p in sorted(root.glob("*.json")) if (root / "api" / p.name).exists()]
    if not pairs:
        pytest.skip("no shipped workflows yet")
    for ui_path, api_path in pairs:
        converted = ui_to_api(json.loads(ui_path.read_text()), emu_video.NODE_CLASS_MAPPINGS)
        assert api(converted) == api(json.loads(api_path.read_text())), ui_path.name


# --------------------------------------------------------------------------- executor

def diamond():
    """1 feeds 2 and 3 (which both feed 4): node 1 must run once."""
    return {"4": {"class_type": "Show", "inputs": {"value": ["3", 0]}},
            "3": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": 1, "op": "add", "extra": ["1", 0]}},
            "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 10, "op": "add"}, "_meta": {"title": "ten"}},
            "1": {"class_type": "Number", "inputs": {"value": 2, "seed": 0}}}


def test_run_executes_in_dependency_order_once_each():
    out = run_workflow(diamond(), CLASSES, progress=False)
    assert [c[0] for c in CALLS] == ["Number", "Add", "Add", "Show"]
    assert out == {"4": {"ui": {"text": ["15.0"]}, "result": (15.0,)}}     # ((2+10)+1)*1.0+2
    assert CALLS[-1] == ("Show", 15.0, "4")                                 # hidden unique_id passed


def test_only_ancestors_of_output_nodes_run():
    prompt = {**diamond(), "9": {"class_type": "Number", "inputs": {"value": 1, "seed": 1}}}
    run_workflow(prompt, CLASSES, progress=False)
    assert sum(c[0] == "Number" for c in CALLS) == 1


def test_plain_tuple_results_and_sinks_without_output_nodes():
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 4, "seed": 1}},
              "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1, "op": "sub"}}}
    out = run_workflow(prompt, CLASSES, progress=False)
    assert out == {"2": {"ui": {}, "result": (4.0, "sub=4.0")}}


def test_overrides_by_id_and_title():
    out = run_workflow(diamond(), CLASSES, overrides={"1.value": 5, "ten.b": 0}, progress=False)
    assert out["4"]["result"] == (11.0,)         # (5+0)+1+5


@pytest.mark.parametrize("key, message", [("nobody.b", "no node with id or title"),
                                          ("ten.bb", "has no input 'bb'.*did you mean b"),
                                          ("novalue", "NODE.INPUT")])
def test_bad_overrides_explain(key, message):
    with pytest.raises(WorkflowError, match=message):
        run_workflow(diamond(), CLASSES, overrides={key: 1}, progress=False)


def test_ui_and_api_formats_run_alike():
    from_ui = run_workflow(sample_ui(), CLASSES, progress=False)
    from_api = run_workflow(api(ui_to_api(sample_ui(), CLASSES)), CLASSES, progress=False)
    assert from_ui == from_api == {"3": {"ui": {"text": ["0.5"]}, "result": (0.5,)}}   # (5+7-11)*0.5


def test_cycle_is_reported_with_node_names():
    prompt = {"1": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": 0, "op": "add"}},
              "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 0, "op": "add"}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    with pytest.raises(WorkflowError, match=r"cycle: node 1 \(Add\) → node 2 \(Add\) → node 1"):
        run_workflow(prompt, CLASSES, progress=False)
    assert CALLS == []


@pytest.mark.parametrize("prompt, message", [
    ({"1": {"class_type": "Add", "inputs": {"b": 0, "op": "add"}}}, r"node 1 \(Add\): required input 'a' is missing"),
    ({"1": {"class_type": "Show", "inputs": {"value": ["7", 0]}}}, r"linked to node 7, which is not in the workflow"),
    ({"1": {"class_type": "Mystery", "inputs": {}}}, r"node 1 \(Mystery\): unknown node type"),
    ({"1": {"class_type": "Number", "inputs": {"value": 1, "seed": 0}},
      "2": {"class_type": "Show", "inputs": {"value": ["1", 3]}}}, r"reads output 3 of node 1, which has only 1"),
])
def test_invalid_graphs_fail_before_or_at_the_named_node(prompt, message):
    with pytest.raises(WorkflowError, match=message):
        run_workflow(prompt, CLASSES, progress=False)


def test_execution_order_is_topological():
    order = execution_order(api(diamond()))
    assert order.index("1") < order.index("2") < order.index("3") < order.index("4")


def test_cancel_request_stops_between_nodes():
    host.request_cancel()
    with pytest.raises(host.Cancelled):
        run_workflow(diamond(), CLASSES, progress=False)
    assert CALLS == [] and not host.cancel_requested()


# --------------------------------------------------------------------------- LoadImage stand-in

def _write_rgba_png(path, rgba):
    import av

    ctx = av.CodecContext.create("png", "w")
    ctx.width, ctx.height, ctx.pix_fmt = rgba.shape[1], rgba.shape[0], "rgba"
    frame = av.VideoFrame.from_ndarray(rgba, format="rgba")
    path.write_bytes(b"".join(bytes(p) for p in ctx.encode(frame)) + b"".join(bytes(p) for p in ctx.encode(None)))


def test_load_image_reads_pixels_and_alpha_mask(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (6, 10, 4), dtype=np.uint8)
    _write_rgba_png(tmp_path / "pic.png", rgba)
    monkeypatch.setenv("EMU_VIDEO_INPUT", str(tmp_path))
    assert "pic.png" in LoadImage.INPUT_TYPES()["required"]["image"][0]
    image, mask = LoadImage().load_image("pic.png")
    assert image.shape == (1, 6, 10, 3) and image.dtype == torch.float32 and mask.shape == (1, 6, 10)
    assert torch.allclose(image[0], torch.from_numpy(rgba[..., :3]).float() / 255)
    assert torch.allclose(mask[0], 1 - torch.from_numpy(rgba[..., 3]).float() / 255)


def test_load_image_missing_file_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("EMU_VIDEO_INPUT", str(tmp_path))
    with pytest.raises(ValueError, match=f"not found in the input folder {tmp_path}"):
        LoadImage().load_image("absent.png")
