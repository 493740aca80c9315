"""Headless MCM distillation: ``python training/distill.py`` (the embedded toy default) or with flags.

Consistency distillation of a video teacher (AnimateDiff or ModelScope T2V, diffusers) into a LoRA
student, with MCM's disentangled motion loss (a learnable motion head by default) and mixed
trajectories; numbers from the official code (``--help`` lists every flag with its default). The
schedule, DDIM solver, boundary conditions and adapter format come from ``mcm/``, the same code the
ComfyUI nodes sample with, and every checkpoint holds an adapter file the nodes load directly.

    python training/distill.py                         # toy default: CPU, minutes, no downloads
    accelerate launch training/distill.py --teacher PATH --data SHARDS --output-dir runs
    python training/distill.py --config run.yaml       # values from a YAML file (the command line wins)

The flags, their defaults and their precedence are in ``training/config.py`` (the toy preset in
``training/toy/preset.py``). :func:`train` runs in numbered stages: the ones before the loop are in
``training/setup.py``, the trainable state is built by ``training/build.py``; its loop is :func:`micro_step`
(encode, trajectory start, consistency-distillation step, adversarial term, backward) and
:func:`optimizer_step` at each gradient sync, on a :class:`training.state.TrainState` (what a checkpoint
saves); the adapter export and the reports are in ``training/export.py`` and ``training/report.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PROCESS_START = time.time()
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))
if __name__ == "__main__":  # run as a script: a module that imports training.distill by name finds this one
    sys.modules.setdefault("training.distill", sys.modules[__name__])

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from mcm.distill import (  # noqa: E402
    DistillConfig,
    Model,
    distillation_step,
    generated_x0,
    sample_guidance,
    sample_indices,
    use_generated_trajectories,
)
from mcm.motion import ema_update  # noqa: E402
from mcm.schedule import NoiseSchedule  # noqa: E402
from mcm.weights.atomic import atomic_dir  # noqa: E402
from training import toy  # noqa: E402
from training.adversarial import adversarial_summary  # noqa: E402
from training.build import build_state, freeze_teacher  # noqa: E402
from training.checkpoints import CheckpointError, checkpoints, slot_generator  # noqa: E402
from training.config import TrainConfig, parse_args  # noqa: E402
from training.data import DataError, data_stopped  # noqa: E402
from training.export import export_adapter  # noqa: E402
from training.frozen import FrozenParts  # noqa: E402
from training.memory import PartTimer  # noqa: E402
from training.models import NoiseSettings, Teacher, VideoUNet, call_unet, load_teacher  # noqa: E402
from training.report import MetricsLog, describe_plan, processes_in_sync, write_dry_run  # noqa: E402
from training.setup import (  # noqa: E402
    check_teacher,
    make_accelerator,
    open_data,
    resume_point,
    run_folder,
    validation_prompts,
)
from training.state import TrainState  # noqa: E402
from training.validation import Validation, ValidationContext  # noqa: E402

# --- one micro-batch and one optimizer step ----------------------------------------------------------


class NonFiniteLoss(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


@dataclass
class Run:
    """What every micro-step uses besides the :class:`training.state.TrainState`; fixed for the run."""

    args: TrainConfig
    frozen: FrozenParts  # the teacher's VAE and text encoder, placed per call
    schedule: NoiseSchedule
    config: DistillConfig  # the step's numbers: grid, scaling, guidance range, distance, λ_real
    student: Model  # the LoRA student
    teacher: Model  # the same UNet with the adapter disabled
    target: Model  # the EMA student (--ema-target) or the student (called without gradient)
    timer: PartTimer
    log: Callable[..., None]
    uncond: dict[int, torch.Tensor] = field(default_factory=dict)  # the empty prompt's embeddings, by batch size


@dataclass
class Window:
    """What the micro-batches of one accumulation window measured (the consistency loss alone)."""

    losses: list[float] = field(default_factory=list)
    generated: list[float] = field(default_factory=list)
    finite: bool = True

    def add(self, measured: dict) -> None:
        self.finite = self.finite and measured["finite"]
        if measured["finite"]:
            self.losses.append(measured["loss"])
        self.generated.append(measured["generated"])

    def reset(self) -> None:
        self.losses, self.generated, self.finite = [], [], True


def make_run(
    args: TrainConfig, state: TrainState, frozen: FrozenParts, noise: NoiseSettings, timer: PartTimer, log
) -> Run:
    unwrapped = state.unwrapped

    def student_fn(x, t, c):
        return call_unet(state.student, x, t, c)

    def teacher_fn(x, t, c):
        with unwrapped.disable_adapter():
            return call_unet(unwrapped, x, t, c)

    target_fn = VideoUNet(state.ema_student) if state.ema_student is not None else student_fn
    config = DistillConfig(
        num_ddim_timesteps=args.num_ddim_timesteps,
        timestep_scaling=args.timestep_scaling,
        w_min=args.w_min,
        w_max=args.w_max,
        loss_type=args.loss_type,
        huber_c=args.huber_c,
        prediction_type=noise.prediction_type,
        lambda_real=args.lambda_real,
        teacher_cfg_batch=args.teacher_cfg_batch,
    )
    return Run(args, frozen, NoiseSchedule(noise.beta_schedule), config, student_fn, teacher_fn, target_fn, timer, log)


def micro_step(state: TrainState, run: Run, batch: dict, generator: torch.Generator) -> dict:
    """One micro-batch of MCM up to its backward pass (inside ``accelerator.accumulate``). Returns what it
    measured: ``loss`` (the consistency loss alone; None when not finite), ``generated`` (1.0 when the
    trajectory started from the student's own sample), ``finite`` (on every process)."""
    args, accelerator, timer, device = run.args, state.accelerator, run.timer, state.accelerator.device
    b = batch["video"].shape[0]
    # 1. encode: the clips' latents (sampled from the VAE's posterior), the captions' and the empty prompt's embeddings
    with timer("encode"):
        x0 = run.frozen.encode_video(batch["video"], generator)
        cond, pooled = run.frozen.encode_text(batch["caption"])
        if b not in run.uncond:
            run.uncond[b] = run.frozen.encode_text([""] * b)[0]
        uncond = run.uncond[b]
    # 2. the trajectory's start (mixed trajectories): the real latents, or (probability 1 - lambda_real) the
    #    student's one-step sample
    generated = state.global_step >= args.mixed_start_step and use_generated_trajectories(
        run.config.lambda_real, generator
    )
    if generated:
        with timer("student one-step sample"), accelerator.autocast():
            x0 = generated_x0(
                run.student,
                torch.randn(x0.shape, generator=generator).to(device),
                cond,
                run.schedule,
                run.config.prediction_type,
            ).float()
    # 3. consistency distillation on the motion representation: noise x0 to t_{n+k}, one teacher DDIM step
    #    (CFG weight w) to t_n, the loss between the motion heads of the student's output at t_{n+k} and the
    #    target's at t_n
    index = sample_indices(b, run.config.num_ddim_timesteps, generator)
    w = sample_guidance(b, run.config.w_min, run.config.w_max, generator)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    with timer("distillation step (student, teacher x2, target)"), accelerator.autocast():
        out = distillation_step(
            run.student,
            run.teacher,
            x0,
            cond,
            uncond,
            run.schedule,
            run.config,
            index=index.to(device),
            w=w,
            noise=noise,
            target_model=run.target,
            motion=state.head,
            target_motion=state.target_head,
        )
        loss = out["loss"]
        # 4. the adversarial generator term: a few frames of the student's output, decoded and judged by the
        #    discriminator
        adversarial = state.adversary is not None and state.global_step >= args.disc_start_step
        if adversarial:
            state.adversary.generator = generator
            with timer("adversarial: decode frames, discriminator (generator side)"):
                g_term, fake_frames, c_fake = state.adversary.generator_term(out["model_pred"], pooled)
                loss = loss + g_term
    # 5. backward, unless the loss is not finite on some process (the window's optimizer step is then skipped)
    finite = bool(accelerator.gather(torch.isfinite(loss.detach()).float().reshape(1)).min() > 0)  # all processes agree
    if finite:
        with timer("backward"):
            accelerator.backward(loss)
    run.frozen.release()  # the VAE kept placed for the adversarial term's backward
    # 6. the discriminator's loss on this micro-batch joins its window's gradient (its update is in optimizer_step)
    if finite and adversarial and state.adversary.due(state.global_step):
        with timer("discriminator step"), accelerator.autocast():
            discriminator_micro_step(state, batch, fake_frames, c_fake)
    state.micro_batches += 1
    return {
        "loss": out["loss"].detach().float().item() if finite else None,
        "generated": float(generated),
        "finite": finite,
    }


def discriminator_micro_step(state: TrainState, batch: dict, fake_frames: torch.Tensor, c_fake: torch.Tensor) -> None:
    """D's loss on real frames (captioned images, or frames of the same clips) against this micro-batch's fakes."""
    adversary, device = state.adversary, state.accelerator.device
    if state.images is not None:
        real_batch = next(state.images)
        real, c_real = real_batch["image"].to(device), adversary.text(real_batch["caption"])
    else:
        real, c_real = adversary.real_from_video(batch["video"].to(device)), c_fake
    adversary.accumulate(real, c_real, fake_frames, c_fake)


def optimizer_step(state: TrainState, run: Run, window: Window) -> dict | None:
    """At a gradient sync: clip, step the optimizer and its schedule, one discriminator update, the EMA updates.
    Returns the step's log row, or None when the window had a non-finite loss or gradient (the step is skipped;
    :class:`NonFiniteLoss` after ``--max-nonfinite-steps`` such steps in a row)."""
    args, accelerator = run.args, state.accelerator
    with run.timer("optimizer"):
        norm = accelerator.clip_grad_norm_(state.lora_params, args.max_grad_norm) if args.max_grad_norm > 0 else None
        g_lr = state.optimizer.param_groups[0]["lr"]  # the lr this step uses
        if window.finite and (norm is None or torch.isfinite(torch.as_tensor(norm)).item()):
            state.optimizer.step()
            state.scheduler.step()
        else:
            window.finite = False
            if (
                norm is not None and accelerator.scaler is not None
            ):  # fp16: the clip unscaled the gradients; without the optimizer's step the scaler would refuse
                accelerator.scaler.update()  # the next unscale (and keep its scale)
        state.optimizer.zero_grad(set_to_none=True)
    if state.adversary is not None:
        with run.timer("discriminator step"):
            state.adversary.update(state.global_step)  # one D update per optimizer step (a no-op outside its windows)
    if not window.finite:
        skip_step(state, run, window)
        return None
    state.nonfinite_run = 0
    if isinstance(state.target_head, torch.nn.Module):
        ema_update(state.target_head, accelerator.unwrap_model(state.head), args.ema_decay)
    if state.ema_student is not None:
        ema_update(state.ema_student, state.unwrapped, args.ema_target_decay)
    state.global_step += 1
    marks = {1: "start", (args.max_train_steps + 1) // 2: "middle", args.max_train_steps: "end"}
    if state.global_step in marks:  # the learning rates in effect at the start, middle and end (summary.json)
        state.lr_seen[marks[state.global_step]] = {
            "step": state.global_step,
            "generator": g_lr,
            "discriminator": state.adversary.last.get("d_lr") if state.adversary else None,
        }
    device = accelerator.device
    mean_loss = accelerator.reduce(
        torch.tensor([sum(window.losses) / len(window.losses)], device=device), "mean"
    ).item()
    row = {"loss": mean_loss, "generated": sum(window.generated) / len(window.generated)}
    window.reset()
    return row


def skip_step(state: TrainState, run: Run, window: Window) -> None:
    """A window with a non-finite loss or gradient: no step, a warning; too many in a row stop the run with a
    checkpoint."""
    args = run.args
    state.nonfinite_run += 1
    window.reset()
    state.mark_sync()
    run.log(
        f"warning: non-finite loss or gradient at step {state.global_step + 1}: step skipped ({state.nonfinite_run} "
        "in a row)"
    )
    if state.nonfinite_run >= args.max_nonfinite_steps:
        state.checkpoint(run.log)
        raise NonFiniteLoss(
            f"{state.nonfinite_run} steps in a row had a non-finite loss or gradient (--max-nonfinite-steps "
            f"{args.max_nonfinite_steps}); the last good state (step {state.global_step}) is in "
            f"{state.run_dir / f'checkpoint-{state.global_step}'}; lower the learning rate or try --mixed-precision "
            "bf16 / no"
        )


@dataclass
class Reports:
    """Where each optimizer step is reported: the progress bar, ``metrics.csv`` (+ TensorBoard) and validation."""

    progress: tqdm
    metrics: MetricsLog
    validation: Validation

    def step(self, state: TrainState, row: dict) -> None:
        skipped_total = sum(state.skip_counts().values())
        lr = state.scheduler.get_last_lr()[0]
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{row['loss']:.4g}", lr=f"{lr:.2e}", skipped=skipped_total)
        validated = self.validation(state.global_step, state.seconds())  # every --validation-steps, main process only
        values = {**row, "lr": lr, "skipped": skipped_total, "seconds": state.seconds()}
        self.metrics.write(
            state.global_step, values, state.adversary.last if state.adversary is not None else {}, validated
        )

    def close(self) -> None:
        self.progress.close()
        self.metrics.close()


def train(args: TrainConfig, teacher: Teacher | None = None) -> Path:
    """Run the distillation; ``teacher`` overrides ``--teacher`` (tests pass a prepared one)."""
    # 1. the accelerator and the teacher: cheap checks before any data is touched
    accelerator, weight_dtype = make_accelerator(args)
    try:
        return run_stages(args, teacher, accelerator, weight_dtype)
    finally:  # tear the process group down: its communication threads must not outlive it at exit (an abort)
        accelerator.end_training()


def run_stages(args: TrainConfig, teacher: Teacher | None, accelerator, weight_dtype) -> Path:
    """The stages of :func:`train` after the accelerator: teacher, resume point, data, run folder, models, loop,
    export."""
    log = (lambda *a: print(*a, flush=True)) if accelerator.is_main_process else (lambda *a: None)
    teacher = teacher or load_teacher(args.teacher, args.teacher_kind, args.motion_adapter, args.unet_checkpoint)
    noise = check_teacher(args, teacher)  # one prediction type and one schedule for the run
    # 2. the resume point: its verified checkpoint, trainer state (data positions) and every process's RNG state
    resume_from, resumed, rngs = resume_point(args, accelerator, log)
    # 3. data: one global stream; this process takes every world-th block of train-batch-size samples
    data_root, loader = open_data(args, accelerator, resumed)
    # 4. the run folder, once the inputs are known to be usable; config.yaml holds every resolved value
    run_dir = run_folder(args, accelerator, resume_from, resumed)
    log(describe_plan(args))
    log(f"run folder: {run_dir}")
    log(f"teacher output {noise.prediction_type}, betas {noise.beta_schedule} ({noise.source})")
    # 5. models and optimizers: the student is the teacher + LoRA, the teacher the same UNet with the adapter disabled
    freeze_teacher(teacher, weight_dtype, args.gradient_checkpointing)
    frozen = FrozenParts(teacher, accelerator.device, args.offload_frozen)  # VAE and text encoder, placed per call
    state = build_state(args, accelerator, teacher, frozen, loader, run_dir, resumed)
    timer = PartTimer(args.dry_run)
    run = make_run(args, state, frozen, noise, timer, log)
    if resume_from is not None:
        state.load(resume_from, resumed, rngs, log)
    state.mark_sync()
    reports = make_reports(state, frozen, data_root, log)
    # 6. the loop: micro-batches (each its own slot of random draws) until max-train-steps optimizer steps
    window, row = loop(state, run, reports, data_root)
    # 7. export (final/ and the run folder's adapter.safetensors) and summary.json, or the dry run's report
    in_sync, reasons = processes_in_sync(state, log), state.skip_counts()
    if args.dry_run:
        return write_dry_run(state, timer, window.losses or (row or {}).get("loss"), log)
    if accelerator.is_main_process:
        export_and_summarize(state, run, in_sync, reasons)
    return run_dir


def make_reports(state: TrainState, frozen: FrozenParts, data_root, log) -> Reports:
    """The progress bar, ``metrics.csv`` (from the resume point on) and validation of this run."""
    args, accelerator, run_dir = state.args, state.accelerator, state.run_dir
    metrics = MetricsLog(run_dir, state.global_step, accelerator.is_main_process)
    validation = Validation(
        ValidationContext(
            args=args,
            teacher=state.teacher,
            student=state.unwrapped,
            frozen=frozen,
            prompts=validation_prompts(args) if args.validation_steps > 0 and accelerator.is_main_process else [],
            run_dir=run_dir,
            data_root=data_root,
            device=accelerator.device,
            autocast=accelerator.autocast,
            tensorboard=metrics.tb,
            log=log,
            is_main=accelerator.is_main_process,
        )
    )
    progress = tqdm(
        total=args.max_train_steps,
        initial=state.global_step,
        disable=not accelerator.is_main_process,
        desc="distilling",
        dynamic_ncols=True,
    )
    return Reports(progress, metrics, validation)


def loop(state: TrainState, run: Run, reports: Reports, data_root) -> tuple[Window, dict | None]:
    """Micro-batches until ``--max-train-steps`` optimizer steps, with checkpoints; Ctrl-C writes one, and so
    does a data source that cannot go on. Returns the last window and the last step's log row."""
    args, accelerator, timer, log = run.args, state.accelerator, run.timer, run.log
    rank, world = accelerator.process_index, accelerator.num_processes
    window, row = Window(), None
    try:
        while state.global_step < args.max_train_steps:
            generator = slot_generator(args.seed, state.micro_batches * world + rank)
            with timer("data"):
                batch = next(state.loader)
                state.count_skips(batch)
            with accelerator.accumulate(*state.modules):
                window.add(micro_step(state, run, batch, generator))
                row = optimizer_step(state, run, window) if accelerator.sync_gradients else None
                if accelerator.sync_gradients:
                    state.mark_sync()  # what a checkpoint records, also one written inside the next window
            if row is None:  # inside an accumulation window, or a skipped step
                continue
            reports.step(state, row)
            if args.dry_run:
                break
            if state.global_step % args.checkpointing_steps == 0 or state.global_step == args.max_train_steps:
                state.checkpoint(log)
    except KeyboardInterrupt:
        save_on_interrupt(state, log)
        raise
    except (DataError, RuntimeError) as exc:  # the data cannot go on (e.g. a loader worker died): keep what was trained
        stopped, between_steps = data_stopped(exc, data_root)
        if stopped is None:
            raise
        # one process alone may see it: a checkpoint (collective) only where every process is here
        written = (state.run_dir / f"checkpoint-{state.global_step}").exists()
        if between_steps and world == 1 and state.global_step and not written:
            state.checkpoint(log)
        raise stopped from None
    finally:
        reports.close()
    return window, row


def save_on_interrupt(state: TrainState, log) -> None:
    """Ctrl-C: write a checkpoint of the last completed step; Ctrl-C again abandons it. The log says only what is
    on disk: the checkpoint saved, or that it was not, and where a resume will continue."""
    name = f"checkpoint-{state.global_step}"
    folder = state.run_dir / name
    if folder.exists():
        log(f"\ninterrupted at step {state.global_step}; {name} is on disk already: {resume_hint(state.run_dir)}")
        return
    log(f"\ninterrupted at step {state.global_step}: writing {name} (Ctrl-C again abandons it)")
    try:
        state.save(log)
    except KeyboardInterrupt:
        if folder.exists():  # the second Ctrl-C came after the rename: the checkpoint is complete
            log(f"interrupted again, after {name} was saved: {resume_hint(state.run_dir)}")
        else:
            leftover = sorted(p.name for p in state.run_dir.glob(f".{name}.*"))
            note = f" (the temporary {', '.join(leftover)} is never read; remove it)" if leftover else ""
            log(f"interrupted again: {name} was not saved{note}; {resume_hint(state.run_dir)}")
        raise
    except CheckpointError as exc:  # a full disk: the earlier checkpoints are intact
        log(f"error: {exc}; {resume_hint(state.run_dir)}")
        if state.args.on_save_error == "stop":
            raise
        return
    log(f"saved {folder}: {resume_hint(state.run_dir)}" if folder.exists() else f"{name} was not saved")


def resume_hint(run_dir: Path) -> str:
    """Where ``--resume`` continues this run: its newest complete checkpoint, or nowhere."""
    found = checkpoints(run_dir)
    if not found:
        return "this run has no checkpoint; a new run starts from the beginning"
    return f"--resume {run_dir} continues from {found[-1].name}"


def export_and_summarize(state: TrainState, run: Run, in_sync: bool, reasons: dict) -> None:
    """``final/`` (adapter + PEFT folder), the run folder's ``adapter.safetensors`` (never replaced), the toy
    evaluation (toy default) and ``summary.json``; main process only."""
    args, run_dir, adversary, log = run.args, state.run_dir, state.adversary, run.log
    final = run_dir / "final" if not (run_dir / "final").exists() else run_dir / f"final-{state.global_step}"
    with atomic_dir(final) as tmp:
        export_adapter(state.unwrapped, state.teacher, args, state.global_step, tmp, state.seconds())
    adapter_path = final / "adapter.safetensors"
    if not (run_dir / "adapter.safetensors").exists():  # the newcomer's shortcut, copied whole or not at all
        tmp_adapter = run_dir / ".adapter.safetensors.tmp"
        shutil.copyfile(adapter_path, tmp_adapter)
        os.replace(tmp_adapter, run_dir / "adapter.safetensors")
        adapter_path = run_dir / "adapter.safetensors"
    summary = {
        "steps": state.global_step,
        "skipped_samples": sum(reasons.values()),
        "skipped_by_reason": reasons,
        "seconds": round(state.seconds(), 1),
        "num_processes": state.accelerator.num_processes,
        "processes_in_sync": in_sync,
        "adapter": str(adapter_path),
        "peft": str(final / "peft"),
        "optimizer_steps": state.global_step,
        "micro_batches": state.micro_batches,
        "discriminator_updates": adversary.updates if adversary else 0,
        "discriminator_updates_skipped": adversary.skipped if adversary else 0,
        "learning_rates": state.lr_seen,
    }
    if adversary is not None:
        summary["discriminator"] = adversarial_summary(run_dir / "metrics.csv")
    if reasons:
        log(f"skipped samples by reason: {json.dumps(reasons)}")
    if args.toy_eval:
        summary["metrics"] = str(toy.evaluate_run(args, state.unwrapped, run.frozen, run_dir, log, PROCESS_START))
    summary["wall_seconds"] = round(time.time() - PROCESS_START, 1)
    tmp_summary = run_dir / ".summary.json.tmp"
    tmp_summary.write_text(json.dumps(summary, indent=2))
    os.replace(tmp_summary, run_dir / "summary.json")
    log(f"done in {summary['wall_seconds']:.0f} s wall (from start-up, evaluation included): {json.dumps(summary)}")


def main(argv=None) -> int:
    """``python training/distill.py``: exit 0 when done, 2 on bad input, 3 when a run stopped with a checkpoint
    (non-finite losses, a checkpoint that could not be written), 130 on Ctrl-C."""
    cfg = parse_args(argv)
    if cfg.plan:
        print(describe_plan(cfg))
        return 0
    try:
        train(cfg)
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (NonFiniteLoss, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
