"""Write the template browser's thumbnails: workflows/<name>.jpg, the graph as the real ComfyUI frontend draws it.

usage: python tests/host/make_thumbnails.py [NAME ...]      (default: every UI workflow in workflows/)

Needs what the browser test needs (COMFYUI_DIR, COMFYUI_PYTHON, COMFYUI_PYTHONPATH; the `playwright` package and a
Chromium: MCM_CHROMIUM, else `chromium` on PATH). Starts one server (server.py) with this package, opens its own
frontend, switches on its focus mode (no menus or side bars; SETTINGS hide the rest), and for each workflow loads
the file with `app.loadGraphData`, fits the whole graph (nodes and groups) into the view and saves a JPEG screenshot
of the page (960 x 480, under 80 kB).
ComfyUI's template browser shows `<name>.jpg` beside `<name>.json` for a custom node pack's templates (it asks
`/api/workflow_templates/<pack folder>/<name>.jpg`). Rerun it after adding or changing a workflow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server import Client, Server  # noqa: E402  (this folder, put on sys.path above)

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows"
#: The page as a 1280 x 640 CSS-pixel window drawn at 0.75 device pixels per CSS pixel: a 960 x 480 JPEG.
VIEWPORT, SCALE = {"width": 1280, "height": 640}, 0.75
MAX_BYTES = 80_000
#: User settings for a bare picture: no first-run template browser, minimap, canvas info or zoom controls.
SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "Comfy.Graph.CanvasInfo": False,
    "Comfy.Graph.CanvasMenu": False,
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,  # full detail (titles, widgets) at any zoom, not the low-detail boxes
}
APP_TIMEOUT_MS = 180_000

#: Runs in the page for one workflow: load it, then fit its nodes and groups into the canvas.
LOAD_AND_FIT_JS = """
async (wf) => {
  const app = window.app;
  await app.loadGraphData(structuredClone(wf), true, false, null,
                          {showMissingNodesDialog: false, showMissingModelsDialog: false,
                           skipAssetScans: true, deferWarnings: true});
  const graph = app.rootGraph || app.graph;
  const title = window.LiteGraph.NODE_TITLE_HEIGHT || 30;
  const boxes = graph._nodes.map((n) => [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title])
    .concat((graph._groups || []).map((g) => g._bounding || g.bounding));
  const x0 = Math.min(...boxes.map((b) => b[0])), y0 = Math.min(...boxes.map((b) => b[1]));
  const x1 = Math.max(...boxes.map((b) => b[0] + b[2])), y1 = Math.max(...boxes.map((b) => b[1] + b[3]));
  const el = app.canvas.canvas, margin = 20;
  const w = el.clientWidth, h = el.clientHeight;
  const scale = Math.min((w - 2 * margin) / (x1 - x0), (h - 2 * margin) / (y1 - y0));
  app.canvas.ds.scale = scale;
  app.canvas.ds.offset = [(w / scale - (x1 - x0)) / 2 - x0, (h / scale - (y1 - y0)) / 2 - y0];
  app.canvas.setDirty(true, true);
  await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
  return { nodes: graph._nodes.length, scale, canvas: [w, h] };
}
"""


def _chromium() -> str:
    path = os.environ.get("MCM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        sys.exit("make_thumbnails: no chromium executable (install Debian's chromium or set MCM_CHROMIUM)")
    return path


def _screenshot(page, path: Path) -> int:
    """Save the page as a JPEG under MAX_BYTES (the quality steps down until it fits); returns its size."""
    for quality in (85, 75, 65, 55, 45):
        data = page.screenshot(type="jpeg", quality=quality)
        if len(data) <= MAX_BYTES:
            break
    path.write_bytes(data)
    return len(data)


def make_thumbnails(names: list[str], comfy_dir: Path, python: str) -> dict[str, dict]:
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="mcm-thumbnails-"))
    adapters = work / "adapters"  # no adapters needed: the widgets show the workflow's own file names
    adapters.mkdir()
    (work / "server").mkdir()
    server = Server(comfy_dir, ROOT, adapters, work / "server", python)
    done = {}
    try:
        server.start()
        status, body = Client(server.port).request("POST", "/settings", SETTINGS)
        if status != 200:
            raise RuntimeError(f"POST /settings answered HTTP {status}: {body}")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=_chromium(), headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport=VIEWPORT, device_scale_factor=SCALE)
                page.goto(f"http://127.0.0.1:{server.port}/", timeout=APP_TIMEOUT_MS)
                page.wait_for_function(
                    "() => window.app && window.app.graph && window.LiteGraph && "
                    "Object.keys(window.LiteGraph.registered_node_types).includes('MCM_Sampler')",
                    timeout=APP_TIMEOUT_MS,
                )
                page.evaluate("() => window.app.extensionManager.command.execute('Workspace.ToggleFocusMode')")
                for name in names:
                    wf = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
                    info = page.evaluate(LOAD_AND_FIT_JS, wf)
                    page.wait_for_timeout(500)  # DOM widgets (the prompts' text boxes) follow the canvas
                    info["bytes"] = _screenshot(page, WORKFLOWS / f"{name}.jpg")
                    done[name] = info
                    print(f"{name}.jpg: {info}", flush=True)
            finally:
                browser.close()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return done


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="workflow names (default: every workflows/*.json)")
    args = parser.parse_args(argv)
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir:
        sys.exit("make_thumbnails: set COMFYUI_DIR (and COMFYUI_PYTHON, COMFYUI_PYTHONPATH) to a ComfyUI with ADE")
    known = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    unknown = [n for n in args.names if n not in known]
    if unknown:
        sys.exit(f"make_thumbnails: no workflows/{unknown[0]}.json; expected one of {known}")
    make_thumbnails(args.names or known, Path(comfy_dir), os.environ.get("COMFYUI_PYTHON", sys.executable))


if __name__ == "__main__":
    main()
