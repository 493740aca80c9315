"""MCM sampling nodes (V3 schema): model sampling patch, grid scheduler (SIGMAS), sampler (SAMPLER) and
the all-in-one KSampler. Declarations only: each ``execute`` is one call into ``glue.sampling``."""

from __future__ import annotations

from .choices import (
    BETA_CHOICES,
    CFG_MAX,
    DEMO_BETA_LABEL,
    DENOISE_MIN,
    MAX_STEPS,
    TIMESTEP_SCALING,
    TIMESTEP_SCALING_MAX,
    TIMESTEP_SCALING_MIN,
)
from .glue import sampling as glue
from .schema import MCMNode, io

STEPS_TOOLTIP = "MCM steps: 1, 2, 4 or 8 were evaluated; 4 is the default."
DENOISE_TOOLTIP = "1.0 for text-to-video; lower keeps more of the input video (starts lower on the grid)."


def _denoise():
    return io.Float.Input("denoise", default=1.0, min=DENOISE_MIN, max=1.0, step=0.01, tooltip=DENOISE_TOOLTIP)


class MCMModelSampling(MCMNode):
    """Patches a copy of the model to sample as MCM was trained: its beta schedule, the exact grid timesteps
    and the consistency boundary condition.
    """

    node_id, display_name = "MCM_ModelSampling", "MCM Model Sampling"
    inputs = [
        io.Model.Input("model", tooltip="The SD1.5 (+ AnimateDiff) model with the MCM LoRA applied."),
        io.Combo.Input(
            "beta_schedule",
            options=list(BETA_CHOICES),
            default=DEMO_BETA_LABEL,
            tooltip="Noise schedule. Names are ComfyUI's, diffusers' in brackets: ComfyUI "
            "sqrt_linear = diffusers linear (the official MCM AnimateDiff demo); ComfyUI linear = "
            "diffusers scaled_linear (what the official MCM training used).",
        ),
        io.Float.Input(
            "timestep_scaling",
            default=TIMESTEP_SCALING,
            min=TIMESTEP_SCALING_MIN,
            max=TIMESTEP_SCALING_MAX,
            step=0.1,
            tooltip="Consistency boundary scaling: MCM was trained with 4 (LCM uses 10).",
        ),
    ]
    outputs = [io.Model.Output(tooltip="The model with MCM model sampling (the input model is left untouched).")]

    @classmethod
    def execute(cls, model, beta_schedule, timestep_scaling):
        return io.NodeOutput(glue.model_sampling_node(model, beta_schedule, timestep_scaling))


class MCMScheduler(MCMNode):
    """Sigmas at MCM's training timesteps (the 50-step DDIM grid; 4 steps = 999, 759, 499, 259), for
    SamplerCustom with MCM Sampler.
    """

    node_id, display_name = "MCM_Scheduler", "MCM Scheduler"
    inputs = [
        io.Model.Input("model", tooltip="The model to sample (its noise schedule converts timesteps to sigmas)."),
        io.Int.Input("steps", default=4, min=1, max=MAX_STEPS, tooltip=STEPS_TOOLTIP),
        _denoise(),
    ]
    outputs = [io.Sigmas.Output(tooltip="Sigmas for SamplerCustom / SamplerCustomAdvanced.")]

    @classmethod
    def execute(cls, model, steps, denoise):
        return io.NodeOutput(glue.scheduler_sigmas(model, steps, denoise))


class MCMSampler(MCMNode):
    """Multistep consistency sampler (jump to the clean video, re-noise to the next sigma) for SamplerCustom;
    use cfg 1, which leaves the negative prompt inactive.
    """

    node_id, display_name = "MCM_Sampler", "MCM Sampler"
    outputs = [io.Sampler.Output(tooltip="Few-step sampler for MCM weights.")]

    @classmethod
    def execute(cls):
        return io.NodeOutput(glue.mcm_sampler())


class MCMKSampler(MCMNode):
    """All-in-one MCM sampling (the trained timesteps, the consistency sampler, previews and progress) that
    works in ADE graphs and applies the official demo's model sampling when none is set upstream.
    """

    node_id, display_name = "MCM_KSampler", "MCM KSampler"
    inputs = [
        io.Model.Input("model", tooltip="The model with the MCM adapter (Load MCM LoRA), inside an ADE graph."),
        io.Int.Input(
            "seed",
            default=0,
            min=0,
            max=0xFFFFFFFFFFFFFFFF,
            control_after_generate=True,
            tooltip="Seed of the initial and the re-noising noise.",
        ),
        io.Int.Input("steps", default=4, min=1, max=MAX_STEPS, tooltip=STEPS_TOOLTIP),
        io.Float.Input(
            "cfg",
            default=1.0,
            min=0.0,
            max=CFG_MAX,
            step=0.1,
            round=0.01,
            tooltip="MCM is trained for cfg 1 (one UNet pass per step, negative prompt unused).",
        ),
        io.Conditioning.Input("positive", tooltip="The prompt."),
        io.Conditioning.Input("negative", tooltip="Used only when cfg > 1."),
        io.Latent.Input(
            "latent_image", tooltip="Empty latent (batch = frames) or an encoded video for video-to-video."
        ),
        _denoise(),
    ]
    outputs = [io.Latent.Output(tooltip="The sampled latent video (frames along the batch).")]

    @classmethod
    def execute(cls, model, seed, steps, cfg, positive, negative, latent_image, denoise):
        return io.NodeOutput(glue.ksample(model, seed, steps, cfg, positive, negative, latent_image, denoise))


NODES = [MCMModelSampling, MCMScheduler, MCMSampler, MCMKSampler]
