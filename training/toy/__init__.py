"""The toy: the embedded default's guest. A synthetic world of captioned moving shapes, a small teacher trained
on it and shipped in ``teacher/``, metrics that know the right answer, previews, and the paper's ablations.

The trainer reaches it through two hooks only, both defined here:

* **the toy data**: ``--data toy`` and ``--disc-images toy`` (:func:`video_shards`, :func:`image_shards`,
  :func:`prompts` for validation), and the preset that applies when neither ``--teacher`` nor ``--data`` is
  given (:data:`PRESET`, :data:`TEACHER`, and the checks :func:`missing_teacher` and :func:`stride_error`);
* **the toy evaluation** after a run (``--toy-eval``): :func:`evaluate_run`.
"""

from __future__ import annotations

from pathlib import Path

from training.toy.evaluation import evaluate_run
from training.toy.preset import PRESET, TEACHER, cache_dir, clip_frames, missing_teacher, stride_error
from training.toy.world import toy_prompts, write_toy_image_shards, write_toy_shards

__all__ = [
    "PRESET",
    "TEACHER",
    "evaluate_run",
    "image_shards",
    "missing_teacher",
    "prompts",
    "stride_error",
    "video_shards",
]


def video_shards(resolution: int, num_frames: int, seed: int) -> Path:
    """The toy video set for a run of ``num_frames`` frames at ``resolution`` px, written once into the cache."""
    frames = clip_frames(num_frames)
    root = cache_dir() / f"{resolution}px-{frames}f-seed{seed}"
    return write_toy_shards(root, frames=frames, size=resolution, seed=seed)


def image_shards(resolution: int, seed: int) -> Path:
    """The clean toy image set (the discriminator's real side), written once into the cache."""
    return write_toy_image_shards(cache_dir() / f"images-{resolution}px-seed{seed}", size=resolution, seed=seed)


def prompts(n: int = 4) -> list[str]:
    """The first ``n`` toy prompts (validation's prompts on toy data)."""
    return toy_prompts()[:n]
