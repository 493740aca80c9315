"""Consistency-model boundary conditions and the model parameterisations (ε, v, x0).

The consistency function (LCM/MCM form, paper Eq. 2) is

    f_θ(x_t, t) = c_skip(t) · x_t + c_out(t) · x̂_0(x_t, t)

with ``τ = timestep_scaling · t``, ``c_skip = σ_d² / (τ² + σ_d²)`` and ``c_out = τ / sqrt(τ² + σ_d²)``,
``σ_d = 0.5``. MCM trains and samples with ``timestep_scaling = 4``; LCM (and ComfyUI's stock
``LCM`` model sampling, and diffusers' ``LCMScheduler`` default) use 10. ``c_skip(0) = 1`` and
``c_out(0) = 0`` exactly, so ``f(x, 0) = x``.
"""

from __future__ import annotations

import torch

from .schedule import NoiseSchedule, append_dims, cpu_float64

SIGMA_DATA = 0.5
#: MCM's timestep scaling (official training scripts and demo).
MCM_TIMESTEP_SCALING = 4.0
#: LCM's timestep scaling (LCM scripts, diffusers' default, ComfyUI core's hard-coded value).
LCM_TIMESTEP_SCALING = 10.0

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {list(PREDICTION_TYPES)}")
    return prediction_type


def boundary_scalings(
    t: torch.Tensor | float,
    sigma_data: float = SIGMA_DATA,
    timestep_scaling: float = MCM_TIMESTEP_SCALING,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out)`` at timestep(s) ``t``, as CPU float64 (cast them with ``.to(x)``)."""
    if timestep_scaling <= 0:
        raise ValueError(f"timestep_scaling must be > 0, got {timestep_scaling}")
    if sigma_data <= 0:
        raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
    # Always float64: integer timesteps times a float would otherwise drop to float32.
    # On the CPU because some accelerators (MPS) have no float64.
    tau = cpu_float64(t) * timestep_scaling
    c_skip = sigma_data**2 / (tau**2 + sigma_data**2)
    c_out = tau / (tau**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def predicted_x0(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    alpha_t: torch.Tensor,
    sigma_t: torch.Tensor,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """x̂_0 from a model output; ``alpha_t``/``sigma_t`` are VP scalings broadcastable to ``x_t``."""
    if prediction_type == "epsilon":
        return (x_t - sigma_t * model_output) / alpha_t
    if prediction_type == "v_prediction":
        return alpha_t * x_t - sigma_t * model_output
    if prediction_type == "sample":
        return model_output
    check_prediction_type(prediction_type)
    raise AssertionError("unreachable")


def predicted_eps(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    alpha_t: torch.Tensor,
    sigma_t: torch.Tensor,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """ε̂ from a model output (the counterpart of :func:`predicted_x0`)."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return alpha_t * model_output + sigma_t * x_t
    if prediction_type == "sample":
        return (x_t - alpha_t * model_output) / sigma_t
    check_prediction_type(prediction_type)
    raise AssertionError("unreachable")


def predictions(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    prediction_type: str = "epsilon",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x̂_0, ε̂)`` from a model output at per-sample integer timesteps ``t`` of ``schedule``."""
    alpha, sigma = schedule.alpha_sigma_like(t, x_t)
    return (
        predicted_x0(model_output, x_t, alpha, sigma, prediction_type),
        predicted_eps(model_output, x_t, alpha, sigma, prediction_type),
    )


def consistency_output(
    x_t: torch.Tensor,
    x0_hat: torch.Tensor,
    t: torch.Tensor | float,
    sigma_data: float = SIGMA_DATA,
    timestep_scaling: float = MCM_TIMESTEP_SCALING,
) -> torch.Tensor:
    """``f(x_t, t) = c_skip(t) x_t + c_out(t) x̂_0`` with per-sample ``t`` broadcast over ``x_t``."""
    c_skip, c_out = boundary_scalings(t, sigma_data, timestep_scaling)
    c_skip = append_dims(c_skip, x_t.ndim).to(x_t)
    c_out = append_dims(c_out, x_t.ndim).to(x_t)
    return c_skip * x_t + c_out * x0_hat
