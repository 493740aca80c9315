"""ComfyUI glue for patching MODEL and MOTION_MODEL_ADE with an MCM adapter: what Load MCM LoRA does,
behind one call.

Importing it needs no ComfyUI (``comfy`` and ComfyUI's ``nodes`` are imported inside the functions).
"""

from __future__ import annotations

import contextlib
import logging

import torch

from ...mcm.schedule import NoiseSchedule
from ...mcm.temporal_norm import FRAMES, PER_FRAME
from ...mcm.weights import (
    SD15_LAYOUT,
    Adapter,
    AdapterError,
    LoraWeights,
    ade_motion_layers,
    comfy_modelscope_layers,
    comfy_spatial_layers,
)
from ..choices import AUTO_NORM, STRENGTH_MAX, TEMPORAL_NORM_CHOICES
from .modelscope import CONFIG_NAME as MODELSCOPE_CONFIG
from .modelscope import is_modelscope
from .sampling import build_model_sampling, check_model
from .selection import SelectedAdapter
from .temporal_norm import describe, groupnorm_hack, set_temporal_norm

log = logging.getLogger("comfyui-mcm")

#: ComfyUI model-config class → the adapter base family it can take.
COMFY_FAMILIES = {
    "SD15": "sd15",
    "SD15_instructpix2pix": "sd15",
    "SD20": "sd2",
    "SD21UnclipL": "sd2",
    "SD21UnclipH": "sd2",
    "SDXL": "sdxl",
    "SDXLRefiner": "sdxl",
    "SSD1B": "sdxl",
    MODELSCOPE_CONFIG: "modelscope-t2v",
}
#: How to load the model an adapter family needs (the refusal says it).
NEEDS = {
    "modelscope-t2v": "load ModelScope with 'Load ModelScope T2V Model'",
    "sd15-animatediff": "load an SD1.5 checkpoint and an AnimateDiff motion model (AnimateDiff-Evolved)",
    "sd15": "load an SD1.5 checkpoint",
}


def model_family(model_patcher) -> str:
    name = type(model_patcher.model.model_config).__name__
    return COMFY_FAMILIES.get(name, name)


def _lora_patches(layers: dict[str, LoraWeights], prefix: str) -> dict:
    """ComfyUI weight patches (core LoRA adapters: alpha/rank, conv reshape) for ``{path: LoRA}``."""
    import comfy.lora

    state, to_load = {}, {}
    for path, w in layers.items():
        key = f"{prefix}{path}"
        state[f"{key}.lora_up.weight"] = w.up
        state[f"{key}.lora_down.weight"] = w.down
        state[f"{key}.alpha"] = torch.tensor(float(w.alpha))
        to_load[key] = f"{key}.weight"
    return comfy.lora.load_lora(state, to_load, log_missing=True)


def _check_fits(adapter: Adapter, layers: dict[str, LoraWeights], patcher_state: dict, prefix: str, what: str):
    """The adapter's (translated) layers against the shapes of a ComfyUI model's weights."""
    shapes = {
        p: tuple(patcher_state[f"{prefix}{p}.weight"].shape) for p in layers if f"{prefix}{p}.weight" in patcher_state
    }
    adapter.check_shapes(shapes, where=f"this {what}", layers=layers)


def _apply(patcher, patches: dict, strength: float, where: str):
    accepted = set(patcher.add_patches(patches, strength))
    rejected = sorted(set(patches) - accepted)
    if rejected:  # add_patches drops unknown keys silently; we do not
        raise AdapterError(f"{where}: {len(rejected)} patches were not accepted, e.g. {rejected[:4]}")
    return len(accepted)


def _without_injections(model):
    """The UNet as the checkpoint holds it. While a sampled ADE graph's model stays loaded (ComfyUI keeps it,
    and caches the graph), its motion modules stay injected into the shared UNet's blocks, which renumbers
    them; a LoRA loader run after that (a widget changed) must see, and patch, the original numbering."""
    import comfy.model_management

    stack = contextlib.ExitStack()
    for loaded in list(comfy.model_management.current_loaded_models):
        patcher = loaded.model
        if patcher is not None and patcher.model is model.model and getattr(patcher, "is_injected", False):
            stack.enter_context(patcher.use_ejected())
    return stack


def require_family(model, adapter: Adapter, where: str = "Load MCM LoRA") -> str:
    """The model's adapter family, if ``adapter`` was made for it; else an AdapterError saying what it needs."""
    family = model_family(model)
    try:
        adapter.require_base(family)
    except AdapterError as exc:
        raise AdapterError(f"{where}: {exc}: {NEEDS.get(adapter.meta.base, 'use the model it was made for')}") from None
    return family


def patch_unet(model, adapter: Adapter, strength: float):
    """A clone of MODEL with the adapter's spatial LoRA; (clone, number of patched layers)."""
    require_family(model, adapter)
    layers = comfy_spatial_layers(adapter, SD15_LAYOUT)
    m = model.clone()
    if not layers or strength == 0:
        return m, 0
    with _without_injections(model):
        _check_fits(adapter, layers, model.model.state_dict(), "diffusion_model.", "Stable Diffusion UNet")
        return m, _apply(m, _lora_patches(layers, "diffusion_model."), strength, "UNet")


def _patch_motion_patcher(patcher, adapter: Adapter, layers, strength: float) -> int:
    _check_fits(adapter, layers, patcher.model.state_dict(), "", "AnimateDiff motion module")
    return _apply(patcher, _lora_patches(layers, ""), strength, "motion module")


def ade_available() -> bool:
    import nodes

    return "ADE_LoadAnimateDiffModel" in nodes.NODE_CLASS_MAPPINGS


def _motion_targets(model, motion_model):
    """(motion_model clone or None, the motion patchers to change): the Gen2 input's clone, or the motion
    models an ADE Gen1 loader attached to ``model`` (a fresh clone from :func:`patch_unet`, so its
    attached patchers are clones too)."""
    if motion_model is not None:
        mm = motion_model.clone()
        return mm, [mm]
    attached = model.get_additional_models_with_key("ADE") if hasattr(model, "get_additional_models_with_key") else []
    return None, list(attached)


def _no_motion_model(what: str, fix: str) -> AdapterError:
    """``what`` (e.g. "X: has 252 motion-module layers") needs a motion model that did not arrive."""
    if not ade_available():
        return AdapterError(f"{what}, which need ComfyUI-AnimateDiff-Evolved (not installed). Install ADE, or {fix}.")
    return AdapterError(
        f"{what} but no motion model reached this node. Gen2: connect 'Load AnimateDiff Model' to motion_model. "
        f"Gen1: place this node after 'AnimateDiff Loader'. Or {fix}."
    )


def patch_motion(
    model,
    motion_model,
    adapter: Adapter,
    strength: float,
    temporal_norm: str = FRAMES,
    norm_source: str = "node",
    where: str = "Load MCM LoRA",
):
    """Apply the motion-module LoRA and the motion-module normalisation to ADE's motion model(s).

    ``motion_model`` (Gen2, MOTION_MODEL_ADE) is cloned and patched. Without it, the motion models that
    an ADE Gen1 loader (or Use Evolved Sampling) attached to ``model`` are patched on the clone ``model``
    (a fresh clone from :func:`patch_unet`). ``temporal_norm`` is ``frames`` or ``per_frame``;
    ``norm_source`` says where it came from (``node``: chosen by the user, so ``frames`` without a motion
    model is an error; ``adapter``: from the adapter's metadata). Returns (model, motion_model, layers patched).
    """
    layers = ade_motion_layers(adapter) if strength != 0 else {}
    mm, targets = _motion_targets(model, motion_model)
    if layers and not targets:
        raise _no_motion_model(f"{adapter.source}: has {len(layers)} motion-module layers", "set strength_motion to 0")
    if not targets:
        if temporal_norm == FRAMES and norm_source == "node":
            raise _no_motion_model(
                f"{where}: temporal_norm '{FRAMES}' (the motion module's input normalised over "
                "the frames) asks for changes to the AnimateDiff motion model",
                f"choose temporal_norm '{PER_FRAME}'",
            )
        if temporal_norm == FRAMES:
            log.warning(
                "%s: no motion model reached this node, so the adapter's temporal_norm '%s' is not applied "
                "(image-only use). In Gen1 place this node after 'AnimateDiff Loader'.",
                where,
                FRAMES,
            )
        return model, mm, 0
    count = 0
    params = model.get_attachment("ADE_params") if hasattr(model, "get_attachment") else None
    for patcher in targets:
        if layers:
            count += _patch_motion_patcher(patcher, adapter, layers, strength)
        norms = set_temporal_norm(patcher, temporal_norm, where)
        if hasattr(getattr(patcher, "model", None), "mm_info"):
            log.info("%s: %s", where, describe(patcher, temporal_norm, norms, groupnorm_hack(patcher, params)))
    return model, mm, count


def _checked_norm(
    model, selected, strength_model, strength_motion, temporal_norm: str, motion_model=None
) -> tuple[str, str]:
    """The inputs of Load MCM LoRA checked; (temporal norm to apply, where it came from)."""
    if not isinstance(selected, SelectedAdapter):
        raise AdapterError("Load MCM LoRA: mcm_adapter must come from an MCM Style Adapter node")
    try:
        check_model(model, "Load MCM LoRA")
    except ValueError as exc:
        raise AdapterError(str(exc)) from None
    if motion_model is not None and not callable(getattr(motion_model, "clone", None)):
        raise AdapterError(
            "Load MCM LoRA: motion_model must be a MOTION_MODEL_ADE (connect Load AnimateDiff Model), "
            f"got {type(motion_model).__name__}"
        )
    for name, value in (("strength_model", strength_model), ("strength_motion", strength_motion)):
        if not -STRENGTH_MAX <= float(value) <= STRENGTH_MAX:
            raise AdapterError(f"Load MCM LoRA: {name} = {value} is outside [-{STRENGTH_MAX:g}, {STRENGTH_MAX:g}]")
    if temporal_norm not in TEMPORAL_NORM_CHOICES:
        raise AdapterError(f"Load MCM LoRA: temporal_norm = {temporal_norm!r}; expected one of {TEMPORAL_NORM_CHOICES}")
    if temporal_norm == AUTO_NORM:
        return selected.adapter.meta.temporal_norm, "adapter"
    return temporal_norm, "node"


def patch_modelscope(model, adapter: Adapter, strength_model: float, strength_motion: float):
    """A clone of a ModelScope MODEL with the adapter: its spatial layers at ``strength_model``, its temporal
    layers (temporal attention, ``transformer_in``) at ``strength_motion``. The model keeps diffusers' module
    names, so the adapter's paths are its weights' names. Returns (clone, number of patched layers)."""
    require_family(model, adapter)
    layers = comfy_modelscope_layers(adapter)
    _check_fits(adapter, layers, model.model.state_dict(), "diffusion_model.", "ModelScope T2V model")
    m, count = model.clone(), 0
    temporal = adapter.temporal_layers()
    for part, strength in (
        ({p: w for p, w in layers.items() if p not in temporal}, strength_model),
        (temporal, strength_motion),
    ):
        if part and strength != 0:
            count += _apply(m, _lora_patches(part, "diffusion_model."), strength, "ModelScope UNet")
    return m, count


def _modelscope_norm(selected, temporal_norm: str, motion_model) -> None:
    """Load MCM LoRA's motion-model inputs on a ModelScope model: no motion model; normalisation over frames."""
    if motion_model is not None:
        raise AdapterError(
            "Load MCM LoRA: a motion_model is connected, but the model is ModelScope T2V, whose temporal layers are "
            "part of its UNet; disconnect motion_model"
        )
    if temporal_norm == PER_FRAME:
        raise AdapterError(
            f"Load MCM LoRA: temporal_norm '{PER_FRAME}' is for AnimateDiff motion modules; ModelScope's temporal "
            f"layers always normalise over the frames: choose '{AUTO_NORM}' or '{FRAMES}'"
        )


def load_mcm_lora(
    model,
    selected,
    strength_model: float,
    strength_motion: float,
    mcm_sampling: bool,
    temporal_norm: str = AUTO_NORM,
    motion_model=None,
):
    """Load MCM LoRA: the adapter's UNet LoRA on a clone of MODEL, its motion LoRA and normalisation on the
    motion model(s), then (``mcm_sampling``) MCM model sampling. Returns (model, motion_model or None)."""
    norm, source = _checked_norm(model, selected, strength_model, strength_motion, temporal_norm, motion_model)
    adapter = selected.adapter
    if is_modelscope(model):
        _modelscope_norm(selected, temporal_norm, motion_model)
        m, _ = patch_modelscope(model, adapter, float(strength_model), float(strength_motion))
        mm = None
    else:
        m, _ = patch_unet(model, adapter, float(strength_model))
        m, mm, _ = patch_motion(m, motion_model, adapter, float(strength_motion), norm, source)
    if mcm_sampling:
        schedule = NoiseSchedule(selected.beta_schedule)
        ms = build_model_sampling(m, schedule, selected.timestep_scaling, adapter.meta.num_ddim_timesteps)
        m.add_object_patch("model_sampling", ms)
    return m, mm
