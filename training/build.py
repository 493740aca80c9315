"""Building a run's trainable state: the student (the teacher + LoRA; the teacher is the same UNet with the
adapter disabled), the motion heads, the optimizer and its schedule prepared by accelerate, the EMA student and
the adversary, as one :class:`training.state.TrainState`."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from mcm.motion import make_motion_representation
from training.adversarial import Adversary
from training.checkpoints import slot_generator
from training.config import TrainConfig
from training.data import Batches
from training.frozen import FrozenParts
from training.models import Teacher, make_student
from training.setup import open_images
from training.state import TrainState


def make_optimizer(params, args: TrainConfig, lr: float, use_cuda: bool) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' AdamW8bit with ``--use-8bit-adam`` (by default: when installed, on a GPU)."""
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


def freeze_teacher(teacher, weight_dtype: torch.dtype, gradient_checkpointing: bool) -> None:
    """The teacher's UNet, VAE and text encoder frozen (and stored in ``weight_dtype``)."""
    for m in (teacher.unet, teacher.vae, teacher.text_encoder):
        m.requires_grad_(False)
        if weight_dtype != torch.float32:
            m.to(dtype=weight_dtype)
    if gradient_checkpointing:
        teacher.unet.enable_gradient_checkpointing()


def build_state(
    args: TrainConfig, accelerator, teacher: Teacher, frozen: FrozenParts, loader: Batches, run_dir: Path, resumed: dict
) -> TrainState:
    """The student (the teacher + LoRA; the teacher is the same UNet with the adapter disabled), motion heads,
    optimizer and scheduler prepared by accelerate, the EMA student and the adversary; ``resumed``: the
    checkpoint's trainer state ({} for a new run), for the image stream's position."""
    from diffusers.optimization import get_scheduler

    world, device = accelerator.num_processes, accelerator.device
    student = make_student(teacher, args.lora_rank, args.lora_alpha)
    lora_params = [p for p in student.parameters() if p.requires_grad]
    for p in lora_params:  # trainable weights stay fp32 whatever the frozen dtype
        p.data = p.data.float()
    head, target_head = make_motion_representation(args.motion_repr, teacher.latent_channels)
    head_params = list(head.parameters()) if isinstance(head, torch.nn.Module) else []
    lr = scaled_lr(args.learning_rate, args, world)
    groups = [{"params": lora_params}, {"params": head_params, "lr": lr * args.motion_head_lr_mult}]
    optimizer = make_optimizer(groups, args, lr, torch.cuda.is_available())
    scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * world,
        num_training_steps=args.max_train_steps * world,
    )
    modules = [student] + ([head] if head_params else [])
    prepared = accelerator.prepare(*modules, optimizer, scheduler)
    student_p, head_p = prepared[0], (prepared[1] if head_params else head)
    if not args.offload_frozen:
        for m in (teacher.vae, teacher.text_encoder):
            m.to(device)
    if isinstance(target_head, torch.nn.Module):
        target_head.to(device)
    ema_student = copy.deepcopy(accelerator.unwrap_model(student_p)).requires_grad_(False) if args.ema_target else None
    state = TrainState(
        accelerator,
        args,
        teacher,
        student_p,
        head_p,
        target_head,
        ema_student,
        prepared[-2],
        prepared[-1],
        lora_params,
        modules,
        loader,
        run_dir,
    )
    if args.disc:
        state.adversary, state.images = build_adversary(args, accelerator, frozen, resumed)
    return state


def scaled_lr(lr: float, args: TrainConfig, world: int, per_clip: int = 1) -> float:
    """``lr`` times the total batch (clips × ``per_clip`` samples each) / 128 with ``--scale-lr`` (the official
    rule: 1.0 at the official batch of 128 clips), else ``lr``."""
    total_batch = args.train_batch_size * world * args.gradient_accumulation_steps
    return lr * (total_batch * per_clip / 128 if args.scale_lr else 1.0)


def build_adversary(
    args: TrainConfig, accelerator, frozen: FrozenParts, resumed: dict
) -> tuple[Adversary, Batches | None]:
    """The adversary (its lr scaled by clips × ``--disc-frames``) and, with ``--disc-real images``, the stream of
    real captioned images (opened after the adversary is built, as the run's random draws expect)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    disc_lr = scaled_lr(args.disc_lr, args, world, per_clip=args.disc_frames)
    adversary = Adversary(
        args, frozen, accelerator.device, accelerator, disc_lr, args.max_train_steps, slot_generator(args.seed, rank)
    )
    if args.disc_real != "images":
        return adversary, None
    return adversary, open_images(args, accelerator, resumed)
