"""ComfyUI glue for MCM sampling: the model-sampling object and the KSAMPLER function.

Imported only inside ComfyUI (it imports ``comfy`` at call time, never at module import).
"""

from __future__ import annotations

import torch

from ..mcm.sampler import sample_mcm, ve_consistency_output
from ..mcm.schedule import NoiseSchedule


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


def build_model_sampling(model_patcher, schedule: NoiseSchedule, timestep_scaling: float):
    """A ComfyUI model-sampling object with MCM's schedule and boundary condition.

    Its sigma table is ``schedule``'s (1000 entries, so the UNet is evaluated at the exact integer
    timesteps), and ``calculate_denoised`` returns the consistency output ``f`` with ``c_skip`` on
    the VP sample, at the same integer timestep the UNet sees.
    """
    import comfy.model_sampling as cms

    prediction_type = prediction_type_of(model_patcher.get_model_object("model_sampling"))
    base = cms.V_PREDICTION if prediction_type == "v_prediction" else cms.EPS

    class MCMModelSampling(cms.ModelSamplingDiscrete, base):
        mcm_schedule = schedule
        mcm_timestep_scaling = timestep_scaling

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
    ms.set_sigmas(schedule.comfy_sigmas)
    return ms


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
