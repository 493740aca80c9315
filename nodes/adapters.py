"""MCM adapter nodes: the style-adapter selector and the LoRA loader (UNet + AnimateDiff motion module).

V1 nodes, thin: the adapter format, key conversion and checks live in ``mcm.weights``; ComfyUI-specific
patching in ``comfy_adapters`` (imported when a node runs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..mcm.temporal_norm import FRAMES, PER_FRAME
from ..mcm.weights import Adapter, AdapterError, load_adapter
from .sampling import BETA_CHOICES, CATEGORY

NONE_INSTALLED = "(no MCM adapter found: put one in models/mcm)"
AUTO_SCHEDULE = "auto (from the adapter)"
SCHEDULE_CHOICES = [AUTO_SCHEDULE, *BETA_CHOICES]
STRENGTH = {"default": 1.0, "min": -2.0, "max": 2.0, "step": 0.01}
AUTO_NORM = "auto"
TEMPORAL_NORM_CHOICES = [AUTO_NORM, FRAMES, PER_FRAME]


@dataclass(frozen=True)
class SelectedAdapter:
    """What travels on an ``MCM_ADAPTER`` wire: the loaded adapter and how to sample it."""

    label: str
    adapter: Adapter
    beta_schedule: str  # diffusers name
    schedule_note: str

    @property
    def timestep_scaling(self) -> float:
        return float(self.adapter.meta.timestep_scaling)

    def describe(self) -> str:
        meta = self.adapter.meta
        lines = [
            f"{self.label}: {meta.summary()}",
            f"sampling: betas {self.beta_schedule} (diffusers name; {self.schedule_note}), "
            f"timestep scaling {meta.timestep_scaling:g}, cfg {meta.recommended_cfg:g}, steps {meta.default_steps}",
        ]
        if self.adapter.metadata_source != "file":
            lines.append("no MCM metadata in the file: the official release's settings are assumed")
        return "\n".join(lines)


def _installed() -> dict[str, str]:
    try:
        import folder_paths  # noqa: F401  (only inside ComfyUI)
    except ImportError:
        return {}
    from .comfy_adapters import list_adapters

    return list_adapters()


class MCMStyleAdapter:
    DESCRIPTION = (
        "Choose an installed MCM adapter (official webvid / laion, or your own) and see what it was made "
        "for. Feeds Load MCM LoRA, and its recommended steps and cfg to the sampler."
    )
    CATEGORY = CATEGORY
    FUNCTION = "select"
    RETURN_TYPES = ("MCM_ADAPTER", "INT", "FLOAT", "STRING")
    RETURN_NAMES = ("mcm_adapter", "steps", "cfg", "info")
    OUTPUT_TOOLTIPS = (
        "The adapter, for Load MCM LoRA.",
        "The adapter's recommended step count (connect to a steps input).",
        "The adapter's recommended cfg (MCM: 1.0).",
        "What the adapter says about itself.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        names = list(_installed()) or [NONE_INSTALLED]
        return {
            "required": {
                "adapter": (
                    names,
                    {
                        "tooltip": "MCM adapters in models/mcm (files or PEFT folders such as animatediff-webvid/) "
                        "and MCM files in models/loras."
                    },
                ),
                "beta_schedule": (
                    SCHEDULE_CHOICES,
                    {
                        "default": AUTO_SCHEDULE,
                        "tooltip": "Noise schedule to sample with. auto: what the adapter's metadata says; official "
                        "adapters carry none, so the official demo's (ComfyUI sqrt_linear = diffusers linear). The "
                        "other choices override it (ComfyUI name first, diffusers name in brackets).",
                    },
                ),
            }
        }

    @classmethod
    def IS_CHANGED(cls, adapter, beta_schedule):
        path = _installed().get(adapter)
        if path is None:
            return float("nan")  # re-run, and fail with the message below
        target = os.path.join(path, "adapter_model.safetensors") if os.path.isdir(path) else path
        try:
            return f"{path}:{os.path.getmtime(target)}:{beta_schedule}"
        except OSError:
            return float("nan")

    def select(self, adapter, beta_schedule):
        installed = _installed()
        if adapter not in installed:
            from .comfy_adapters import SKIPPED

            if adapter in SKIPPED:
                raise AdapterError(f"MCM Style Adapter: {adapter!r} cannot be used: {SKIPPED[adapter]}")
            raise AdapterError(
                f"MCM Style Adapter: {adapter!r} is not installed. Put MCM adapters (a .safetensors file or a PEFT "
                f"folder such as animatediff-webvid/) in models/mcm; found: {sorted(installed) or 'none'}"
            )
        loaded = load_adapter(installed[adapter])
        if beta_schedule == AUTO_SCHEDULE:
            name = loaded.meta.beta_schedule
            note = "from the adapter" if loaded.metadata_source == "file" else "official demo default"
        elif beta_schedule in BETA_CHOICES:
            name, note = BETA_CHOICES[beta_schedule], "chosen in the node"
        else:
            raise AdapterError(f"MCM Style Adapter: unknown beta_schedule {beta_schedule!r}; expected one of {SCHEDULE_CHOICES}")
        selected = SelectedAdapter(label=adapter, adapter=loaded, beta_schedule=name, schedule_note=note)
        meta = loaded.meta
        return (selected, int(meta.default_steps), float(meta.recommended_cfg), selected.describe())


class MCMLoraLoader:
    DESCRIPTION = (
        "Applies an MCM adapter: its image part to the Stable Diffusion UNet (MODEL) and its motion part to the "
        "AnimateDiff motion model, with separate strengths, sets MCM model sampling, and makes the motion module "
        "normalise its input as MCM was trained. Gen2: connect the motion model from Load AnimateDiff Model. "
        "Gen1: place it after AnimateDiff Loader."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "MOTION_MODEL_ADE")
    RETURN_NAMES = ("model", "motion_model")
    OUTPUT_TOOLTIPS = (
        "The model with the adapter's UNet LoRA (and MCM model sampling when enabled).",
        (
            "The motion model with the adapter's motion LoRA and normalisation (for Apply AnimateDiff Model); empty "
            "if none was connected."
        ),
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SD1.5 model (a checkpoint, or after ADE's AnimateDiff Loader in Gen1)."}),
                "mcm_adapter": ("MCM_ADAPTER", {"tooltip": "From MCM Style Adapter."}),
                "strength_model": ("FLOAT", {**STRENGTH, "tooltip": "Strength of the UNet (image) part. 1.0 as trained."}),
                "strength_motion": ("FLOAT", {**STRENGTH, "tooltip": "Strength of the motion-module part. 1.0 as trained."}),
                "mcm_sampling": (
                    "BOOLEAN",
                    {
                        "default": True,
                        "tooltip": "Also set MCM model sampling (the adapter's beta schedule, grid timesteps, "
                        "timestep scaling). In Gen2 set Use Evolved Sampling's beta_schedule to 'use existing' "
                        "so that it is kept.",
                    },
                ),
                "temporal_norm": (
                    TEMPORAL_NORM_CHOICES,
                    {
                        "default": AUTO_NORM,
                        "tooltip": "How the AnimateDiff motion module normalises its input. frames: statistics over "
                        "all frames of each video (or context window), as diffusers computes and MCM was trained: the "
                        "output then matches the official demo. per_frame: statistics per frame, as stock "
                        "AnimateDiff-Evolved (about 1% different). auto: what the adapter's metadata says; official "
                        "adapters carry none and were trained with frames.",
                    },
                ),
            },
            "optional": {
                "motion_model": ("MOTION_MODEL_ADE", {"tooltip": "Gen2: from Load AnimateDiff Model (needs AnimateDiff-Evolved)."}),
            },
        }

    def load(self, model, mcm_adapter, strength_model, strength_motion, mcm_sampling, temporal_norm=AUTO_NORM,
             motion_model=None):  # fmt: skip
        from .comfy_adapters import patch_motion, patch_unet

        if not isinstance(mcm_adapter, SelectedAdapter):
            raise AdapterError("Load MCM LoRA: mcm_adapter must come from an MCM Style Adapter node")
        for name, value in (("strength_model", strength_model), ("strength_motion", strength_motion)):
            if not -STRENGTH["max"] <= float(value) <= STRENGTH["max"]:
                raise AdapterError(f"Load MCM LoRA: {name} = {value} is outside [-2, 2]")
        if temporal_norm not in TEMPORAL_NORM_CHOICES:
            raise AdapterError(f"Load MCM LoRA: temporal_norm = {temporal_norm!r}; expected one of {TEMPORAL_NORM_CHOICES}")
        adapter = mcm_adapter.adapter
        if temporal_norm == AUTO_NORM:
            norm, source = adapter.meta.temporal_norm, "adapter"
        else:
            norm, source = temporal_norm, "node"
        m, _ = patch_unet(model, adapter, float(strength_model))
        m, mm, _ = patch_motion(m, motion_model, adapter, float(strength_motion), norm, source)
        if mcm_sampling:
            from ..mcm.schedule import NoiseSchedule
            from .comfy_sampling import build_model_sampling

            schedule = NoiseSchedule(mcm_adapter.beta_schedule)
            ms = build_model_sampling(m, schedule, mcm_adapter.timestep_scaling, adapter.meta.num_ddim_timesteps)
            m.add_object_patch("model_sampling", ms)
        return (m, mm)


NODE_CLASS_MAPPINGS = {
    "MCM_StyleAdapter": MCMStyleAdapter,
    "MCM_LoraLoader": MCMLoraLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "MCM_StyleAdapter": "MCM Style Adapter",
    "MCM_LoraLoader": "Load MCM LoRA",
}
