"""Cost of the training-exact motion-module normalisation per sampling step, in a real ComfyUI + ADE host.

usage (the host's Python; ../shared/tools/comfyui-host builds one):
    COMFYUI_DIR=... PYTHONPATH=<torchvision shim if needed> $COMFYUI_PYTHON bench/bench_temporal_norm.py \
        [--frames 16] [--size 64] [--reps 6] [--checkpoint rand_sd15.safetensors] [--motion rand_mm_v2.safetensors]

The default Gen2 graph (Load MCM LoRA → Apply AnimateDiff Model → Use Evolved Sampling → SamplerCustom with
MCM Scheduler + MCM Sampler) runs 1-step samples with temporal_norm ``per_frame`` (stock ADE: unpatched) and
``frames`` (patched), alternating, after a warm-up of each. A model-function wrapper times every UNet call
(the whole sampling step but for the sampler's own few tensor operations; loading the models is outside it).
Prints one JSON line: median wall and CPU (process) seconds per step of each and their ratios (goal: frames /
per_frame ≤ 1.02). On a machine shared with other jobs the CPU-time ratio is the one to read: wall time then
mostly measures how often the process was descheduled.
An adapter with random factors at strength 0 is used: the patch does not depend on the LoRA, and weight
patching is then no part of the loads.
"""

from __future__ import annotations

import argparse
import asyncio
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

from bench.common import cpu_name  # noqa: E402  (before the host puts its own folders first on sys.path)
from mcm.weights import Adapter, AdapterMeta, LoraWeights, save_adapter  # noqa: E402


def start_host(comfy_dir: str, adapter_dir: str):
    os.chdir(comfy_dir)
    sys.path.insert(0, comfy_dir)
    sys.path.append(str(ROOT))
    from comfy.cli_args import args

    args.cpu = not os.environ.get("MCM_BENCH_GPU")
    import folder_paths

    import nodes

    custom = tempfile.mkdtemp(prefix="mcm-bench-")
    os.symlink(ROOT, os.path.join(custom, "comfyui-mcm"))
    folder_paths.add_model_folder_path("custom_nodes", custom)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    folder_paths.add_model_folder_path("mcm", adapter_dir, is_default=True)
    return nodes.NODE_CLASS_MAPPINGS


def write_adapter(folder: Path) -> None:
    """A minimal MCM adapter (one motion-module layer): the loader needs one; strength 0 leaves the weights."""
    import torch

    layer = "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q"
    w = LoraWeights(torch.zeros(4, 320), torch.zeros(320, 4), 4.0)
    save_adapter(
        Adapter(AdapterMeta(lora_rank=4, lora_alpha=4.0), {layer: w}), folder / "bench.safetensors", overwrite=True
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--comfy-dir", default=os.environ.get("COMFYUI_DIR"))
    p.add_argument("--checkpoint", default="rand_sd15.safetensors")
    p.add_argument("--motion", default="rand_mm_v2.safetensors")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--reps", type=int, default=6)
    a = p.parse_args(argv)
    if not a.comfy_dir:
        p.error("set COMFYUI_DIR or pass --comfy-dir")
    return a


def build_graphs(M, model, selected, motion, times: dict) -> dict:
    """The Gen2 graph per temporal_norm, each with a model-function wrapper that times its UNet calls into ``times``."""

    def graph(norm):
        m, mm = M["MCM_LoraLoader"].execute(model, selected, 0.0, 0.0, True, norm, motion_model=motion).args
        m_models = M["ADE_ApplyAnimateDiffModelSimple"]().apply_motion_model(mm)[0]
        g = M["ADE_UseEvolvedSampling"]().use_evolved_sampling(m, "use existing", m_models=m_models)[0].clone()

        def timed(apply_model, args):
            wall, cpu = time.perf_counter(), time.process_time()
            out = apply_model(args["input"], args["timestep"], **args["c"])
            times[norm].append((time.perf_counter() - wall, time.process_time() - cpu))
            return out

        g.set_model_unet_function_wrapper(timed)
        return g

    return {norm: graph(norm) for norm in ("per_frame", "frames")}


def hook_motion_norms(motion) -> dict:
    """Time the motion-module input norms themselves by hooks (the same modules serve both graphs)."""
    norm_time = {"current": None, "started": 0.0, "per_frame": [], "frames": []}

    def before(module, args):
        norm_time["started"] = time.process_time()

    def after(module, args, output):
        norm_time[norm_time["current"]][-1] += time.process_time() - norm_time["started"]

    for name, module in motion.model.named_modules():
        if name.endswith("temporal_transformer.norm"):
            module.register_forward_pre_hook(before)
            module.register_forward_hook(after)
    return norm_time


def summarize(a, times: dict, norm_time: dict, graphs: dict) -> dict:
    import torch

    wall = {norm: statistics.median(w for w, _ in t) for norm, t in times.items()}
    cpu = {norm: statistics.median(c for _, c in t) for norm, t in times.items()}
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {'cpu' if not os.environ.get('MCM_BENCH_GPU') else 'gpu'}",
        "graph": f"SD1.5 + AnimateDiff v2 (full size), {a.frames} frames, {a.size}x{a.size}, "
        "cfg 1, 1 UNet pass per step",
        "reps": a.reps,
        "median_wall_seconds_per_step": {k: round(v, 4) for k, v in wall.items()},
        "median_cpu_seconds_per_step": {k: round(v, 4) for k, v in cpu.items()},
        "ratio_wall": round(wall["frames"] / wall["per_frame"], 4),
        "ratio_cpu": round(cpu["frames"] / cpu["per_frame"], 4),
        "median_cpu_ms_in_motion_norms_per_step": {k: round(1e3 * statistics.median(norm_time[k]), 2) for k in graphs},
        # the same ratio from the norms alone: 1 + (their extra CPU time) / (the unpatched step), far less noisy
        "ratio_from_norm_time": round(
            1 + (statistics.median(norm_time["frames"]) - statistics.median(norm_time["per_frame"])) / cpu["per_frame"],
            5,
        ),
        "all_wall_seconds": {k: [round(w, 3) for w, _ in v] for k, v in times.items()},
    }


def main(argv=None) -> dict:
    a = parse_args(argv)
    adapters = Path(tempfile.mkdtemp(prefix="mcm-bench-adapters-"))
    write_adapter(adapters)
    M = start_host(a.comfy_dir, str(adapters))

    model, clip = M["CheckpointLoaderSimple"]().load_checkpoint(a.checkpoint)[:2]
    text = M["CLIPTextEncode"]().encode(clip, "a red panda walking through a forest")[0]
    selected = M["MCM_StyleAdapter"].execute("bench.safetensors", "auto (from the adapter)").args[0]
    motion = M["ADE_LoadAnimateDiffModel"]().load_motion_model(a.motion)[0]
    times: dict[str, list[float]] = {}
    graphs = build_graphs(M, model, selected, motion, times)
    norm_time = hook_motion_norms(motion)
    latent = M["EmptyLatentImage"]().generate(a.size, a.size, a.frames)[0]
    sampler = M["MCM_Sampler"].execute().args[0]

    def step(norm):
        norm_time["current"] = norm
        norm_time[norm].append(0.0)
        g = graphs[norm]
        sigmas = M["MCM_Scheduler"].execute(g, 1, 1.0).args[0]
        M["SamplerCustom"]().sample(g, True, 1, 1.0, text, text, sampler, sigmas, latent)

    for norm in graphs:  # warm-up: loads, first-call allocations
        times[norm] = []
        step(norm)
        times[norm], norm_time[norm] = [], []
    for _ in range(a.reps):
        for norm in graphs:
            step(norm)
    result = summarize(a, times, norm_time, graphs)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
