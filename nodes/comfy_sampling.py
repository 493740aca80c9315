"""ComfyUI glue for MCM sampling: the model-sampling object and the KSAMPLER function.

Imported only inside ComfyUI (it imports ``comfy`` at call time, never at module import).
"""

from __future__ import annotations

import logging

import torch

from ..mcm.sampler import sample_mcm, ve_consistency_output
from ..mcm.schedule import NUM_DDIM_TIMESTEPS, NoiseSchedule, ddim_timesteps

log = logging.getLogger("comfyui-mcm")


def prediction_type_of(model_sampling) -> str:
    import comfy.model_sampling as cms

    if isinstance(model_sampling, cms.V_PREDICTION):
        return "v_prediction"
    if isinstance(model_sampling, cms.EPS):  # EPS and its subclasses (stock LCM, an earlier MCM patch)
        return "epsilon"
    raise ValueError(
        f"MCM sampling supports epsilon and v-prediction models; this model samples with "
        f"{type(model_sampling).__name__}"
    )


def build_model_sampling(model_patcher, schedule: NoiseSchedule, timestep_scaling: float,
                         num_ddim_timesteps: int = NUM_DDIM_TIMESTEPS):  # fmt: skip
    """A ComfyUI model-sampling object with MCM's schedule, grid and boundary condition.

    Its sigma table holds only the DDIM grid the student was distilled on (t = 19, 39, …, 999), the way
    ComfyUI's distilled (LCM) sampling does, so that every scheduler lands on trained timesteps: the
    stock ``simple`` scheduler then gives exactly MCM's timesteps (4 steps: 999, 759, 499, 259) and
    plain ``KSampler`` users get MCM with sampler ``lcm``. ``calculate_denoised`` returns the
    consistency output ``f`` (c_skip on the VP sample) at the grid timestep the UNet sees.
    """
    import comfy.model_sampling as cms

    prediction_type = prediction_type_of(model_patcher.get_model_object("model_sampling"))
    base = cms.V_PREDICTION if prediction_type == "v_prediction" else cms.EPS
    grid = ddim_timesteps(num_ddim_timesteps, schedule.num_train_timesteps)
    skip = int(grid[1] - grid[0]) if len(grid) > 1 else schedule.num_train_timesteps
    offset = int(grid[0])

    class MCMModelSampling(cms.ModelSamplingDiscrete, base):
        mcm_schedule = schedule
        mcm_timestep_scaling = timestep_scaling
        mcm_grid = grid

        def timestep(self, sigma):
            dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
            index = dists.abs().argmin(dim=0).view(sigma.shape)
            return (index * skip + offset).to(sigma.device)

        def sigma(self, timestep):
            t = (timestep.float().to(self.log_sigmas.device) - offset) / skip
            t = t.clamp(min=0, max=len(self.sigmas) - 1)
            low, high, w = t.floor().long(), t.ceil().long(), t.frac()
            return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp().to(timestep.device)

        def calculate_denoised(self, sigma, model_output, model_input):
            f = ve_consistency_output(
                model_output.float(),
                model_input.float(),
                sigma,
                schedule,
                t=self.timestep(sigma),
                prediction_type=prediction_type,
                timestep_scaling=timestep_scaling,
            )
            return f.to(model_output.dtype)

    ms = MCMModelSampling(model_patcher.model.model_config)
    ms.set_sigmas(schedule.comfy_sigmas[grid])
    return ms


def is_mcm_sampling(model_sampling) -> bool:
    return hasattr(model_sampling, "mcm_schedule")


def grid_sigmas(model_sampling, timesteps: torch.Tensor) -> torch.Tensor:
    """SIGMAS for integer timesteps in the model's own sigma table (any discrete model sampling)."""
    sigmas = model_sampling.sigma(timesteps.float()).float().cpu()
    return torch.cat([sigmas, sigmas.new_zeros(1)])


@torch.no_grad()
def comfy_sample_mcm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """``sample_mcm`` with ComfyUI's seeded noise, noise scaling and interruption."""
    import comfy.k_diffusion.sampling as kds
    import comfy.model_management as mm

    extra_args = extra_args or {}
    if noise_sampler is None:
        noise_sampler = kds.default_noise_sampler(x, seed=extra_args.get("seed"))
    model_sampling = model.inner_model.inner_model.model_sampling
    if not is_mcm_sampling(model_sampling):
        log.warning(
            "MCM Sampler: the model samples with %s, not MCM's model sampling, so timesteps and the boundary "
            "condition differ from training. Enable mcm_sampling in Load MCM LoRA (and set Use Evolved Sampling "
            "to 'use existing') or add MCM Model Sampling after the ADE nodes.",
            type(model_sampling).__name__,
        )
    return sample_mcm(
        model,
        x,
        sigmas,
        extra_args=extra_args,
        callback=callback,
        disable=disable,
        noise_sampler=noise_sampler,
        renoise=lambda x0, sigma_next, z: model_sampling.noise_scaling(sigma_next, z, x0),
        check_interrupt=mm.throw_exception_if_processing_interrupted,
    )
