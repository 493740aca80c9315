"""Noise schedules, the DDIM solver grid and MCM's inference timesteps.

Symbols follow the paper (and LCM): ``t`` is a discrete DDPM timestep in ``[0, T)``,
``alpha_bar_t`` (ᾱ_t) the cumulative product of ``1 - beta``, ``alpha_t = sqrt(ᾱ_t)`` and
``sigma_t = sqrt(1 - ᾱ_t)`` the variance-preserving (VP) scalings used by diffusers, so that
``x_t = alpha_t * x_0 + sigma_t * eps``. ComfyUI (k-diffusion) instead works with the
variance-exploding sigma ``s_t = sigma_t / alpha_t = sqrt((1 - ᾱ_t) / ᾱ_t)`` and
``x = x_0 + s_t * eps``; :meth:`NoiseSchedule.comfy_sigmas` and friends convert between them.

Naming trap: diffusers ``"linear"`` is ComfyUI's ``"sqrt_linear"``, and diffusers
``"scaled_linear"`` (the Stable Diffusion default) is ComfyUI's ``"linear"``. This module speaks
diffusers names; :data:`COMFY_BETA_NAMES` translates.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
#: Size of the DDIM solver grid that MCM (and LCM) distil on: the "skipping step" k = T // N.
NUM_DDIM_TIMESTEPS = 50

#: diffusers beta-schedule name -> the name ComfyUI uses for the same betas.
COMFY_BETA_NAMES = {"linear": "sqrt_linear", "scaled_linear": "linear"}
BETA_SCHEDULES = tuple(COMFY_BETA_NAMES)


def cpu_float64(x) -> torch.Tensor:
    """``x`` as a CPU float64 tensor; Python numbers keep their full precision."""
    if torch.is_tensor(x):
        return x.detach().cpu().to(torch.float64)
    return torch.tensor(x, dtype=torch.float64)


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a per-sample ``(b,)`` tensor broadcasts against ``ndim`` dims."""
    v = torch.as_tensor(v)
    if v.ndim > ndim:
        raise ValueError(f"cannot broadcast a {v.ndim}-d tensor against a {ndim}-d one")
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def beta_schedule_from_comfy(name: str) -> str:
    """Translate a ComfyUI beta-schedule name (``sqrt_linear``/``linear``) to the diffusers name."""
    for diffusers_name, comfy_name in COMFY_BETA_NAMES.items():
        if comfy_name == name:
            return diffusers_name
    raise ValueError(
        f"unknown ComfyUI beta schedule {name!r}; expected one of {sorted(COMFY_BETA_NAMES.values())} "
        f"(ComfyUI 'sqrt_linear' = diffusers 'linear', ComfyUI 'linear' = diffusers 'scaled_linear')"
    )


def check_beta_schedule(name: str) -> str:
    if name not in BETA_SCHEDULES:
        hint = ""
        if name == "sqrt_linear":
            hint = " (ComfyUI's 'sqrt_linear' is diffusers' 'linear')"
        raise ValueError(f"unknown beta schedule {name!r}; expected one of {list(BETA_SCHEDULES)}{hint}")
    return name


def make_betas(
    beta_schedule: str = "scaled_linear",
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
    beta_start: float = BETA_START,
    beta_end: float = BETA_END,
) -> torch.Tensor:
    """Betas exactly as diffusers builds them (float32), returned as float64.

    MCM was trained (and its demo samples) with diffusers' float32 tables, so computing them the same
    way keeps training, our sampler and diffusers bit-compatible.
    """
    check_beta_schedule(beta_schedule)
    if not 0.0 < beta_start < beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start < beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    else:  # scaled_linear
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    return betas.double()


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete DDPM noise schedule with the conversions MCM needs.

    ``alphas_cumprod`` (ᾱ) is computed in float32 like diffusers and stored as float64.
    Every derived table is float64; callers cast to their working dtype.
    """

    beta_schedule: str = "scaled_linear"
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
    beta_start: float = BETA_START
    beta_end: float = BETA_END

    def __post_init__(self):
        check_beta_schedule(self.beta_schedule)

    @cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        betas = make_betas(self.beta_schedule, self.num_train_timesteps, self.beta_start, self.beta_end)
        return torch.cumprod(1.0 - betas.float(), dim=0).double()

    @property
    def comfy_name(self) -> str:
        return COMFY_BETA_NAMES[self.beta_schedule]

    @cached_property
    def comfy_sigmas(self) -> torch.Tensor:
        """ComfyUI/k-diffusion sigmas s_t = sqrt((1 - ᾱ_t) / ᾱ_t), one per integer timestep."""
        a = self.alphas_cumprod
        return ((1.0 - a) / a).sqrt()

    @cached_property
    def _log_sigmas(self) -> torch.Tensor:
        return self.comfy_sigmas.log()

    def alpha_sigma(self, t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """VP scalings ``(alpha_t, sigma_t) = (sqrt(ᾱ_t), sqrt(1 - ᾱ_t))`` at integer timesteps ``t``.

        Negative ``t`` (one DDIM hop below the first grid point) is clamped to 0, as the official
        solver does. Tables live on the CPU in float64 (some accelerators have no float64), so the
        results are CPU float64: cast them with ``.to(x)``.
        """
        t = torch.as_tensor(t).detach().cpu().long().clamp(min=0)
        self._check_range(t)
        a = self.alphas_cumprod[t]
        return a.sqrt(), (1.0 - a).sqrt()

    def alpha_sigma_like(self, t: torch.Tensor | int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`alpha_sigma` at per-sample ``t``, shaped to broadcast against ``x`` and cast to its dtype
        and device: the lookup every formula on ``x_t = alpha_t x_0 + sigma_t eps`` starts with."""
        alpha, sigma = self.alpha_sigma(t)
        return append_dims(alpha, x.ndim).to(x), append_dims(sigma, x.ndim).to(x)

    def sigma_at(self, t: torch.Tensor | float) -> torch.Tensor:
        """ComfyUI sigma at (possibly fractional) timestep ``t``: log-sigma linear interpolation.

        Same interpolation as ComfyUI's ``ModelSamplingDiscrete.sigma``. Returns CPU float64.
        """
        t = cpu_float64(t)
        if torch.any(t < 0) or torch.any(t > self.num_train_timesteps - 1):
            raise ValueError(f"timestep must lie in [0, {self.num_train_timesteps - 1}], got {t.tolist()}")
        log_sigmas = self._log_sigmas
        low = t.floor().long()
        high = t.ceil().long()
        w = t - low
        return ((1.0 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()

    def t_at(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Fractional timestep whose :meth:`sigma_at` is ``sigma`` (exact inverse, float64).

        Sigmas outside the table are clamped to its ends. Returns CPU float64.
        """
        sigma = cpu_float64(sigma)
        if torch.any(sigma <= 0):
            raise ValueError(f"sigma must be > 0 (sigma 0 is the clean sample, not a timestep), got {sigma.tolist()}")
        log_sigmas = self._log_sigmas
        log_s = sigma.log().clamp(log_sigmas[0], log_sigmas[-1])
        high = torch.searchsorted(log_sigmas, log_s.reshape(-1)).clamp(1, len(log_sigmas) - 1).reshape(log_s.shape)
        low = high - 1
        w = (log_s - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])
        return low.double() + w

    def _check_range(self, t: torch.Tensor) -> None:
        if torch.any(t >= self.num_train_timesteps):
            raise ValueError(f"timestep must be < {self.num_train_timesteps}, got {t.max().item()}")


def ddim_timesteps(
    num_ddim_timesteps: int = NUM_DDIM_TIMESTEPS, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> torch.Tensor:
    """The DDIM solver grid, ascending: ``t = (i + 1) * k - 1`` with ``k = T // N`` (19, 39, ..., 999)."""
    if not 1 <= num_ddim_timesteps <= num_train_timesteps:
        raise ValueError(f"num_ddim_timesteps must lie in [1, {num_train_timesteps}], got {num_ddim_timesteps}")
    k = num_train_timesteps // num_ddim_timesteps
    return torch.arange(1, num_ddim_timesteps + 1, dtype=torch.long) * k - 1


def lcm_timesteps(
    num_steps: int,
    strength: float = 1.0,
    num_ddim_timesteps: int = NUM_DDIM_TIMESTEPS,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
) -> torch.Tensor:
    """MCM/LCM inference timesteps for ``num_steps`` steps, descending (4 steps: 999, 759, 499, 259).

    Identical to diffusers ``LCMScheduler.set_timesteps(num_steps, original_inference_steps=N,
    strength=strength)``: the grid is cut to its first ``int(N * strength)`` points (so a
    video-to-video ``strength`` < 1 starts lower), reversed, and ``num_steps`` evenly spaced indices
    ``floor(linspace(0, len, num_steps, endpoint=False))`` are taken from it.
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool):
        raise ValueError(f"num_steps must be an int, got {num_steps!r}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must lie in (0, 1], got {strength}")
    if not 1 <= num_steps <= num_ddim_timesteps:
        raise ValueError(
            f"num_steps must lie in [1, {num_ddim_timesteps}] (the size of the DDIM grid MCM was distilled on), "
            f"got {num_steps}"
        )
    grid = ddim_timesteps(num_ddim_timesteps, num_train_timesteps)
    usable = int(num_ddim_timesteps * strength)
    if usable < num_steps:
        raise ValueError(
            f"strength {strength} keeps only {usable} of the {num_ddim_timesteps} grid timesteps, fewer than "
            f"num_steps={num_steps}; raise strength to at least {num_steps / num_ddim_timesteps:g} or use fewer steps"
        )
    grid = grid[:usable].flip(0)
    idx = (torch.arange(num_steps, dtype=torch.float64) * (usable / num_steps)).floor().long()
    return grid[idx]
