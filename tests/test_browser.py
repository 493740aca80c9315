"""Opt-in: the shipped UI workflows in the real ComfyUI frontend, in a real browser (Chromium driven by Playwright).

Needs what the host tests need (COMFYUI_DIR, COMFYUI_PYTHON, COMFYUI_PYTHONPATH; see test_host_workflows.py), the
`playwright` package (from PyPI; no browser download) and a Chromium executable: MCM_CHROMIUM, else `chromium`
(Debian's package) on PATH. Starts one server (tests/host/server.py) with this package and the
test adapters, opens the server's own frontend and, for every file in workflows/, calls the frontend's
`app.loadGraphData`, then records which node types it does not know, the graph as the frontend serialises it
right after loading, and the frontend's own API conversion `app.graphToPrompt()`.

It checks what the frontend does with the workflows' model manifests (`properties.models`): with none of the files
installed, loading the default workflow lists each missing file with the folder and URL of its manifest (frontend
1.35: the missing-models dialog; 1.49: the errors panel's missing-model list). And the template browser's thumbnails:
the server lists the templates and serves `<name>.jpg` at the URL both frontends build for a custom node pack's
template picture, `/api/workflow_templates/<pack folder>/<name>.jpg`.

It also checks the nodes' help pages (web/docs/<node id>.md, the package's WEB_DIRECTORY): the server serves each
at the URL the frontend builds from the node's `python_module` (`/extensions/<pack folder>/docs/<node id>.md`, after
trying `.../docs/<node id>/<locale>.md`; frontend 1.35 in ComfyUI 0.8 and 1.49 in 0.33 alike), and the frontend's
own help shows it: a lone node of each type is selected on the canvas and the right side panel's info tab is
opened, whose help content fetches the page itself and renders it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.real_host import ALL_NODES

ROOT = Path(__file__).resolve().parents[1]
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
CHROMIUM = os.environ.get("MCM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
UI_NAMES = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))
DEFAULT = "mcm_t2v_gen2_4step"
APP_TIMEOUT_MS = 180_000  # the first page load builds the node library from /object_info on a slow CPU
HELP_TIMEOUT_MS = 60_000
DOCS = ROOT / "web" / "docs"

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


#: Runs in the page: load a workflow with the missing-models check on, and return what the frontend lists: 1.35 opens
#: its missing-models dialog (the dialog's props and the text it shows), 1.49 fills its `missingModel` store.
MISSING_MODELS_JS = """
async ({ wf, timeoutMs }) => {
  const app = window.app;
  const pinia = document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia;
  await app.loadGraphData(structuredClone(wf), true, false, null,
                          {showMissingNodesDialog: false, showMissingModelsDialog: true});
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const store = pinia._s.get('missingModel');
    if (store?.missingModelCandidates?.length && Object.keys(store.folderPaths || {}).length) {
      return {
        frontend: '1.49',
        listed: store.missingModelCandidates.map((c) => ({ name: c.name, directory: c.directory ?? null,
                                                           url: c.url ?? null })),
        folders: Object.keys(store.folderPaths),
        text: '',
      };
    }
    const dialogs = pinia._s.get('dialog');
    const dialog = dialogs?.dialogStack?.find((d) => d.contentProps?.missingModels);
    const shown = document.querySelector('.comfy-missing-models');
    if (dialog && shown) {
      const result = {
        frontend: '1.35',
        listed: dialog.contentProps.missingModels.map((m) => ({ name: m.name, directory: m.directory ?? null,
                                                                url: m.url ?? null })),
        folders: Object.keys(dialog.contentProps.paths || {}),
        text: shown.textContent,
      };
      dialogs.closeDialog(dialog);
      return result;
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return { timedOut: true };
}
"""


#: Runs in the page for one node id: select a lone node of that type and open the right side panel's info tab,
#: whose help content (NodeHelpContent) fetches the node's help page and renders it; what it shows once its title
#: is this node's (the tab falls back to the node's description and tooltips when the page cannot be fetched).
SHOW_HELP_JS = """
async ({ nodeId, timeoutMs }) => {
  const app = window.app;
  const pinia = document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia;
  const panel = pinia._s.get('rightSidePanel');
  const graph = app.rootGraph || app.graph;
  graph.clear();
  const node = window.LiteGraph.createNode(nodeId);
  graph.add(node);
  app.canvas.deselectAll?.();
  app.canvas.selectNode(node);
  const shown = () => {
    const root = document.querySelector('.node-help-content');
    const md = root?.querySelector('.markdown-content');
    return {
      title: node.title,
      h1: md?.querySelector('h1')?.textContent ?? null,
      headings: md ? [...md.querySelectorAll('h2')].map((h) => h.textContent) : [],
      // the first cell of each row of the inputs / outputs tables: a port name in code
      names: md ? [...md.querySelectorAll('tbody tr > td:first-child > code')].map((c) => c.textContent) : [],
      fallback: !!root?.querySelector('.fallback-content'),
    };
  };
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    // the info tab is offered only once the selection has reached the panel: ask again until it shows
    if (!panel.isOpen || panel.activeTab !== 'info') panel.openPanel('info');
    const now = shown();
    if (now.h1 === node.title) return now;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return { ...shown(), timedOut: true };
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
    results, page_errors, served, shown, object_info, thumbnails, missing = {}, [], {}, {}, {}, {}, {}
    try:
        server.start()
        base = f"http://127.0.0.1:{server.port}"
        served = _served_help_pages(base)
        object_info = json.loads(_get(f"{base}/object_info")[2])
        thumbnails = _served_thumbnails(base)
        with sync_playwright() as pw:
            browser, page, page_errors = _open_frontend(pw, f"{base}/")
            try:
                for name in UI_NAMES:
                    results[name] = page.evaluate(LOAD_JS, _file(name))
                for case, wf in _broken_copies(_file(DEFAULT)).items():
                    results[case] = page.evaluate(LOAD_JS, wf)
                missing = page.evaluate(MISSING_MODELS_JS, {"wf": _file(DEFAULT), "timeoutMs": HELP_TIMEOUT_MS})
                shown = {node_id: _shown_help_page(page, node_id) for node_id in ALL_NODES}
            finally:
                browser.close()
    finally:
        server.stop()
    return {
        "results": results,
        "page_errors": page_errors,
        "served": served,
        "defaults": {node: _input_defaults(info) for node, info in object_info.items()},
        "shown": shown,
        "thumbnails": thumbnails,
        "missing_models": missing,
        "pack": rw.PACK_LINK,  # the package's folder name in the server's custom_nodes/
        "server_log": server.log_tail(),
    }


def _get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode("utf-8", errors="replace")


def _get_bytes(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def _served_thumbnails(base: str) -> dict:
    """The server's template listing, and what it answers at each template's thumbnail URL as both frontends build
    it for a custom node pack (``api.apiURL('/workflow_templates/<pack>/<name>.<mediaSubtype jpg>')``)."""
    status, _, body = _get(f"{base}/workflow_templates")
    assert status == 200, body[:2000]
    listing = json.loads(body)
    pages = {}
    for pack, names in listing.items():
        for name in names:
            url = f"/api/workflow_templates/{pack}/{name}.jpg"
            status, content_type, data = _get_bytes(base + urllib.parse.quote(url))
            pages[name] = {"url": url, "status": status, "content_type": content_type, "data": data}
    return {"listing": listing, "pages": pages}


def _help_url(python_module: str, node_id: str) -> str:
    """The frontend's help-page URL for a custom node (its NodeHelpService / getNodeHelpBaseUrl): the pack is the
    second part of ``python_module`` (``custom_nodes.<pack folder>``) with any ``@version`` cut off."""
    parts = python_module.split(".")
    assert len(parts) >= 2 and parts[0] == "custom_nodes", python_module
    return f"/extensions/{parts[1].split('@')[0]}/docs/{node_id}.md"


def _served_help_pages(base: str) -> dict:
    """``{node id: what the server answers at the node's help URL}``, for every MCM node the server lists."""
    status, _, body = _get(f"{base}/object_info")
    assert status == 200, body[:2000]
    info = json.loads(body)
    served = {"listed": sorted(k for k in info if k.startswith("MCM_"))}
    for node_id in served["listed"]:
        url = _help_url(info[node_id]["python_module"], node_id)
        status, content_type, text = _get(base + urllib.parse.quote(url))
        served[node_id] = {"url": url, "status": status, "content_type": content_type, "text": text}
    return served


def _shown_help_page(page, node_id: str) -> dict:
    """What the frontend fetched for the node's help (the page's own request) and what its info tab shows."""
    from playwright.sync_api import Error as PlaywrightError

    try:
        with page.expect_response(
            lambda r: urllib.parse.urlparse(r.url).path.endswith(f"/docs/{node_id}.md"), timeout=HELP_TIMEOUT_MS
        ) as response:
            shown = page.evaluate(SHOW_HELP_JS, {"nodeId": node_id, "timeoutMs": HELP_TIMEOUT_MS})
        r = response.value
    except PlaywrightError as exc:  # a timeout included: the frontend never asked for the page
        return {"error": f"no request for {node_id}.md: {exc}"}
    try:
        text = r.text()
    except PlaywrightError as exc:  # the frontend reads no body from a failed request
        text = f"(no body: {exc})"
    return {
        **shown,
        "fetched": {"url": urllib.parse.unquote(urllib.parse.urlparse(r.url).path), "status": r.status, "text": text},
    }


def _page(node_id: str) -> dict:
    """What the help page of ``node_id`` holds: its text, title, section headings and table rows' names."""
    text = (DOCS / f"{node_id}.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    return {
        "text": text,
        "title": lines[0].removeprefix("# "),
        "headings": [line[3:] for line in lines if line.startswith("## ")],
        "names": [line.split("`")[1] for line in lines if line.startswith("| `")],
    }


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


def _input_defaults(info: dict) -> dict:
    """``{input name: default}`` of a node's widget inputs, nested dynamic-combo inputs included (a combo's
    default is its first option, as in the frontend)."""
    defaults = {}

    def walk(sections: dict) -> None:
        for sec in ("required", "optional"):
            for name, spec in (sections.get(sec) or {}).items():
                type_, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
                if isinstance(type_, list):
                    defaults.setdefault(name, opts.get("default", type_[0] if type_ else None))
                elif type_ == "COMFY_DYNAMICCOMBO_V3":
                    options = opts.get("options", [])
                    defaults.setdefault(name, options[0]["key"] if options else None)
                    for option in options:
                        walk(option.get("inputs", {}))
                elif "default" in opts or (type_ == "COMBO" and opts.get("options")):
                    defaults.setdefault(name, opts.get("default", (opts.get("options") or [None])[0]))

    walk(info.get("input", {}))
    return defaults


def _as_saved(inputs: dict, file_inputs: dict, defaults: dict) -> dict:
    """The frontend's inputs of one node, read as the API file writes them. A newer frontend (0.33) adds inputs
    the node gained, at their defaults (Create Video's bit_depth, Save Video's hidden top-level codec), and writes
    a dynamic combo's nested input under a dotted name (``format.codec``), which Save Video reads in place of the
    top-level ``codec`` that the file (and ComfyUI 0.8) sets. Anything else must match as it is."""
    got = dict(inputs)
    for key in sorted((k for k in inputs if "." in k), key=len):
        value, leaf = got.pop(key), key.rsplit(".", 1)[1]
        if key.count(".") == 1 and leaf in file_inputs:
            got[leaf] = value
        elif value != defaults.get(leaf):
            got[key] = value
    return {k: v for k, v in got.items() if k in file_inputs or v != defaults.get(k, object())}


def _prompt_diff(got: dict, want: dict, defaults: dict | None = None) -> dict:
    if sorted(got) != sorted(want):
        return {"node_ids": [sorted(got), sorted(want)]}
    diff = {}
    for nid in want:
        ct = want[nid]["class_type"]
        inputs = got[nid]["inputs"]
        if defaults is not None:
            inputs = _as_saved(inputs, want[nid]["inputs"], defaults.get(ct, {}))
        if (got[nid]["class_type"], inputs) != (ct, want[nid]["inputs"]):
            diff[nid] = {"frontend": got[nid], "file": want[nid]}
    return diff


def test_the_checks_see_an_unknown_node_and_a_changed_widget(frontend):
    assert frontend["results"]["unknown_node"]["missing"] == ["MCM_NoSuchNode"]
    diff = _prompt_diff(frontend["results"]["changed_steps"]["prompt"], _file(DEFAULT, api=True), frontend["defaults"])
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
    # a node without widgets: [] in the file; the 0.33 frontend (1.49) leaves the key out when it saves. It appends
    # the values of widgets a node gained after the file's (0.33: Create Video's bit_depth; Save Video's encoding
    # and hidden codec), at their defaults: the file's own values must stay where they are.
    changed = {}
    for n in _file(name)["nodes"]:
        saved, loaded = n.get("widgets_values") or [], got.get(str(n["id"])) or []
        defaults = set(map(json.dumps, frontend["defaults"][n["type"]].values()))
        if loaded[: len(saved)] != saved or not all(json.dumps(v) in defaults for v in loaded[len(saved) :]):
            changed[str(n["id"])] = (saved, loaded)
    assert not changed, f"{name}: node id -> (file, after loading): {changed}"


@pytest.mark.parametrize("name", UI_NAMES)
def test_frontend_api_conversion_equals_the_api_file(frontend, name):
    diff = _prompt_diff(frontend["results"][name]["prompt"], _file(name, api=True), frontend["defaults"])
    assert not diff, f"{name}: {json.dumps(diff, indent=1)[:3000]}"


def test_server_lists_the_nodes_that_have_help_pages(frontend):
    assert frontend["served"]["listed"] == sorted(ALL_NODES)
    assert sorted(p.stem for p in DOCS.glob("*.md")) == sorted(ALL_NODES)


@pytest.mark.parametrize("node_id", ALL_NODES)
def test_server_serves_the_help_page_at_the_frontends_url(frontend, node_id):
    served = frontend["served"][node_id]
    assert served["url"] == f"/extensions/{frontend['pack']}/docs/{node_id}.md", served["url"]
    assert served["status"] == 200, f"{served['url']}: HTTP {served['status']}\n{frontend['server_log'][-2000:]}"
    assert "text/html" not in served["content_type"]  # the frontend ignores a help page served as HTML
    assert served["text"] == _page(node_id)["text"]


@pytest.mark.parametrize("node_id", ALL_NODES)
def test_frontend_help_shows_the_page(frontend, node_id):
    shown, page = frontend["shown"][node_id], _page(node_id)
    assert "error" not in shown, shown["error"]
    fetched = shown["fetched"]
    assert (fetched["url"], fetched["status"]) == (frontend["served"][node_id]["url"], 200)
    assert fetched["text"] == page["text"]
    assert not shown.get("timedOut") and not shown["fallback"], shown
    assert (shown["title"], shown["h1"]) == (page["title"], page["title"])
    assert shown["headings"] == page["headings"] and shown["names"] == page["names"]


def test_server_lists_the_templates_and_serves_their_thumbnails(frontend):
    thumbnails, pack = frontend["thumbnails"], frontend["pack"]
    assert sorted(thumbnails["listing"].get(pack, [])) == UI_NAMES, thumbnails["listing"]
    for name in UI_NAMES:
        got = thumbnails["pages"][name]
        assert got["url"] == f"/api/workflow_templates/{pack}/{name}.jpg"
        assert (got["status"], got["content_type"]) == (200, "image/jpeg"), (got["url"], got["status"])
        assert got["data"] == (ROOT / "workflows" / f"{name}.jpg").read_bytes()


def test_frontend_lists_the_missing_model_files_with_their_manifest(frontend):
    """None of the default workflow's model files is installed on the test host (it has random-weight models under
    other names), so the frontend lists each with the folder and URL of the node's manifest, and shows no refusal
    (1.35 writes one for a URL it does not offer or a folder the server does not have)."""
    got = frontend["missing_models"]
    assert not got.get("timedOut"), "the frontend listed no missing model"
    manifest = {
        (m["name"], m["directory"], m["url"])
        for n in _file(DEFAULT)["nodes"]
        for m in n["properties"].get("models", [])
    }
    assert len(manifest) == 3  # checkpoint, motion module, MCM adapter
    assert {(m["name"], m["directory"], m["url"]) for m in got["listed"]} == manifest, got
    assert {d for _, d, _ in manifest} <= set(got["folders"]), got["folders"]
    for refusal in ("not allowed", "Only allowed suffixes", "Invalid directory"):
        assert refusal not in got["text"], got["text"]
