"""The stages of :func:`training.distill.train` before its loop: the accelerator, the teacher's checks, the resume
point, the data (the toy data hook: ``--data toy`` and ``--disc-images toy`` are written here) and the run
folder. Each checks what it can before anything is written."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import torch

from training import toy
from training.checkpoints import check_layout, read_state, resolve_resume
from training.config import check_resume, write_config
from training.data import Batches, ImageCaptions, VideoClips
from training.memory import frozen_dtype
from training.models import NoiseSettings, Teacher, noise_settings
from training.prompts import read_prompts
from training.validation import DEFAULT_PROMPTS


def make_accelerator(args):
    """The accelerator (multi-process CPU runs use gloo) and the frozen weights' dtype; seeds every process."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    mixed = args.mixed_precision or ("fp16" if torch.cuda.is_available() else "no")
    weight_dtype = frozen_dtype(args.frozen_dtype, mixed)
    accelerate_on_cpu = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=mixed, cpu=accelerate_on_cpu
    )
    set_seed(args.seed + accelerator.process_index)
    return accelerator, weight_dtype


def check_teacher(args, teacher: Teacher) -> NoiseSettings:
    """The flags this teacher cannot take, and its noise settings (:func:`training.models.noise_settings`)."""
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
    """(checkpoint, trainer state, RNG states) to continue from, or (None, {}, None) for a new run; nothing is
    moved yet."""
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
    rank, world = accelerator.process_index, accelerator.num_processes
    data_root = toy.video_shards(args.resolution, args.num_frames, args.seed) if args.data == "toy" else args.data
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


def open_images(args, accelerator, resumed: dict) -> Batches:
    """The discriminator's real images (``--disc-real images``) for this process, from the resume point on;
    ``--disc-images toy`` writes the clean toy images once."""
    rank, world = accelerator.process_index, accelerator.num_processes
    root = toy.image_shards(args.resolution, args.seed) if args.disc_images == "toy" else args.disc_images
    per_batch = args.train_batch_size * args.disc_frames
    image_set = ImageCaptions(
        root,
        args.resolution,
        args.seed,
        rank,
        world,
        block=per_batch,
        start=resumed.get("image_positions", [0] * world)[rank],
    )
    return Batches(image_set, per_batch, min(args.num_workers, 2))


def validation_prompts(args) -> list[str]:
    """``--validation-prompts`` (one per line), else four general prompts, or four toy prompts on toy data."""
    if args.validation_prompts is not None:
        return read_prompts(args.validation_prompts, "--validation-prompts")
    return toy.prompts(4) if args.data == "toy" else list(DEFAULT_PROMPTS)


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
