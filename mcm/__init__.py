"""Host-independent core of comfyui-mcm: MCM's schedule, boundary conditions, solver and sampler.

Pure torch. Nothing here imports ComfyUI; diffusers is needed only by the format converters.
"""

from .boundary import (
    LCM_TIMESTEP_SCALING,
    MCM_TIMESTEP_SCALING,
    SIGMA_DATA,
    boundary_scalings,
    consistency_output,
    predicted_eps,
    predicted_x0,
)
from .sampler import add_noise, comfy_sigmas, sample_consistency, sample_mcm, ve_consistency_output
from .schedule import (
    COMFY_BETA_NAMES,
    NUM_DDIM_TIMESTEPS,
    NoiseSchedule,
    beta_schedule_from_comfy,
    ddim_timesteps,
    lcm_timesteps,
)
from .solver import ddim_solver_step, ddim_step, solver_timesteps

__version__ = "0.1.0"

__all__ = [
    "COMFY_BETA_NAMES",
    "LCM_TIMESTEP_SCALING",
    "MCM_TIMESTEP_SCALING",
    "NUM_DDIM_TIMESTEPS",
    "SIGMA_DATA",
    "NoiseSchedule",
    "add_noise",
    "beta_schedule_from_comfy",
    "boundary_scalings",
    "comfy_sigmas",
    "consistency_output",
    "ddim_solver_step",
    "ddim_step",
    "ddim_timesteps",
    "lcm_timesteps",
    "predicted_eps",
    "predicted_x0",
    "sample_consistency",
    "sample_mcm",
    "solver_timesteps",
    "ve_consistency_output",
]
