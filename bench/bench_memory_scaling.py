"""Benchmark: peak memory of one training step of the real AnimateDiff configuration at 512²×16, from a
measured model of how it scales with resolution and frames.

    OMP_NUM_THREADS=1 python bench/bench_memory_scaling.py [--size real] [--points 8x4,8x8,12x4,8x16,16x4,16x8]
        [--levers fp32,bf16,bf16+ckpt] [--target 64x16]

No GPU is needed. One training step (as ``training/distill.py`` runs it on real-video trajectories: the LoRA
student forward with gradients, the teacher's CFG forwards (cond, uncond) and the target forward without,
the learnable motion head, one backward) runs at several small latent sizes × frame counts on the full-size
SD1.5 UNet + AnimateDiff v1-5-2 motion adapter (random weights, ``bench/common.py`` ``real``), LoRA rank
64 on the official targets (``training/models.py`` ``make_student``). :class:`LiveBytes` counts the bytes
of the live tensor storages the step allocates and their peak (what a GPU's ``max_memory_allocated``
reports, without allocator rounding or kernel workspaces); the weights, LoRA gradients' Adam states and
the other frozen models are added from parameter counts. Per lever the step's peak is fitted as

    peak(f, s) = c0 + a·f·s² + b·f·s⁴ + c·f²·s²       (s = latent side, f = frames, batch 1)

(``a``: activations per token; ``b``: spatial attention matrices; ``c``: temporal attention matrices; the
last two vanish where attention does not store its matrix, as with the CPU's flash SDPA used here: the
fit that is extrapolated has c0 and a only; the four-term fit is reported beside it) and extrapolated to the
target. The attention matrices a non-fused (math) backend would keep are added from the UNet's structure.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import weakref
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402

from bench.common import MOTION_CONFIGS, RESULTS, UNET_CONFIGS, finish  # noqa: E402
from mcm.distill import DistillConfig, distillation_step  # noqa: E402
from mcm.motion import make_motion_representation  # noqa: E402
from mcm.schedule import NoiseSchedule  # noqa: E402
from training.models import Teacher, call_unet, make_student  # noqa: E402

GIB = 2**30
GOAL_GB, OFFICIAL_GB = 40.0, 70.0
#: lever → (autocast dtype or None, frozen weight dtype, gradient checkpointing)
LEVERS = {
    "fp32": (None, torch.float32, False),
    "fp32+ckpt": (None, torch.float32, True),
    "bf16": (torch.bfloat16, torch.bfloat16, False),
    "bf16+ckpt": (torch.bfloat16, torch.bfloat16, True),
}
LEVER_FLAGS = {
    "fp32": "(all levers off)",
    "fp32+ckpt": "--gradient-checkpointing",
    "bf16": "--mixed-precision bf16 --frozen-dtype bf16",
    "bf16+ckpt": "--mixed-precision bf16 --frozen-dtype bf16 --gradient-checkpointing",
}
#: parameters of the frozen models outside the UNet at full size (SD1.5 VAE, CLIP ViT-L/14 text encoder)
OTHER_FROZEN_PARAMS = {"real": 83_653_863 + 123_060_480}


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of tensor storages created while active, live until freed, and their peak.

    A storage is counted once, when an operator first returns it (views and in-place results share
    their input's storage and add nothing); a weak reference's callback subtracts it when it is freed.
    Storages that existed before (weights, inputs) are not counted. Invisible: buffers a kernel
    allocates and frees inside itself (e.g. a convolution's workspace).
    """

    def __init__(self):
        super().__init__()
        self.live, self.now, self.peak, self.ops = {}, 0, 0, set()

    def _freed(self, key, _ref):
        self.now -= self.live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if "scaled_dot_product" in func.__name__:
            self.ops.add(func.__name__)
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in inputs or key in self.live:
                continue
            nbytes = storage.nbytes()
            self.live[key] = (weakref.ref(storage, lambda ref, key=key: self._freed(key, ref)), nbytes)
            self.now += nbytes
        self.peak = max(self.peak, self.now)
        return out


def build(size: str, lever: str, rank: int):
    """The teacher UNet (frozen, in the lever's dtype), the LoRA student on it, the motion head."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    _, frozen, ckpt = LEVERS[lever]
    torch.manual_seed(0)
    config = UNET_CONFIGS[size]
    default = torch.get_default_dtype()
    torch.set_default_dtype(frozen)  # built in the frozen dtype, as distill.py casts it (no fp32 copy on the way)
    try:
        adapter = MotionAdapter(block_out_channels=config["block_out_channels"], **MOTION_CONFIGS[size])
        unet = UNetMotionModel.from_unet2d(UNet2DConditionModel(**config), adapter).requires_grad_(False)
    finally:
        torch.set_default_dtype(default)
    if ckpt:
        unet.enable_gradient_checkpointing()
    student = make_student(Teacher("animatediff", unet, None, None, None, size), rank, float(rank))
    for p in student.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # trainable weights stay fp32 whatever the frozen dtype (as distill.py)
    head, target_head = make_motion_representation("learn", int(unet.config.in_channels))
    return student.train(), head, target_head


def static_bytes(student, head, size: str, frozen: torch.dtype) -> dict:
    """Bytes that live through the whole run: weights, LoRA + head AdamW states (2 × fp32), other frozen models."""
    params = list(student.parameters()) + list(head.parameters())
    weights = sum(p.numel() * p.element_size() for p in params) + sum(
        b.numel() * b.element_size() for b in student.buffers()
    )
    trainable = sum(p.numel() for p in params if p.requires_grad)
    other = OTHER_FROZEN_PARAMS.get(size, 0) * torch.tensor([], dtype=frozen).element_size()
    return {
        "weights": weights,
        "adam_states": 2 * 4 * trainable,
        "vae_text_encoder": other,
        "trainable_params": trainable,
    }


def one_step(student, head, target_head, lever: str, frames: int, latent: int) -> LiveBytes:
    """One distillation step (student, teacher CFG, target, motion loss, backward) under :class:`LiveBytes`."""

    autocast, _, _ = LEVERS[lever]
    g = torch.Generator().manual_seed(0)
    c = int(student.get_base_model().config.in_channels)
    d = int(student.get_base_model().config.cross_attention_dim)
    x0 = torch.randn(1, c, frames, latent, latent, generator=g)
    cond, uncond = torch.randn(1, 77, d, generator=g), torch.randn(1, 77, d, generator=g)

    def teacher_fn(x, t, cc):
        with student.disable_adapter():
            return call_unet(student, x, t, cc)

    def student_fn(x, t, cc):
        return call_unet(student, x, t, cc)

    tracker = LiveBytes()
    amp = torch.autocast("cpu", dtype=autocast) if autocast else nullcontext()
    with tracker:
        with amp:
            out = distillation_step(
                student_fn,
                teacher_fn,
                x0,
                cond,
                uncond,
                NoiseSchedule("scaled_linear"),
                DistillConfig(lambda_real=1.0),
                index=torch.tensor([25]),
                w=torch.tensor([7.0]),
                noise=torch.randn(x0.shape, generator=g),
                motion=head,
                target_motion=target_head,
            )
        out["loss"].backward()
        del out
    for p in list(student.parameters()) + list(head.parameters()):
        p.grad = None
    return tracker


def measure(size: str, lever: str, points: list[tuple[int, int]], rank: int, log=None) -> list[dict]:
    """The step's peak live bytes at each (latent side, frames) point, for one lever (one model build)."""
    student, head, target_head = build(size, lever, rank)
    static = static_bytes(student, head, size, LEVERS[lever][1])
    rows = []
    for latent, frames in points:
        gc.collect()
        start = time.process_time()
        tracker = one_step(student, head, target_head, lever, frames, latent)
        row = {
            "lever": lever,
            "latent": latent,
            "frames": frames,
            "step_peak_bytes": tracker.peak,
            "cpu_seconds": round(time.process_time() - start, 1),
            "sdpa": sorted(tracker.ops),
            **static,
        }
        rows.append(row)
        if log:
            log(row)
    return rows


def features(latent: int, frames: int) -> list[float]:
    """Terms of the memory model: constant, f·s² (activations), f·s⁴ (spatial attention), f²·s² (temporal)."""
    n = latent * latent
    return [1.0, frames * n, frames * n * n, frames * frames * n]


def fit(rows: list[dict], terms: int = 2) -> list[float]:
    """Least-squares coefficients of the first ``terms`` :func:`features` for the rows' step peaks (bytes).
    Two terms (constant + activations) when attention stores no matrix, as measured here (CPU flash SDPA)."""
    x = torch.tensor([features(r["latent"], r["frames"]) for r in rows], dtype=torch.float64)
    y = torch.tensor([float(r["step_peak_bytes"]) for r in rows], dtype=torch.float64)
    scale = x.abs().amax(0).clamp_min(1.0)  # the columns differ by orders of magnitude
    k = min(len(rows), terms)
    coef = torch.linalg.lstsq(x[:, :k] / scale[:k], y, driver="gelsd").solution / scale[:k]
    return coef.tolist() + [0.0] * (x.shape[1] - k)


def predict(coef: list[float], latent: int, frames: int) -> float:
    return sum(c * v for c, v in zip(coef, features(latent, frames)))


def attention_matrix_bytes(unet, latent: int, frames: int, itemsize: int) -> dict:
    """Bytes of the attention matrices (batch·heads·L_q·L_k) that a step's student forward would keep for
    backward if attention materialised them (the math backend); SDPA's flash / memory-efficient kernels keep none.
    From the UNet's structure: spatial self- and cross-attention per frame at each level, temporal attention
    over frames per spatial position."""
    from diffusers.models.attention_processor import Attention

    spatial = temporal = 0
    for name, module in unet.named_modules():
        if not isinstance(module, Attention):
            continue
        parts = name.split(".")
        level = (
            3
            if "mid_block" in name
            else (
                int(parts[parts.index("down_blocks") + 1])
                if "down_blocks" in name
                else 3 - int(parts[parts.index("up_blocks") + 1])
            )
        )
        tokens = (-(-latent // 2**level)) ** 2
        if "motion_modules" in name:
            temporal += tokens * module.heads * frames * frames * itemsize
        else:
            keys = 77 if module.is_cross_attention else tokens
            spatial += frames * module.heads * tokens * keys * itemsize
    return {"spatial": spatial, "temporal": temporal}


SD_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)


def vae_decode_peak(latent: int, frames: int, dtype: torch.dtype) -> int:
    """Peak live bytes of the adversarial branch's sparse decode: the SD1.5 VAE decoder on ``frames`` frames,
    forward and backward to the latents (as ``training/adversarial.py``); the discriminator is not included."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**SD_VAE).to(dtype).requires_grad_(False)
    z = torch.randn(frames, 4, latent, latent, requires_grad=True)
    tracker = LiveBytes()
    with tracker:
        vae.decode(z.to(dtype)).sample.float().square().mean().backward()
    return tracker.peak


def parse(argv):

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--size", default="real", choices=("tiny", "small", "real"), help="UNet size (bench/common.py); tiny for tests"
    )
    p.add_argument(
        "--points",
        default="8x4,8x8,12x4,8x16,16x4,16x8",
        help="latent side x frames measured; the last one is held out of the fit",
    )
    p.add_argument("--levers", default="fp32,bf16,bf16+ckpt", help=f"comma list of {sorted(LEVERS)}")
    p.add_argument("--rank", type=int, default=64, help="LoRA rank (training/distill.py default 64)")
    p.add_argument("--target", default="64x16", help="latent side x frames to extrapolate to (512² px × 16 frames)")
    p.add_argument(
        "--vae-points",
        default="4,8",
        help="latent sides at which the VAE decode of --disc-frames is measured ('' : skip)",
    )
    p.add_argument("--disc-frames", type=int, default=2)
    p.add_argument(
        "--measured", default=None, help="reuse the rows of an earlier run (JSON lines from --log) instead of measuring"
    )
    p.add_argument("--log", default=None, help="append each measured row to this file as a JSON line")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    args.device = "cpu"
    return args


def pairs(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in item.split("x")) for item in text.split(",") if item]


def lever_summary(rows: list[dict], target: tuple[int, int], vae: dict, unet) -> dict:
    """Fit on all rows but the last, the held-out error on the last, and the target's total."""
    import math

    fitted, held = rows[:-1], rows[-1]
    coef, coef4 = fit(fitted), fit(fitted, terms=4)
    lever = rows[0]["lever"]
    itemsize = 2 if LEVERS[lever][0] else 4
    step = predict(coef, *target)
    statics = rows[0]["weights"] + rows[0]["adam_states"] + rows[0]["vae_text_encoder"]
    decode = vae.get(itemsize, 0.0)
    total = statics + step + decode
    matrices = attention_matrix_bytes(unet, target[0], target[1], itemsize)
    materialised = None if LEVERS[lever][2] else total + matrices["spatial"] + matrices["temporal"]
    fit_error = max(abs(predict(coef, r["latent"], r["frames"]) / r["step_peak_bytes"] - 1) for r in fitted)
    out = {
        "flags": LEVER_FLAGS[lever],
        "coef_bytes": {"c0": coef[0], "a_per_f_s2": coef[1], "b_per_f_s4": coef[2], "c_per_f2_s2": coef[3]},
        "fit_max_rel_error": fit_error,
        "heldout": f"{held['latent']}x{held['frames']}",
        "heldout_measured_gib": held["step_peak_bytes"] / GIB,
        "heldout_rel_error": predict(coef, held["latent"], held["frames"]) / held["step_peak_bytes"] - 1,
        "four_term_fit": {
            "coef_bytes": coef4,
            "heldout_rel_error": predict(coef4, held["latent"], held["frames"]) / held["step_peak_bytes"] - 1,
            "target_step_gib": predict(coef4, *target) / GIB,
        },
        "weights_gib": rows[0]["weights"] / GIB,
        "adam_gib": rows[0]["adam_states"] / GIB,
        "vae_text_encoder_gib": rows[0]["vae_text_encoder"] / GIB,
        "target_step_gib": step / GIB,
        "target_vae_decode_gib": decode / GIB,
        "target_total_gib": total / GIB,
        "target_total_gb": total / 1e9,
        "ratio_to_goal": total / 1e9 / GOAL_GB,
        "ratio_to_official": total / 1e9 / OFFICIAL_GB,
        "target_total_gb_if_attention_materialised": None if materialised is None else materialised / 1e9,
    }
    assert all(math.isfinite(v) for v in (step, total))
    return out


def main(argv=None) -> dict:
    import json

    args = parse(argv)
    torch.set_num_threads(args.threads)
    levers, points, target = args.levers.split(","), pairs(args.points), pairs(args.target)[0]
    log = (lambda r: print(json.dumps(r), file=open(args.log, "a"), flush=True)) if args.log else None  # noqa: SIM115
    if args.measured:
        rows = [json.loads(line) for line in Path(args.measured).read_text().splitlines() if line.strip()]
    else:
        rows = [r for lever in levers for r in measure(args.size, lever, points, args.rank, log)]
    vae_sides = [int(v) for v in args.vae_points.split(",") if v]
    if vae_sides and len(set(vae_sides)) < 2:
        raise SystemExit(
            f"--vae-points {args.vae_points}: give two or more latent sides (the decode's memory is fitted as a line "
            "in s²), or '' to skip the decode"
        )
    vae_rows = (
        {
            itemsize: [(s, vae_decode_peak(s, args.disc_frames, dt)) for s in vae_sides]
            for itemsize, dt in ((4, torch.float32), (2, torch.bfloat16))
        }
        if vae_sides
        else {}
    )
    vae = {}
    for itemsize, measured in vae_rows.items():  # linear in pixels: c0 + a·s² (the mid-block attention runs in SDPA)
        (s0, m0), (s1, m1) = measured[0], measured[-1]
        slope = (m1 - m0) / (s1 * s1 - s0 * s0)
        vae[itemsize] = m0 + slope * (target[0] ** 2 - s0 * s0)
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    with torch.device("meta"):
        config = UNET_CONFIGS[args.size]
        unet = UNetMotionModel.from_unet2d(
            UNet2DConditionModel(**config),
            MotionAdapter(block_out_channels=config["block_out_channels"], **MOTION_CONFIGS[args.size]),
        )
    summary = {lever: lever_summary([r for r in rows if r["lever"] == lever], target, vae, unet) for lever in levers}
    for _lever, s in summary.items():
        print(
            f"{s['flags']:70s} {s['target_total_gb']:6.1f} GB at {target[0] * 8}²×{target[1]} "
            f"({s['ratio_to_goal']:.2f} of the 40 GB goal; "
            f"official ≥ 70 GB); held-out {s['heldout']} error {s['heldout_rel_error']:+.3f}"
        )
    best = min(summary.values(), key=lambda s: s["target_total_gb"])
    result = {
        "ratio": best["ratio_to_goal"],
        "goal": "<= 1 (40 GB at 512x512x16, batch 1; official >= 70 GB)",
        "best": best["flags"],
        "model": f"UNetMotionModel '{args.size}' + LoRA rank {args.rank}, random weights; "
        "step = student fwd+bwd, teacher CFG x2, target, motion head",
        "attention": sorted({op for r in rows for op in r["sdpa"]}),
        "target": f"latent {target[0]}x{target[0]}, {target[1]} frames, batch 1",
        "levers": summary,
        "vae_decode_measured_bytes": vae_rows,
        "measured": rows,
    }
    return finish(
        args, __file__, argv, "peak memory of one training step at 512²×16 from a measured scaling model", result
    )


if __name__ == "__main__":
    main()
