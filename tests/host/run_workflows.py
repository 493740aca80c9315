"""Run the shipped workflows in a real ComfyUI server (+ AnimateDiff-Evolved) on the CPU and record the results.

usage: python run_workflows.py COMFYUI_DIR PACKAGE_DIR ADAPTER_DIR OUT_JSON [MODELSCOPE_DIR]

Run it with the ComfyUI environment's Python (stdlib + what that environment has: PIL, av). It starts
`main.py --cpu` (server.py) with a custom_nodes folder holding only a link to PACKAGE_DIR and `mcm: ADAPTER_DIR`,
then:
  a. GET /object_info: which MCM_ nodes registered; GET /workflow_templates: the template browser's listing;
  b. validates every UI workflow in PACKAGE_DIR/workflows/*.json against /object_info (ui_check.py);
  c. runs every API workflow in PACKAGE_DIR/workflows/api/ shrunk for the CPU (64 px, 8 frames, the host's
     random-weight model files and ControlNet, generated input video, pose video and image) and reads the saved
     mp4 back (container, codec, frame count, size, frame rate); the ModelScope workflows run on the random
     full-size files of MODELSCOPE_DIR (tests/host/make_modelscope.py), after the server was asked to free the
     models of the others (POST /free);
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
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # server.py and ui_check.py sit beside this script
from server import PACK_LINK, Client, Server  # noqa: E402
from ui_check import broken_copies, validate_ui, with_appended_output  # noqa: E402

HOST_CKPT = os.environ.get("MCM_HOST_CHECKPOINT", "rand_sd15.safetensors")
HOST_MOTION = os.environ.get("MCM_HOST_MOTION_MODEL", "rand_mm_v2.safetensors")
HOST_CONTROLNET = os.environ.get("MCM_HOST_CONTROLNET", "rand_cn_sd15.safetensors")
ADAPTER_LABEL = "animatediff-webvid"
#: The random ModelScope files (tests/host/make_modelscope.py) the ModelScope workflows run on, held in fp16 (the
#: compute is float32 on the CPU either way; the server then needs half the memory for the 1.4B UNet).
MODELSCOPE_INPUTS = {
    "MCM_ModelScopeLoader": {"unet_name": "ms-rand/unet/diffusion_pytorch_model.safetensors", "weight_dtype": "fp16"},
    "CLIPLoader": {"clip_name": "rand_clip_h.safetensors"},
    "VAELoader": {"vae_name": "rand_sd_vae.safetensors"},
    "MCM_StyleAdapter": {"adapter": "modelscopet2v-anime"},
}
MODELSCOPE_FOLDERS = ("text2video", "text_encoders", "vae", "mcm")
SIZE, FRAMES, LONG_FRAMES = 64, 8, 24
LONG_STEPS = 2  # the context-window run (4 windows of 8 frames per step); the step workflows cover 4 and 8 steps
VIDEO_NAME = "mcm_test_input.mp4"
POSE_VIDEO_NAME = "mcm_test_pose.mp4"  # LONG_FRAMES frames: the 8-frame control workflows use its first 8
IMAGE_NAME = "mcm_test_input.png"
#: The full-size workflows' frame count (the prompt-travel keyframes are given for it).
SHIPPED_FRAMES = 16
#: Run order (others follow, sorted): consecutive prompts share cached loaders and patched models.
RUN_ORDER = [
    "mcm_t2v_gen1_4step",
    "mcm_t2v_gen2_1step",
    "mcm_t2v_gen2_2step",
    "mcm_t2v_gen2_4step",
    "mcm_t2v_gen2_8step",
    "mcm_t2v_gen2_ksampler",
    "mcm_v2v_gen2",
    "mcm_i2v_gen2",
    "mcm_hires_gen2_4step",
    "mcm_prompt_travel_gen2",
    "mcm_pose_gen2_4step",
    "mcm_depth_gen2_4step",
    "mcm_long_video_context",
    "mcm_pose_long_acn",
]


def template_listing(client: Client, ui_workflows: dict) -> dict:
    """GET /workflow_templates (the template browser's list) and whether each listed file is served as shipped."""
    _, listing = client.request("GET", "/workflow_templates")
    names = (listing or {}).get(PACK_LINK, []) if isinstance(listing, dict) else []
    served = {}
    for name in sorted(set(names)):
        status, body = client.request("GET", f"/api/workflow_templates/{PACK_LINK}/{name}.json")
        served[name] = status == 200 and body == ui_workflows.get(name)
    return {"names": names, "served_as_shipped": served}


# --------------------------------------------------------------------------------------------------------------
# c. Running API workflows shrunk for the CPU
# --------------------------------------------------------------------------------------------------------------


def _scaled_keyframes(prompts: str, frames: int) -> str:
    """An ADE prompt schedule (`"0": "...", "8": "..."`) for `frames` instead of SHIPPED_FRAMES frames."""
    return re.sub(r'^(\s*)"(\d+)"', lambda m: f'{m[1]}"{int(m[2]) * frames // SHIPPED_FRAMES}"', prompts, flags=re.M)


def shrink(prompt: dict, name: str) -> tuple[dict, int]:
    """A CPU-sized copy of an API prompt, and the frame count it should save."""
    p = small_prompt(prompt, name)
    return p, expected_output(p)["frames"]


#: Inputs every shrunk prompt sets, by node type: the host's model files, the generated inputs, CPU sizes.
SMALL_INPUTS = {
    "CheckpointLoaderSimple": {"ckpt_name": HOST_CKPT},
    "ADE_LoadAnimateDiffModel": {"model_name": HOST_MOTION},
    "ADE_AnimateDiffLoaderGen1": {"model_name": HOST_MOTION},
    "ControlNetLoader": {"control_net_name": HOST_CONTROLNET},
    "ACN_ControlNetLoaderAdvanced": {"cnet": HOST_CONTROLNET},
    "ADE_StandardStaticContextOptions": {"context_length": 8, "context_overlap": 2},
    "ImageScale": {"width": SIZE, "height": SIZE},
    "LoadImage": {"image": IMAGE_NAME},
    "RepeatImageBatch": {"amount": FRAMES},
    "MCM_StyleAdapter": {"adapter": ADAPTER_LABEL},
}


def small_prompt(prompt: dict, name: str) -> dict:
    """A CPU-sized copy of an API prompt: 64 px, 8 frames (24 in context windows of 8), the host's models."""
    p = copy.deepcopy(prompt)
    types = {n["class_type"] for n in p.values()}
    long_video = "ADE_StandardStaticContextOptions" in types
    controlled = bool(types & {"ControlNetLoader", "ACN_ControlNetLoaderAdvanced"})
    modelscope = "MCM_ModelScopeLoader" in types
    for node in p.values():
        ct, inputs = node["class_type"], node["inputs"]
        inputs.update(SMALL_INPUTS.get(ct, {}))
        if modelscope:
            inputs.update(MODELSCOPE_INPUTS.get(ct, {}))
        if ct == "EmptyLatentImage":
            inputs.update(width=SIZE, height=SIZE, batch_size=LONG_FRAMES if long_video else FRAMES)
        elif ct in ("MCM_Scheduler", "MCM_KSampler") and long_video:
            inputs["steps"] = LONG_STEPS
        elif ct == "LoadVideo":
            inputs["file"] = POSE_VIDEO_NAME if controlled else VIDEO_NAME
        elif ct == "ADE_PromptScheduling":
            inputs.update(prompts=_scaled_keyframes(inputs["prompts"], FRAMES), max_length=FRAMES)
        elif ct == "SaveVideo":
            inputs["filename_prefix"] = f"mcmtest/{name}"
    return p


def expected_output(p: dict) -> dict:
    """Frame count and [width, height] the saved video of a shrunk prompt must have: the latent's frames (or the
    input video's, or the repeated image's), its size times any latent upscale."""
    by_type = {n["class_type"]: n["inputs"] for n in p.values()}
    if "EmptyLatentImage" in by_type:
        frames = by_type["EmptyLatentImage"]["batch_size"]
    elif "RepeatImageBatch" in by_type:
        frames = by_type["RepeatImageBatch"]["amount"]
    else:  # video-to-video: every frame of the input video
        frames = FRAMES
    side = SIZE
    if "LatentUpscaleBy" in by_type:
        side = round(SIZE // 8 * by_type["LatentUpscaleBy"]["scale_by"]) * 8
    return {"frames": frames, "size": [side, side]}


def moving_square(i: int, frames: int, size: int):
    """Frame i: a bright square moving over a gradient (RGB uint8)."""
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size, 3), np.uint8)
    img[..., 0] = (xx * 255 // size).astype(np.uint8)
    img[..., 2] = (yy * 255 // size).astype(np.uint8)
    x0 = 4 + i * (size - 24) // max(frames - 1, 1)
    img[20:40, x0 : x0 + 16] = 255
    return img


def stick_figure(i: int, frames: int, size: int):
    """Frame i of a pose-like video: coloured limbs of a stick figure on black, waving its arms (RGB uint8)."""
    import numpy as np

    img = np.zeros((size, size, 3), np.uint8)
    c = size / 2
    swing = np.sin(2 * np.pi * i / max(frames, 1))
    joints = {
        "head": (c, size * 0.2),
        "neck": (c, size * 0.32),
        "hip": (c, size * 0.6),
        "hand_l": (c - size * 0.25, size * (0.35 - 0.15 * swing)),
        "hand_r": (c + size * 0.25, size * (0.35 + 0.15 * swing)),
        "foot_l": (c - size * 0.15, size * 0.9),
        "foot_r": (c + size * 0.15, size * 0.9),
    }
    limbs = [
        ("head", "neck", (255, 0, 0)),
        ("neck", "hip", (255, 170, 0)),
        ("neck", "hand_l", (0, 255, 0)),
        ("neck", "hand_r", (0, 170, 255)),
        ("hip", "foot_l", (170, 0, 255)),
        ("hip", "foot_r", (255, 0, 170)),
    ]
    for a, b, colour in limbs:
        (x0, y0), (x1, y1) = joints[a], joints[b]
        for t in np.linspace(0.0, 1.0, 2 * size):
            x, y = int(round(x0 + t * (x1 - x0))), int(round(y0 + t * (y1 - y0)))
            img[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = colour
    return img


def make_input_video(path: Path, frames: int = FRAMES, size: int = SIZE, draw=moving_square) -> str:
    """A short mp4 of `frames` frames drawn by `draw(i, frames, size)`; returns the codec used."""
    import av

    last_error = None
    for codec in ("libx264", "h264", "mpeg4"):
        try:
            with av.open(str(path), mode="w") as container:
                stream = container.add_stream(codec, rate=FRAMES)
                stream.width = stream.height = size
                stream.pix_fmt = "yuv420p"
                for i in range(frames):
                    frame = av.VideoFrame.from_ndarray(draw(i, frames, size), format="rgb24")
                    for packet in stream.encode(frame):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
            return codec
        except Exception as e:  # codec not in this PyAV build: try the next
            last_error = e
    raise RuntimeError(f"could not write a test video: {last_error}")


def make_input_image(path: Path, width: int = SIZE + SIZE // 2, height: int = SIZE) -> None:
    """A wider-than-square PNG (Upscale Image crops its centre): the first frame of the moving-square video."""
    from PIL import Image

    Image.fromarray(moving_square(0, 1, width)[:height]).save(path)


def saved_files(entry: dict, output_dir: Path) -> list[Path]:
    """The files a prompt saved, from /history (Save Video lists its mp4 under `images`, as image savers do)."""
    paths = []
    for out in (entry.get("outputs") or {}).values():
        for item in out.get("images", []) or []:
            if item.get("type", "output") == "output":
                paths.append(output_dir / item.get("subfolder", "") / item["filename"])
    return paths


def describe_video(path: Path) -> dict:
    """A saved video as PyAV reads it back: container, codec, pixel format, decoded frames, size, frame rate, and
    whether every frame is one flat colour (NaN or saturated output)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, constant = 0, True
        for frame in container.decode(stream):
            frames += 1
            if constant:
                rgb = frame.to_ndarray(format="rgb24")
                constant = bool((rgb == rgb[:1, :1]).all())
        return {
            "file": path.name,
            "container": path.suffix.lstrip("."),
            "format": container.format.name,
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "frames": frames,
            "size": [stream.codec_context.width, stream.codec_context.height],
            "fps": float(stream.average_rate) if stream.average_rate else None,
            "constant": constant,
        }


def error_messages(entry: dict) -> list[dict]:
    found = []
    for msg in entry.get("status", {}).get("messages", []) or []:
        if isinstance(msg, list) and len(msg) == 2 and msg[0] == "execution_error":
            data = msg[1]
            found.append({k: data.get(k) for k in ("node_id", "node_type", "exception_type", "exception_message")})
    return found


def run_prompt(client: Client, prompt: dict, output_dir: Path, expected: dict | None) -> dict:
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
    videos = [describe_video(p) for p in saved_files(entry, output_dir)]
    result["outputs"] = videos
    result["expected"] = expected
    result["frames"] = videos[0]["frames"] if videos else None
    result["ok"] = (
        result["status"] == "success"
        and len(videos) == 1
        and expected is not None
        and {k: videos[0][k] for k in expected} == expected
    )
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
            out.update(
                node_id=nid,
                class_type=ne.get("class_type"),
                type=e.get("type"),
                message=e.get("message"),
                details=e.get("details"),
                input_name=(e.get("extra_info") or {}).get("input_name"),
            )
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
        "2": {
            "class_type": "MCM_StyleAdapter",
            "inputs": {"adapter": ADAPTER_LABEL, "beta_schedule": "auto (from the adapter)"},
        },
        "3": {
            "class_type": "MCM_LoraLoader",
            "inputs": {
                "model": ["1", 0],
                "mcm_adapter": ["2", 0],
                "strength_model": 1.0,
                "strength_motion": 1.0,
                "mcm_sampling": True,
                "temporal_norm": "auto",
            },
        },
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": FRAMES}},
        "7": {
            "class_type": "MCM_KSampler",
            "inputs": {
                "model": ["3", 0],
                "seed": 0,
                "steps": 1,
                "cfg": 1.0,
                "positive": ["4", 0],
                "negative": ["5", 0],
                "latent_image": ["6", 0],
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "CreateVideo", "inputs": {"images": ["8", 0], "fps": 8.0}},
        "10": {
            "class_type": "SaveVideo",
            "inputs": {"video": ["9", 0], "filename_prefix": "mcmtest/no_motion", "format": "mp4", "codec": "h264"},
        },
    }


def bad_400(client: Client, prompt: dict) -> dict:
    status, body = client.submit(prompt)
    return {"http_status": status, **first_node_error(body), "alive_after": client.alive()}


# --------------------------------------------------------------------------------------------------------------


def load_workflows(package_dir: Path) -> tuple[dict, dict]:
    ui = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted((package_dir / "workflows").glob("*.json"))}
    api = {
        p.stem: json.loads(p.read_text(encoding="utf-8"))
        for p in sorted((package_dir / "workflows" / "api").glob("*.json"))
    }
    return ui, api


def check_registration(client: Client, results: dict) -> dict:
    """a. Registration: the MCM nodes, ADE and the adapter choices in /object_info (returned)."""
    _, object_info = client.request("GET", "/object_info", timeout=120)
    results["registered"] = sorted(k for k in object_info if k.startswith("MCM_"))
    results["ade_registered"] = "ADE_UseEvolvedSampling" in object_info
    adapter = object_info.get("MCM_StyleAdapter", {}).get("input", {}).get("required", {}).get("adapter", [[]])
    results["adapter_choices"] = adapter[0] if isinstance(adapter[0], list) else adapter[1].get("options", [])
    return object_info


def check_ui_workflows(client: Client, object_info: dict, ui_workflows: dict, results: dict) -> None:
    """b. UI workflows against /object_info."""
    results["validation"] = {name: validate_ui(wf, object_info) for name, wf in ui_workflows.items()}
    results["validator_catches"] = {
        case: validate_ui(wf, object_info) for case, wf in broken_copies(ui_workflows["mcm_t2v_gen2_4step"]).items()
    }
    results["validator_accepts_appended_output"] = validate_ui(
        ui_workflows["mcm_t2v_gen2_4step"], with_appended_output(object_info, "VAEDecode")
    )
    results["workflow_templates"] = template_listing(client, ui_workflows)


def check_errors(client: Client, server: Server, api_workflows: dict, results: dict) -> None:
    """d. Validation errors (HTTP 400, nothing runs) and a runtime failure (an execution error, the server goes on)."""
    default = shrink(api_workflows["mcm_t2v_gen2_4step"], "bad")[0]
    bad = {}
    bad["steps_zero"] = bad_400(client, with_input(default, "MCM_Scheduler", steps=0))
    bad["strength_model_too_big"] = bad_400(client, with_input(default, "MCM_LoraLoader", strength_model=5.0))
    bad["unknown_adapter"] = bad_400(client, with_input(default, "MCM_StyleAdapter", adapter="no-such-adapter"))
    results["bad_inputs"] = bad

    fail = run_prompt(client, no_motion_model_prompt(), server.output_dir, None)
    fail["alive_after"] = client.alive()
    bad["runtime_no_motion_model"] = fail


def run_api_workflows(client: Client, server: Server, api_workflows: dict) -> dict:
    """c. Every API workflow, shrunk; a failing one is recorded and the next one runs."""
    runs = {}
    order = [n for n in RUN_ORDER if n in api_workflows] + sorted(set(api_workflows) - set(RUN_ORDER))
    freed = False
    for name in order:
        small = small_prompt(api_workflows[name], name)
        if not freed and any(n["class_type"] == "MCM_ModelScopeLoader" for n in small.values()):
            client.request("POST", "/free", {"unload_models": True, "free_memory": True})  # one big model at a time
            freed = True
        expected = expected_output(small)
        try:
            runs[name] = run_prompt(client, small, server.output_dir, expected)
            runs[name]["cpu_settings"] = {
                "frames": expected["frames"],
                "size": expected["size"],
                "steps": [
                    n["inputs"]["steps"] for n in small.values() if n["class_type"] in ("MCM_Scheduler", "MCM_KSampler")
                ],
            }
        except Exception as e:  # record and go on with the next workflow
            runs[name] = {"ok": False, "exception": f"{type(e).__name__}: {e}"}
        print(f"{name}: {json.dumps(runs[name])[:400]}", file=sys.stderr, flush=True)
    return runs


def check_after_errors(client: Client, server: Server, api_workflows: dict) -> dict:
    """d (end). After all the errors, a valid prompt still runs and the queue ends empty."""
    small = small_prompt(api_workflows.get("mcm_t2v_gen2_1step") or api_workflows["mcm_t2v_gen2_4step"], "after_errors")
    small = with_input(small, "SamplerCustom", noise_seed=1234)  # a new seed: the sampler really runs again
    after = run_prompt(client, small, server.output_dir, expected_output(small))
    _, queue = client.request("GET", "/queue")
    after["queue_empty"] = isinstance(queue, dict) and not queue.get("queue_running") and not queue.get("queue_pending")
    return after


def main(comfy_dir: str, package_dir: str, adapter_dir: str, out_json: str, modelscope_dir: str = "") -> dict:
    """``modelscope_dir``: what tests/host/make_modelscope.py wrote (its folders are added to the server's)."""
    comfy, package, adapters = Path(comfy_dir).resolve(), Path(package_dir).resolve(), Path(adapter_dir).resolve()
    t_start = time.time()
    results: dict = {"host_models": {"checkpoint": HOST_CKPT, "motion_model": HOST_MOTION}, "fatal": None}
    work = Path(tempfile.mkdtemp(prefix="mcm-workflows-"))
    extra = {name: [Path(modelscope_dir) / name] for name in MODELSCOPE_FOLDERS} if modelscope_dir else None
    server = Server(comfy, package, adapters, work, extra_paths=extra)
    results["notes"] = list(server.notes)
    ui_workflows, api_workflows = load_workflows(package)
    results["workflow_names"] = {"ui": sorted(ui_workflows), "api": sorted(api_workflows)}
    try:
        results["load_average_at_start"] = list(os.getloadavg())
        results["input_video_codec"] = make_input_video(server.input_dir / VIDEO_NAME)
        make_input_video(server.input_dir / POSE_VIDEO_NAME, LONG_FRAMES, draw=stick_figure)
        make_input_image(server.input_dir / IMAGE_NAME)
        results["startup_seconds"] = round(server.start(), 2)
        client = Client(server.port)
        object_info = check_registration(client, results)
        check_ui_workflows(client, object_info, ui_workflows, results)
        check_errors(client, server, api_workflows, results)
        results["runs"] = run_api_workflows(client, server, api_workflows)
        results["sliding_context_used"] = "Sliding context window sampling activated" in server.log_tail(10**7)
        results["after_errors"] = check_after_errors(client, server, api_workflows)
    except Exception:
        results["fatal"] = traceback.format_exc()
    finally:
        results["server_returncode"] = server.stop()
        results["server_log_tail"] = server.log_tail()
        results["total_seconds"] = round(time.time() - t_start, 2)
        Path(out_json).write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    return results


if __name__ == "__main__":
    if len(sys.argv) not in (5, 6):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    res = main(*sys.argv[1:6])
    summary = {
        "fatal": bool(res.get("fatal")),
        "registered": res.get("registered"),
        "runs": {k: (v.get("ok"), v.get("seconds")) for k, v in (res.get("runs") or {}).items()},
        "total_seconds": res.get("total_seconds"),
    }
    print(json.dumps(summary))
