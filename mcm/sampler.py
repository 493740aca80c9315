"""Multistep consistency sampling (LCM Algorithm 1 / MCM inference), host-independent.

Two equivalent forms:

* :func:`sample_consistency` works in diffusers' variance-preserving space over any
  ``model(x_t, t, cond) -> model_output`` (ε, v or x0 prediction). It is what the trainer's previews
  and the parity tests use.
* :func:`sample_mcm` has the k-diffusion sampler signature that ComfyUI's ``KSAMPLER`` wraps: it works
  on ComfyUI's variance-exploding ``x = x_0 + s·ε`` and a denoiser ``model(x, sigma)`` that already
  returns the consistency output ``f`` (see :func:`ve_consistency_output`, which the node's
  model-sampling patch applies).

Each step: evaluate ``f(x_{τ_i}, τ_i)``; if it is the last step return it, else re-noise it to the next
timestep with fresh noise: ``x_{τ_{i+1}} = sqrt(ᾱ) f + sqrt(1 - ᾱ) z``.

Beside them, :func:`sample_ddim` is the teacher's sampler in the same shape: deterministic DDIM (η = 0)
with classifier-free guidance, what MCM is compared with and distils from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .boundary import (
    MCM_TIMESTEP_SCALING,
    SIGMA_DATA,
    check_prediction_type,
    consistency_output,
    predicted_x0,
    predictions,
)
from .schedule import NoiseSchedule, append_dims, cpu_float64
from .solver import ddim_step

ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
Callback = Callable[[dict], None]


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int, schedule: NoiseSchedule) -> torch.Tensor:
    """Forward diffusion ``x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) z`` at integer (per-sample) ``t``."""
    alpha, sigma = schedule.alpha_sigma_like(t, x0)
    return alpha * x0 + sigma * noise


def _per_sample(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.to(device=x.device, dtype=torch.long).expand(x.shape[0])


@torch.no_grad()
def sample_consistency(
    model: ModelFn,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    schedule: NoiseSchedule,
    cond: Any = None,
    *,
    prediction_type: str = "epsilon",
    timestep_scaling: float = MCM_TIMESTEP_SCALING,
    sigma_data: float = SIGMA_DATA,
    noise_sampler: Callable[[torch.Tensor], torch.Tensor] | None = None,
    callback: Callback | None = None,
    check_interrupt: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Sample with a consistency model on the given (descending, integer) ``timesteps``.

    Args:
        model: ``model(x_t, t, cond)`` with ``t`` a long tensor of shape ``(x.shape[0],)``. Any latent
            layout works: video ``(b, c, f, h, w)`` or ComfyUI's frames-as-batch ``(b·f, c, h, w)``.
        x: the sample at ``timesteps[0]``: pure noise ``z`` for text-to-video (t = 999), or
            :func:`add_noise` of an encoded video for video-to-video.
        timesteps: e.g. :func:`mcm.schedule.lcm_timesteps`.
        noise_sampler: draws the re-noising ``z`` given a tensor of the target shape (default
            ``torch.randn_like``); pass a seeded one for reproducible samples.
        callback: called after every model evaluation with ``{"i", "t", "x", "denoised", "total"}``
            (``x`` is the sample the step started from, ``denoised`` its consistency output).
        check_interrupt: called before every model evaluation; raise from it to stop.

    Returns:
        The consistency output ``f`` of the last step (the clean latent).
    """
    check_prediction_type(prediction_type)
    timesteps = _check_timesteps(timesteps)
    noise_sampler = noise_sampler or torch.randn_like
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        if check_interrupt is not None:
            check_interrupt()
        t_b = _per_sample(t, x)
        model_output = model(x, t_b, cond)
        alpha, sigma = schedule.alpha_sigma_like(t_b, x)
        x0_hat = predicted_x0(model_output, x, alpha, sigma, prediction_type)
        denoised = consistency_output(x, x0_hat, t_b, sigma_data, timestep_scaling)
        if callback is not None:
            callback({"i": i, "t": int(t), "x": x, "denoised": denoised, "total": total})
        if i + 1 < total:
            x = add_noise(denoised, noise_sampler(denoised), _per_sample(timesteps[i + 1], x), schedule)
        else:
            x = denoised
    return x


def _check_timesteps(timesteps) -> torch.Tensor:
    timesteps = torch.as_tensor(timesteps, dtype=torch.long)
    if timesteps.ndim != 1 or len(timesteps) == 0:
        raise ValueError(f"timesteps must be a non-empty 1-d sequence, got shape {tuple(timesteps.shape)}")
    if torch.any(timesteps[1:] >= timesteps[:-1]):
        raise ValueError(f"timesteps must be strictly descending, got {timesteps.tolist()}")
    return timesteps


@torch.no_grad()
def sample_ddim(
    model: ModelFn,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    schedule: NoiseSchedule,
    cond: Any = None,
    uncond: Any = None,
    *,
    guidance: float = 1.0,
    prediction_type: str = "epsilon",
    callback: Callback | None = None,
    check_interrupt: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (Song et al. 2021, η = 0) with classifier-free guidance, on the given (descending,
    integer) ``timesteps``: the teacher's sampler.

    With ``uncond`` the model runs once per step on ``[x; x]`` with ``[cond; uncond]`` and the output is
    guided as ``u + guidance · (c − u)`` (guidance is linear, so it acts on a v output as on an ε one).
    Each step moves ``x̂_0, ε̂`` to the next timestep (:func:`mcm.solver.ddim_step`); the last step returns
    ``x̂_0``. On the 50-point grid this is diffusers' ``DDIMScheduler(timestep_spacing="trailing",
    set_alpha_to_one=True)``. ``callback`` and ``check_interrupt`` as in :func:`sample_consistency`.
    """
    check_prediction_type(prediction_type)
    timesteps = _check_timesteps(timesteps)
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        if check_interrupt is not None:
            check_interrupt()
        t_b = _per_sample(t, x)
        if uncond is None:
            output = model(x, t_b, cond)
        else:
            c, u = model(torch.cat([x, x]), torch.cat([t_b, t_b]), torch.cat([cond, uncond])).chunk(2)
            output = u + guidance * (c - u)
        x0_hat, eps_hat = predictions(output, x, t_b, schedule, prediction_type)
        if callback is not None:
            callback({"i": i, "t": int(t), "x": x, "denoised": x0_hat, "total": total})
        x = ddim_step(x0_hat, eps_hat, _per_sample(timesteps[i + 1], x), schedule) if i + 1 < total else x0_hat
    return x


def ve_consistency_output(
    model_output: torch.Tensor,
    x: torch.Tensor,
    sigma: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    t: torch.Tensor | None = None,
    prediction_type: str = "epsilon",
    timestep_scaling: float = MCM_TIMESTEP_SCALING,
    sigma_data: float = SIGMA_DATA,
) -> torch.Tensor:
    """The consistency output ``f`` for ComfyUI's VE sample ``x = x_0 + s·ε`` at sigma(s) ``s``.

    The UNet sees the VP sample ``x / sqrt(1 + s²)``; ``c_skip`` is applied to that VP sample, as in
    training and in diffusers (ComfyUI's stock ``LCM`` applies it to the VE ``x``, which differs where
    ``c_skip`` is not negligible). The boundary is evaluated at ``t``: pass the timestep the UNet was
    given; by default the (fractional) ``t`` whose sigma is ``s``.
    """
    # Coefficients in CPU float64 (some accelerators have no float64), then cast to x.
    sigma = cpu_float64(sigma).reshape(-1).expand(x.shape[0])
    t = schedule.t_at(sigma) if t is None else torch.as_tensor(t).detach().cpu().reshape(-1).expand(x.shape[0])
    s = append_dims(sigma, x.ndim)
    alpha_vp = (1.0 / (1.0 + s**2)).sqrt().to(x)
    sigma_vp = (s**2 / (1.0 + s**2)).sqrt().to(x)
    x_vp = x * alpha_vp
    x0_hat = predicted_x0(model_output, x_vp, alpha_vp, sigma_vp, prediction_type)
    return consistency_output(x_vp, x0_hat, t, sigma_data, timestep_scaling)


def comfy_sigmas(timesteps: torch.Tensor, schedule: NoiseSchedule, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """ComfyUI ``SIGMAS`` for integer ``timesteps``: their sigmas, then a final 0 (ComfyUI uses float32)."""
    timesteps = torch.as_tensor(timesteps, dtype=torch.long)
    sigmas = schedule.comfy_sigmas[timesteps.clamp(min=0)]
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(dtype)


def _renoise(x0: torch.Tensor, sigma_next: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return x0 + sigma_next * z


def _steps(n: int, disable: bool | None):
    try:
        from tqdm.auto import trange
    except ImportError:  # tqdm is optional for the core
        return range(n)
    return trange(n, disable=disable)


@torch.no_grad()
def sample_mcm(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    noise_sampler: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    renoise: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = _renoise,
    check_interrupt: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Multistep consistency sampling in k-diffusion form: jump to ``f``, re-noise to the next sigma.

    ``model(x, sigma * ones(b), **extra_args)`` must return the consistency output ``f`` (ComfyUI's
    denoiser with MCM's model sampling). ``noise_sampler(sigma, sigma_next)`` draws ``z``;
    ``renoise(f, sigma_next, z)`` defaults to ``f + sigma_next·z`` (ComfyUI's ``noise_scaling``).
    """
    extra_args = extra_args or {}
    if noise_sampler is None:
        noise_sampler = lambda sigma, sigma_next: torch.randn_like(x)  # noqa: E731
    s_in = x.new_ones([x.shape[0]])
    for i in _steps(len(sigmas) - 1, disable):
        if check_interrupt is not None:
            check_interrupt()
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = renoise(denoised, sigmas[i + 1], noise_sampler(sigmas[i], sigmas[i + 1])) if sigmas[i + 1] > 0 else denoised
    return x
