"""Shipped workflows: UI ↔ API twins agree, links are consistent, every one runs via `emu-video run`."""
import json
from pathlib import Path

import pytest

import emu_video
from emu_video import cli
from emu_video.model.video_io import probe
from emu_video.nodes.workflow import ui_to_api


WORKFLOWS = Path(emu_video.__file__).parent / "workflows"
NAMES = ["text_to_video", "animate_image", "interpolate", "extend_video"]


def load(name, api=False):
    return json.loads((WORKFLOWS / ("api" if api else "") / f"{name}.json").read_text())


def test_every_workflow_has_an_api_twin():
    assert sorted(p.stem for p in WORKFLOWS.glob("*.json")) == sorted(NAMES)
    assert sorted(p.stem for p in (WORKFLOWS / "api").glob("*.json")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_ui_converts_to_its_api_twin(name):
    assert ui_to_api(load(name), emu_video.NODE_CLASS_MAPPINGS) == load(name, api=True)


@pytest.mark.parametrize("name", NAMES)
def test_ui_links_are_consistent(name):
    ui = load(name)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert ui["last_node_id"] == max(nodes) and ui["last_link_id"] == len(ui["links"])
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[src]["outputs"][src_slot]["type"] == kind == nodes[dst]["inputs"][dst_slot]["type"]


@pytest.mark.parametrize("dropped", [1, 3])
def test_a_workflow_saved_before_the_optional_guidance_inputs_loads_with_them_off(dropped):
    """Shared workflows outlive node versions: the video sampler's optional late_text_cfg / late_below,
    then guidance, came later, and a UI workflow saved without their values converts with the defaults
    (off, and the paper's cfg)."""
    ui = load("text_to_video")
    sampler = next(n for n in ui["nodes"] if n["type"] == "EmuVideoSampler")
    sampler["widgets_values"] = sampler["widgets_values"][:-dropped]
    inputs = ui_to_api(ui, emu_video.NODE_CLASS_MAPPINGS)[str(sampler["id"])]["inputs"]
    assert (inputs["late_text_cfg"], inputs["late_below"], inputs["text_cfg"]) == (-1.0, 0.5, 7.5)
    assert inputs["guidance"] == "cfg"


def test_a_workflow_saved_before_the_interpolation_denoise_loads_with_the_full_run():
    """The Interpolate node's optional denoise came later: a workflow saved without it runs every step."""
    ui = load("text_to_video")
    node = next(n for n in ui["nodes"] if n["type"] == "EmuVideoInterpolate")
    node["widgets_values"] = node["widgets_values"][:-1]
    inputs = ui_to_api(ui, emu_video.NODE_CLASS_MAPPINGS)[str(node["id"])]["inputs"]
    assert inputs["denoise"] == 1.0 and inputs["noise_aug"] == 100


@pytest.mark.parametrize("name", NAMES)
def test_workflows_sample_with_the_demo_models_guidance(name):
    """The workflows run the demo set (init-models --preset demo): their scales are its manifest's."""
    sampling = cli.model_set_sampling(cli.DEMO_DIR)
    for node in load(name, api=True).values():
        inputs = node["inputs"]
        if node["class_type"] == "EmuVideoFirstFrame":
            assert (inputs["text_cfg"], inputs["steps"]) == (sampling["first_frame_cfg"], sampling["steps"])
        if node["class_type"] in ("EmuVideoSampler", "EmuVideoExtend"):
            assert (inputs["text_cfg"], inputs["image_cfg"]) == (sampling["text_cfg"], sampling["image_cfg"])
            late = sampling.get("late_text_cfg")
            assert inputs["late_text_cfg"] == (-1.0 if late is None else late)
            assert late is None or inputs["late_below"] == sampling["late_below"]
            assert inputs["guidance"] == sampling.get("guidance", "cfg")
        if node["class_type"] == "EmuVideoInterpolate":
            assert (inputs["text_cfg"], inputs["image_cfg"]) == (sampling["interp_text_cfg"],
                                                                 sampling["interp_image_cfg"])
            assert inputs["denoise"] == sampling.get("interp_denoise", 1.0)


@pytest.mark.parametrize("name", NAMES)
def test_workflows_reference_the_init_models_files(name):
    names = {Path(p).name for p in cli.TINY_FILES.values()}
    referenced = {v for node in load(name, api=True).values() for k, v in node["inputs"].items()
                  if k.endswith("_name")}
    assert referenced and referenced <= names


def fast_overrides(name):
    """2 sampling steps everywhere (workflows ship with 25)."""
    api = load(name, api=True)
    return [f"{nid}.steps=2" for nid, node in api.items()
            if node["class_type"] in ("EmuVideoScheduler", "EmuVideoFirstFrame")]


@pytest.mark.parametrize("name,api", [(n, False) for n in NAMES] + [("text_to_video", True)])
def test_workflow_runs_headlessly(name, api, model_dir, tmp_path, monkeypatch, capsys):
    for var in ("EMU_VIDEO_MODELS", "EMU_VIDEO_OUTPUT", "EMU_VIDEO_INPUT"):
        monkeypatch.delenv(var, raising=False)
    path = WORKFLOWS / ("api" if api else "") / f"{name}.json"
    sets = sum((["--set", s] for s in fast_overrides(name)), [])
    rc = cli.main(["run", str(path), "--models", str(model_dir), "--out", str(tmp_path), "--quiet", *sets])
    assert rc == 0, capsys.readouterr().err
    videos = sorted(tmp_path.rglob("*.mp4"))
    assert len(videos) == (2 if name == "interpolate" else 1)
    frames = {v.stem.rsplit("_", 1)[0]: probe(str(v))["frames"] for v in videos}
    expected = {"text_to_video": {"text_to_video": 7}, "animate_image": {"animate_image": 7},
                "interpolate": {"before_interpolation": 4, "after_interpolation": 7},
                "extend_video": {"extend_video": 4 + 2}}[name]
    assert frames == expected
    assert all(v.with_suffix(".webp").exists() for v in videos)   # animated preview next to each mp4
