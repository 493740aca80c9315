"""Sampling videos from a teacher and its MCM student, decoded to frames: what evaluation, validation and the
toy evaluation look at.

:class:`VideoSampler` samples prompts from seeded noise with the teacher (:func:`mcm.sampler.sample_ddim`:
DDIM with classifier-free guidance) or with MCM (:func:`mcm.sampler.sample_consistency`, the sampler the
nodes use), on a peft-wrapped video UNet whose adapter is the student (with the adapter disabled it is the
teacher, as in the trainer). :func:`decode_to_frames` turns latents into ``uint8`` frames.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from mcm.boundary import MCM_TIMESTEP_SCALING
from mcm.sampler import sample_consistency, sample_ddim
from mcm.schedule import NUM_DDIM_TIMESTEPS, NoiseSchedule, ddim_timesteps, lcm_timesteps
from training.models import call_unet


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """``[f, 3, h, w]`` in [-1, 1] → ``uint8 [f, h, w, 3]``."""
    return ((frames.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def decode_to_frames(vae, latents: torch.Tensor, scaling_factor: float, chunk: int = 64) -> list[np.ndarray]:
    """``(b, c, f, h, w)`` scaled latents → one ``uint8 [f, H, W, 3]`` video per sample, decoded ``chunk``
    frames at a time on the VAE's device and dtype."""
    b, _, f = latents.shape[:3]
    flat = latents.transpose(1, 2).flatten(0, 1) / scaling_factor
    pixels = torch.cat([vae.decode(part.to(vae.device, vae.dtype)).sample.float() for part in flat.split(chunk)])
    return [to_uint8(video) for video in pixels.unflatten(0, (b, f))]


class VideoSampler:
    """Teacher (DDIM + classifier-free guidance) and MCM samples of prompts from a teacher and a LoRA student.

    ``unet`` is a peft-wrapped video UNet whose adapter is the student; a plain UNet samples the teacher only.
    ``encode_text(captions)`` gives the UNet's conditioning. ``timestep_scaling``, ``prediction_type`` and
    ``num_ddim_timesteps`` are the student's sampling settings (an adapter's ``mcm.*`` metadata; the defaults
    are MCM's). Every method draws its starting noise from ``seed``, so methods compare clip by clip.
    """

    def __init__(
        self,
        unet,
        vae,
        encode_text,
        scaling_factor: float,
        frames: int,
        size: int,
        down: int = 2,
        schedule: NoiseSchedule | None = None,
        guidance: float = 4.0,
        *,
        timestep_scaling: float = MCM_TIMESTEP_SCALING,
        prediction_type: str = "epsilon",
        num_ddim_timesteps: int = NUM_DDIM_TIMESTEPS,
    ):
        self.unet, self.vae, self.encode_text = unet, vae, encode_text
        self.scaling_factor, self.frames, self.size, self.down = scaling_factor, frames, size, down
        self.schedule = schedule or NoiseSchedule("scaled_linear")
        self.guidance = guidance
        self.timestep_scaling = timestep_scaling
        self.prediction_type = prediction_type
        self.num_ddim_timesteps = num_ddim_timesteps

    @property
    def has_student(self) -> bool:
        return hasattr(self.unet, "disable_adapter")

    def _noise(self, n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        c = int(self.unet.config.in_channels) if hasattr(self.unet, "config") else 4
        return torch.randn((n, c, self.frames, self.size // self.down, self.size // self.down), generator=g)

    def _call(self, x, t, cond):
        return call_unet(self.unet, x, t, cond)

    def decode(self, latents: torch.Tensor) -> list[np.ndarray]:
        return decode_to_frames(self.vae, latents, self.scaling_factor)

    @torch.no_grad()
    def teacher(self, prompts: list[str], steps: int, seed: int, guidance: float | None = None) -> torch.Tensor:
        """DDIM with CFG on ``steps`` points (50: the DDIM grid; fewer: MCM's own timesteps)."""
        guidance = self.guidance if guidance is None else guidance
        timesteps = ddim_timesteps(50).flip(0) if steps == 50 else lcm_timesteps(steps)
        cond, uncond = self.encode_text(prompts), self.encode_text([""] * len(prompts))
        x = self._noise(len(prompts), seed)
        with self.unet.disable_adapter() if self.has_student else contextlib.nullcontext():
            return sample_ddim(
                self._call,
                x,
                timesteps,
                self.schedule,
                cond,
                uncond,
                guidance=guidance,
                prediction_type=self.prediction_type,
            )

    @torch.no_grad()
    def mcm(self, prompts: list[str], steps: int, seed: int) -> torch.Tensor:
        """MCM's multistep consistency sampling in ``steps`` steps (the student's settings)."""
        cond = self.encode_text(prompts)
        g = torch.Generator().manual_seed(seed + 1)
        return sample_consistency(
            self._call,
            self._noise(len(prompts), seed),
            lcm_timesteps(steps, num_ddim_timesteps=self.num_ddim_timesteps),
            self.schedule,
            cond,
            prediction_type=self.prediction_type,
            timestep_scaling=self.timestep_scaling,
            noise_sampler=lambda x: torch.randn(x.shape, generator=g),
        )
