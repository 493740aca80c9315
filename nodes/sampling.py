"""MCM sampling nodes: model sampling patch, grid scheduler (SIGMAS) and sampler (SAMPLER).

V1 nodes, thin: each clones its input and makes one call into ``mcm/`` via ``comfy_sampling``.
"""

from __future__ import annotations

from ..mcm.boundary import MCM_TIMESTEP_SCALING
from ..mcm.schedule import NUM_DDIM_TIMESTEPS, NoiseSchedule, lcm_timesteps

CATEGORY = "sampling/MCM"

#: Dropdown label -> diffusers beta-schedule name. Labels give both naming conventions.
BETA_CHOICES = {
    "sqrt_linear (diffusers linear; MCM AnimateDiff demo)": "linear",
    "linear (diffusers scaled_linear; MCM training, SD default)": "scaled_linear",
}


class MCMModelSampling:
    DESCRIPTION = (
        "Patches a copy of the model to sample as MCM was trained: its beta schedule, the exact grid "
        "timesteps and the consistency boundary condition with timestep scaling 4."
    )
    CATEGORY = CATEGORY
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with MCM model sampling (the input model is left untouched).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The SD1.5 (+ AnimateDiff) model with the MCM LoRA applied."}),
                "beta_schedule": (
                    list(BETA_CHOICES),
                    {
                        "default": next(iter(BETA_CHOICES)),
                        "tooltip": "Noise schedule. Names are ComfyUI's, diffusers' in brackets: ComfyUI "
                        "sqrt_linear = diffusers linear (the official MCM AnimateDiff demo); ComfyUI linear = "
                        "diffusers scaled_linear (what the official MCM training used).",
                    },
                ),
                "timestep_scaling": (
                    "FLOAT",
                    {
                        "default": MCM_TIMESTEP_SCALING,
                        "min": 0.1,
                        "max": 100.0,
                        "step": 0.1,
                        "tooltip": "Consistency boundary scaling: MCM was trained with 4 (LCM uses 10).",
                    },
                ),
            }
        }

    def patch(self, model, beta_schedule, timestep_scaling):
        from .comfy_sampling import build_model_sampling

        if beta_schedule not in BETA_CHOICES:
            raise ValueError(f"MCM Model Sampling: unknown beta_schedule {beta_schedule!r}; expected one of {list(BETA_CHOICES)}")
        m = model.clone()
        schedule = NoiseSchedule(BETA_CHOICES[beta_schedule])
        m.add_object_patch("model_sampling", build_model_sampling(m, schedule, timestep_scaling))
        return (m,)


class MCMScheduler:
    DESCRIPTION = (
        "Sigmas at MCM's training timesteps (the 50-step DDIM grid; 4 steps = 999, 759, 499, 259). "
        "Denoise below 1 starts lower on the grid, for video-to-video."
    )
    CATEGORY = CATEGORY
    FUNCTION = "get_sigmas"
    RETURN_TYPES = ("SIGMAS",)
    OUTPUT_TOOLTIPS = ("Sigmas for SamplerCustom / SamplerCustomAdvanced.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model to sample (its noise schedule converts timesteps to sigmas)."}),
                "steps": (
                    "INT",
                    {"default": 4, "min": 1, "max": NUM_DDIM_TIMESTEPS, "tooltip": "MCM steps: 1, 2, 4 or 8 were evaluated; 4 is the default."},
                ),
                "denoise": (
                    "FLOAT",
                    {"default": 1.0, "min": 0.02, "max": 1.0, "step": 0.01, "tooltip": "1.0 for text-to-video; lower keeps more of the input video."},
                ),
            }
        }

    def get_sigmas(self, model, steps, denoise):
        from .comfy_sampling import grid_sigmas

        timesteps = lcm_timesteps(int(steps), strength=float(denoise))
        return (grid_sigmas(model.get_model_object("model_sampling"), timesteps),)


class MCMSampler:
    DESCRIPTION = (
        "Multistep consistency sampler: jump to the clean video, re-noise to the next sigma. "
        "Use cfg 1 (the negative prompt is then inactive)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "get_sampler"
    RETURN_TYPES = ("SAMPLER",)
    OUTPUT_TOOLTIPS = ("Few-step sampler for MCM weights.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def get_sampler(self):
        import comfy.samplers

        from .comfy_sampling import comfy_sample_mcm

        return (comfy.samplers.KSAMPLER(comfy_sample_mcm),)


NODE_CLASS_MAPPINGS = {
    "MCM_ModelSampling": MCMModelSampling,
    "MCM_Scheduler": MCMScheduler,
    "MCM_Sampler": MCMSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "MCM_ModelSampling": "MCM Model Sampling",
    "MCM_Scheduler": "MCM Scheduler",
    "MCM_Sampler": "MCM Sampler",
}
