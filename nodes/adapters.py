"""MCM adapter nodes (V3 schema): the style-adapter selector and the LoRA loader (UNet + AnimateDiff
motion module). Declarations only: each ``execute`` is one call into ``glue.selection`` / ``glue.patching``."""

from __future__ import annotations

from .choices import AUTO_NORM, AUTO_SCHEDULE, SCHEDULE_CHOICES, STRENGTH_MAX, TEMPORAL_NORM_CHOICES
from .glue import patching, selection
from .schema import MCMNode, io

MCMAdapter = io.Custom("MCM_ADAPTER")
MotionModel = io.Custom("MOTION_MODEL_ADE")


class MCMStyleAdapter(MCMNode):
    """Chooses an installed MCM adapter (official webvid / laion, or your own), says what it was made for, and
    hands it and its recommended steps and cfg to Load MCM LoRA and the sampler.
    """

    node_id, display_name = "MCM_StyleAdapter", "MCM Style Adapter"
    inputs = [
        io.Combo.Input(
            "beta_schedule",
            options=SCHEDULE_CHOICES,
            default=AUTO_SCHEDULE,
            tooltip="Noise schedule to sample with. auto: what the adapter's metadata says; "
            "official adapters carry none, so the official demo's (ComfyUI sqrt_linear = diffusers "
            "linear). The other choices override it (ComfyUI name first, diffusers name in brackets).",
        ),
    ]
    outputs = [
        MCMAdapter.Output("mcm_adapter", display_name="mcm_adapter", tooltip="The adapter, for Load MCM LoRA."),
        io.Int.Output(
            "steps", display_name="steps", tooltip="The adapter's recommended step count (connect to a steps input)."
        ),
        io.Float.Output("cfg", display_name="cfg", tooltip="The adapter's recommended cfg (MCM: 1.0)."),
        io.String.Output("info", display_name="info", tooltip="What the adapter says about itself."),
    ]

    @classmethod
    def current_inputs(cls):  # the installed adapters, listed anew whenever ComfyUI asks for the schema
        return [
            io.Combo.Input(
                "adapter",
                options=selection.adapter_choices(),
                tooltip="MCM adapters in models/mcm (files or PEFT folders such as animatediff-webvid/) "
                "and MCM files in models/loras.",
            ),
            *cls.inputs,
        ]

    @classmethod
    def fingerprint_inputs(cls, adapter, beta_schedule):
        return selection.fingerprint(adapter, beta_schedule)

    @classmethod
    def execute(cls, adapter, beta_schedule):
        return io.NodeOutput(*selection.select(adapter, beta_schedule))


def _strength(name: str, what: str):
    return io.Float.Input(
        name,
        default=1.0,
        min=-STRENGTH_MAX,
        max=STRENGTH_MAX,
        step=0.01,
        tooltip=f"Strength of the {what} part. 1.0 as trained.",
    )


class MCMLoraLoader(MCMNode):
    """Applies an MCM adapter to the Stable Diffusion UNet and the AnimateDiff motion model, with separate
    strengths, MCM model sampling and the motion-module normalisation MCM was trained with.
    """

    node_id, display_name = "MCM_LoraLoader", "Load MCM LoRA"
    inputs = [
        io.Model.Input("model", tooltip="An SD1.5 model (a checkpoint, or after ADE's AnimateDiff Loader in Gen1)."),
        MCMAdapter.Input("mcm_adapter", tooltip="From MCM Style Adapter."),
        _strength("strength_model", "UNet (image)"),
        _strength("strength_motion", "motion-module"),
        io.Boolean.Input(
            "mcm_sampling",
            default=True,
            tooltip="Also set MCM model sampling (the adapter's beta schedule, grid timesteps, "
            "timestep scaling). In Gen2 set Use Evolved Sampling's beta_schedule to 'use existing' "
            "so that it is kept.",
        ),
        io.Combo.Input(
            "temporal_norm",
            options=TEMPORAL_NORM_CHOICES,
            default=AUTO_NORM,
            tooltip="How the AnimateDiff motion module normalises its input. frames: statistics "
            "over all frames of each video (or context window), as diffusers computes and MCM was "
            "trained: the output then matches the official demo. per_frame: statistics per frame, as "
            "stock AnimateDiff-Evolved (about 1% different). auto: what the adapter's metadata says; "
            "official adapters carry none and were trained with frames.",
        ),
        MotionModel.Input(
            "motion_model",
            optional=True,
            tooltip="Gen2: from Load AnimateDiff Model (needs AnimateDiff-Evolved). Gen1: leave "
            "empty and place this node after AnimateDiff Loader.",
        ),
    ]
    outputs = [
        io.Model.Output(
            "model",
            display_name="model",
            tooltip="The model with the adapter's UNet LoRA (and MCM model sampling when enabled).",
        ),
        MotionModel.Output(
            "motion_model",
            display_name="motion_model",
            tooltip="The motion model with the adapter's motion LoRA and normalisation (for "
            "Apply AnimateDiff Model); empty if none was connected.",
        ),
    ]

    @classmethod
    def execute(
        cls,
        model,
        mcm_adapter,
        strength_model,
        strength_motion,
        mcm_sampling,
        temporal_norm=AUTO_NORM,
        motion_model=None,
    ):
        return io.NodeOutput(
            *patching.load_mcm_lora(
                model, mcm_adapter, strength_model, strength_motion, mcm_sampling, temporal_norm, motion_model
            )
        )


NODES = [MCMStyleAdapter, MCMLoraLoader]
