"""Validation during a run: what a user watches to see whether a distillation is going well.

Every ``--validation-steps`` optimizer steps (main process only, under ``no_grad``, the student in eval
mode, the RNG states left as they were so that training continues exactly as without validation):

* **samples**: each fixed prompt (``--validation-prompts``, one per line; by default a few general
  prompts, or toy prompts on toy data) with a fixed seed (prompt ``i`` uses seed ``i``: one CPU
  generator seeded ``i`` draws the starting noise and then every re-noising), sampled in 1, 2 and 4 MCM
  steps by :func:`mcm.sampler.sample_consistency`, the sampler the nodes use, configured from the
  adapter's own metadata (what the exported adapter records: prediction type, betas, timestep scaling,
  DDIM grid). Written to ``validation/step-N/mcm-<n>-step.{gif,png,mp4}`` (prompts side by side; the
  PNG is lossless, one row per prompt and one column per frame; MP4 where PyAV is installed) and to
  TensorBoard where it is installed.
* **held-out consistency error**: a fixed set of real latents (the first clips of the data, centre
  crop), noise, grid points and guidance, drawn once from a fixed seed. For each draw, the mean squared
  distance between the student's consistency output at ``t_{n+k}`` and its own output (without
  gradients) at the teacher's DDIM step to ``t_n``: the distillation loss with ``l2`` distance on raw
  latents. Logged as ``val_consistency_error`` in ``metrics.csv``; with ``--keep-best`` the adapter with
  the lowest error so far is kept as ``best/`` (with ``best.json``), replaced by rename, never in place.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mcm.distill import DistillConfig, distillation_step
from mcm.sampler import sample_consistency
from mcm.schedule import NoiseSchedule, lcm_timesteps
from mcm.weights.atomic import atomic_dir
from training.config import TrainConfig
from training.data import Batches, VideoClips
from training.export import adapter_meta, export_adapter
from training.frozen import FrozenParts, visiting
from training.models import Teacher, call_unet
from training.sampling import decode_to_frames

#: The prompts when ``--validation-prompts`` is not given (on toy data: the toy prompts, see training/setup.py).
DEFAULT_PROMPTS = (
    "a dog running along a beach at sunset",
    "fireworks exploding over a city at night",
    "waves crashing against rocks, slow motion",
    "a person walking through a snowy forest",
)
MCM_STEPS = (1, 2, 4)
HELD_OUT_SEED = 1234
HELD_OUT_CLIPS = 2
HELD_OUT_DRAWS = 4
COLUMN = "val_consistency_error"


@dataclass(frozen=True)
class ValidationContext:
    """What validation uses of the run it watches."""

    args: TrainConfig
    teacher: Teacher
    student: torch.nn.Module  # the unwrapped peft UNet (the teacher with the adapter disabled)
    frozen: FrozenParts  # the teacher's VAE and text encoder, placed per call
    prompts: list[str]  # one sample per prompt and step count, prompt i from seed i
    run_dir: Path
    data_root: str | Path  # the held-out latents are the first clips of the data
    device: torch.device
    autocast: Callable[[], AbstractContextManager]
    tensorboard: Any | None  # a SummaryWriter, where TensorBoard is installed
    log: Callable[..., None]
    is_main: bool


class Validation:
    """``validation(step, seconds)`` after each optimizer step: on validation steps (main process) it
    samples, measures and returns ``{"val_consistency_error": e}``; otherwise ``{}``.

    ``run``: what it uses of the run (:class:`ValidationContext`).
    """

    def __init__(self, run: ValidationContext):
        self.run, args = run, run.args
        # the ranges of --validation-steps / --keep-best are checked when the flags are parsed (training/config.py)
        self.every = args.validation_steps if run.is_main else 0
        self.prompts = list(run.prompts) if self.every > 0 else []
        self.held_out = None
        self.best = _read_best(run.run_dir) if args.keep_best and run.is_main else None

    def __call__(self, step: int, seconds: float = 0.0) -> dict:
        if self.every <= 0 or step % self.every:
            return {}
        student, device = self.run.student, self.run.device
        meta = adapter_meta(self.run.teacher, self.run.args, step, seconds)
        was_training = student.training
        student.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                videos = {
                    n: [self._sample(prompt, seed, n, meta) for seed, prompt in enumerate(self.prompts)]
                    for n in MCM_STEPS
                }
                error = self._held_out_error(meta)
        finally:
            student.train(was_training)
        folder = self._write(step, videos)
        self.run.log(f"validation at step {step}: held-out consistency error {error:.6g}; samples in {folder}")
        if self.best is not None and error < self.best.get("error", float("inf")):
            self._keep_best(step, error, seconds)
        return {COLUMN: error}

    # --- samples ---------------------------------------------------------------------------------------

    def _unet(self, x, t, cond):
        with self.run.autocast():
            return call_unet(self.run.student, x, t, cond).float()

    def _sample(self, prompt: str, seed: int, steps: int, meta) -> np.ndarray:
        """One prompt, one seed: ``uint8 [frames, h, w, 3]``."""
        args, teacher, device = self.run.args, self.run.teacher, self.run.device
        cond = self.run.frozen.encode_text([prompt])[0]
        latent = args.resolution // teacher.vae_downsample
        g = torch.Generator().manual_seed(seed)
        z = torch.randn((1, teacher.latent_channels, args.num_frames, latent, latent), generator=g).to(device)
        x = sample_consistency(
            self._unet,
            z,
            lcm_timesteps(steps, num_ddim_timesteps=meta.num_ddim_timesteps),
            NoiseSchedule(meta.beta_schedule),
            cond,
            prediction_type=meta.prediction_type,
            timestep_scaling=meta.timestep_scaling,
            noise_sampler=lambda like: torch.randn(like.shape, generator=g).to(like),
        )
        with visiting(teacher.vae, device, args.offload_frozen) as vae:
            return decode_to_frames(vae, x, teacher.scaling_factor, chunk=8)[0]

    def _write(self, step: int, videos: dict[int, list[np.ndarray]]) -> Path:
        root = self.run.run_dir / "validation"
        root.mkdir(exist_ok=True)
        final, n = root / f"step-{step}", 1
        while final.exists():  # a resumed run repeats a step: keep both
            n += 1
            final = root / f"step-{step}-{n}"
        with atomic_dir(final) as tmp:
            (tmp / "prompts.txt").write_text(
                "".join(f"seed {i}: {p}\n" for i, p in enumerate(self.prompts)), encoding="utf-8"
            )
            for steps, clips in videos.items():
                write_videos(tmp / f"mcm-{steps}-step", clips)
        tb = self.run.tensorboard
        if tb is not None:
            for steps, clips in videos.items():
                _tensorboard_video(tb, f"validation/mcm_{steps}_step", np.concatenate(clips, axis=2), step)
        return final

    # --- held-out consistency error --------------------------------------------------------------------

    def _draw_held_out(self, meta):
        args = self.run.args
        clips = VideoClips(
            self.run.data_root, args.num_frames, args.frame_interval, args.resolution, "center", seed=HELD_OUT_SEED
        )
        batch = next(Batches(clips, HELD_OUT_CLIPS))
        g = torch.Generator().manual_seed(HELD_OUT_SEED)
        x0 = self.run.frozen.encode_video(batch["video"], g)
        b = x0.shape[0]
        draws = [
            (torch.randint(0, meta.num_ddim_timesteps, (b,), generator=g), torch.randn(x0.shape, generator=g))
            for _ in range(HELD_OUT_DRAWS)
        ]
        return x0, self.run.frozen.encode_text(batch["caption"])[0], self.run.frozen.encode_text([""] * b)[0], draws

    def _held_out_error(self, meta) -> float:
        if self.held_out is None:
            self.held_out = self._draw_held_out(meta)
        x0, cond, uncond, draws = self.held_out
        args, device, student = self.run.args, self.run.device, self.run.student
        config = DistillConfig(
            meta.num_ddim_timesteps, meta.timestep_scaling, loss_type="l2", prediction_type=meta.prediction_type
        )
        w = torch.full((x0.shape[0],), (args.w_min + args.w_max) / 2, dtype=torch.float64)

        def teacher(x, t, c):
            with student.disable_adapter():
                return self._unet(x, t, c)

        schedule = NoiseSchedule(meta.beta_schedule)
        losses = [
            distillation_step(
                self._unet,
                teacher,
                x0,
                cond,
                uncond,
                schedule,
                config,
                index=index.to(device),
                w=w,
                noise=noise.to(device),
            )["loss"].item()
            for index, noise in draws
        ]
        return sum(losses) / len(losses)

    # --- best adapter ----------------------------------------------------------------------------------

    def _keep_best(self, step: int, error: float, seconds: float) -> None:
        """Write the adapter next to ``best/`` and swap it in by renames (the old one stays until then)."""
        run_dir = self.run.run_dir
        new, best, old = run_dir / f".best-step-{step}", run_dir / "best", run_dir / ".best-old"
        if new.exists():
            shutil.rmtree(new)
        with atomic_dir(new) as tmp:
            export_adapter(self.run.student, self.run.teacher, self.run.args, step, tmp, seconds)
            (tmp / "best.json").write_text(json.dumps({"step": step, "error": error, "metric": COLUMN}, indent=2))
        if old.exists():
            shutil.rmtree(old)
        if best.exists():
            os.replace(best, old)
        os.replace(new, best)
        shutil.rmtree(old, ignore_errors=True)
        self.best = {"step": step, "error": error}
        self.run.log(f"best adapter so far (step {step}, error {error:.6g}): {best}")


def _read_best(run_dir: Path) -> dict:
    """The best error so far of this run folder (a resumed run continues to compare with it)."""
    best, old = run_dir / "best", run_dir / ".best-old"
    if not best.exists() and old.exists():  # interrupted between the two renames
        os.replace(old, best)
    try:
        return json.loads((best / "best.json").read_text())
    except (OSError, ValueError):
        return {}


def write_videos(stem: Path, clips: list[np.ndarray], fps: int = 8) -> list[Path]:
    """``<stem>.gif`` and ``<stem>.mp4`` (PyAV, when installed) with the clips side by side, and a lossless
    ``<stem>.png``: one row per clip, one column per frame."""
    from PIL import Image

    grid = np.concatenate(clips, axis=2)  # [f, h, n·w, 3]
    frames = [Image.fromarray(f) for f in grid]
    paths = [stem.with_suffix(".gif"), stem.with_suffix(".png")]
    frames[0].save(paths[0], save_all=True, append_images=frames[1:], duration=1000 // fps, loop=0)
    Image.fromarray(np.concatenate([np.concatenate(list(clip), axis=1) for clip in clips], axis=0)).save(paths[1])
    try:
        import av
    except ImportError:
        return paths
    mp4 = stem.with_suffix(".mp4")
    even = grid[:, : grid.shape[1] // 2 * 2, : grid.shape[2] // 2 * 2]  # yuv420p needs even sides
    try:
        with av.open(str(mp4), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = even.shape[2], even.shape[1], "yuv420p"
            for frame in even:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            container.mux(stream.encode())
    except Exception:  # noqa: BLE001 - a PyAV build without libx264: the GIF and PNG remain
        mp4.unlink(missing_ok=True)
        return paths
    return paths + [mp4]


def _tensorboard_video(tb, tag: str, grid: np.ndarray, step: int) -> None:
    """A video in TensorBoard (needs moviepy there); without it, the frames as one image strip."""
    video = torch.from_numpy(grid).permute(0, 3, 1, 2).unsqueeze(0)  # [1, f, 3, h, w]
    try:
        tb.add_video(tag, video, step, fps=8)
    except Exception:  # noqa: BLE001 - add_video needs moviepy
        tb.add_image(tag, np.concatenate(list(grid), axis=1), step, dataformats="HWC")
