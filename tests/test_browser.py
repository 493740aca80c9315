"""Opt-in: the shipped UI workflows in the real ComfyUI frontend, in a real browser (Chromium driven by Playwright).

Needs what the host tests need (COMFYUI_DIR, COMFYUI_PYTHON, COMFYUI_PYTHONPATH; see test_host_workflows.py), the
`playwright` package (from PyPI; no browser download) and a Chromium executable: MCM_CHROMIUM, else `chromium`
(Debian's package) on PATH. Starts one server (tests/host/server.py) with this package and the
test adapters, opens the server's own frontend and, for every file in workflows/, calls the frontend's
`app.loadGraphData`, then records which node types it does not know, the graph as the frontend serialises it
right after loading, and the frontend's own API conversion `app.graphToPrompt()`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
CHROMIUM = os.environ.get("MCM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
UI_NAMES = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))
DEFAULT = "mcm_t2v_gen2_4step"
APP_TIMEOUT_MS = 180_000  # the first page load builds the node library from /object_info on a slow CPU

pytestmark = [
    pytest.mark.host,
    pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to run the real-host tests"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright not installed"),
    pytest.mark.skipif(not CHROMIUM, reason="no chromium executable (install Debian's chromium or set MCM_CHROMIUM)"),
]

#: Runs in the page for one workflow: what the frontend makes of the file.
LOAD_JS = """
async (wf) => {
  const app = window.app;
  const missing = wf.nodes.map((n) => n.type).filter((t) => !(t in window.LiteGraph.registered_node_types));
  await app.loadGraphData(structuredClone(wf), true, false, null,
                          {showMissingNodesDialog: false, showMissingModelsDialog: false});
  const graph = app.rootGraph || app.graph;
  const saved = graph.serialize();
  const { output } = await app.graphToPrompt();
  return {
    missing,
    node_ids: saved.nodes.map((n) => n.id).sort((a, b) => a - b),
    types: Object.fromEntries(saved.nodes.map((n) => [String(n.id), n.type])),
    widgets: Object.fromEntries(saved.nodes.map((n) => [String(n.id), n.widgets_values ?? null])),
    prompt: output,
  };
}
"""


def _load_server_module():
    spec = importlib.util.spec_from_file_location("mcm_host_server", ROOT / "tests" / "host" / "server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _open_frontend(playwright, url: str):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url, timeout=APP_TIMEOUT_MS)
    page.wait_for_function(
        "() => window.app && window.app.graph && window.LiteGraph && "
        "Object.keys(window.LiteGraph.registered_node_types).includes('MCM_Sampler')",
        timeout=APP_TIMEOUT_MS,
    )
    return browser, page, errors


@pytest.fixture(scope="module")
def frontend(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    tmp = tmp_path_factory.mktemp("browser")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "host" / "make_adapters.py"), str(tmp / "adapters")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rw = _load_server_module()
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    server = rw.Server(Path(COMFYUI_DIR), ROOT, tmp / "adapters", Path(tempfile.mkdtemp(prefix="mcm-browser-")), python)
    results, page_errors = {}, []
    try:
        server.start()
        with sync_playwright() as pw:
            browser, page, page_errors = _open_frontend(pw, f"http://127.0.0.1:{server.port}/")
            try:
                for name in UI_NAMES:
                    results[name] = page.evaluate(LOAD_JS, _file(name))
                for case, wf in _broken_copies(_file(DEFAULT)).items():
                    results[case] = page.evaluate(LOAD_JS, wf)
            finally:
                browser.close()
    finally:
        server.stop()
    return {"results": results, "page_errors": page_errors, "server_log": server.log_tail()}


def _file(name: str, api: bool = False) -> dict:
    path = ROOT / "workflows" / ("api" if api else "") / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def _broken_copies(wf: dict) -> dict[str, dict]:
    """Copies of the default workflow the checks below must flag: an unknown node type, a changed widget."""
    unknown, changed = json.loads(json.dumps(wf)), json.loads(json.dumps(wf))
    next(n for n in unknown["nodes"] if n["type"] == "MCM_Sampler")["type"] = "MCM_NoSuchNode"
    scheduler = next(n for n in changed["nodes"] if n["type"] == "MCM_Scheduler")
    scheduler["widgets_values"][0] += 1  # steps 4 -> 5: the prompt must then differ from the API file
    return {"unknown_node": unknown, "changed_steps": changed}


def _prompt_diff(got: dict, want: dict) -> dict:
    if sorted(got) != sorted(want):
        return {"node_ids": [sorted(got), sorted(want)]}
    return {
        nid: {"frontend": got[nid], "file": want[nid]}
        for nid in want
        if (got[nid]["class_type"], got[nid]["inputs"]) != (want[nid]["class_type"], want[nid]["inputs"])
    }


def test_the_checks_see_an_unknown_node_and_a_changed_widget(frontend):
    assert frontend["results"]["unknown_node"]["missing"] == ["MCM_NoSuchNode"]
    diff = _prompt_diff(frontend["results"]["changed_steps"]["prompt"], _file(DEFAULT, api=True))
    assert [d["frontend"]["class_type"] for d in diff.values()] == ["MCM_Scheduler"], diff


@pytest.mark.parametrize("name", UI_NAMES)
def test_frontend_knows_every_node(frontend, name):
    got = frontend["results"][name]
    wf = _file(name)
    assert got["missing"] == [], f"{name}: node types unknown to the frontend: {got['missing']}"
    assert got["node_ids"] == sorted(n["id"] for n in wf["nodes"])
    assert got["types"] == {str(n["id"]): n["type"] for n in wf["nodes"]}


@pytest.mark.parametrize("name", UI_NAMES)
def test_no_widget_value_changes_on_load(frontend, name):
    got = frontend["results"][name]["widgets"]
    # a node without widgets: [] in the file; the 0.33 frontend (1.49) leaves the key out when it saves
    changed = {
        str(n["id"]): (n.get("widgets_values"), got[str(n["id"])])
        for n in _file(name)["nodes"]
        if (got.get(str(n["id"])) or []) != (n.get("widgets_values") or [])
    }
    assert not changed, f"{name}: node id -> (file, after loading): {changed}"


@pytest.mark.parametrize("name", UI_NAMES)
def test_frontend_api_conversion_equals_the_api_file(frontend, name):
    diff = _prompt_diff(frontend["results"][name]["prompt"], _file(name, api=True))
    assert not diff, f"{name}: {json.dumps(diff, indent=1)[:3000]}"
