"""Shared pieces of the benchmarks: models at a chosen size, interleaved timing, and the results log.

Every benchmark prints its ratio; those that call :func:`finish` print one JSON line (``ratio`` first) and
append an entry to ``bench/RESULTS.md`` with the date, the machine, the command line and that JSON, so that
every number there comes from a run (``bench_memory`` and ``bench_temporal_norm`` only print).
Timings are medians of interleaved repetitions (variant A, variant B, A, B, …) after a warm-up of each, in
CPU time of this process and in wall time: on a shared CPU the CPU-time ratio is the one to read.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from training.models import TINY_BLOCKS, TINY_MOTION, TINY_UNET

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
SIZES = ("tiny", "small", "real")

# UNetMotionModel configs. "small" is several times the tiny test model, so that the UNet (not Python)
# dominates a step as it does at full size; "real" is the SD1.5 UNet + AnimateDiff v1-5-2 motion
# adapter architecture (random weights, no download; sized for a GPU).
UNET_CONFIGS = {
    "tiny": {**TINY_UNET, **TINY_BLOCKS["animatediff"]},  # the tiny teachers' UNet
    "small": dict(
        block_out_channels=(64, 128, 128),
        layers_per_block=2,
        cross_attention_dim=128,
        attention_head_dim=8,
        norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ),
    "real": dict(
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
        sample_size=64,
    ),
}
MOTION_CONFIGS = {
    "tiny": {k: v for k, v in TINY_MOTION.items() if k != "block_out_channels"},
    "small": dict(
        motion_layers_per_block=2, motion_norm_num_groups=32, motion_num_attention_heads=4, motion_max_seq_length=32
    ),
    "real": dict(
        motion_layers_per_block=2, motion_norm_num_groups=32, motion_num_attention_heads=8, motion_max_seq_length=32
    ),
}
#: default latent shape (frames, latent side) per size; "real" = 16 frames at 512² (latent 64²)
LATENT_SHAPES = {"tiny": (4, 8), "small": (8, 16), "real": (16, 64)}


def add_common_args(p, reps: int = 5, size: str = "small") -> None:
    p.add_argument(
        "--size",
        default=size,
        choices=SIZES,
        help="model size: tiny (tests), small (CPU), real (SD1.5 + AnimateDiff, GPU)",
    )
    p.add_argument("--frames", type=int, default=None, help="frames per video (default: per size)")
    p.add_argument("--latent", type=int, default=None, help="latent side in pixels / 8 (default: per size)")
    p.add_argument("--reps", type=int, default=reps, help="timed repetitions of each variant (interleaved)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on the CPU (recorded)")
    p.add_argument("--results", default=str(RESULTS), help="markdown file the entry is appended to")
    p.add_argument("--no-record", action="store_true", help="print only; append nothing to the results file")


def setup(args) -> torch.device:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    frames, latent = LATENT_SHAPES[args.size]
    args.frames = args.frames or frames
    args.latent = args.latent or latent
    return device


def motion_unet(size: str, seed: int = 0):
    """A random diffusers ``UNetMotionModel`` of the given size (eval mode, no gradients)."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    torch.manual_seed(seed)
    config = UNET_CONFIGS[size]
    unet = UNet2DConditionModel(**config)
    adapter = MotionAdapter(block_out_channels=config["block_out_channels"], **MOTION_CONFIGS[size])
    return UNetMotionModel.from_unet2d(unet, adapter).eval().requires_grad_(False)


def unet_inputs(unet, frames: int, latent: int, device, batch: int = 1, seed: int = 0):
    """Noise latents ``(b, 4, f, h, w)`` and random text embeddings ``(b, 77, d)`` for ``unet``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, int(unet.config.in_channels), frames, latent, latent, generator=g).to(device)
    cond = torch.randn(batch, 77, int(unet.config.cross_attention_dim), generator=g).to(device)
    return x, cond


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device="cpu") -> tuple[float, float]:
    """(wall, process CPU) seconds of one call of ``fn``."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(
    variants: dict[str, Callable[[], object]], reps: int, device="cpu", warmup: int = 1
) -> dict[str, list[tuple[float, float]]]:
    """Each variant ``warmup`` times, then ``reps`` rounds of all variants in turn; per variant the
    (wall, CPU) seconds of every timed call."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            times[name].append(timed(fn, device))
    return times


def medians(times: dict[str, list[tuple[float, float]]], per: dict[str, float] | None = None) -> tuple[dict, dict]:
    """Median wall and CPU seconds of each variant, divided by ``per[name]`` (e.g. steps per call)."""
    per = per or {}
    wall = {k: statistics.median(w for w, _ in v) / per.get(k, 1) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) / per.get(k, 1) for k, v in times.items()}
    return wall, cpu


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device) -> str:
    device = torch.device(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return (
        f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {where}"
    )


def rounded(value, digits: int = 4):
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def in_repo(value):
    """``value`` (a string, or a dict or list of them) with absolute paths inside the repository written
    relative to its root, so that a results entry does not name the checkout it ran in."""
    if isinstance(value, str):
        return value.replace(f"{ROOT}{os.sep}", "")
    if isinstance(value, dict):
        return {k: in_repo(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(in_repo(v) for v in value)
    return value


def finish(args, script: str, argv, title: str, result: dict, reading: str = "") -> dict:
    """Print the result as one JSON line and (unless ``--no-record``) append it to the results file.
    Paths inside the repository are recorded relative to its root (:func:`in_repo`)."""
    result = in_repo(
        {"ratio": result.pop("ratio"), "date": time.strftime("%Y-%m-%d"), "machine": machine(args.device), **result}
    )
    line = json.dumps(rounded(result))
    print(line, flush=True)
    if not args.no_record:
        argv = in_repo(sys.argv[1:] if argv is None else list(argv))
        threads = os.environ.get("OMP_NUM_THREADS", "unset")
        command = f"OMP_NUM_THREADS={threads} python {shlex.join([os.path.relpath(script, ROOT)] + argv)}"
        entry = [f"\n## {result['date']} — {title}\n", f"- Machine: {result['machine']}", f"- Command: `{command}`"]
        if reading:
            entry.append(f"- Reading: {reading}")
        entry += ["", "```json", line, "```", ""]
        with open(args.results, "a", encoding="utf-8") as f:
            f.write("\n".join(entry))
    return result
