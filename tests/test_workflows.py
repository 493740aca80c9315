"""The shipped workflows, without ComfyUI: generated files are up to date, links are consistent, the UI files are in
exactly one of the folders ComfyUI lists templates from, and the API and UI versions describe the same graph.

The real-host checks (every workflow validated against /object_info and run) are in test_host_workflows.py.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
UI_NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
API_NAMES = sorted(p.stem for p in (WORKFLOWS / "api").glob("*.json"))
GEN2_DEFAULT = "mcm_t2v_gen2_4step"


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def build():
    spec = importlib.util.spec_from_file_location("mcm_build_workflows", WORKFLOWS / "build_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_workflow_is_shipped_in_both_formats(build):
    assert UI_NAMES == API_NAMES == sorted(build.WORKFLOWS)
    assert GEN2_DEFAULT in UI_NAMES


def test_generated_files_are_up_to_date(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(WORKFLOWS / "build_workflows.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    # only the UI files and the API files: nothing in a second template folder
    assert written == sorted([f"workflows/{n}.json" for n in UI_NAMES] + [f"workflows/api/{n}.json" for n in UI_NAMES])
    for sub in ("workflows", "workflows/api"):
        fresh = {p.name: p.read_text(encoding="utf-8") for p in (tmp_path / sub).glob("*.json")}
        shipped = {p.name: p.read_text(encoding="utf-8") for p in (ROOT / sub).glob("*.json")}
        assert sorted(shipped) == sorted(fresh), (
            f"{sub}: stale or missing files; run python workflows/build_workflows.py"
        )
        stale = [name for name in fresh if fresh[name] != shipped[name]]
        assert not stale, f"{sub}: {stale} differ from build_workflows.py; run python workflows/build_workflows.py"


#: The folders of a node pack whose `*.json` ComfyUI lists as templates (app/custom_node_manager.py, 0.8 and 0.33).
TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")


def test_templates_live_in_one_folder_only():
    holding = [sub for sub in TEMPLATE_FOLDERS if any((ROOT / sub).glob("*.json"))]
    assert holding == ["workflows"], (
        f"template folders with .json files: {holding} (each file would be listed per folder)"
    )


@pytest.mark.parametrize("name", UI_NAMES)
def test_ui_links_are_consistent(name):
    wf = _load(WORKFLOWS / f"{name}.json")
    assert wf["version"] == 0.4
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]), "duplicate node ids"
    links = {link[0]: link for link in wf["links"]}
    assert len(links) == len(wf["links"]), "duplicate link ids"
    assert wf["last_node_id"] == max(nodes) and wf["last_link_id"] == max(links)
    for lid, (_, src, sslot, dst, dslot, type_) in links.items():
        out = nodes[src]["outputs"][sslot]
        inp = nodes[dst]["inputs"][dslot]
        assert lid in out["links"], f"link {lid} missing from node {src} output {sslot}"
        assert inp["link"] == lid, f"link {lid}: node {dst} input {dslot} holds {inp['link']}"
        assert out["type"] == inp["type"] == type_, f"link {lid}: {out['type']} -> {inp['type']} ({type_})"
        assert out["slot_index"] == sslot
    for node in wf["nodes"]:  # and back: every link a node names is in the table, pointing at this node
        for slot, inp in enumerate(node["inputs"]):
            if inp["link"] is not None:
                assert links[inp["link"]][3:5] == [node["id"], slot]
        for slot, out in enumerate(node["outputs"]):
            for lid in out["links"] or []:
                assert links[lid][1:3] == [node["id"], slot]
        assert node["properties"]["Node name for S&R"] == node["type"]
    order = sorted(n["order"] for n in wf["nodes"])
    assert order == list(range(len(nodes)))
    position = {n["id"]: n["order"] for n in wf["nodes"]}
    assert all(position[src] < position[dst] for _, src, _, dst, _, _ in wf["links"]), "order is not topological"


@pytest.mark.parametrize("name", UI_NAMES)
def test_api_and_ui_describe_the_same_graph(name, build):
    ui = _load(WORKFLOWS / f"{name}.json")
    api = _load(WORKFLOWS / "api" / f"{name}.json")
    assert sorted(api, key=int) == [str(i) for i in sorted(n["id"] for n in ui["nodes"])]
    links = {link[0]: link for link in ui["links"]}
    for node in ui["nodes"]:
        entry = api[str(node["id"])]
        assert entry["class_type"] == node["type"]
        assert entry["_meta"]["title"] == node.get("title", build.NODE_SCHEMAS[node["type"]]["title"])
        # widgets: the UI's values minus the frontend-only ones (control_after_generate, upload button)
        values = list(node["widgets_values"])
        expected = {}
        for widget, kind in build.NODE_SCHEMAS[node["type"]]["widgets"]:
            expected[widget] = values.pop(0)
            if kind == "SEED":
                assert values.pop(0) in ("fixed", "increment", "decrement", "randomize")
            elif kind == "UPLOAD":
                assert values.pop(0) == "image"
        assert not values, f"node {node['id']}: extra widgets_values {values}"
        # links: the UI link table, seen from the target's inputs
        for inp in node["inputs"]:
            if inp["link"] is not None:
                _, src, sslot, *_ = links[inp["link"]]
                expected[inp["name"]] = [str(src), sslot]
        assert entry["inputs"] == expected, f"node {node['id']} ({node['type']})"


@pytest.mark.parametrize("name", API_NAMES)
def test_workflows_sample_as_mcm_was_trained(name):
    """cfg 1; Use Evolved Sampling keeps the MCM model sampling ('use existing'); Load MCM LoRA sets it; the
    result is an 8 fps H.264 mp4."""
    api = _load(WORKFLOWS / "api" / f"{name}.json")
    by_type: dict[str, list[dict]] = {}
    for node in api.values():
        by_type.setdefault(node["class_type"], []).append(node["inputs"])
    assert len(by_type.get("MCM_LoraLoader", [])) == 1 and by_type["MCM_LoraLoader"][0]["mcm_sampling"] is True
    for ade in by_type.get("ADE_UseEvolvedSampling", []):
        assert ade["beta_schedule"] == "use existing"
    samplers = by_type.get("SamplerCustom", []) + by_type.get("MCM_KSampler", [])
    assert samplers and all(s["cfg"] == 1.0 for s in samplers)
    if "SamplerCustom" in by_type:  # each pass takes its sigmas from an MCM Scheduler
        assert len(by_type.get("MCM_Scheduler", [])) == len(by_type["SamplerCustom"]) and "MCM_Sampler" in by_type
    assert [n["fps"] for n in by_type["CreateVideo"]] == [8.0]
    assert [(n["format"], n["codec"]) for n in by_type["SaveVideo"]] == [("mp4", "h264")]
    assert "SaveAnimatedWEBP" not in by_type


def test_step_variants_differ_only_in_steps():
    base = _load(WORKFLOWS / "api" / f"{GEN2_DEFAULT}.json")
    for steps in (1, 2, 8):
        other = _load(WORKFLOWS / "api" / f"mcm_t2v_gen2_{steps}step.json")
        diff = {nid for nid in base if base[nid]["inputs"] != other[nid]["inputs"]}
        kinds = {base[nid]["class_type"] for nid in diff}
        assert kinds == {"MCM_Scheduler", "SaveVideo"}, kinds
        assert next(n for n in other.values() if n["class_type"] == "MCM_Scheduler")["inputs"]["steps"] == steps


#: What the 0.33 frontend (1.49) takes for a model file in a combo widget: a value with one of these endings.
MODEL_FILE_ENDINGS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".onnx", ".gguf")
#: The model folder each loader widget lists its choices from (ComfyUI's, ADE's, ACN's and this pack's folders).
MODEL_WIDGET_FOLDERS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("ADE_LoadAnimateDiffModel", "model_name"): "animatediff_models",
    ("ADE_AnimateDiffLoaderGen1", "model_name"): "animatediff_models",
    ("MCM_StyleAdapter", "adapter"): "mcm",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("ACN_ControlNetLoaderAdvanced", "cnet"): "controlnet",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("VAELoader", "vae_name"): "vae",
    ("MCM_ModelScopeLoader", "unet_name"): "text2video",
    ("CLIPLoader", "clip_name"): "text_encoders",
}


def _download_url_problem(url: str, name: str) -> str | None:
    """Why the missing-models dialog of either frontend would not offer ``url`` for ``name``, or None.

    1.35 (ComfyUI 0.8) offers a file only from https://huggingface.co/ or https://civitai.com/ and only when its
    name ends in .safetensors or .sft; 1.49 (0.33) accepts more endings, so the stricter rule decides. A Hugging
    Face URL must be a direct download: /<owner>/<repo>/resolve/<revision>/<path to a .safetensors file>."""
    if not name.endswith((".safetensors", ".sft")):
        return f"{name}: 1.35 offers only .safetensors / .sft files"
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "https" or parsed.netloc not in ("huggingface.co", "civitai.com") or parsed.query:
        return f"{url}: not a plain https://huggingface.co/ or https://civitai.com/ URL"
    parts = parsed.path.split("/")
    if parsed.netloc == "huggingface.co" and (
        len(parts) < 6 or parts[3] != "resolve" or not all(parts[1:]) or not parts[-1].endswith(".safetensors")
    ):
        return f"{url}: not a direct download (/<owner>/<repo>/resolve/<revision>/<file>.safetensors)"
    return None


def test_the_url_check_refuses_what_a_frontend_would_not_offer():
    hf = "https://huggingface.co/o/r/resolve/main"
    assert _download_url_problem(f"{hf}/m.safetensors", "m.safetensors") is None
    for url, name in (
        (f"{hf}/m.ckpt", "m.ckpt"),  # 1.35: suffix
        ("https://example.com/m.safetensors", "m.safetensors"),  # not an allowed source
        ("http://huggingface.co/o/r/resolve/main/m.safetensors", "m.safetensors"),
        ("https://huggingface.co/o/r/blob/main/m.safetensors", "m.safetensors"),  # a web page, not the file
        ("https://huggingface.co/o/r", "m.safetensors"),
    ):
        assert _download_url_problem(url, name), url


@pytest.mark.parametrize("name", UI_NAMES)
def test_every_model_file_has_a_manifest_entry(name):
    """Each node whose widget names a model file carries ``properties.models`` with that file, the folder the
    widget lists and a URL both frontends offer (what their missing-models check reads); nothing else."""
    ui = _load(WORKFLOWS / f"{name}.json")
    api = _load(WORKFLOWS / "api" / f"{name}.json")
    for node in ui["nodes"]:
        widgets = api[str(node["id"])]["inputs"]
        files = {w: v for w, v in widgets.items() if isinstance(v, str) and v.lower().endswith(MODEL_FILE_ENDINGS)}
        entries = node["properties"].get("models", [])
        assert sorted(e["name"] for e in entries) == sorted(set(files.values())), f"node {node['id']} {node['type']}"
        for widget, value in files.items():
            (entry,) = [e for e in entries if e["name"] == value]
            assert sorted(entry) == ["directory", "name", "url"]
            folder = MODEL_WIDGET_FOLDERS.get((node["type"], widget))
            assert folder is not None, f"{node['type']}.{widget}: add its model folder to MODEL_WIDGET_FOLDERS"
            assert entry["directory"] == folder, f"{node['type']}.{widget} lists models/{folder}, not {entry}"
            assert _download_url_problem(entry["url"], value) is None, _download_url_problem(entry["url"], value)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a baseline or progressive JPEG's frame header, None if ``data`` is not a JPEG."""
    if not (data.startswith(b"\xff\xd8") and data.rstrip(b"\x00").endswith(b"\xff\xd9")):
        return None
    i = 2
    while i + 9 < len(data) and data[i] == 0xFF:
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):  # start of frame: precision, height, width
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        i += 2 + length
    return None


@pytest.mark.parametrize("name", UI_NAMES)
def test_every_template_has_a_thumbnail(name):
    """The template browser shows <name>.jpg beside <name>.json (tests/host/make_thumbnails.py writes them)."""
    path = WORKFLOWS / f"{name}.jpg"
    assert path.is_file(), f"no {path.name}: run tests/host/make_thumbnails.py {name}"
    data = path.read_bytes()
    size = _jpeg_size(data)
    assert size is not None, f"{path.name} is not a JPEG"
    assert 256 <= size[0] <= 1024 and 128 <= size[1] <= 1024, size
    assert len(data) <= 80_000, f"{path.name}: {len(data)} bytes"


def test_no_thumbnail_without_its_template():
    assert sorted(p.stem for p in WORKFLOWS.glob("*.jpg")) == UI_NAMES
