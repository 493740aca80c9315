"""The DDIM ODE solver step that consistency distillation takes on the teacher (paper Eq. 3, Ψ).

Training draws a grid index ``n`` and sets ``t_{n+k} = grid[n]`` and ``t_n = t_{n+k} - k`` with
``k = T // N`` (20 for the 50-step grid), clamped at 0. One deterministic DDIM step (η = 0) moves the
teacher's prediction from ``t_{n+k}`` to ``t_n``:

    x_{t_n} = sqrt(ᾱ_{t_n}) · x̂_0 + sqrt(1 - ᾱ_{t_n}) · ε̂

The clamp makes the lowest hop (19 → -1) land on ᾱ_0, as the official solver does; this equals
diffusers' ``DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=False)``.
"""

from __future__ import annotations

import torch

from .boundary import predictions
from .schedule import NUM_DDIM_TIMESTEPS, NoiseSchedule, ddim_timesteps


def solver_timesteps(
    index: torch.Tensor,
    num_ddim_timesteps: int = NUM_DDIM_TIMESTEPS,
    num_train_timesteps: int = 1000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t_{n+k}, t_n)`` for grid indices ``index`` in ``[0, N)``; ``t_n`` is clamped at 0."""
    index = torch.as_tensor(index, dtype=torch.long)
    if torch.any(index < 0) or torch.any(index >= num_ddim_timesteps):
        raise ValueError(f"grid index must lie in [0, {num_ddim_timesteps}), got {index.tolist()}")
    grid = ddim_timesteps(num_ddim_timesteps, num_train_timesteps).to(index.device)
    k = num_train_timesteps // num_ddim_timesteps
    t_n_k = grid[index]
    return t_n_k, (t_n_k - k).clamp(min=0)


def ddim_step(
    x0_hat: torch.Tensor,
    eps_hat: torch.Tensor,
    t_n: torch.Tensor,
    schedule: NoiseSchedule,
) -> torch.Tensor:
    """One deterministic DDIM step to ``t_n`` (per-sample), given x̂_0 and ε̂ at the previous time."""
    alpha_n, sigma_n = schedule.alpha_sigma_like(t_n, x0_hat)
    return alpha_n * x0_hat + sigma_n * eps_hat


def ddim_solver_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t_n_k: torch.Tensor,
    t_n: torch.Tensor,
    schedule: NoiseSchedule,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """Ψ(x_{t_{n+k}}, t_{n+k}, t_n): DDIM from ``t_n_k`` to ``t_n`` given a raw model output.

    For classifier-free guidance apply the guidance to the model output (equivalently to x̂_0 and ε̂,
    which are linear in it) before calling this.
    """
    x0_hat, eps_hat = predictions(model_output, x_t, t_n_k, schedule, prediction_type)
    return ddim_step(x0_hat, eps_hat, t_n, schedule)
