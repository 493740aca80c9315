"""Speed-up of MCM N-step sampling over the teacher's 25-step DDIM with CFG, against the evaluation-count limit.

usage:
    OMP_NUM_THREADS=1 python bench/bench_speedup.py [--size tiny|small|real] [--mcm-steps 1,2,4,8] [--reps 3]
        [--device cpu]

Same random ``UNetMotionModel``, input size and machine for both. The teacher: 25 DDIM steps (diffusers'
``leading`` spacing, t = 961, 921, …, 1) with classifier-free guidance, cond and uncond in one batch of two
per step as diffusers' AnimateDiff pipeline runs them (50 UNet evaluations). MCM: ``sample_consistency``
with N steps at cfg 1 (N evaluations). The latent sampling loop only: text encoding and VAE decoding are the
same for both and left out. For each N: speed-up = median teacher seconds / median MCM seconds, limit =
50 / N evaluations, and speed-up / limit. ``ratio`` is that fraction at 4 steps (goal ≥ 0.95 of 12.5×).
Variants are interleaved after one warm-up UNet call of each batch size. On a CPU a batch of two costs
about twice a batch of one; on a GPU it can cost less, which lowers the achievable fraction there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import add_common_args, finish, interleaved, medians, motion_unet, setup, unet_inputs  # noqa: E402
from mcm.sampler import sample_consistency, sample_ddim  # noqa: E402
from mcm.schedule import NoiseSchedule, lcm_timesteps  # noqa: E402
from training.models import VideoUNet  # noqa: E402

TEACHER_STEPS = 25


def teacher_timesteps(steps: int = TEACHER_STEPS, num_train_timesteps: int = 1000):
    """diffusers ``DDIMScheduler`` timesteps with ``leading`` spacing and ``steps_offset`` 1 (SD's config)."""
    import torch

    ratio = num_train_timesteps // steps
    return (torch.arange(steps - 1, -1, -1) * ratio + 1).long()


def teacher_sample(model, x, cond, uncond, schedule, guidance: float = 7.5, steps: int = TEACHER_STEPS):
    """The teacher's DDIM with CFG (:func:`mcm.sampler.sample_ddim`), cond and uncond batched: ``2 · steps`` UNet
    evaluations."""
    return sample_ddim(model, x, teacher_timesteps(steps), schedule, cond, uncond, guidance=guidance)


def main(argv=None) -> dict:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p, reps=3)
    p.add_argument("--mcm-steps", default="1,2,4,8", help="comma-separated MCM step counts (4 gives the ratio)")
    p.add_argument("--guidance", type=float, default=7.5, help="teacher CFG scale (does not change the cost)")
    args = p.parse_args(argv)
    device = setup(args)
    steps = [int(s) for s in args.mcm_steps.split(",")]
    if 4 not in steps:
        p.error("--mcm-steps must include 4 (the ratio is taken at 4 steps)")
    unet = motion_unet(args.size).to(device)
    x, cond = unet_inputs(unet, args.frames, args.latent, device)
    uncond = torch.zeros_like(cond)
    model = VideoUNet(unet)
    schedule = NoiseSchedule("scaled_linear")
    with torch.no_grad():  # warm-up: first-call allocations of both batch sizes
        model(x, torch.tensor([999]), cond)
        model(torch.cat([x, x]), torch.tensor([999, 999]), torch.cat([cond, uncond]))
    variants = {"teacher": lambda: teacher_sample(model, x, cond, uncond, schedule, args.guidance)}
    for n in steps:
        variants[f"mcm_{n}"] = lambda n=n: sample_consistency(model, x, lcm_timesteps(n), schedule, cond)
    times = interleaved(variants, args.reps, device, warmup=0)
    wall, cpu = medians(times)
    evaluations = 2 * TEACHER_STEPS
    speedup = {n: cpu["teacher"] / cpu[f"mcm_{n}"] for n in steps}
    fraction = {n: speedup[n] / (evaluations / n) for n in steps}
    result = {
        "ratio": fraction[4],
        "goal": ">= 0.95 (of the 12.5x evaluation-count limit at 4 steps)",
        "speedup_cpu": {f"{n}-step": v for n, v in speedup.items()},
        "limit": {f"{n}-step": evaluations / n for n in steps},
        "fraction_of_limit_cpu": {f"{n}-step": v for n, v in fraction.items()},
        "fraction_of_limit_wall": {f"{n}-step": wall["teacher"] / wall[f"mcm_{n}"] / (evaluations / n) for n in steps},
        "model": f"UNetMotionModel '{args.size}' "
        f"({sum(p.numel() for p in unet.parameters()) / 1e6:.1f} M parameters), random weights",
        "input": f"1 video, {args.frames} frames, latent {args.latent}x{args.latent}",
        "teacher": f"DDIM {TEACHER_STEPS} steps, CFG {args.guidance:g} (cond+uncond batched): "
        f"{evaluations} UNet evaluations",
        "reps": args.reps,
        "median_cpu_seconds": cpu,
        "median_wall_seconds": wall,
    }
    return finish(args, __file__, argv, "speed-up of MCM over the teacher's 25-step CFG sampling", result)


if __name__ == "__main__":
    main()
