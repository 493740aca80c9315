"""Run the shipped workflows in a real ComfyUI server (+ AnimateDiff-Evolved) on the CPU and record the results.

usage: python run_workflows.py COMFYUI_DIR PACKAGE_DIR ADAPTER_DIR OUT_JSON

Run it with the ComfyUI environment's Python (stdlib + what that environment has: PIL, av). It starts
`main.py --cpu` on a free port with an extra-model-paths yaml that adds a custom_nodes folder holding only a
link to PACKAGE_DIR and `mcm: ADAPTER_DIR`, then:
  a. GET /object_info: which MCM_ nodes registered;
  b. validates every UI workflow in PACKAGE_DIR/workflows/*.json against /object_info;
  c. runs every API workflow in PACKAGE_DIR/workflows/api/ shrunk for the CPU (64 px, 8 frames, the host's
     random-weight model files) and counts the frames of the saved animated WEBP;
  d. submits bad inputs (HTTP 400s and one runtime failure) and a valid prompt afterwards;
  e. stops the server and writes everything to OUT_JSON.
Exits 0 even when checks fail (tests/test_host_workflows.py asserts on OUT_JSON); non-zero only on bad usage.
Environment: COMFYUI_PYTHONPATH is prepended to the server's PYTHONPATH (e.g. the host harness's torchvision
shim); OMP_NUM_THREADS is passed on (default 1: robust on a shared 2-core machine); MCM_HOST_CHECKPOINT /
MCM_HOST_MOTION_MODEL name the host's model files (defaults: the random-weight files of
../shared/tools/comfyui-host/setup_host.sh).
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
import uuid
from pathlib import Path

HOST_CKPT = os.environ.get("MCM_HOST_CHECKPOINT", "rand_sd15.safetensors")
HOST_MOTION = os.environ.get("MCM_HOST_MOTION_MODEL", "rand_mm_v2.safetensors")
ADAPTER_LABEL = "animatediff-webvid"
SIZE, FRAMES, LONG_FRAMES = 64, 8, 24
LONG_STEPS = 2  # the context-window run (4 windows of 8 frames per step); the step workflows cover 4 and 8 steps
VIDEO_NAME = "mcm_test_input.mp4"
PROMPT_TIMEOUT_S = 600  # per prompt; a busy 2-core machine can be 4x slower than an idle one
#: Run order (others follow, sorted): consecutive prompts share cached loaders and patched models.
RUN_ORDER = ["mcm_t2v_gen1_4step", "mcm_t2v_gen2_1step", "mcm_t2v_gen2_2step", "mcm_t2v_gen2_4step", "mcm_t2v_gen2_8step",
             "mcm_t2v_gen2_ksampler", "mcm_v2v_gen2", "mcm_long_video_context"]  # fmt: skip
START_TIMEOUT_S = 180

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
#: Combos that list files on the user's machine: a workflow only needs a string there.
FILE_COMBOS = {"ckpt_name", "model_name", "adapter", "file", "image", "video", "vae_name", "lora_name"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload")


# --------------------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------------------


class Client:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.client_id = uuid.uuid4().hex

    def request(self, method: str, path: str, body=None, timeout: float = 60):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                text = r.read().decode()
                return r.status, json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                return e.code, json.loads(text)
            except ValueError:
                return e.code, text

    def alive(self) -> bool:
        try:
            status, _ = self.request("GET", "/system_stats", timeout=5)
            return status == 200
        except (OSError, urllib.error.URLError):
            return False

    def submit(self, prompt: dict):
        return self.request("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id})

    def wait(self, prompt_id: str, timeout: float = PROMPT_TIMEOUT_S) -> dict | None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            status, hist = self.request("GET", f"/history/{prompt_id}")
            if status == 200 and isinstance(hist, dict) and prompt_id in hist:
                entry = hist[prompt_id]
                if entry.get("status", {}).get("completed") is not None or entry.get("outputs"):
                    return entry
            time.sleep(0.5)
        return None


# --------------------------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(package_dir: Path) -> tuple[dict, list[str]]:
    """The server's environment: COMFYUI_PYTHONPATH first on PYTHONPATH; the harness shim if torchvision fails."""
    env = dict(os.environ)
    parts = [p for p in (os.environ.get("COMFYUI_PYTHONPATH"), os.environ.get("PYTHONPATH")) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    notes = []
    probe = subprocess.run([sys.executable, "-c", "import torchvision"], env=env, capture_output=True)
    if probe.returncode != 0:
        shim = package_dir.resolve().parent / "shared" / "tools" / "comfyui-host" / "shims"
        if shim.is_dir():
            env["PYTHONPATH"] = os.pathsep.join([str(shim), *parts])
            notes.append(f"torchvision not importable: using the host harness shim {shim}")
        else:
            notes.append("torchvision not importable and no shim found: ADE may fail to import (set COMFYUI_PYTHONPATH)")
    if not env["PYTHONPATH"]:
        env.pop("PYTHONPATH")
    # One intra-op thread unless the caller says otherwise: on a small CPU machine shared with other jobs,
    # oversubscribed OpenMP threads made the run 3-4x slower (725 s vs 216 s with 1 thread on 2 busy cores).
    env.setdefault("OMP_NUM_THREADS", "1")
    notes.append(f"server OMP_NUM_THREADS={env['OMP_NUM_THREADS']}")
    return env, notes


class Server:
    def __init__(self, comfy_dir: Path, package_dir: Path, adapter_dir: Path, work: Path):
        self.comfy_dir, self.work = comfy_dir, work
        self.output_dir, self.input_dir = work / "output", work / "input"
        self.output_dir.mkdir()
        self.input_dir.mkdir()
        custom = work / "custom_nodes"
        custom.mkdir()
        os.symlink(package_dir.resolve(), custom / "comfyui-mcm")
        self.yaml = work / "extra_model_paths.yaml"
        self.yaml.write_text(f"mcm_host_test:\n  custom_nodes: {custom}\n  mcm: {adapter_dir.resolve()}\n")
        self.log_path = work / "server.log"
        self.port = free_port()
        self.env, self.notes = server_env(package_dir)
        self.proc = None
        self._log = None

    def start(self) -> float:
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--disable-api-nodes", "--preview-method", "none",
               "--use-pytorch-cross-attention", "--output-directory", str(self.output_dir),
               "--input-directory", str(self.input_dir), "--extra-model-paths-config", str(self.yaml)]  # fmt: skip
        self._log = open(self.log_path, "wb")
        t0 = time.time()
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        client = Client(self.port)
        while time.time() - t0 < START_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
            if client.alive():
                return time.time() - t0
            time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer /system_stats within {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if self._log:
            self._log.close()
        return self.proc.returncode

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


# --------------------------------------------------------------------------------------------------------------
# b. UI workflow validation against /object_info
# --------------------------------------------------------------------------------------------------------------


def input_specs(info: dict) -> list[dict]:
    """A node's inputs in declaration order: name, type, opts, combo options, required, widget."""
    specs = []
    sections = info.get("input", {})
    order = info.get("input_order") or {sec: list(sections.get(sec, {})) for sec in ("required", "optional")}
    for sec in ("required", "optional"):
        for name in order.get(sec, []):
            spec = sections.get(sec, {}).get(name)
            if spec is None:
                continue
            type_ = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            options = None
            if isinstance(type_, list):
                type_, options = "COMBO", type_
            elif type_ == "COMBO":
                options = opts.get("options", [])
            widget = type_ in WIDGET_TYPES and not opts.get("forceInput")
            specs.append({"name": name, "type": type_, "opts": opts, "options": options, "required": sec == "required",
                          "widget": widget})  # fmt: skip
    return specs


def expected_widgets(specs: list[dict]) -> list[tuple[dict, str]]:
    """(spec, role) per widgets_values entry: role value, control (control_after_generate) or upload."""
    seq = []
    for spec in specs:
        if not spec["widget"]:
            continue
        seq.append((spec, "value"))
        if spec["type"] == "INT" and spec["opts"].get("control_after_generate"):
            seq.append((spec, "control"))
        if any(spec["opts"].get(flag) for flag in UPLOAD_FLAGS):
            seq.append((spec, "upload"))
    return seq


def check_value(spec: dict, value) -> str | None:
    name, type_, opts = spec["name"], spec["type"], spec["opts"]
    if type_ == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{name}: {value!r} is not an INT"
    elif type_ == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{name}: {value!r} is not a FLOAT"
    elif type_ == "BOOLEAN":
        if not isinstance(value, bool):
            return f"{name}: {value!r} is not a BOOLEAN"
    elif type_ == "STRING":
        if not isinstance(value, str):
            return f"{name}: {value!r} is not a STRING"
    elif type_ == "COMBO":
        if not isinstance(value, str):
            return f"{name}: {value!r} is not a string"
        if name not in FILE_COMBOS and value not in (spec["options"] or []):
            return f"{name}: {value!r} not in {spec['options']}"
    if type_ in ("INT", "FLOAT"):
        if "min" in opts and value < opts["min"]:
            return f"{name}: {value} < min {opts['min']}"
        if "max" in opts and value > opts["max"]:
            return f"{name}: {value} > max {opts['max']}"
    return None


def validate_ui(wf: dict, object_info: dict) -> list[str]:
    problems = []
    for key in ("last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra", "version"):
        if key not in wf:
            problems.append(f"missing top-level key {key!r}")
    nodes = {n["id"]: n for n in wf.get("nodes", [])}
    for nid, node in nodes.items():
        where = f"node {nid} ({node.get('type')})"
        info = object_info.get(node.get("type"))
        if info is None:
            problems.append(f"{where}: node type not registered")
            continue
        specs = input_specs(info)
        by_name = {s["name"]: s for s in specs}
        ui_inputs = {i["name"]: i for i in node.get("inputs", [])}
        for name, inp in ui_inputs.items():
            spec = by_name.get(name)
            if spec is None:
                problems.append(f"{where}: input {name!r} does not exist")
            elif not spec["widget"] and inp.get("type") != spec["type"] and "*" not in (inp.get("type"), spec["type"]):
                problems.append(f"{where}: input {name!r} is {inp.get('type')}, node takes {spec['type']}")
        for spec in specs:
            if spec["required"] and not spec["widget"] and ui_inputs.get(spec["name"], {}).get("link") is None:
                problems.append(f"{where}: required input {spec['name']!r} is not connected")
        out_types, out_names = info.get("output", []), info.get("output_name", [])
        outputs = node.get("outputs", [])
        if [o.get("type") for o in outputs] != list(out_types):
            problems.append(f"{where}: outputs {[o.get('type') for o in outputs]} != {list(out_types)}")
        elif [o.get("name") for o in outputs] != list(out_names):
            problems.append(f"{where}: output names {[o.get('name') for o in outputs]} != {list(out_names)}")
        seq = expected_widgets(specs)
        values = node.get("widgets_values", [])
        if isinstance(values, dict):
            problems.append(f"{where}: widgets_values is a dict")
            continue
        if len(values) != len(seq):
            problems.append(f"{where}: {len(values)} widgets_values, the node has {len(seq)} "
                            f"({[s['name'] + ('' if r == 'value' else ':' + r) for s, r in seq]})")  # fmt: skip
            continue
        for (spec, role), value in zip(seq, values):
            if role == "control":
                if value not in CONTROL_VALUES:
                    problems.append(f"{where}: control_after_generate of {spec['name']} is {value!r}")
            elif role == "upload":
                if not isinstance(value, str):
                    problems.append(f"{where}: upload widget of {spec['name']} is {value!r}")
            else:
                err = check_value(spec, value)
                if err:
                    problems.append(f"{where}: {err}")
    link_ids = set()
    for link in wf.get("links", []):
        if not (isinstance(link, list) and len(link) == 6):
            problems.append(f"malformed link {link!r}")
            continue
        lid, src, sslot, dst, dslot, type_ = link
        link_ids.add(lid)
        if src not in nodes or dst not in nodes:
            problems.append(f"link {lid}: unknown node {src if src not in nodes else dst}")
            continue
        s_info, d_info = object_info.get(nodes[src]["type"]), object_info.get(nodes[dst]["type"])
        if s_info is None or d_info is None:
            continue
        outs, ins = nodes[src].get("outputs", []), nodes[dst].get("inputs", [])
        if sslot >= len(outs) or sslot >= len(s_info.get("output", [])) or dslot >= len(ins):
            problems.append(f"link {lid}: slot out of range")
            continue
        if lid not in (outs[sslot].get("links") or []):
            problems.append(f"link {lid}: not listed on node {src} output {sslot}")
        if ins[dslot].get("link") != lid:
            problems.append(f"link {lid}: node {dst} input {dslot} holds link {ins[dslot].get('link')}")
        from_type = s_info["output"][sslot]
        spec = {s["name"]: s for s in input_specs(d_info)}.get(ins[dslot].get("name"))
        to_type = spec["type"] if spec else None
        if "*" not in (from_type, to_type) and from_type != to_type:
            problems.append(f"link {lid}: {nodes[src]['type']} output {sslot} is {from_type}, "
                            f"{nodes[dst]['type']}.{ins[dslot].get('name')} takes {to_type}")  # fmt: skip
        if type_ != from_type:
            problems.append(f"link {lid}: type {type_!r}, the output is {from_type}")
    if nodes and wf.get("last_node_id", 0) < max(nodes):
        problems.append("last_node_id below the largest node id")
    if link_ids and wf.get("last_link_id", 0) < max(link_ids):
        problems.append("last_link_id below the largest link id")
    return problems


def broken_copies(wf: dict) -> dict[str, dict]:
    """Copies of a UI workflow with one known defect each: the validator must report every one."""
    def node(copy_, type_):
        return next(n for n in copy_["nodes"] if n["type"] == type_)

    cases = {}
    c = copy.deepcopy(wf)
    node(c, "SamplerCustom")["widgets_values"].remove("fixed")  # control_after_generate missing
    cases["missing_control_after_generate"] = c
    c = copy.deepcopy(wf)
    node(c, "ADE_UseEvolvedSampling")["widgets_values"][0] = "no such schedule"
    cases["combo_value_not_in_list"] = c
    c = copy.deepcopy(wf)
    node(c, "EmptyLatentImage")["widgets_values"][0] = 8  # width below min 16
    cases["number_below_min"] = c
    c = copy.deepcopy(wf)
    node(c, "MCM_LoraLoader")["widgets_values"].reverse()  # BOOLEAN where a FLOAT goes
    cases["widgets_out_of_order"] = c
    c = copy.deepcopy(wf)
    node(c, "MCM_Sampler")["type"] = "MCM_NoSuchNode"
    cases["unknown_node_type"] = c
    c = copy.deepcopy(wf)
    sampler = node(c, "SamplerCustom")
    link = next(ln for ln in c["links"] if ln[3] == sampler["id"] and ln[5] == "CONDITIONING")
    sigmas_slot = [i["name"] for i in sampler["inputs"]].index("sigmas")
    sampler["inputs"][link[4]]["link"], sampler["inputs"][sigmas_slot]["link"] = None, link[0]
    link[4] = sigmas_slot  # a CONDITIONING wire into the SIGMAS input
    cases["link_type_mismatch"] = c
    return cases


# --------------------------------------------------------------------------------------------------------------
# c. Running API workflows shrunk for the CPU
# --------------------------------------------------------------------------------------------------------------


def shrink(prompt: dict, name: str) -> tuple[dict, int]:
    """A CPU-sized copy of an API prompt, and the frame count it should save."""
    p = copy.deepcopy(prompt)
    frames = None
    long_video = any(n["class_type"] == "ADE_StandardStaticContextOptions" for n in p.values())
    for node in p.values():
        ct, inputs = node["class_type"], node["inputs"]
        if ct == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = HOST_CKPT
        elif ct in ("ADE_LoadAnimateDiffModel", "ADE_AnimateDiffLoaderGen1"):
            inputs["model_name"] = HOST_MOTION
        elif ct == "EmptyLatentImage":
            frames = LONG_FRAMES if long_video else FRAMES
            inputs.update(width=SIZE, height=SIZE, batch_size=frames)
        elif ct == "ADE_StandardStaticContextOptions":
            inputs.update(context_length=8, context_overlap=2)
        elif ct in ("MCM_Scheduler", "MCM_KSampler") and long_video:
            inputs["steps"] = LONG_STEPS
        elif ct == "ImageScale":
            inputs.update(width=SIZE, height=SIZE)
        elif ct == "LoadVideo":
            inputs["file"] = VIDEO_NAME
            frames = FRAMES
        elif ct == "SaveAnimatedWEBP":
            inputs["filename_prefix"] = f"mcmtest/{name}"
        elif ct == "MCM_StyleAdapter":
            inputs["adapter"] = ADAPTER_LABEL
    return p, frames


def make_input_video(path: Path, frames: int = FRAMES, size: int = SIZE) -> str:
    """A short mp4 (a bright square moving over a gradient); returns the codec used."""
    import av
    import numpy as np

    last_error = None
    for codec in ("libx264", "h264", "mpeg4"):
        try:
            with av.open(str(path), mode="w") as container:
                stream = container.add_stream(codec, rate=FRAMES)
                stream.width = stream.height = size
                stream.pix_fmt = "yuv420p"
                yy, xx = np.mgrid[0:size, 0:size]
                for i in range(frames):
                    img = np.zeros((size, size, 3), np.uint8)
                    img[..., 0] = (xx * 255 // size).astype(np.uint8)
                    img[..., 2] = (yy * 255 // size).astype(np.uint8)
                    x0 = 4 + i * (size - 24) // max(frames - 1, 1)
                    img[20:40, x0 : x0 + 16] = 255
                    for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
            return codec
        except Exception as e:  # codec not in this PyAV build: try the next
            last_error = e
    raise RuntimeError(f"could not write a test video: {last_error}")


def saved_images(entry: dict, output_dir: Path) -> list[Path]:
    paths = []
    for out in (entry.get("outputs") or {}).values():
        for img in out.get("images", []) or []:
            if img.get("type", "output") == "output":
                paths.append(output_dir / img.get("subfolder", "") / img["filename"])
    return paths


def describe_webp(path: Path) -> dict:
    from PIL import Image

    with Image.open(path) as im:
        n = getattr(im, "n_frames", 1)
        constant = True
        for i in range(n):
            im.seek(i)
            if any(lo < hi for lo, hi in im.convert("RGB").getextrema()):
                constant = False
                break
        return {"file": path.name, "frames": n, "size": list(im.size), "format": im.format, "constant": constant}


def error_messages(entry: dict) -> list[dict]:
    found = []
    for msg in entry.get("status", {}).get("messages", []) or []:
        if isinstance(msg, list) and len(msg) == 2 and msg[0] == "execution_error":
            data = msg[1]
            found.append({k: data.get(k) for k in ("node_id", "node_type", "exception_type", "exception_message")})
    return found


def run_prompt(client: Client, prompt: dict, output_dir: Path, expected_frames: int | None) -> dict:
    t0 = time.time()
    status, body = client.submit(prompt)
    result = {"http_status": status}
    if status != 200:
        result.update(ok=False, error=body)
        return result
    entry = client.wait(body["prompt_id"])
    result["seconds"] = round(time.time() - t0, 2)
    if entry is None:
        result.update(ok=False, status="timeout")
        return result
    result["status"] = entry.get("status", {}).get("status_str")
    result["errors"] = error_messages(entry)
    images = [describe_webp(p) for p in saved_images(entry, output_dir)]
    result["outputs"] = images
    result["expected_frames"] = expected_frames
    result["frames"] = images[0]["frames"] if images else None
    result["ok"] = result["status"] == "success" and bool(images) and result["frames"] == expected_frames
    return result


# --------------------------------------------------------------------------------------------------------------
# d. Bad inputs
# --------------------------------------------------------------------------------------------------------------


def first_node_error(body) -> dict:
    if not isinstance(body, dict):
        return {"raw": str(body)[:2000]}
    out = {"error": body.get("error")}
    for nid, ne in (body.get("node_errors") or {}).items():
        errs = ne.get("errors") or []
        if errs:
            e = errs[0]
            out.update(node_id=nid, class_type=ne.get("class_type"), type=e.get("type"), message=e.get("message"),
                       details=e.get("details"), input_name=(e.get("extra_info") or {}).get("input_name"))  # fmt: skip
            break
    return out


def with_input(prompt: dict, class_type: str, **values) -> dict:
    p = copy.deepcopy(prompt)
    nodes = [n for n in p.values() if n["class_type"] == class_type]
    if not nodes:
        raise KeyError(f"no {class_type} in the prompt")
    for node in nodes:
        node["inputs"].update(values)
    return p


def no_motion_model_prompt() -> dict:
    """Gen1-style chain without ADE: Load MCM LoRA with strength_motion 1 on a model that has no motion model."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": HOST_CKPT}},
        "2": {"class_type": "MCM_StyleAdapter", "inputs": {"adapter": ADAPTER_LABEL, "beta_schedule": "auto (from the adapter)"}},
        "3": {"class_type": "MCM_LoraLoader", "inputs": {"model": ["1", 0], "mcm_adapter": ["2", 0], "strength_model": 1.0,
                                                          "strength_motion": 1.0, "mcm_sampling": True, "temporal_norm": "auto"}},  # fmt: skip
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": FRAMES}},
        "7": {"class_type": "MCM_KSampler", "inputs": {"model": ["3", 0], "seed": 0, "steps": 1, "cfg": 1.0, "positive": ["4", 0],
                                                        "negative": ["5", 0], "latent_image": ["6", 0], "denoise": 1.0}},  # fmt: skip
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["8", 0], "filename_prefix": "mcmtest/no_motion", "fps": 8.0,
                                                            "lossless": False, "quality": 80, "method": "default"}},  # fmt: skip
    }


def bad_400(client: Client, prompt: dict) -> dict:
    status, body = client.submit(prompt)
    return {"http_status": status, **first_node_error(body), "alive_after": client.alive()}


# --------------------------------------------------------------------------------------------------------------


def load_workflows(package_dir: Path) -> tuple[dict, dict]:
    ui = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted((package_dir / "workflows").glob("*.json"))}
    api = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted((package_dir / "workflows" / "api").glob("*.json"))}
    return ui, api


def main(comfy_dir: str, package_dir: str, adapter_dir: str, out_json: str) -> dict:
    comfy, package, adapters = Path(comfy_dir).resolve(), Path(package_dir).resolve(), Path(adapter_dir).resolve()
    t_start = time.time()
    results: dict = {"host_models": {"checkpoint": HOST_CKPT, "motion_model": HOST_MOTION}, "fatal": None}
    work = Path(tempfile.mkdtemp(prefix="mcm-workflows-"))
    server = Server(comfy, package, adapters, work)
    results["notes"] = list(server.notes)
    ui_workflows, api_workflows = load_workflows(package)
    results["workflow_names"] = {"ui": sorted(ui_workflows), "api": sorted(api_workflows)}
    try:
        results["load_average_at_start"] = list(os.getloadavg())
        results["input_video_codec"] = make_input_video(server.input_dir / VIDEO_NAME)
        results["startup_seconds"] = round(server.start(), 2)
        client = Client(server.port)

        # a. registration
        _, object_info = client.request("GET", "/object_info", timeout=120)
        results["registered"] = sorted(k for k in object_info if k.startswith("MCM_"))
        results["ade_registered"] = "ADE_UseEvolvedSampling" in object_info
        adapter = object_info.get("MCM_StyleAdapter", {}).get("input", {}).get("required", {}).get("adapter", [[]])
        results["adapter_choices"] = adapter[0] if isinstance(adapter[0], list) else adapter[1].get("options", [])

        # b. UI workflows against /object_info
        results["validation"] = {name: validate_ui(wf, object_info) for name, wf in ui_workflows.items()}
        results["validator_catches"] = {
            case: validate_ui(wf, object_info) for case, wf in broken_copies(ui_workflows["mcm_t2v_gen2_4step"]).items()
        }

        # d (first half). Validation errors: HTTP 400, nothing runs
        default = shrink(api_workflows["mcm_t2v_gen2_4step"], "bad")[0]
        bad = {}
        bad["steps_zero"] = bad_400(client, with_input(default, "MCM_Scheduler", steps=0))
        bad["strength_model_too_big"] = bad_400(client, with_input(default, "MCM_LoraLoader", strength_model=5.0))
        bad["unknown_adapter"] = bad_400(client, with_input(default, "MCM_StyleAdapter", adapter="no-such-adapter"))
        results["bad_inputs"] = bad

        # d (second half). A runtime failure: reported as an execution error, the server goes on
        fail = run_prompt(client, no_motion_model_prompt(), server.output_dir, None)
        fail["alive_after"] = client.alive()
        bad["runtime_no_motion_model"] = fail

        # c. every API workflow, shrunk
        runs = {}
        order = [n for n in RUN_ORDER if n in api_workflows] + sorted(set(api_workflows) - set(RUN_ORDER))
        for name in order:
            small, frames = shrink(api_workflows[name], name)
            try:
                runs[name] = run_prompt(client, small, server.output_dir, frames)
                runs[name]["cpu_settings"] = {"frames": frames, "size": SIZE, "steps": [
                    n["inputs"]["steps"] for n in small.values() if n["class_type"] in ("MCM_Scheduler", "MCM_KSampler")]}
            except Exception as e:  # record and go on with the next workflow
                runs[name] = {"ok": False, "exception": f"{type(e).__name__}: {e}"}
            print(f"{name}: {json.dumps(runs[name])[:400]}", file=sys.stderr, flush=True)
        results["runs"] = runs
        results["sliding_context_used"] = "Sliding context window sampling activated" in server.log_tail(10**7)

        # d (end). After all the errors, a valid prompt still runs
        small, frames = shrink(api_workflows.get("mcm_t2v_gen2_1step") or api_workflows["mcm_t2v_gen2_4step"], "after_errors")
        small = with_input(small, "SamplerCustom", noise_seed=1234)  # a new seed: the sampler really runs again
        after = run_prompt(client, small, server.output_dir, frames)
        _, queue = client.request("GET", "/queue")
        after["queue_empty"] = isinstance(queue, dict) and not queue.get("queue_running") and not queue.get("queue_pending")
        results["after_errors"] = after
    except Exception:
        results["fatal"] = traceback.format_exc()
    finally:
        results["server_returncode"] = server.stop()
        results["server_log_tail"] = server.log_tail()
        results["total_seconds"] = round(time.time() - t_start, 2)
        Path(out_json).write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    return results


if __name__ == "__main__":
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    res = main(*sys.argv[1:5])
    summary = {"fatal": bool(res.get("fatal")), "registered": res.get("registered"),
               "runs": {k: (v.get("ok"), v.get("seconds")) for k, v in (res.get("runs") or {}).items()},
               "total_seconds": res.get("total_seconds")}  # fmt: skip
    print(json.dumps(summary))
