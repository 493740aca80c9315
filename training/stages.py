"""The stages of :func:`training.distill.train` around its loop: the accelerator, the teacher's checks, the
resume point, the data, the run folder (``config.yaml``, ``metrics.csv``), the adapter export and the
dry run's report. The loop itself (``micro_step``, ``optimizer_step``) is in ``training/distill.py``, the
state it trains in ``training/state.py``.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
from pathlib import Path

import torch

import mcm
from mcm.schedule import lcm_timesteps
from training.checkpoints import truncate_metrics
from training.config import check_resume, toy_clip_frames, write_config

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
            "teacher": str(args.teacher),
            "teacher_kind": args.teacher_kind,
            "data": str(args.data),
            "step": step,
            "motion_repr": args.motion_repr,
            "lambda_real": args.lambda_real,
            "w": [args.w_min, args.w_max],
            "loss": args.loss_type,
            "lr": args.learning_rate,
            "frames": args.num_frames,
            "resolution": args.resolution,
            "seed": args.seed,
            "seconds": round(seconds, 1),
            "comfyui_mcm": mcm.__version__,
        },
    )


def export_adapter(student, teacher, args, step: int, folder: Path, seconds: float) -> None:
    """The node-compatible MCM adapter (``adapter.safetensors``) and the PEFT folder (``peft/``)."""
    from peft import get_peft_model_state_dict

    from mcm.weights import Adapter, export_peft, parse_lora_tensors, save_adapter

    state = {k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(student).items()}
    layers = parse_lora_tensors(state, f"student at step {step}", lambda p, r: float(args.lora_alpha))
    adapter = Adapter(
        meta=adapter_meta(teacher, args, step, seconds), layers=layers, source=str(folder / "adapter.safetensors")
    )
    save_adapter(adapter, folder / "adapter.safetensors")
    export_peft(adapter, folder / "peft")


# --- training ----------------------------------------------------------------------------------------


ADVERSARIAL_COLUMNS = ("g_loss", "d_loss", "real_logit", "fake_logit", "d_accuracy", "gp", "gp_weight")
VALIDATION_COLUMNS = ("val_consistency_error",)  # filled on --validation-steps steps (training/validation.py)


class MetricsLog:
    """``metrics.csv``, one row per optimizer step (a resumed run first drops the rows logged after its
    checkpoint), and TensorBoard scalars where TensorBoard is installed; only the main process writes."""

    COLUMNS = (
        "step",
        "loss",
        "lr",
        "generated_trajectory_fraction",
        "skipped_samples",
        "seconds",
        *ADVERSARIAL_COLUMNS,
        *VALIDATION_COLUMNS,
    )

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

    def write(self, step: int, row: dict, adversarial: dict, validation: dict | None = None) -> None:
        """``row``: the step's ``loss``, ``lr``, ``generated`` (trajectory fraction), ``skipped`` (samples) and ``seconds``."""
        validation = validation or {}
        loss, lr, generated, skipped, seconds = (row[k] for k in ("loss", "lr", "generated", "skipped", "seconds"))
        if self.writer:
            self.writer.writerow(
                [step, f"{loss:.6g}", f"{lr:.6g}", generated, skipped, round(seconds, 2)]
                + [f"{adversarial[k]:.6g}" if k in adversarial else "" for k in ADVERSARIAL_COLUMNS]
                + [f"{validation[k]:.6g}" if k in validation else "" for k in VALIDATION_COLUMNS]
            )
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


# --- the stages of train() ---------------------------------------------------------------------------


def make_accelerator(args):
    """The accelerator (multi-process CPU runs use gloo) and the frozen weights' dtype; seeds every process."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from training.memory import frozen_dtype

    mixed = args.mixed_precision or ("fp16" if torch.cuda.is_available() else "no")
    weight_dtype = frozen_dtype(args.frozen_dtype, mixed)
    accelerate_on_cpu = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=mixed, cpu=accelerate_on_cpu
    )
    set_seed(args.seed + accelerator.process_index)
    return accelerator, weight_dtype


def check_teacher(args, teacher):
    """The flags this teacher cannot take, and its noise settings (:func:`training.models.noise_settings`)."""
    from training.models import noise_settings

    if args.resolution % (teacher.vae_downsample * 4):
        raise ValueError(
            f"--resolution {args.resolution}: must be a multiple of {teacher.vae_downsample * 4} for this teacher"
        )
    max_frames = teacher.max_frames
    if max_frames is not None and args.num_frames > max_frames:
        raise ValueError(
            f"--num-frames {args.num_frames}: this teacher's motion module takes at most {max_frames} frames"
        )
    return noise_settings(teacher, args.prediction_type, args.beta_schedule)


def resume_point(args, accelerator, log):
    """(checkpoint, trainer state, RNG states) to continue from, or (None, {}, None) for a new run; nothing moved yet."""
    from training.checkpoints import check_layout, read_state, resolve_resume

    if not args.resume:
        return None, {}, None
    folder = resolve_resume(args.resume, args.output_dir, args.run_name, log)  # verified
    state, rngs = read_state(folder)
    check_resume(args, folder, state)  # a value an exact resume depends on may not change
    check_layout(
        state, folder, accelerator.num_processes, args.train_batch_size, args.gradient_accumulation_steps, args.seed
    )
    return folder, state, rngs


def open_data(args, accelerator, resumed: dict):
    """(data root, batches of this process from the resume point on); ``--data toy`` writes the toy clips once."""
    from training.data import Batches, VideoClips, write_toy_shards

    rank, world = accelerator.process_index, accelerator.num_processes
    data_root = args.data
    if data_root == "toy":
        frames = toy_clip_frames(args.num_frames)
        data_root = write_toy_shards(
            toy_cache() / f"{args.resolution}px-{frames}f-seed{args.seed}",
            frames=frames,
            size=args.resolution,
            seed=args.seed,
        )
    dataset = VideoClips(
        data_root,
        args.num_frames,
        args.frame_interval,
        args.resolution,
        args.crop,
        args.seed,
        rank,
        world,
        block=args.train_batch_size,
        start=resumed.get("data_positions", [0] * world)[rank],
    )
    return data_root, Batches(dataset, args.train_batch_size, args.num_workers)


def run_folder(args, accelerator, resume_from: Path | None, resumed: dict) -> Path:
    """A resumed run's folder (its newer checkpoints are set aside once the checkpoint has loaded) or a new one;
    ``config.yaml`` written into it (``--config`` on it repeats the run)."""
    from accelerate.utils import gather_object

    if resume_from is not None:
        run_dir = resume_from.parent
    else:
        run_dir = new_run_dir(args.output_dir, args.run_name) if accelerator.is_main_process else None
        run_dir = (
            Path(gather_object([str(run_dir) if run_dir else ""])[0]) if accelerator.num_processes > 1 else run_dir
        )
    if accelerator.is_main_process:
        write_config(args, run_dir, resumed["global_step"] if resume_from is not None else None)
    return run_dir


def processes_in_sync(state, log) -> bool:
    """Whether every process holds the same LoRA (gradients are averaged across processes before each step)."""
    accelerator = state.accelerator
    accelerator.wait_for_everyone()
    checksum = torch.stack([p.detach().double().sum() for p in state.lora_params]).to(accelerator.device)
    checksums = accelerator.gather(checksum.unsqueeze(0))
    in_sync = bool(torch.allclose(checksums, checksums[:1].expand_as(checksums), rtol=1e-6, atol=1e-9))
    if not in_sync:
        log("warning: the LoRA weights differ between processes; gradients were not synchronised")
    return in_sync


def write_dry_run(state, timer, loss, log) -> Path:
    """``dry_run.json``: seconds and peak memory per part of one optimizer step."""
    gib = 2**30
    report = {
        "seconds": {k: round(v, 3) for k, v in timer.seconds.items()},
        "peak_memory_gib": round(getattr(timer, "overall", 0) / gib, 3),
        "peak_memory_gib_per_part": {k: round(v / gib, 3) for k, v in timer.peak_bytes.items()},
        "memory": "CUDA allocated" if torch.cuda.is_available() else "process peak resident set (VmHWM)",
        "loss": loss,
    }
    log(json.dumps(report, indent=2))
    if state.accelerator.is_main_process:
        (state.run_dir / "dry_run.json").write_text(json.dumps(report, indent=2))
    return state.run_dir


def describe_plan(cfg) -> str:
    """What the run will do, in a few lines (``--plan`` prints it and exits; every run logs it)."""
    betas = cfg.beta_schedule + (
        " (the teacher's scheduler config, else scaled_linear)" if cfg.beta_schedule == "auto" else ""
    )
    steps = ", ".join(f"{n}-step ({', '.join(map(str, lcm_timesteps(n).tolist()))})" for n in (1, 2, 4))
    return (
        f"MCM distillation (arXiv 2406.06890)\n"
        f"  teacher {cfg.teacher} ({cfg.teacher_kind}); data {cfg.data}; {cfg.num_frames} frames at {cfg.resolution}px\n"
        f"  consistency distillation on the {cfg.num_ddim_timesteps}-point DDIM grid, betas {betas}, "
        f"timestep scaling {cfg.timestep_scaling:g}, teacher w ~ U[{cfg.w_min:g}, {cfg.w_max:g}]\n"
        f"  motion loss on '{cfg.motion_repr}' ({cfg.loss_type}), mixed trajectories λ_real = {cfg.lambda_real:g}\n"
        f"  LoRA rank {cfg.lora_rank}, alpha {cfg.lora_alpha:g}; {cfg.max_train_steps} steps\n"
        f"  the adapter samples with the MCM nodes at {steps}\n"
        + (
            f"  frame discriminator: DINOv2 {cfg.disc_backbone}, {cfg.disc_loss}, λ_adv {cfg.disc_weight:g}, "
            f"{cfg.disc_frames} frames per clip, real = {cfg.disc_images if cfg.disc_real == 'images' else 'video frames'}"
            if cfg.disc
            else "  frame discriminator: off (--no-disc)"
        )
    )
