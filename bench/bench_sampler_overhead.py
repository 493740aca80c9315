"""Sampler overhead: one MCM sampling step over one bare UNet evaluation of the same model and input.

usage:
    OMP_NUM_THREADS=1 python bench/bench_sampler_overhead.py [--size tiny|small|real] [--steps 4] [--reps 5]
        [--device cpu]
    # inside a real ComfyUI + ADE host (full-size SD1.5 + AnimateDiff weights from its model folders):
    COMFYUI_DIR=... PYTHONPATH=<shims> $COMFYUI_PYTHON bench/bench_sampler_overhead.py --host [--steps 2 --reps 2]

Core (``mcm/``): a random diffusers ``UNetMotionModel`` (``--size small``: 13 M parameters, so that the UNet
dominates as at full size). Interleaved, after a warm-up of each: ``bare`` = ``--steps`` UNet calls on the
same latents, timestep and text embedding; ``sample_consistency`` = the VP sampler over the same UNet for
``--steps`` steps; ``sample_mcm`` = the k-diffusion form over the same UNet behind the consistency
denoiser ``ve_consistency_output`` (what the nodes' model-sampling patch computes). ``ratio`` = median CPU
seconds per sampler step / per bare call, for ``sample_consistency`` (goal ≤ 1.02). ``ratio_from_overhead``
is the low-noise twin: the samplers over a free model (it returns a stored output) give their own seconds
per step, added to the bare call.

Host (``--host``): the default Gen2 graph (Load MCM LoRA at strength 0 → Apply AnimateDiff → Use Evolved
Sampling → SamplerCustom with MCM Scheduler + MCM Sampler, cfg 1). Per sampling: CPU seconds of the whole
``SamplerCustom`` call over the CPU seconds of the UNet calls inside it (a model-function wrapper times
``apply_model``), median over ``--reps`` samplings. The whole call includes ComfyUI's per-sampling set-up
(conditioning, ADE's injection, model patching), spread over ``--steps`` steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_temporal_norm import start_host, write_adapter  # noqa: E402
from bench.common import add_common_args, finish, interleaved, medians, motion_unet, setup, unet_inputs  # noqa: E402
from mcm.sampler import comfy_sigmas, sample_consistency, sample_mcm, ve_consistency_output  # noqa: E402
from mcm.schedule import NoiseSchedule, lcm_timesteps  # noqa: E402
from training.models import VideoUNet  # noqa: E402


def parse(argv):

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p)
    p.add_argument("--steps", type=int, default=4, help="sampling steps per timed call")
    p.add_argument("--host", action="store_true", help="measure inside the ComfyUI host at COMFYUI_DIR")
    p.add_argument("--comfy-dir", default=os.environ.get("COMFYUI_DIR"))
    p.add_argument("--checkpoint", default="rand_sd15.safetensors", help="host: checkpoint in its models/checkpoints")
    p.add_argument("--motion", default="rand_mm_v2.safetensors", help="host: motion module in its animatediff_models")
    p.add_argument("--pixels", type=int, default=64, help="host: frame side in pixels")
    return p.parse_args(argv)


def core(args) -> dict:
    import torch

    device = setup(args)
    unet = motion_unet(args.size).to(device)
    x, cond = unet_inputs(unet, args.frames, args.latent, device)
    model = VideoUNet(unet)
    schedule = NoiseSchedule("linear")
    timesteps = lcm_timesteps(args.steps)
    sigmas = comfy_sigmas(timesteps, schedule).to(device)
    t_of = {float(s): int(t) for s, t in zip(sigmas[:-1].tolist(), timesteps.tolist())}

    def denoiser(eps_model):  # ComfyUI's form: VE x, sigma → consistency output f
        def f(x_ve, sigma):
            s = float(sigma[0])
            t = torch.full((x_ve.shape[0],), t_of[s], dtype=torch.long)
            x_vp = x_ve / (1.0 + s**2) ** 0.5
            return ve_consistency_output(eps_model(x_vp, t, cond), x_ve, sigma, schedule, t=t)

        return f

    stored = model(x, timesteps[:1].expand(1), cond)
    free = lambda x_t, t, c: stored  # noqa: E731 - the model's output without its cost

    @torch.no_grad()
    def bare():
        for t in timesteps:
            model(x, t.expand(1), cond)

    variants = {
        "bare": bare,
        "sample_consistency": lambda: sample_consistency(model, x, timesteps, schedule, cond),
        "sample_mcm": lambda: sample_mcm(denoiser(model), x * sigmas[0], sigmas, disable=True),
    }
    times = interleaved(variants, args.reps, device)
    free_times = interleaved(
        {
            "sample_consistency": lambda: sample_consistency(free, x, timesteps, schedule, cond),
            "sample_mcm": lambda: sample_mcm(denoiser(free), x * sigmas[0], sigmas, disable=True),
        },
        max(args.reps, 20),
        device,
    )
    per = dict.fromkeys(times, args.steps)
    wall, cpu = medians(times, per)
    _, overhead = medians(free_times, dict.fromkeys(free_times, args.steps))
    return {
        "ratio": cpu["sample_consistency"] / cpu["bare"],
        "ratio_sample_mcm": cpu["sample_mcm"] / cpu["bare"],
        "ratio_wall": wall["sample_consistency"] / wall["bare"],
        "ratio_from_overhead": 1 + overhead["sample_consistency"] / cpu["bare"],
        "ratio_from_overhead_sample_mcm": 1 + overhead["sample_mcm"] / cpu["bare"],
        "goal": "<= 1.02",
        "model": f"UNetMotionModel '{args.size}' "
        f"({sum(p.numel() for p in unet.parameters()) / 1e6:.1f} M parameters), random weights",
        "input": f"1 video, {args.frames} frames, latent {args.latent}x{args.latent}, cfg 1 (1 UNet pass per step)",
        "steps": args.steps,
        "reps": args.reps,
        "median_cpu_seconds_per_step": cpu,
        "median_wall_seconds_per_step": wall,
        "sampler_own_cpu_ms_per_step": {k: 1e3 * v for k, v in overhead.items()},
    }


def host(args) -> dict:
    import tempfile

    if not args.comfy_dir:
        raise SystemExit("--host: set COMFYUI_DIR or pass --comfy-dir")
    adapters = Path(tempfile.mkdtemp(prefix="mcm-bench-adapters-"))
    write_adapter(adapters)
    M = start_host(args.comfy_dir, str(adapters))
    import torch

    torch.set_num_threads(args.threads)
    frames = args.frames or 16
    model, clip = M["CheckpointLoaderSimple"]().load_checkpoint(args.checkpoint)[:2]
    text = M["CLIPTextEncode"]().encode(clip, "a red panda walking through a forest")[0]
    selected = M["MCM_StyleAdapter"].execute("bench.safetensors", "auto (from the adapter)").args[0]
    motion = M["ADE_LoadAnimateDiffModel"]().load_motion_model(args.motion)[0]
    m, mm = M["MCM_LoraLoader"].execute(model, selected, 0.0, 0.0, True, "auto", motion_model=motion).args
    m_models = M["ADE_ApplyAnimateDiffModelSimple"]().apply_motion_model(mm)[0]
    g = M["ADE_UseEvolvedSampling"]().use_evolved_sampling(m, "use existing", m_models=m_models)[0].clone()
    unet_cpu: list[float] = []

    def wrapper(apply_model, a):
        cpu = time.process_time()
        out = apply_model(a["input"], a["timestep"], **a["c"])
        unet_cpu.append(time.process_time() - cpu)
        return out

    g.set_model_unet_function_wrapper(wrapper)
    latent = M["EmptyLatentImage"]().generate(args.pixels, args.pixels, frames)[0]
    sampler = M["MCM_Sampler"].execute().args[0]
    sigmas = M["MCM_Scheduler"].execute(g, args.steps, 1.0).args[0]
    runs = []
    for _rep in range(args.reps + 1):  # the first is the warm-up
        unet_cpu.clear()
        wall, cpu = time.perf_counter(), time.process_time()
        M["SamplerCustom"]().sample(g, True, 1, 1.0, text, text, sampler, sigmas, latent)
        runs.append((time.perf_counter() - wall, time.process_time() - cpu, sum(unet_cpu), len(unet_cpu)))
    timed = runs[1:]
    if any(n != args.steps for *_, n in timed):
        raise RuntimeError(f"expected {args.steps} UNet calls per sampling, got {[n for *_, n in timed]}")
    return {
        "ratio": statistics.median(c / u for _, c, u, _ in timed),
        "goal": "<= 1.02",
        "model": f"host: {args.checkpoint} + {args.motion} (full-size SD1.5 + AnimateDiff v2), Gen2 graph, MCM Sampler",
        "input": f"1 video, {frames} frames, {args.pixels}x{args.pixels} px, cfg 1 (1 UNet pass per step)",
        "steps": args.steps,
        "reps": args.reps,
        "median_cpu_seconds_per_step": {
            "sampling_call": statistics.median(c / args.steps for _, c, _, _ in timed),
            "unet_calls": statistics.median(u / args.steps for _, _, u, _ in timed),
        },
        "median_wall_seconds_per_sampling": statistics.median(w for w, *_ in timed),
        "all_cpu_seconds": [[round(c, 3), round(u, 3)] for _, c, u, _ in runs],
    }


def main(argv=None) -> dict:

    args = parse(argv)
    if args.host:
        args.size = "real"
        result = host(args)
    else:
        result = core(args)
    title = "sampler overhead per step" + (" in the ComfyUI host" if args.host else " (mcm core)")
    return finish(args, __file__, argv, title, result)


if __name__ == "__main__":
    main()
