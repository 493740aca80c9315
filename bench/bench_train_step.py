"""Training-step breakdown: one distillation step over the sum of its necessary passes.

usage:
    OMP_NUM_THREADS=1 python bench/bench_train_step.py [--teacher training/toy/teacher] [--resolution 32] [--frames 8]
        [--batch 2] [--rank 8] [--reps 5] [--device cpu]
    # real size (GPU): --teacher path/to/sd15 --motion-adapter path/to/motion-adapter --resolution 512 --frames 16
    #     --batch 1 --rank 64

One step as ``training/distill.py`` runs it on real-video trajectories (``mcm.distill.distillation_step``
with the LoRA student, the teacher = the same UNet with the adapter disabled, the target = the student
without gradients, the learnable motion head and its EMA copy; the adversarial generator term on
``--disc-frames`` decoded frames; one backward; the LoRA optimizer step; the discriminator step with the
``tiny`` DINOv2 backbone). Each necessary pass alone, on the same inputs: student forward + backward (with
the motion head), teacher CFG forward (cond and uncond), target forward, sparse decode + the discriminator
on the fakes (generator side, forward + backward to the latents), discriminator step (forward + backward of
the heads on real and fake frames), LoRA optimizer step. All interleaved after a warm-up;
``ratio`` = median CPU seconds of the step / sum of the passes' medians (goal ≤ 1.15). Data loading, VAE
encoding and the student's one-step sample of mixed trajectories (half the steps) are outside both.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, finish, interleaved, medians  # noqa: E402
from mcm.boundary import append_dims, consistency_output, predicted_x0  # noqa: E402
from mcm.distill import DistillConfig, distillation_step  # noqa: E402
from mcm.motion import make_motion_representation  # noqa: E402
from mcm.schedule import NoiseSchedule  # noqa: E402
from mcm.solver import solver_timesteps  # noqa: E402
from training.adversarial import Adversary  # noqa: E402
from training.models import call_unet, load_teacher, make_student  # noqa: E402


def parse(argv):

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--teacher",
        default=str(ROOT / "training" / "toy" / "teacher"),
        help="as training/distill.py --teacher (tiny-animatediff for tests)",
    )
    p.add_argument("--motion-adapter", default=None)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--disc-frames", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--no-record", action="store_true")
    return p.parse_args(argv)


def build(args):
    """Teacher, LoRA student, motion heads, adversary, optimizer and one batch of inputs."""
    import torch

    device = torch.device(args.device)
    teacher = load_teacher(args.teacher, "animatediff", args.motion_adapter)
    for m in (teacher.unet, teacher.vae, teacher.text_encoder):
        m.requires_grad_(False).to(device)
    student = make_student(teacher, args.rank, float(args.rank))
    head, target_head = make_motion_representation("learn", teacher.latent_channels)
    head, target_head = head.to(device), target_head.to(device)
    params = [p for p in student.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    disc_args = SimpleNamespace(
        disc_layers="2,5,8,11",
        disc_backbone="tiny",
        lr_scheduler="constant",
        lr_warmup_steps=0,
        disc_gp=1e-5,
        disc_frames=args.disc_frames,
        disc_loss="wgan",
        disc_weight=1.0,
        disc_r1=0.0,
        disc_augment=True,
    )
    generator = torch.Generator().manual_seed(0)
    adversary = Adversary(disc_args, teacher, device, SimpleNamespace(num_processes=1), 1e-4, 1000, generator)
    g = torch.Generator().manual_seed(1)
    side = args.resolution // teacher.vae_downsample
    b = args.batch
    with torch.no_grad():
        out = teacher.text_encoder(teacher.tokenizer(["a red square moving left slowly"] * b).to(device))
        cond, pooled = out[0], out.pooler_output.float()
        uncond = teacher.text_encoder(teacher.tokenizer([""] * b).to(device))[0]
    inputs = SimpleNamespace(
        x0=torch.randn(b, teacher.latent_channels, args.frames, side, side, generator=g).to(device),
        noise=torch.randn(b, teacher.latent_channels, args.frames, side, side, generator=g).to(device),
        index=torch.full((b,), 30, dtype=torch.long, device=device),
        w=torch.full((b,), 5.0, dtype=torch.float64),
        cond=cond,
        uncond=uncond,
        pooled=pooled,
        c_real=pooled.repeat_interleave(args.disc_frames, dim=0),
        real=torch.rand(b * args.disc_frames, 3, args.resolution, args.resolution, generator=g).to(device) * 2 - 1,
    )
    return teacher, student, head, target_head, optimizer, adversary, inputs


def make_step(args):
    """``(step, passes)``: the whole distillation step and each necessary pass, as callables."""
    import torch

    teacher, student, head, target_head, optimizer, adversary, a = build(args)
    schedule, config = NoiseSchedule("scaled_linear"), DistillConfig()
    student_fn = lambda x, t, c: call_unet(student, x, t, c)  # noqa: E731

    def teacher_fn(x, t, c):
        with student.disable_adapter():
            return call_unet(student, x, t, c)

    def step():
        out = distillation_step(
            student_fn,
            teacher_fn,
            a.x0,
            a.cond,
            a.uncond,
            schedule,
            config,
            index=a.index,
            w=a.w,
            noise=a.noise,
            motion=head,
            target_motion=target_head,
        )
        g_term, fake, c_fake = adversary.generator_term(out["model_pred"], a.pooled)
        (out["loss"] + g_term).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        adversary.discriminator_step(a.real, a.c_real, fake, c_fake, 0)

    t_start, t_end = solver_timesteps(a.index)
    x_t = a.noise.clone()
    stored = {}

    alpha, sigma = (append_dims(v, x_t.ndim).to(x_t) for v in schedule.alpha_sigma(t_start))

    def student_pass():  # as the trainer: ε → x̂0 → the consistency output
        pred = consistency_output(x_t, predicted_x0(student_fn(x_t, t_start, a.cond), x_t, alpha, sigma), t_start)
        head(pred).float().square().mean().backward()

    @torch.no_grad()
    def teacher_pass():
        teacher_fn(x_t, t_start, a.cond)
        teacher_fn(x_t, t_start, a.uncond)

    @torch.no_grad()
    def target_pass():
        target_head(student_fn(x_t, t_end, a.cond))

    def generator_pass():
        latents = a.x0.clone().requires_grad_(True)
        g_term, fake, c_fake = adversary.generator_term(latents, a.pooled)
        g_term.backward()
        stored["fake"], stored["c_fake"] = fake.detach(), c_fake

    def discriminator_pass():
        adversary.discriminator_step(a.real, a.c_real, stored["fake"], stored["c_fake"], 0)

    def optimizer_pass():
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    passes = {
        "student forward+backward": student_pass,
        "teacher CFG forward (cond, uncond)": teacher_pass,
        "target forward": target_pass,
        "sparse decode + discriminator on fakes (forward+backward)": generator_pass,
        "discriminator step": discriminator_pass,
        "LoRA optimizer step": optimizer_pass,
    }
    return step, passes


def main(argv=None) -> dict:
    import torch

    args = parse(argv)
    torch.set_num_threads(args.threads)
    step, passes = make_step(args)
    times = interleaved({"step": step, **passes}, args.reps, args.device)
    wall, cpu = medians(times)
    total = sum(cpu[k] for k in passes)
    result = {
        "ratio": cpu["step"] / total,
        "goal": "<= 1.15",
        "ratio_wall": wall["step"] / sum(wall[k] for k in passes),
        "teacher": f"{args.teacher} (LoRA rank {args.rank} on the official targets)",
        "input": f"batch {args.batch}, {args.frames} frames, {args.resolution}x{args.resolution} px, "
        f"{args.disc_frames} frames decoded per clip",
        "reps": args.reps,
        "median_cpu_seconds": {"step": cpu["step"], "sum of passes": total, **{k: cpu[k] for k in passes}},
        "median_wall_seconds": wall,
    }
    return finish(args, __file__, argv, "training step vs the sum of its necessary passes", result)


if __name__ == "__main__":
    main()
