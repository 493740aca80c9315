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


class MCMKSampler:
    DESCRIPTION = (
        "All-in-one MCM sampling: the trained timesteps (the 50-step DDIM grid), the consistency sampler, "
        "previews and progress. Works in ADE graphs (after Use Evolved Sampling or AnimateDiff Loader). If the "
        "model has no MCM model sampling yet (no Load MCM LoRA upstream), the official demo's is applied."
    )
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The sampled latent video (frames along the batch).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model with the MCM adapter (Load MCM LoRA), inside an ADE graph."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Seed of the initial and the re-noising noise."}),  # fmt: skip
                "steps": ("INT", {"default": 4, "min": 1, "max": NUM_DDIM_TIMESTEPS,
                                  "tooltip": "MCM steps: 1, 2, 4 or 8 were evaluated; 4 is the default."}),  # fmt: skip
                "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "MCM is trained for cfg 1 (one UNet pass per step, negative prompt unused)."}),  # fmt: skip
                "positive": ("CONDITIONING", {"tooltip": "The prompt."}),
                "negative": ("CONDITIONING", {"tooltip": "Used only when cfg > 1."}),
                "latent_image": ("LATENT", {"tooltip": "Empty latent (batch = frames) or an encoded video for video-to-video."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.02, "max": 1.0, "step": 0.01,
                                      "tooltip": "1.0 for text-to-video; lower keeps more of the input video."}),  # fmt: skip
            }
        }

    def sample(self, model, seed, steps, cfg, positive, negative, latent_image, denoise):
        import comfy.sample
        import comfy.samplers
        import comfy.utils
        import latent_preview

        from .comfy_sampling import build_model_sampling, comfy_sample_mcm, grid_sigmas, is_mcm_sampling

        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"MCM KSampler: steps = {steps!r}; expected 1 or more (MCM: 1, 2, 4 or 8)")
        if not is_mcm_sampling(model.get_model_object("model_sampling")):
            model = model.clone()
            schedule = NoiseSchedule(next(iter(BETA_CHOICES.values())))
            model.add_object_patch("model_sampling", build_model_sampling(model, schedule, MCM_TIMESTEP_SCALING))
        sigmas = grid_sigmas(model.get_model_object("model_sampling"), lcm_timesteps(int(steps), strength=float(denoise)))
        latent = latent_image.copy()
        samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
        x0_output = {}
        callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1, x0_output)
        out = comfy.sample.sample_custom(
            model, noise, cfg, comfy.samplers.KSAMPLER(comfy_sample_mcm), sigmas, positive, negative, samples,
            noise_mask=latent.get("noise_mask"), callback=callback,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed,
        )  # fmt: skip
        latent["samples"] = out
        return (latent,)


NODE_CLASS_MAPPINGS = {
    "MCM_ModelSampling": MCMModelSampling,
    "MCM_Scheduler": MCMScheduler,
    "MCM_Sampler": MCMSampler,
    "MCM_KSampler": MCMKSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "MCM_ModelSampling": "MCM Model Sampling",
    "MCM_Scheduler": "MCM Scheduler",
    "MCM_Sampler": "MCM Sampler",
    "MCM_KSampler": "MCM KSampler",
}
