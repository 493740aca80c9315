"""Headless MCM distillation: ``python training/distill.py`` (the embedded toy default) or with flags.

Consistency distillation of a video teacher (AnimateDiff or ModelScope T2V, diffusers) into a LoRA
student, with MCM's disentangled motion loss (a learnable motion head by default) and mixed
trajectories; numbers from the official code (``--help`` lists every flag with its default). The
schedule, DDIM solver, boundary conditions and adapter format come from ``mcm/``, the same code the
ComfyUI nodes sample with, and every checkpoint holds an adapter file the nodes load directly.

    python training/distill.py                         # toy default: CPU, minutes, no downloads
    accelerate launch training/distill.py --teacher PATH --data SHARDS --output-dir runs
    python training/distill.py --config run.yaml       # values from a YAML file (the command line wins)

The flags, their defaults, the toy preset and their precedence are in ``training/config.py``.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

PROCESS_START = time.time()
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))
if __name__ == "__main__":  # run as a script: training.config.main imports this module by name; let it find this one
    sys.modules.setdefault("training.distill", sys.modules[__name__])

import torch  # noqa: E402

import mcm  # noqa: E402
from mcm.distill import (  # noqa: E402
    DistillConfig,
    distillation_step,
    generated_x0,
    sample_guidance,
    sample_indices,
    use_generated_trajectories,
)
from mcm.motion import ema_update, make_motion_representation  # noqa: E402
from mcm.schedule import NoiseSchedule  # noqa: E402
from mcm.weights.io import atomic_dir  # noqa: E402
from training.checkpoints import CheckpointError, truncate_metrics  # noqa: E402
from training.config import TOY_DEFAULTS, TOY_TEACHER, build_parser, check_resume, describe_plan, main, parse_args  # noqa: E402,F401
from training.config import toy_clip_frames, write_config  # noqa: E402

# --- run folder and checkpoints ----------------------------------------------------------------------


def toy_cache() -> Path:
    """Where the synthetic toy data is written once and reused (``MCM_TOY_DATA`` overrides it)."""
    return Path(os.environ.get("MCM_TOY_DATA", Path.home() / ".cache" / "comfyui-mcm" / "toy-videos"))


def new_run_dir(output_dir: str, run_name: str | None) -> Path:
    parent = Path(output_dir)
    parent.mkdir(parents=True, exist_ok=True)
    name = run_name or dt.datetime.now().strftime("run-%Y%m%d-%H%M%S")
    candidate, n = parent / name, 1
    while candidate.exists():  # never reuse a folder that holds an earlier run
        n += 1
        candidate = parent / f"{name}-{n}"
    candidate.mkdir()
    return candidate


def adapter_meta(teacher, args, step: int, seconds: float):
    """The adapter's metadata (:class:`mcm.weights.AdapterMeta`): what the nodes and validation sample with."""
    from mcm.weights import AdapterMeta
    from training.models import noise_settings

    noise = noise_settings(teacher, args.prediction_type, args.beta_schedule)  # the same resolution train() uses
    return AdapterMeta(
        base=teacher.base,
        motion_module=args.motion_module_version if teacher.kind == "animatediff" else None,
        lora_rank=args.lora_rank,
        lora_alpha=float(args.lora_alpha),
        beta_schedule=noise.beta_schedule,
        timestep_scaling=float(args.timestep_scaling),
        num_ddim_timesteps=args.num_ddim_timesteps,
        prediction_type=noise.prediction_type,
        temporal_norm="frames",  # diffusers' motion modules normalise over all frames
        style=args.style,
        name=args.adapter_name or f"{args.style} (step {step})",
        training={
            "teacher": str(args.teacher), "teacher_kind": args.teacher_kind, "data": str(args.data), "step": step,
            "motion_repr": args.motion_repr, "lambda_real": args.lambda_real, "w": [args.w_min, args.w_max],
            "loss": args.loss_type, "lr": args.learning_rate, "frames": args.num_frames, "resolution": args.resolution,
            "seed": args.seed, "seconds": round(seconds, 1), "comfyui_mcm": mcm.__version__,
        },
    )  # fmt: skip


def export_adapter(student, teacher, args, step: int, folder: Path, seconds: float) -> None:
    """The node-compatible MCM adapter (``adapter.safetensors``) and the PEFT folder (``peft/``)."""
    from peft import get_peft_model_state_dict

    from mcm.weights import Adapter, export_peft, parse_lora_tensors, save_adapter

    state = {k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(student).items()}
    layers = parse_lora_tensors(state, f"student at step {step}", lambda p, r: float(args.lora_alpha))
    adapter = Adapter(meta=adapter_meta(teacher, args, step, seconds), layers=layers, source=str(folder / "adapter.safetensors"))
    save_adapter(adapter, folder / "adapter.safetensors")
    export_peft(adapter, folder / "peft")


# --- training ----------------------------------------------------------------------------------------


def make_optimizer(params, args, lr: float, use_cuda: bool):
    use_8bit = args.use_8bit_adam
    if use_8bit is None:
        try:
            import bitsandbytes  # noqa: F401

            use_8bit = use_cuda
        except ImportError:
            use_8bit = False
    if use_8bit:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, betas=(0.9, 0.999), weight_decay=args.adam_weight_decay, eps=1e-8)
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=args.adam_weight_decay, eps=1e-8)


ADVERSARIAL_COLUMNS = ("g_loss", "d_loss", "real_logit", "fake_logit", "d_accuracy", "gp", "gp_weight")
VALIDATION_COLUMNS = ("val_consistency_error",)  # filled on --validation-steps steps (training/validation.py)


class MetricsLog:
    """``metrics.csv``, one row per optimizer step (a resumed run first drops the rows logged after its
    checkpoint), and TensorBoard scalars where TensorBoard is installed; only the main process writes."""

    COLUMNS = ("step", "loss", "lr", "generated_trajectory_fraction", "skipped_samples", "seconds", *ADVERSARIAL_COLUMNS,
               *VALIDATION_COLUMNS)  # fmt: skip

    def __init__(self, run_dir: Path, resumed_step: int, enabled: bool = True):
        self.path, self.file, self.writer, self.tb = run_dir / "metrics.csv", None, None, None
        if not enabled:
            return
        truncate_metrics(self.path, resumed_step)
        self.file = open(self.path, "a", newline="")
        self.writer = csv.writer(self.file)
        if self.path.stat().st_size == 0:
            self.writer.writerow(self.COLUMNS)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except Exception:  # noqa: BLE001 - TensorBoard is optional
            self.tb = None

    def write(self, step: int, loss: float, lr: float, generated: float, skipped: int, seconds: float, adversarial: dict,
              validation: dict | None = None) -> None:  # fmt: skip
        validation = validation or {}
        if self.writer:
            self.writer.writerow([step, f"{loss:.6g}", f"{lr:.6g}", generated, skipped, round(seconds, 2)]
                                 + [f"{adversarial[k]:.6g}" if k in adversarial else "" for k in ADVERSARIAL_COLUMNS]
                                 + [f"{validation[k]:.6g}" if k in validation else "" for k in VALIDATION_COLUMNS])  # fmt: skip
            self.file.flush()
        if self.tb:
            for key, value in validation.items():
                self.tb.add_scalar(f"validation/{key}", value, step)
            self.tb.add_scalar("loss/consistency", loss, step)
            for key, value in adversarial.items():
                self.tb.add_scalar(f"adversarial/{key}", value, step)
            self.tb.add_scalar("lr", lr, step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()


class NonFiniteLoss(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


def train(args, teacher=None) -> Path:
    """Run the distillation; ``teacher`` (a :class:`training.models.Teacher`) overrides ``--teacher``
    (tests pass a prepared one)."""
    from accelerate import Accelerator
    from accelerate.utils import gather_object, set_seed
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from training.checkpoints import CheckpointError, check_layout, read_state, resolve_resume, set_aside_newer, set_rng_state, slot_generator
    from training.data import Batches, DataError, VideoClips, data_stopped, write_toy_shards
    from training.memory import FrozenParts, PartTimer, frozen_dtype
    from training.models import VideoUNet, call_unet, load_teacher, make_student, noise_settings
    from training.validation import Validation

    mixed = args.mixed_precision or ("fp16" if torch.cuda.is_available() else "no")
    weight_dtype = frozen_dtype(args.frozen_dtype, mixed)
    accelerate_on_cpu = not (torch.cuda.is_available() or torch.backends.mps.is_available())  # multi-process CPU runs use gloo
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=mixed, cpu=accelerate_on_cpu)
    set_seed(args.seed + accelerator.process_index)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes

    log = (lambda *a: print(*a, flush=True)) if accelerator.is_main_process else (lambda *a: None)

    # the teacher first: cheap checks before any data is touched
    teacher = teacher or load_teacher(args.teacher, args.teacher_kind, args.motion_adapter, args.unet_checkpoint)
    if args.resolution % (teacher.vae_downsample * 4):
        raise ValueError(f"--resolution {args.resolution}: must be a multiple of {teacher.vae_downsample * 4} for this teacher")
    max_frames = teacher.max_frames
    if max_frames is not None and args.num_frames > max_frames:
        raise ValueError(f"--num-frames {args.num_frames}: this teacher's motion module takes at most {max_frames} frames")
    noise = noise_settings(teacher, args.prediction_type, args.beta_schedule)  # one prediction type and one schedule for the run

    # where a resumed run continues: its checkpoint, the data positions and the RNG states of each process
    resume_from, state, rngs = None, {}, None
    if args.resume:
        resume_from = resolve_resume(args.resume, args.output_dir, args.run_name, log)  # verified; nothing moved yet
        state, rngs = read_state(resume_from)
        check_resume(args, resume_from, state)  # a value an exact resume depends on may not change
        check_layout(state, resume_from, world, args.train_batch_size, args.gradient_accumulation_steps, args.seed)

    # data: one global stream; this process takes every world-th block of train-batch-size samples
    data_root = args.data
    if data_root == "toy":
        cache = toy_cache()
        frames = toy_clip_frames(args.num_frames)
        data_root = write_toy_shards(cache / f"{args.resolution}px-{frames}f-seed{args.seed}", frames=frames,
                                     size=args.resolution, seed=args.seed)  # fmt: skip
    dataset = VideoClips(data_root, args.num_frames, args.frame_interval, args.resolution, args.crop, args.seed, rank, world,
                         block=args.train_batch_size, start=state.get("data_positions", [0] * world)[rank])  # fmt: skip
    loader = Batches(dataset, args.train_batch_size, args.num_workers)

    # the run folder, once the inputs are known to be usable
    if resume_from is not None:
        run_dir = resume_from.parent  # the newer checkpoints are set aside once the checkpoint has loaded
    else:
        run_dir = new_run_dir(args.output_dir, args.run_name) if accelerator.is_main_process else None
        run_dir = Path(gather_object([str(run_dir) if run_dir else ""])[0]) if world > 1 else run_dir
    if accelerator.is_main_process:  # every resolved value; --config on it repeats the run
        write_config(args, run_dir, state["global_step"] if resume_from is not None else None)
    log(describe_plan(args))
    log(f"run folder: {run_dir}")
    log(f"teacher output {noise.prediction_type}, betas {noise.beta_schedule} ({noise.source})")

    # models: the student is the teacher + LoRA; the teacher is the same UNet with the adapter disabled
    for m in (teacher.unet, teacher.vae, teacher.text_encoder):
        m.requires_grad_(False)
        if weight_dtype != torch.float32:
            m.to(dtype=weight_dtype)
    if args.gradient_checkpointing:
        teacher.unet.enable_gradient_checkpointing()
    student = make_student(teacher, args.lora_rank, args.lora_alpha)
    lora_params = [p for p in student.parameters() if p.requires_grad]
    for p in lora_params:  # trainable weights stay fp32 whatever the frozen dtype
        p.data = p.data.float()
    head, target_head = make_motion_representation(args.motion_repr, teacher.latent_channels)
    head_params = list(head.parameters()) if isinstance(head, torch.nn.Module) else []
    total_batch = args.train_batch_size * world * args.gradient_accumulation_steps
    lr = args.learning_rate * (total_batch / 128 if args.scale_lr else 1.0)
    optimizer = make_optimizer([{"params": lora_params}, {"params": head_params}], args, lr, torch.cuda.is_available())
    scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps * world,
                              num_training_steps=args.max_train_steps * world)  # fmt: skip
    modules = [student] + ([head] if head_params else [])
    prepared = accelerator.prepare(*modules, optimizer, scheduler)
    student_p, head_p = prepared[0], (prepared[1] if head_params else head)
    optimizer, scheduler = prepared[-2], prepared[-1]
    if not args.offload_frozen:
        for m in (teacher.vae, teacher.text_encoder):
            m.to(device)
    if isinstance(target_head, torch.nn.Module):
        target_head.to(device)
    ema_student = None
    if args.ema_target:
        ema_student = copy.deepcopy(accelerator.unwrap_model(student_p)).requires_grad_(False)

    frozen = FrozenParts(teacher, device, args.offload_frozen)  # VAE and text encoder, placed per call
    encode_text, encode_video = frozen.encode_text, frozen.encode_video
    adversary, images = None, None
    if args.disc:
        from training.adversarial import Adversary
        from training.data import ImageCaptions, write_toy_image_shards

        disc_lr = args.disc_lr * (total_batch * args.disc_frames / 128 if args.scale_lr else 1.0)
        adversary = Adversary(args, frozen, device, accelerator, disc_lr, args.max_train_steps, slot_generator(args.seed, rank))
        if args.disc_real == "images":
            root = args.disc_images
            if root is None:
                raise ValueError("--disc-real images needs --disc-images (a folder or *.tar shards of captioned images)")
            if root == "toy":
                root = write_toy_image_shards(toy_cache() / f"images-{args.resolution}px-seed{args.seed}", size=args.resolution, seed=args.seed)
            per_batch = args.train_batch_size * args.disc_frames
            image_set = ImageCaptions(root, args.resolution, args.seed, rank, world, block=per_batch,
                                      start=state.get("image_positions", [0] * world)[rank])  # fmt: skip
            images = Batches(image_set, per_batch, min(args.num_workers, 2))

    schedule = NoiseSchedule(noise.beta_schedule)
    config = DistillConfig(args.num_ddim_timesteps, args.timestep_scaling, args.w_min, args.w_max, args.loss_type,
                           args.huber_c, noise.prediction_type, args.lambda_real, args.teacher_cfg_batch)  # fmt: skip
    unwrapped = accelerator.unwrap_model(student_p)

    def student_fn(x, t, c):
        return call_unet(student_p, x, t, c)

    def teacher_fn(x, t, c):
        with unwrapped.disable_adapter():
            return call_unet(unwrapped, x, t, c)

    target_fn = VideoUNet(ema_student) if ema_student is not None else student_fn

    global_step, micro_done, skip_reasons, start_time = 0, 0, {}, time.time()
    if resume_from is not None:
        load_checkpoint(resume_from, accelerator, student_p, head_p, target_head, ema_student, optimizer, scheduler, adversary)
        if accelerator.is_main_process:
            set_aside_newer(resume_from, log)
        global_step, micro_done, skip_reasons = state["global_step"], state.get("micro_batches", 0), state.get("skip_reasons", {})
        if rngs is not None:
            set_rng_state(rngs[rank])
        log(f"resumed from {resume_from} at step {global_step} (data position {state.get('data_positions')})")

    metrics = MetricsLog(run_dir, global_step, accelerator.is_main_process)
    validation = Validation(SimpleNamespace(args=args, teacher=teacher, student=unwrapped, run_dir=run_dir, data_root=data_root,
                                            device=device, encode_text=encode_text, encode_video=encode_video, log=log,
                                            autocast=accelerator.autocast, tensorboard=metrics.tb, is_main=accelerator.is_main_process))  # fmt: skip

    def counts():
        """Skip reasons summed over processes (this process's local counts plus those at the resume point)."""
        local = dict(skip_local)
        merged = dict(skip_reasons)
        for part in (gather_object([local]) if world > 1 else [local]):
            for k, v in part.items():
                merged[k] = merged.get(k, 0) + v
        return merged

    def checkpoint(step):
        parts = gather_object([(loader.position, images.position if images else 0, rng_state())]) if world > 1 else \
            [(loader.position, images.position if images else 0, rng_state())]  # fmt: skip
        extra = {"micro_batches": micro_done, "skip_reasons": counts(), "data_positions": [p[0] for p in parts],
                 "image_positions": [p[1] for p in parts], "num_processes": world, "train_batch_size": args.train_batch_size,
                 "gradient_accumulation_steps": args.gradient_accumulation_steps}  # fmt: skip
        try:
            save_checkpoint(accelerator, student_p, head_p, target_head, ema_student, optimizer, scheduler, adversary, teacher, args,
                            step, extra, [p[2] for p in parts], run_dir, time.time() - start_time, log)  # fmt: skip
        except CheckpointError as exc:
            if args.on_save_error == "stop":
                raise
            log(f"warning: {exc}; the earlier checkpoints are intact; training goes on (--on-save-error stop to stop)")

    from training.checkpoints import rng_state

    skip_local = {}
    uncond_cache = {}
    timer = PartTimer(args.dry_run)
    progress = tqdm(total=args.max_train_steps, initial=global_step, disable=not accelerator.is_main_process,
                    desc="distilling", dynamic_ncols=True)  # fmt: skip
    window_losses, window_generated, window_finite, nonfinite_run = [], [], True, 0
    lr_marks, lr_seen = {1: "start", (args.max_train_steps + 1) // 2: "middle", args.max_train_steps: "end"}, {}
    try:
        while global_step < args.max_train_steps:
            generator = slot_generator(args.seed, micro_done * world + rank)
            with timer("data"):
                batch = next(loader)
                for reason, n in batch["skip_reasons"].items():
                    skip_local[reason] = skip_local.get(reason, 0) + n
            with accelerator.accumulate(*modules):
                b = batch["video"].shape[0]
                with timer("encode"):
                    x0 = encode_video(batch["video"], generator)
                    cond, pooled = encode_text(batch["caption"])
                    if b not in uncond_cache:
                        uncond_cache[b] = encode_text([""] * b)[0]
                    uncond = uncond_cache[b]
                generated = global_step >= args.mixed_start_step and use_generated_trajectories(args.lambda_real, generator)
                if generated:
                    with timer("student one-step sample"), accelerator.autocast():
                        x0 = generated_x0(student_fn, torch.randn(x0.shape, generator=generator).to(device), cond, schedule, config.prediction_type).float()
                index = sample_indices(b, args.num_ddim_timesteps, generator)
                w = sample_guidance(b, args.w_min, args.w_max, generator)
                noise = torch.randn(x0.shape, generator=generator).to(device)
                with timer("distillation step (student, teacher x2, target)"), accelerator.autocast():
                    out = distillation_step(student_fn, teacher_fn, x0, cond, uncond, schedule, config, index=index.to(device),
                                            w=w, noise=noise, target_model=target_fn, motion=head_p, target_motion=target_head)  # fmt: skip
                    loss = out["loss"]
                    adversarial = adversary is not None and global_step >= args.disc_start_step
                    if adversarial:
                        adversary.generator = generator
                        with timer("adversarial: decode frames, discriminator (generator side)"):
                            g_term, fake_frames, c_fake = adversary.generator_term(out["model_pred"], pooled)
                            loss = loss + g_term
                finite = bool(accelerator.gather(torch.isfinite(loss.detach()).float().reshape(1)).min() > 0)  # all processes agree
                window_finite = window_finite and finite
                if finite:
                    with timer("backward"):
                        accelerator.backward(loss)
                frozen.release()  # the VAE kept placed for the adversarial term's backward
                if accelerator.sync_gradients:
                    with timer("optimizer"):
                        norm = accelerator.clip_grad_norm_(lora_params, args.max_grad_norm) if args.max_grad_norm > 0 else None
                        g_lr = optimizer.param_groups[0]["lr"]  # the lr this step uses
                        if window_finite and (norm is None or torch.isfinite(torch.as_tensor(norm)).item()):
                            optimizer.step()
                            scheduler.step()
                        else:
                            window_finite = False
                        optimizer.zero_grad(set_to_none=True)
                if finite and adversarial and adversary.due(global_step):  # D's loss joins this window's D gradient
                    with timer("discriminator step"), accelerator.autocast():
                        if images is not None:
                            real_batch = next(images)
                            real, c_real = real_batch["image"].to(device), adversary.text(real_batch["caption"])
                        else:
                            real, c_real = adversary.real_from_video(batch["video"].to(device)), c_fake
                        adversary.accumulate(real, c_real, fake_frames, c_fake)
                if adversary is not None and accelerator.sync_gradients:
                    with timer("discriminator step"):
                        adversary.update(global_step)  # one D update per optimizer step (a no-op outside its windows)
                micro_done += 1
                if finite:
                    window_losses.append(out["loss"].detach().float().item())  # the consistency loss alone
                window_generated.append(float(generated))
            if not accelerator.sync_gradients:
                continue
            if not window_finite:
                nonfinite_run += 1
                window_losses, window_generated, window_finite = [], [], True
                log(f"warning: non-finite loss or gradient at step {global_step + 1}: step skipped ({nonfinite_run} in a row)")
                if nonfinite_run >= args.max_nonfinite_steps:
                    checkpoint(global_step)
                    raise NonFiniteLoss(f"{nonfinite_run} steps in a row had a non-finite loss or gradient (--max-nonfinite-steps "
                                        f"{args.max_nonfinite_steps}); the last good state (step {global_step}) is in {run_dir / f'checkpoint-{global_step}'}; "
                                        "lower the learning rate or try --mixed-precision bf16 / no")  # fmt: skip
                continue
            nonfinite_run = 0
            if isinstance(target_head, torch.nn.Module):
                ema_update(target_head, accelerator.unwrap_model(head_p), args.ema_decay)
            if ema_student is not None:
                ema_update(ema_student, accelerator.unwrap_model(student_p), args.ema_target_decay)
            global_step += 1
            if global_step in lr_marks:  # the learning rates in effect at the start, middle and end (summary.json)
                lr_seen[lr_marks[global_step]] = {"step": global_step, "generator": g_lr,
                                                  "discriminator": adversary.last.get("d_lr") if adversary else None}  # fmt: skip
            mean_loss = accelerator.reduce(torch.tensor([sum(window_losses) / len(window_losses)], device=device), "mean").item()
            gen_frac = sum(window_generated) / len(window_generated)
            window_losses, window_generated = [], []
            skipped_total = sum(counts().values())
            progress.update(1)
            progress.set_postfix(loss=f"{mean_loss:.4g}", lr=f"{scheduler.get_last_lr()[0]:.2e}", skipped=skipped_total)
            validated = validation(global_step, time.time() - start_time)  # every --validation-steps, main process only
            metrics.write(global_step, mean_loss, scheduler.get_last_lr()[0], gen_frac, skipped_total, time.time() - start_time,
                          adversary.last if adversary is not None else {}, validated)  # fmt: skip
            if args.dry_run:
                break
            if global_step % args.checkpointing_steps == 0 or global_step == args.max_train_steps:
                checkpoint(global_step)
    except KeyboardInterrupt:
        log(f"\ninterrupted at step {global_step}; saving a checkpoint")
        checkpoint(global_step)
        raise
    except (DataError, RuntimeError) as exc:  # the data cannot go on (e.g. a loader worker died): keep what was trained
        stopped, between_steps = data_stopped(exc, data_root)
        if stopped is None:
            raise
        if between_steps and global_step and not (run_dir / f"checkpoint-{global_step}").exists():
            checkpoint(global_step)
        raise stopped from None
    finally:
        progress.close()
        metrics.close()

    accelerator.wait_for_everyone()
    # every process must hold the same LoRA (gradients are averaged across processes before each step)
    checksum = torch.stack([p.detach().double().sum() for p in lora_params]).to(device)
    checksums = accelerator.gather(checksum.unsqueeze(0))
    in_sync = bool(torch.allclose(checksums, checksums[:1].expand_as(checksums), rtol=1e-6, atol=1e-9))
    if not in_sync:
        log("warning: the LoRA weights differ between processes; gradients were not synchronised")
    reasons = counts()
    if args.dry_run:
        gib = 2**30
        report = {"seconds": {k: round(v, 3) for k, v in timer.seconds.items()},
                  "peak_memory_gib": round(getattr(timer, "overall", 0) / gib, 3),
                  "peak_memory_gib_per_part": {k: round(v / gib, 3) for k, v in timer.peak_bytes.items()},
                  "memory": "CUDA allocated" if torch.cuda.is_available() else "process peak resident set (VmHWM)",
                  "loss": window_losses or mean_loss}  # fmt: skip
        log(json.dumps(report, indent=2))
        if accelerator.is_main_process:
            (run_dir / "dry_run.json").write_text(json.dumps(report, indent=2))
        return run_dir
    if accelerator.is_main_process:
        final = run_dir / "final" if not (run_dir / "final").exists() else run_dir / f"final-{global_step}"
        with atomic_dir(final) as tmp:
            export_adapter(accelerator.unwrap_model(student_p), teacher, args, global_step, tmp, time.time() - start_time)
        adapter_path = final / "adapter.safetensors"
        if not (run_dir / "adapter.safetensors").exists():  # the newcomer's shortcut; never replaced
            shutil.copyfile(adapter_path, run_dir / "adapter.safetensors")
            adapter_path = run_dir / "adapter.safetensors"
        summary = {"steps": global_step, "skipped_samples": sum(reasons.values()), "skipped_by_reason": reasons,
                   "seconds": round(time.time() - start_time, 1), "num_processes": world, "processes_in_sync": in_sync,
                   "adapter": str(adapter_path), "peft": str(final / "peft"), "optimizer_steps": global_step,
                   "micro_batches": micro_done, "discriminator_updates": adversary.updates if adversary else 0,
                   "discriminator_updates_skipped": adversary.skipped if adversary else 0, "learning_rates": lr_seen}  # fmt: skip
        if adversary is not None:
            from training.adversarial import adversarial_summary

            summary["discriminator"] = adversarial_summary(metrics.path)
        if reasons:
            log(f"skipped samples by reason: {json.dumps(reasons)}")
        if args.toy_eval:
            summary["metrics"] = str(toy_evaluation(args, unwrapped, teacher, encode_text, run_dir, log))
        summary["wall_seconds"] = round(time.time() - PROCESS_START, 1)
        tmp_summary = run_dir / ".summary.json.tmp"
        tmp_summary.write_text(json.dumps(summary, indent=2))
        os.replace(tmp_summary, run_dir / "summary.json")
        log(f"done in {summary['wall_seconds']:.0f} s wall (from start-up, evaluation included): {json.dumps(summary)}")
    return run_dir


def toy_evaluation(args, student, teacher, encode_text, run_dir: Path, log) -> Path:
    """Teacher vs MCM on the toy prompts: ``preview/`` (GIF + PNG strip) and ``metrics.json``."""
    from training.models import noise_settings
    from training.toy_eval import ToySampler, evaluate, toy_prompts

    guidance = args.eval_guidance if args.eval_guidance is not None else 1.0 + (args.w_min + args.w_max) / 2
    student.eval()
    noise = noise_settings(teacher, args.prediction_type, args.beta_schedule)
    sampler = ToySampler(student, teacher.vae, lambda captions: encode_text(captions)[0], teacher.scaling_factor,
                         args.num_frames, args.resolution, teacher.vae_downsample, NoiseSchedule(noise.beta_schedule), guidance,
                         timestep_scaling=args.timestep_scaling, prediction_type=noise.prediction_type,
                         num_ddim_timesteps=args.num_ddim_timesteps)  # fmt: skip
    log(f"toy evaluation ({args.eval_seeds} samples per prompt, teacher cfg {guidance:g}):")
    report = evaluate(sampler, run_dir / "preview", toy_prompts()[: args.eval_prompts], seeds=args.eval_seeds,
                      teacher_steps=[int(n) for n in str(args.eval_teacher_steps).split(",") if n.strip()], log=log)  # fmt: skip
    report["run"] = {"steps": args.max_train_steps, "seconds_since_start": round(time.time() - PROCESS_START, 1)}
    path = run_dir / "metrics.json"
    tmp = run_dir / ".metrics.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path)
    log(f"previews: {report['previews']['gif']} and {report['previews']['png']}; metrics: {path}")
    return path


def save_checkpoint(accelerator, student_p, head_p, target_head, ema_student, optimizer, scheduler, adversary, teacher, args, step,
                    extra: dict, rng_states: list, run_dir: Path, seconds: float, log=print):  # fmt: skip
    """``checkpoint-<step>/``: the adapter (+ PEFT folder), motion heads, optimizers and schedulers, trainer
    state (data positions, skip counts) and RNG states, built in a temporary folder and renamed.

    Only trainable state is written (the frozen teacher would be gigabytes per checkpoint). A failed
    write raises :class:`training.checkpoints.CheckpointError` on every process.
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    from training.checkpoints import CheckpointError, prune, write_checkpoint

    def write_parts(tmp: Path):
        export_adapter(accelerator.unwrap_model(student_p), teacher, args, step, tmp, seconds)
        heads = {}
        if isinstance(target_head, torch.nn.Module):
            heads.update({f"online.{k}": v for k, v in accelerator.unwrap_model(head_p).state_dict().items()})
            heads.update({f"target.{k}": v for k, v in target_head.state_dict().items()})
        if ema_student is not None:
            heads.update({f"ema_student.{k}": v for k, v in get_peft_model_state_dict(ema_student).items()})
        if heads:
            save_file({k: v.detach().contiguous().cpu() for k, v in heads.items()}, str(tmp / "trainable_extra.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "adversary": adversary.state_dict() if adversary is not None else None}, tmp / "optimizer.pt")  # fmt: skip

    accelerator.wait_for_everyone()
    final = run_dir / f"checkpoint-{step}"
    error = ""
    if accelerator.is_main_process and not final.exists():
        state = {"global_step": step, "skipped": sum(extra["skip_reasons"].values()), **extra, "args": vars(args)}
        try:
            write_checkpoint(final, write_parts, state, rng_states)
            prune(run_dir, args.checkpoints_total_limit, log)
        except CheckpointError as exc:
            error = str(exc)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        error = broadcast_object_list([error])[0]
    accelerator.wait_for_everyone()
    if error:
        raise CheckpointError(error)


def load_checkpoint(folder: Path, accelerator, student_p, head_p, target_head, ema_student, optimizer, scheduler, adversary=None) -> None:
    """Load a verified checkpoint into the prepared models; a checkpoint of another model or flags (other rank,
    motion head, optimizer) is a ValueError naming the checkpoint, raised before anything of the run is moved."""
    from safetensors.torch import load_file

    from training.checkpoints import load_pickle_free

    extra_path = folder / "trainable_extra.safetensors"
    extra = load_file(extra_path) if extra_path.exists() else {}
    state = load_pickle_free(folder / "optimizer.pt")
    if adversary is not None and state.get("adversary") is None:
        raise ValueError(f"--resume {folder}: the checkpoint has no discriminator state (it was trained with --no-disc)")
    try:
        _load_parts(folder, extra, state, accelerator, student_p, head_p, target_head, ema_student, optimizer, scheduler, adversary)
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:  # shapes or keys of another configuration
        raise ValueError(f"--resume {folder}: does not fit this run's model and flags (written with other --lora-rank, "
                         f"--motion-repr, --ema-target or optimizer flags?): {str(exc).strip().splitlines()[0][:200]}") from None  # fmt: skip


def _load_parts(folder, extra, state, accelerator, student_p, head_p, target_head, ema_student, optimizer, scheduler, adversary):
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    def part(prefix):
        return {k[len(prefix) :]: v for k, v in extra.items() if k.startswith(prefix)}

    set_peft_model_state_dict(accelerator.unwrap_model(student_p), load_file(folder / "peft" / "adapter_model.safetensors"))
    if isinstance(target_head, torch.nn.Module):
        accelerator.unwrap_model(head_p).load_state_dict(part("online."))
        target_head.load_state_dict(part("target."))
    if ema_student is not None:
        set_peft_model_state_dict(ema_student, part("ema_student."))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if adversary is not None:
        adversary.load_state_dict(state["adversary"])


if __name__ == "__main__":
    sys.exit(main())
