"""The toy preset: what ``python training/distill.py`` with no ``--teacher`` and no ``--data`` trains.

It distils the shipped toy teacher (``training/toy/teacher/``, trained by ``training/toy/train_teacher.py``)
on the synthetic toy world at 32 px, 8 frames, in 200 steps on a CPU. Each value below that differs from the
official configuration says why in one line; the measurements behind them are in ``training/toy/RESULTS.md``.
"""

from __future__ import annotations

import os
from pathlib import Path

TEACHER = Path(__file__).resolve().parent / "teacher"
#: The flag values the preset sets (precedence: defaults < this preset < --config YAML < command line).
PRESET = {
    "teacher": str(TEACHER),
    "data": "toy",
    "resolution": 32,
    "num_frames": 8,
    "max_train_steps": 200,
    "train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "lora_rank": 8,
    "lora_alpha": 8.0,
    "learning_rate": 4e-4,  # at 2e-4 the student's frames stay at the teacher's; 4e-4 takes them past it
    "scale_lr": False,
    "lr_warmup_steps": 20,
    "w_min": 2.0,
    "w_max": 6.0,
    "checkpointing_steps": 50,
    "num_workers": 0,
    "style": "toy",
    "disc_backbone": "tiny",  # a random DINOv2 at 56 px with 14-px patches: a 32-px frame is 4 x 4 patches
    "disc_real": "images",
    "disc_images": "toy",
    "disc_lr": 2e-3,  # the official 1e-4 is for 30k steps; in 200 steps the heads must move faster
    "disc_augment": False,  # the official augmentation moves or erases the 32-px watermark bar it must see
    "validation_steps": 0,  # the toy evaluation after training measures what validation would
}


def clip_frames(num_frames: int) -> int:
    """Frames per clip of the synthetic toy set written for a run of ``num_frames`` frames."""
    return max(16, num_frames)


def cache_dir() -> Path:
    """Where the synthetic toy data is written once and reused (``MCM_TOY_DATA`` overrides it)."""
    return Path(os.environ.get("MCM_TOY_DATA", Path.home() / ".cache" / "comfyui-mcm" / "toy-videos"))


def missing_teacher(cfg) -> str | None:
    """The shipped toy teacher is asked for but not in this checkout: what to do, or None."""
    if cfg.teacher == str(TEACHER) and not (TEACHER / "toy_teacher.json").exists():
        return f"the toy teacher is missing from {TEACHER}; rebuild it with: python training/toy/train_teacher.py"
    return None


def stride_error(cfg) -> str | None:
    """A ``--frame-interval`` too long for the toy clips (a message naming the flag), or None."""
    span = (cfg.num_frames - 1) * cfg.frame_interval + 1
    if cfg.data == "toy" and span > clip_frames(cfg.num_frames):
        return (
            f"--frame-interval {cfg.frame_interval}: {cfg.num_frames} frames at this stride span {span} frames; the "
            f"toy clips have {clip_frames(cfg.num_frames)} (use --frame-interval 1, the toy preset's)"
        )
    return None
