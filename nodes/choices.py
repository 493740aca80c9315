"""What the MCM nodes offer: widget choices, bounds and defaults, shared by the node declarations and
the glue. Pure Python (no ComfyUI, no torch), so the declarations and the tests can import it anywhere."""

from __future__ import annotations

from ..mcm.boundary import MCM_TIMESTEP_SCALING
from ..mcm.schedule import NUM_DDIM_TIMESTEPS
from ..mcm.temporal_norm import FRAMES, PER_FRAME

CATEGORY = "sampling/MCM"
#: Words the node search also finds the MCM nodes by (ComfyUI versions with search aliases).
SEARCH_ALIASES = ["MCM", "LCM", "AnimateDiff", "few-step", "consistency", "motion consistency"]

#: Dropdown label -> diffusers beta-schedule name. Labels give both naming conventions.
BETA_CHOICES = {
    "sqrt_linear (diffusers linear; MCM AnimateDiff demo)": "linear",
    "linear (diffusers scaled_linear; MCM training, SD default)": "scaled_linear",
}
#: The schedule MCM samples with when nothing says otherwise: the official AnimateDiff demo's (diffusers
#: ``linear`` = ComfyUI ``sqrt_linear``), which the official adapters, carrying no metadata, were shown with.
DEMO_BETA_SCHEDULE = "linear"
DEMO_BETA_LABEL = next(label for label, name in BETA_CHOICES.items() if name == DEMO_BETA_SCHEDULE)
TIMESTEP_SCALING = MCM_TIMESTEP_SCALING
MAX_STEPS = NUM_DDIM_TIMESTEPS

NONE_INSTALLED = "(no MCM adapter found: put one in models/mcm)"
NO_MODELSCOPE_UNET = "(no ModelScope UNet found: put one in models/text2video)"
AUTO_SCHEDULE = "auto (from the adapter)"
SCHEDULE_CHOICES = [AUTO_SCHEDULE, *BETA_CHOICES]
STRENGTH_MAX = 2.0
#: Bounds of the sampling widgets (declared by the nodes, checked again in the glue: a linked value, or a NaN
#: that ComfyUI's min/max validation lets through, arrives unchecked).
DENOISE_MIN = 0.02
CFG_MAX = 30.0
TIMESTEP_SCALING_MIN, TIMESTEP_SCALING_MAX = 0.1, 100.0
AUTO_NORM = "auto"
TEMPORAL_NORM_CHOICES = [AUTO_NORM, FRAMES, PER_FRAME]


def beta_schedule_of(label: str, where: str) -> str:
    """The diffusers beta-schedule name of a dropdown label; a clear error naming ``where`` otherwise."""
    if label not in BETA_CHOICES:
        raise ValueError(f"{where}: unknown beta_schedule {label!r}; expected one of {list(BETA_CHOICES)}")
    return BETA_CHOICES[label]
