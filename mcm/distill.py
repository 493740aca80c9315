"""One MCM consistency-distillation step, host- and model-independent (pure torch).

Models are callables ``model(x_t, t, cond) -> output`` on latent videos ``(b, c, f, h, w)`` with
per-sample integer timesteps ``t``; outputs are ε (or v / x0) predictions. The trainer wraps its
diffusers UNets in this form; tests use small deterministic functions. The numbers are the official
code's (yhZhai/mcm ``main.py`` and ``scripts/animatediff_distillation.sh``): the 50-point DDIM grid, one
solver hop of 20, teacher CFG in the LCM form ``ε = ε_c + w(ε_c − ε_u)`` with w ~ U[5, 15] per sample,
target = the student itself without gradients, boundary scaling 4, Huber distance with c = 0.001, and the
t = 999 "hard swap".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .boundary import MCM_TIMESTEP_SCALING, check_prediction_type, consistency_output, predictions
from .schedule import NUM_DDIM_TIMESTEPS, NoiseSchedule, append_dims
from .solver import ddim_step, solver_timesteps

__all__ = [
    "DistillConfig",
    "consistency_distance",
    "distillation_step",
    "generated_x0",
    "noisy_latents",
    "sample_guidance",
    "sample_indices",
    "use_generated_trajectories",
]

Model = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


@dataclass(frozen=True)
class DistillConfig:
    """The numbers of one consistency-distillation step (the official scripts' by default): the solver grid,
    the boundary's timestep scaling, the teacher's guidance range (LCM form), the distance, the prediction type
    and the share of real trajectories; the trainer's flags take their defaults from here."""

    num_ddim_timesteps: int = NUM_DDIM_TIMESTEPS
    timestep_scaling: float = MCM_TIMESTEP_SCALING
    w_min: float = 5.0
    w_max: float = 15.0
    loss_type: str = "huber"
    huber_c: float = 0.001
    prediction_type: str = "epsilon"
    lambda_real: float = 0.5
    #: one teacher call on [cond; uncond] instead of two (a memory/speed trade, the same result)
    teacher_cfg_batch: bool = False

    def __post_init__(self):
        check_prediction_type(self.prediction_type)
        if self.loss_type not in ("huber", "l2"):
            raise ValueError(f"loss_type must be 'huber' or 'l2', got {self.loss_type!r}")
        if not 0.0 <= self.lambda_real <= 1.0:
            raise ValueError(f"lambda_real must lie in [0, 1], got {self.lambda_real}")
        if self.w_min > self.w_max:
            raise ValueError(f"w_min ({self.w_min}) > w_max ({self.w_max})")


def sample_indices(batch: int, num_ddim_timesteps: int = NUM_DDIM_TIMESTEPS, generator=None) -> torch.Tensor:
    """Grid index n ~ U{0 … N−1} per sample."""
    return torch.randint(0, num_ddim_timesteps, (batch,), generator=generator)


def sample_guidance(batch: int, w_min: float, w_max: float, generator=None) -> torch.Tensor:
    """Teacher guidance w ~ U[w_min, w_max] per sample (LCM form: effective CFG scale 1 + w)."""
    return w_min + (w_max - w_min) * torch.rand(batch, generator=generator, dtype=torch.float64)


def use_generated_trajectories(lambda_real: float, generator=None) -> bool:
    """Mixed trajectories: one coin per micro-batch; True (student-generated x0) with P = 1 − λ_real."""
    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    return u >= lambda_real


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """``α_t x0 + σ_t ε`` per sample, except that t = T−1 (999) gets pure noise (the hard swap)."""
    alpha, sigma = schedule.alpha_sigma_like(t, x0)
    x_t = alpha * x0 + sigma * noise
    last = append_dims(t == schedule.num_train_timesteps - 1, x0.ndim).to(x0.device)
    return torch.where(last, noise, x_t)


@torch.no_grad()
def generated_x0(
    student: Model, noise: torch.Tensor, cond, schedule: NoiseSchedule, prediction_type: str = "epsilon"
) -> torch.Tensor:
    """The student's one-step sample from pure noise at t = T−1 (plain x̂0, as the official code)."""
    t = torch.full((noise.shape[0],), schedule.num_train_timesteps - 1, dtype=torch.long)
    x0, _ = predictions(student(noise, t, cond), noise, t, schedule, prediction_type)
    return x0


def consistency_distance(
    pred: torch.Tensor, target: torch.Tensor, loss_type: str = "huber", huber_c: float = DistillConfig.huber_c
):
    """Mean pseudo-Huber ``sqrt((p − q)² + c²) − c`` (or mean squared error for ``l2``)."""
    diff = pred.float() - target.float()
    if loss_type == "l2":
        return diff.pow(2).mean()
    return (torch.sqrt(diff.pow(2) + huber_c**2) - huber_c).mean()


def distillation_step(
    student: Model,
    teacher: Model,
    x0: torch.Tensor,
    cond,
    uncond,
    schedule: NoiseSchedule,
    config: DistillConfig = DistillConfig(),
    *,
    index: torch.Tensor,
    w: torch.Tensor,
    noise: torch.Tensor,
    target_model: Model | None = None,
    motion: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    target_motion: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The consistency-distillation loss for one micro-batch (the student's graph kept for backward).

    ``index``/``w``/``noise`` are drawn by the caller (so that tests can fix them). ``target_model``
    defaults to the student (run without gradients); ``motion``/``target_motion`` are the online and
    target motion representations (default: raw latents). Returns ``loss``, the student's consistency
    output ``model_pred`` (the adversarial branch decodes it), ``target``, ``x_t`` and ``x_prev``.
    """
    pt = config.prediction_type
    target_model = student if target_model is None else target_model
    target_motion = motion if target_motion is None else target_motion
    t_start, t_end = solver_timesteps(index, config.num_ddim_timesteps, schedule.num_train_timesteps)
    x_t = noisy_latents(x0, noise, t_start, schedule)

    x0_student, _ = predictions(student(x_t, t_start, cond), x_t, t_start, schedule, pt)
    model_pred = consistency_output(x_t, x0_student, t_start, timestep_scaling=config.timestep_scaling)

    with torch.no_grad():
        if config.teacher_cfg_batch:
            both = teacher(torch.cat([x_t, x_t]), torch.cat([t_start, t_start]), torch.cat([cond, uncond]))
            out_c, out_u = both.chunk(2)
        else:
            out_c, out_u = teacher(x_t, t_start, cond), teacher(x_t, t_start, uncond)
        x0_c, eps_c = predictions(out_c, x_t, t_start, schedule, pt)
        x0_u, eps_u = predictions(out_u, x_t, t_start, schedule, pt)
        w = append_dims(w, x_t.ndim).to(x_t)
        x0_g = x0_c + w * (x0_c - x0_u)
        eps_g = eps_c + w * (eps_c - eps_u)
        x_prev = ddim_step(x0_g, eps_g, t_end, schedule)
        x0_target, _ = predictions(target_model(x_prev, t_end, cond), x_prev, t_end, schedule, pt)
        target = consistency_output(x_prev, x0_target, t_end, timestep_scaling=config.timestep_scaling)
        target_repr = target_motion(target)

    loss = consistency_distance(motion(model_pred), target_repr, config.loss_type, config.huber_c)
    return {
        "loss": loss,
        "model_pred": model_pred,
        "target": target,
        "x_t": x_t,
        "x_prev": x_prev,
        "t_start": t_start,
        "t_end": t_end,
    }
