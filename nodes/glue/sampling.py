"""ComfyUI glue for MCM sampling: the model-sampling patch, the grid sigmas, the KSAMPLER function and
the all-in-one sampling of MCM KSampler. What the sampling nodes do, behind one call each.

Importing it needs no ComfyUI: ``comfy``, ``latent_preview`` are imported when a function runs.
"""

from __future__ import annotations

import logging

import torch

from ...mcm.sampler import sample_mcm, ve_consistency_output
from ...mcm.schedule import NUM_DDIM_TIMESTEPS, NoiseSchedule, ddim_timesteps, lcm_timesteps
from ..choices import (
    CFG_MAX,
    DEMO_BETA_SCHEDULE,
    DENOISE_MIN,
    MAX_STEPS,
    TIMESTEP_SCALING,
    TIMESTEP_SCALING_MAX,
    TIMESTEP_SCALING_MIN,
    beta_schedule_of,
)

log = logging.getLogger("comfyui-mcm")


# --- the nodes' inputs, checked where they arrive ----------------------------------------------------------------
# ComfyUI checks a widget's value against its min/max (NaN passes: every comparison with it is false), but not a
# linked value, and an API client can put any JSON value on an input meant for a link. These checks turn what
# would fail deep inside the sampler (or sample NaN silently) into one clear line naming the node and the input.


def checked_number(value, name: str, where: str, low: float, high: float) -> float:
    """``value`` as a float within [low, high] (NaN and infinities refused), or a ValueError naming it."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = None
    if isinstance(value, bool) or number is None or not low <= number <= high:
        raise ValueError(f"{where}: {name} = {value!r}; expected a number in [{low:g}, {high:g}]")
    return number


def checked_steps(steps, where: str) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"{where}: steps = {steps!r}; expected a whole number in [1, {MAX_STEPS}] (MCM: 1, 2, 4 or 8)")
    return steps


def check_model(model, where: str, name: str = "model") -> None:
    """A MODEL input holds a ComfyUI model patcher (not a value an API client put there: no JSON value has
    the patcher's ``get_model_object``)."""
    if not callable(getattr(model, "get_model_object", None)):
        raise ValueError(f"{where}: {name} must be a MODEL (connect a model output), got {type(model).__name__}")


def check_conditioning(value, where: str, name: str) -> None:
    if not isinstance(value, list) or not all(isinstance(c, (list, tuple)) and len(c) == 2 for c in value):
        raise ValueError(
            f"{where}: {name} must be a CONDITIONING (connect a text encoder's output), got {type(value).__name__}"
        )


def check_latent(value, where: str, name: str = "latent_image") -> None:
    samples = value.get("samples") if isinstance(value, dict) else None
    # a tensor, or ComfyUI's NestedTensor (not a torch.Tensor; it says is_nested)
    if not isinstance(samples, torch.Tensor) and getattr(samples, "is_nested", False) is not True:
        raise ValueError(
            f"{where}: {name} must be a LATENT (a dict holding a 'samples' tensor: connect a latent output), "
            f"got {type(value).__name__}"
        )


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


def build_model_sampling(
    model_patcher, schedule: NoiseSchedule, timestep_scaling: float, num_ddim_timesteps: int = NUM_DDIM_TIMESTEPS
):
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

    class MCMGridSampling(cms.ModelSamplingDiscrete, base):
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

    ms = MCMGridSampling(model_patcher.model.model_config)
    ms.set_sigmas(schedule.comfy_sigmas[grid])
    return ms


def is_mcm_sampling(model_sampling) -> bool:
    return hasattr(model_sampling, "mcm_schedule")


def grid_sigmas(model_sampling, timesteps: torch.Tensor) -> torch.Tensor:
    """SIGMAS for integer timesteps in the model's own sigma table (any discrete model sampling)."""
    sigmas = model_sampling.sigma(timesteps.float()).float().cpu()
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def noise_sampler_seed(seed: int | None, device_type: str) -> int | None:
    """The seed to hand ComfyUI's ``default_noise_sampler``, which seeds its generator with seed + 1 on the CPU:
    for the largest seed the nodes accept (2**64 - 1) that overflows torch's 64-bit seed, so it is passed as -1
    (the generator then gets 0, the 64-bit wrap-around of 2**64). Every other seed is passed as it is."""
    if seed is not None and device_type == "cpu" and seed >= 2**64 - 1:
        return seed - 2**64
    return seed


@torch.no_grad()
def comfy_sample_mcm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """``sample_mcm`` with ComfyUI's seeded noise, noise scaling and interruption."""
    import comfy.k_diffusion.sampling as kds
    import comfy.model_management as mm

    extra_args = extra_args or {}
    if noise_sampler is None:
        noise_sampler = kds.default_noise_sampler(x, seed=noise_sampler_seed(extra_args.get("seed"), x.device.type))
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


def with_mcm_sampling(
    model, schedule: NoiseSchedule, timestep_scaling: float, num_ddim_timesteps: int = NUM_DDIM_TIMESTEPS
):
    """A clone of MODEL that samples with MCM's model sampling (the input is left untouched)."""
    m = model.clone()
    m.add_object_patch("model_sampling", build_model_sampling(m, schedule, timestep_scaling, num_ddim_timesteps))
    return m


def model_sampling_node(model, beta_schedule: str, timestep_scaling: float):
    """MCM Model Sampling: ``beta_schedule`` is the node's dropdown label."""
    where = "MCM Model Sampling"
    check_model(model, where)
    scaling = checked_number(timestep_scaling, "timestep_scaling", where, TIMESTEP_SCALING_MIN, TIMESTEP_SCALING_MAX)
    schedule = NoiseSchedule(beta_schedule_of(beta_schedule, where))
    return with_mcm_sampling(model, schedule, scaling)


def scheduler_sigmas(model, steps: int, denoise: float, where: str = "MCM Scheduler") -> torch.Tensor:
    """MCM Scheduler: the sigmas of MCM's grid timesteps in the model's own sigma table."""
    steps = checked_steps(steps, where)
    denoise = checked_number(denoise, "denoise", where, DENOISE_MIN, 1.0)
    check_model(model, where)
    try:
        timesteps = lcm_timesteps(steps, strength=denoise)
    except ValueError as exc:  # too low a denoise for the steps (lcm_timesteps names them strength, num_steps)
        raise ValueError(f"{where}: steps = {steps} with denoise = {denoise:g}: {exc}") from None
    return grid_sigmas(model.get_model_object("model_sampling"), timesteps)


def mcm_sampler():
    """MCM Sampler: the consistency sampler as a ComfyUI SAMPLER."""
    import comfy.samplers

    return comfy.samplers.KSAMPLER(comfy_sample_mcm)


def ensure_mcm_sampling(model):
    """MODEL as is when it already samples with MCM's model sampling; otherwise a clone with the official
    demo's (beta schedule :data:`~..choices.DEMO_BETA_SCHEDULE`, timestep scaling 4), stated in the log."""
    if is_mcm_sampling(model.get_model_object("model_sampling")):
        return model
    log.info(
        "MCM KSampler: the model has no MCM model sampling; using the official demo's (betas %s, timestep scaling %g)",
        DEMO_BETA_SCHEDULE,
        TIMESTEP_SCALING,
    )
    return with_mcm_sampling(model, NoiseSchedule(DEMO_BETA_SCHEDULE), TIMESTEP_SCALING)


def ksample(model, seed: int, steps: int, cfg: float, positive, negative, latent_image: dict, denoise: float) -> dict:
    """MCM KSampler: MCM's grid sigmas and the consistency sampler through ComfyUI's ``sample_custom``,
    with its seeded noise, previews and progress bar. Returns the LATENT dict (a copy of the input's)."""
    where = "MCM KSampler"
    check_model(model, where)
    checked_steps(steps, where)
    cfg = checked_number(cfg, "cfg", where, 0.0, CFG_MAX)
    checked_number(denoise, "denoise", where, DENOISE_MIN, 1.0)
    check_conditioning(positive, where, "positive")
    check_conditioning(negative, where, "negative")
    check_latent(latent_image, where)

    import comfy.sample
    import comfy.utils
    import latent_preview

    model = ensure_mcm_sampling(model)
    sigmas = scheduler_sigmas(model, steps, denoise, where)
    latent = latent_image.copy()
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
    callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1, {})
    latent["samples"] = comfy.sample.sample_custom(
        model,
        noise,
        cfg,
        mcm_sampler(),
        sigmas,
        positive,
        negative,
        samples,
        noise_mask=latent.get("noise_mask"),
        callback=callback,
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
        seed=seed,
    )
    return latent
