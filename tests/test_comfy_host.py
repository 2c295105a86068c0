"""The pack inside a real ComfyUI server (skipped unless COMFYUI_DIR is set).

    COMFYUI_DIR=/work/ComfyUI COMFYUI_PYTHON=/work/comfy-venv/bin/python \
        .venv/bin/python -m pytest -q tests/test_comfy_host.py

Symlinks this repository into $COMFYUI_DIR/custom_nodes/emu_video_test, writes the tiny random model set
and example picture into a temp folder (passed to ComfyUI with --extra-model-paths-config and
--input-directory, so the checkout's own models/ and input/ are untouched), boots `main.py --cpu` on a
free loopback port with only this pack enabled, checks the pack imported and every node is in
/object_info, then queues every workflows/api/*.json and waits for a successful result with an output
file. The server and the symlink are always removed at the end. Every wait is bounded.
"""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR (and COMFYUI_PYTHON) to test inside ComfyUI")

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "emu_video_test"
BOOT_TIMEOUT = float(os.environ.get("COMFYUI_BOOT_TIMEOUT", 240))
RUN_TIMEOUT = float(os.environ.get("COMFYUI_RUN_TIMEOUT", 600))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _post(url: str, body: dict, timeout: float = 30):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:          # /prompt answers 400 with node_errors: show them
        raise AssertionError(f"POST {url} → {e.code}: {e.read().decode(errors='replace')[:4000]}") from None


def _make_models(root: Path) -> None:
    try:
        from emu_video import cli
    except ImportError as e:
        pytest.skip(f"emu_video.cli not importable: {e}")
    if not hasattr(cli, "init_models"):
        pytest.skip("emu_video.cli has no init-models yet")
    code = cli.main(["init-models", "--preset", "tiny", "--out", str(root / "models"),
                     "--input-dir", str(root / "input")])
    if code != 0:
        pytest.skip(f"`emu-video init-models --preset tiny` exited {code}")


class Server:
    def __init__(self, root: Path):
        self.root, self.port = root, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "comfyui.log"
        self.output = root / "output"
        self.proc = None

    def start(self) -> None:
        config = self.root / "extra_model_paths.yaml"
        models = self.root / "models"
        config.write_text(f"emu_video_test:\n  base_path: {models}\n  diffusion_models: diffusion_models\n"
                          f"  vae: vae\n  text_encoders: text_encoders\n  emu_video: emu_video\n")
        (self.root / "user").mkdir(exist_ok=True)
        python = os.environ.get("COMFYUI_PYTHON") or sys.executable
        cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--extra-model-paths-config", str(config), "--input-directory", str(self.root / "input"),
               "--output-directory", str(self.output), "--temp-directory", str(self.root / "temp"),
               "--user-directory", str(self.root / "user"), "--database-url", "sqlite:///:memory:",
               "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_NAME]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=COMFYUI_DIR, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited with {self.proc.returncode} while booting:\n{self.log_text()}")
            try:
                self.object_info = _get(f"{self.url}/object_info", timeout=30)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(1)
        raise AssertionError(f"ComfyUI did not answer /object_info within {BOOT_TIMEOUT}s:\n{self.log_text()}")

    def log_text(self, tail: int = 8000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-tail:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        if self.proc is not None:
            self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    link = Path(COMFYUI_DIR) / "custom_nodes" / PACK_NAME
    if link.exists() or link.is_symlink():
        pytest.fail(f"{link} already exists; remove it (a previous run may have been killed)")
    root = tmp_path_factory.mktemp("comfy_host")
    _make_models(root)
    link.symlink_to(REPO, target_is_directory=True)
    srv = Server(root)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        link.unlink()


def test_pack_imports_without_failure(server):
    log = server.log_text(tail=10**7)
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line and PACK_NAME in line]
    assert not failed, "\n".join(failed) + "\n" + server.log_text()
    assert PACK_NAME in log, "the pack was not loaded at all:\n" + server.log_text()


def test_every_node_is_registered(server):
    import emu_video

    missing = sorted(set(emu_video.NODE_CLASS_MAPPINGS) - set(server.object_info))
    assert not missing, f"not in /object_info: {missing}\n{server.log_text()}"


def _output_files(outputs: dict) -> list[dict]:
    return [item for ui in outputs.values() for items in ui.values() if isinstance(items, list)
            for item in items if isinstance(item, dict) and "filename" in item]


WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.json"))


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_shipped_workflow_runs(server, path):
    reply = _post(f"{server.url}/prompt", {"prompt": json.loads(path.read_text()), "client_id": "emu_video_test"})
    assert not reply.get("node_errors"), reply
    prompt_id = reply["prompt_id"]
    deadline = time.monotonic() + RUN_TIMEOUT
    entry = None
    while time.monotonic() < deadline:
        entry = _get(f"{server.url}/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None and \
                entry["status"].get("status_str") in ("success", "error"):
            break
        time.sleep(1)
    else:
        pytest.fail(f"{path.name} did not finish within {RUN_TIMEOUT}s\n{server.log_text()}")
    status = entry["status"]
    assert status["status_str"] == "success", json.dumps(status.get("messages"), indent=1)[-6000:]
    files = _output_files(entry.get("outputs", {}))
    assert files, f"{path.name} reported no output files: {entry.get('outputs')}"
    for item in files:
        base = server.output if item.get("type", "output") == "output" else server.root / item["type"]
        f = base / item.get("subfolder", "") / item["filename"]
        assert f.is_file() and f.stat().st_size > 0, f"missing output {f}"
