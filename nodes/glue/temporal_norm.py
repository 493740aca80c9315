"""Motion-module normalisation as MCM was trained, on AnimateDiff-Evolved motion models (ComfyUI glue).

ADE normalises each motion module's input per frame; diffusers (MCM's training and demo) over the frames
of each video (``mcm.temporal_norm``). ``frames`` patches a clone of the MOTION_MODEL_ADE the way ComfyUI
patches any model: one object patch per motion module replaces the ``forward`` of its input GroupNorm
(``<block>.motion_modules.<i>.temporal_transformer.norm``) while the patcher is loaded, and is undone when
it is unloaded (ComfyUI puts back the bound method it read, which dispatches as the class's ``forward`` does).
The module keeps its weights, device moves and ComfyUI's weight casting.

How it composes:

* Batches: ADE runs the UNet on ``(b·f, c, h, w)`` with ``f`` = the motion model's ``video_length`` (the
  whole video, or the context length when sampling in context windows); ``b`` counts videos (cond and
  uncond with cfg > 1, split or merged as ComfyUI likes). Statistics are taken per video, never across
  two; inside a context window they span the window's frames, which is what diffusers computes when run
  on that window.
* ADE's GroupNorm hack (v1 and PIA motion models, and v2 under the deprecated loaders) swaps
  ``GroupNorm.forward`` for a version that spans the frames in *every* GroupNorm of the UNet. An instance
  ``forward`` takes precedence over that class-level swap, so a patched motion-module norm is computed
  once, by this patch, with the same statistics the hack would use; the hack still spans the UNet's other
  GroupNorms (which diffusers does not). Never two spans at once.
* Several motion models: each patcher carries its own patches; only the ones passed through the node are
  changed. ``per_frame`` removes this patch from a clone (stock ADE behaviour).
"""

from __future__ import annotations

import logging
import re

import torch

from ...mcm.temporal_norm import (
    FRAMES,
    PER_FRAME,
    TEMPORAL_NORMS,
    group_norm_over_frames,
)
from ...mcm.weights import AdapterError

log = logging.getLogger("comfyui-mcm")

#: ADE motion-model formats with the AnimateDiff motion module that diffusers' UNetMotionModel runs.
KNOWN_FORMATS = ("AnimateDiff", "AnimateLCM", "PIA")
_TEMPORAL_TRANSFORMER = re.compile(
    r"(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)\.motion_modules\.\d+\.temporal_transformer"
)


class FramesGroupNorm:
    """The ``forward`` of one motion module's input GroupNorm: statistics over each video's frames.

    ``frames`` is read from the owning temporal transformer at every call (ADE sets it per sampling run:
    the video length, or the context length in context windows).
    """

    def __init__(self, norm: torch.nn.GroupNorm, temporal_transformer: torch.nn.Module, path: str):
        self.norm, self.temporal_transformer, self.path = norm, temporal_transformer, path

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import comfy.ops

        if hasattr(comfy.ops, "run_every_op"):
            comfy.ops.run_every_op()  # ComfyUI's per-op interruption check, as its own GroupNorm does
        frames = int(self.temporal_transformer.video_length)
        if x.shape[0] % frames:
            raise RuntimeError(
                f"MCM temporal_norm 'frames': motion module {self.path} received {x.shape[0]} frames, which is not a "
                f"whole number of {frames}-frame videos (ADE's video_length); the statistics cannot be split by video"
            )
        norm = self.norm
        casts = (
            getattr(norm, "comfy_cast_weights", False)
            or getattr(norm, "weight_function", None)
            or getattr(norm, "bias_function", None)
        )
        if casts:  # ComfyUI casts or offloads this layer's weights (low VRAM, fp8, weight patches applied on the fly)
            return self._cast_and_norm(x, frames)
        return group_norm_over_frames(x, frames, norm.num_groups, norm.weight, norm.bias, norm.eps)

    def _cast_and_norm(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        import comfy.ops

        norm = self.norm
        if not hasattr(comfy.ops, "uncast_bias_weight"):  # ComfyUI before async offload
            weight, bias = comfy.ops.cast_bias_weight(norm, x)
            return group_norm_over_frames(x, frames, norm.num_groups, weight, bias, norm.eps)
        weight, bias, stream = comfy.ops.cast_bias_weight(norm, x, offloadable=True)
        try:
            return group_norm_over_frames(x, frames, norm.num_groups, weight, bias, norm.eps)
        finally:
            comfy.ops.uncast_bias_weight(norm, weight, bias, stream)


def motion_module_norms(patcher, where: str) -> dict[str, tuple[torch.nn.GroupNorm, torch.nn.Module]]:
    """``{temporal transformer path: (its input GroupNorm, the transformer)}`` of an ADE motion model.

    Raises :class:`AdapterError` naming ``where`` for anything that is not an ADE motion model of a
    format listed in :data:`KNOWN_FORMATS` with the expected modules.
    """
    model = getattr(patcher, "model", None)
    info = getattr(model, "mm_info", None)
    if info is None:
        raise AdapterError(
            f"{where}: temporal_norm '{FRAMES}' expected an AnimateDiff-Evolved motion model (MOTION_MODEL_ADE), "
            f"got {type(model).__name__}"
        )
    name = getattr(info, "mm_name", "?")
    if info.mm_format not in KNOWN_FORMATS:
        raise AdapterError(
            f"{where}: temporal_norm '{FRAMES}' knows the motion modules of {', '.join(KNOWN_FORMATS)} models (the "
            f"AnimateDiff motion module that diffusers' UNetMotionModel runs); {name} is {info.mm_format}. "
            f"Choose temporal_norm '{PER_FRAME}' for it."
        )
    found = {}
    for path, module in model.named_modules():
        if not _TEMPORAL_TRANSFORMER.fullmatch(path):
            continue
        norm = getattr(module, "norm", None)
        if not isinstance(norm, torch.nn.GroupNorm) or not isinstance(getattr(module, "video_length", None), int):
            raise AdapterError(
                f"{where}: temporal_norm '{FRAMES}' expected {path} of {name} to have an input GroupNorm 'norm' and "
                f"ADE's 'video_length'; found {type(norm).__name__} (this ADE version is not supported)"
            )
        found[path] = (norm, module)
    if not found:
        raise AdapterError(f"{where}: temporal_norm '{FRAMES}' found no motion modules in {name} ({info.mm_format})")
    return found


def set_temporal_norm(patcher, mode: str, where: str) -> int:
    """Set the motion-module normalisation on ``patcher`` (a clone the caller owns); returns the
    number of motion-module norms that span frames after the call (0 for ``per_frame``)."""
    if mode not in TEMPORAL_NORMS:
        raise AdapterError(f"{where}: temporal_norm = {mode!r}; expected one of {list(TEMPORAL_NORMS)}")
    ours = [k for k, v in patcher.object_patches.items() if isinstance(v, FramesGroupNorm)]
    for key in ours:  # the last MCM node decides; never two patches on one norm
        del patcher.object_patches[key]
    if mode == PER_FRAME:
        return 0
    norms = motion_module_norms(patcher, where)
    for path, (norm, owner) in norms.items():
        patcher.add_object_patch(f"{path}.norm.forward", FramesGroupNorm(norm, owner, path))
    return len(norms)


def groupnorm_hack(patcher, params=None) -> bool | None:
    """Whether ADE will span every UNet GroupNorm over the frames for this motion model (its "GroupNorm
    hack": PIA, v1, or v2 under a loader with apply_v2_properly off); None when that is only decided
    later (v2/v3 before Use Evolved Sampling, whose own setting keeps it off)."""
    info = patcher.model.mm_info
    if info.mm_format == "PIA" or info.mm_version == "v1":
        return True
    if info.mm_version == "v2" and params is not None:
        return not getattr(params, "apply_v2_properly", True)
    return None if info.mm_version == "v2" else False


def describe(patcher, mode: str, count: int, hack: bool | None) -> str:
    """One line for the log: what normalises this motion model's input, and whether ADE's hack is on."""
    info = patcher.model.mm_info
    text = f"{info.mm_name} ({info.mm_format} {info.mm_version}): "
    if mode == FRAMES:
        text += f"{count} motion-module input norms span each video's frames (MCM patch, as diffusers)"
    elif hack:
        text += "motion-module input norms span the frames (ADE's GroupNorm hack, stock ADE for this model)"
    else:
        text += "motion-module input norms per frame (stock ADE)"
    if hack:
        text += (
            "; ADE's GroupNorm hack is on for this motion model, so the UNet's other GroupNorms span the "
            "frames too, which diffusers does not: not training-exact"
        )
    return text
