"""Cost of a ComfyUI sampling step on the native ModelScope model against a diffusers UNet3DConditionModel forward,
on the same weights and inputs, in a real ComfyUI host.

usage (the host's Python; ../shared/tools/comfyui-host builds one):
    COMFYUI_DIR=... PYTHONPATH=<torchvision shim if needed> $COMFYUI_PYTHON bench/bench_modelscope_step.py \
        --data DATA_DIR [--frames 8] [--size 64] [--reps 8]

DATA_DIR holds ``text2video/ms-rand/unet/`` (a diffusers UNet3DConditionModel folder; tests/host/make_modelscope.py
writes a random full-size one; a real ``text-to-video-ms-1.7b`` folder laid out the same way works too).
``comfyui``: a 1-step SamplerCustom (MCM Scheduler + MCM Sampler, cfg 1) on Load ModelScope T2V Model → MCM Model
Sampling, the whole node call timed (ComfyUI's sampling set-up, the UNet call, our sampler's update).
``diffusers``: ``UNet3DConditionModel(x, t, encoder_hidden_states)`` on a (1, 4, frames, h, w) latent with the same
text embedding. Alternating, after a warm-up of each. Prints one JSON line: median wall and CPU (process) seconds of
each and their ratio (goal: comfyui / diffusers <= 1.02), and the same for the model call inside ComfyUI's step
(a model-function wrapper times it). Both 1.4-billion-parameter models are held at once
(~12 GB in fp32). On a machine shared with other jobs the CPU-time ratio is the one to read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

from bench.bench_temporal_norm import start_host  # noqa: E402
from bench.common import cpu_name, timed  # noqa: E402

UNET = "ms-rand/unet/diffusion_pytorch_model.safetensors"
SCHEDULE = "linear (diffusers scaled_linear; MCM training, SD default)"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--comfy-dir", default=os.environ.get("COMFYUI_DIR"))
    p.add_argument("--data", required=True, help="folder holding text2video/ms-rand/unet/")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--reps", type=int, default=8)
    a = p.parse_args(argv)
    if not a.comfy_dir:
        p.error("set COMFYUI_DIR or pass --comfy-dir")
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    M = start_host(a.comfy_dir, tempfile.mkdtemp(prefix="mcm-bench-adapters-"))
    import folder_paths
    import torch

    sys.path.insert(0, str(ROOT / "tests" / "host"))
    from check_temporal_norm import _hide_torchvision_shim

    folder_paths.add_model_folder_path("text2video", os.path.join(a.data, "text2video"), is_default=True)
    _hide_torchvision_shim()
    from diffusers import UNet3DConditionModel

    model = M["MCM_ModelScopeLoader"].execute(UNET, "default").args[0]
    model = M["MCM_ModelSampling"].execute(model, SCHEDULE, 4.0).args[0]
    unet = UNet3DConditionModel.from_pretrained(os.path.join(a.data, "text2video", "ms-rand", "unet")).eval()
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, 77, 1024, generator=g)
    x = torch.randn(1, 4, a.frames, a.size // 8, a.size // 8, generator=g)
    cond = [[text, {}]]
    latent = M["EmptyLatentImage"]().generate(a.size, a.size, a.frames)[0]
    sampler = M["MCM_Sampler"].execute().args[0]
    sigmas = M["MCM_Scheduler"].execute(model, 1, 1.0).args[0]

    inner: list[tuple[float, float]] = []  # (wall, CPU) of the UNet call inside each ComfyUI step
    timed_model = model.clone()

    def unet_call(apply_model, args):
        result = []
        inner.append(timed(lambda: result.append(apply_model(args["input"], args["timestep"], **args["c"]))))
        return result[0]

    timed_model.set_model_unet_function_wrapper(unet_call)

    def comfyui():
        M["SamplerCustom"]().sample(timed_model, True, 1, 1.0, cond, cond, sampler, sigmas, latent)

    def diffusers():
        with torch.no_grad():
            unet(x, 999, encoder_hidden_states=text)

    variants = {"comfyui": comfyui, "diffusers": diffusers}
    for fn in variants.values():  # warm-up: ComfyUI loads the model onto its device, first-call allocations
        fn()
    times = {name: [] for name in variants}
    for _ in range(a.reps):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    times["comfyui_unet_call"] = inner[-a.reps :]
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    result = {
        "ratio_cpu": round(cpu["comfyui"] / cpu["diffusers"], 4),
        "ratio_wall": round(wall["comfyui"] / wall["diffusers"], 4),
        # the model call alone (ComfyUI's apply_model: input scaling, the UNet3D on comfy.ops, denoised output)
        "ratio_cpu_unet_call": round(cpu["comfyui_unet_call"] / cpu["diffusers"], 4),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device cpu",
        "what": f"ModelScope UNet3D ({sum(p.numel() for p in unet.parameters()):,} parameters), "
        f"{a.frames} frames, {a.size}x{a.size}, cfg 1: a 1-step SamplerCustom vs one diffusers forward",
        "reps": a.reps,
        "median_wall_seconds": {k: round(v, 4) for k, v in wall.items()},
        "median_cpu_seconds": {k: round(v, 4) for k, v in cpu.items()},
        "all_cpu_seconds": {k: [round(c, 3) for _, c in v] for k, v in times.items()},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
