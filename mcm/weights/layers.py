"""A LoRA state dict in any supported naming → ``{diffusers module path: LoraWeights}``, checked.

Every tensor is checked once, here, at read time: factors must be finite floating-point tensors whose
ranks agree (rank ≥ 1); a per-layer ``.alpha`` must be one finite positive number. An error names the
file and the layer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

import torch

from .format import AdapterError
from .keys import SD15_LAYOUT, KeyMappingError, UNetLayout, ade_to_motion, ldm_to_diffusers
from .lora import LoraWeights

__all__ = ["PEFT_PREFIX", "parse_lora_tensors"]

PEFT_PREFIX = "base_model.model."
_FACTOR_SUFFIXES = (
    (".lora_A.default.weight", "down"),
    (".lora_B.default.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    ("_lora.down.weight", "down"),  # AnimateDiff motion LoRA (ADE's "Load AnimateDiff LoRA")
    ("_lora.up.weight", "up"),
    (".alpha", "alpha"),
)
# diffusers' old attention-processor LoRA names (also ADE's motion-LoRA format)
_PROCESSOR = re.compile(r"(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_LDM_ROOTS = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "out.")


def _module_path(raw: str, layout: UNetLayout = SD15_LAYOUT) -> str:
    """A file's module name → diffusers module path (raises KeyMappingError)."""
    name = raw
    for prefix in (PEFT_PREFIX, "unet."):
        name = name.removeprefix(prefix)
    if name.startswith(("lora_unet_", "lora_te", "text_encoder", "te_", "lycoris_")):
        raise KeyMappingError(
            f"{raw!r}: kohya/text-encoder names are not part of an MCM adapter "
            "(MCM trains only UNet and motion-module LoRA; apply such files with ComfyUI's LoraLoader)"
        )
    if ".temporal_transformer" in name:
        return ade_to_motion(name)
    rest = name.removeprefix("diffusion_model.")
    if rest != name and not rest.startswith(_LDM_ROOTS):
        return rest  # a ComfyUI model that keeps diffusers' names (the ModelScope model): its LoRA files too
    if name.startswith("diffusion_model.") or name.startswith(_LDM_ROOTS):
        return ldm_to_diffusers(name, layout)
    return name


def _classify(key: str) -> tuple[str, str, bool] | None:
    """(module stem, 'down'/'up'/'alpha', whether the format folds the scale into up) or None."""
    if m := _PROCESSOR.match(key):
        return f"{m[1]}.{'to_out.0' if m[2] == 'to_out' else m[2]}", m[3], True
    for suffix, kind in _FACTOR_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], kind, suffix.startswith("_lora.")
    return None


def _check_factor(t: torch.Tensor, kind: str) -> str | None:
    """Why a tensor cannot be the ``kind`` factor of a LoRA, or None."""
    if not isinstance(t, torch.Tensor):
        return f"{kind} factor is a {type(t).__name__}, not a tensor"
    if not t.is_floating_point():
        return f"{kind} factor has dtype {str(t.dtype).removeprefix('torch.')}; expected a floating-point tensor"
    if t.ndim not in (2, 4) or 0 in t.shape:
        return f"{kind} factor has shape {tuple(t.shape)}; expected a non-empty 2-D (linear) or 4-D (conv) tensor"
    finite = torch.isfinite(t.float())  # float(): isfinite has no CPU kernel for the float8 dtypes
    if not bool(finite.all()):
        bad = int((~finite).sum())
        return f"{kind} factor holds {bad} NaN/inf values"
    return None


def check_alpha(value, what: str) -> float:
    """One finite positive number, or ValueError saying what ``what`` was."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            raise ValueError(
                f"{what} is a {str(value.dtype).removeprefix('torch.')} tensor of shape "
                f"{tuple(value.shape)}; expected one number"
            )
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} = {value!r}; expected a finite positive number")
    return float(value)


def _group(tensors: Mapping[str, torch.Tensor], where: str, layout: UNetLayout):
    """``({path: {kind: tensor}}, folded paths, {path: the file's module name})``; unknown or unmappable
    keys are one error."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    names: dict[str, str] = {}
    folded = set()  # layers in formats whose consumers add up @ down with no alpha (scale folded in)
    unknown, unmapped = [], {}
    for key, tensor in tensors.items():
        found = _classify(key)
        if found is None:
            unknown.append(key)
            continue
        stem, kind, is_folded = found
        try:
            path = _module_path(stem, layout)
        except KeyMappingError as exc:
            unmapped.setdefault(stem, str(exc))
            continue
        if is_folded:
            folded.add(path)
        slot = parts.setdefault(path, {})
        names.setdefault(path, stem.removeprefix(PEFT_PREFIX))
        if kind in slot:
            raise AdapterError(f"{where}: two tensors give the {kind} factor of layer {path!r} (second: {key!r})")
        slot[kind] = tensor
    if unknown:
        hint = (
            "DoRA/LoHa/LoKr and other non-LoRA adapters are not supported"
            if any("magnitude" in k or "hada" in k or "lokr" in k for k in unknown)
            else "expected LoRA factors such as '<layer>.lora_A.weight' / '<layer>.lora_B.weight'"
        )
        raise AdapterError(f"{where}: {len(unknown)} tensors are not LoRA factors ({hint}), e.g. {unknown[:8]}")
    if unmapped:
        raise AdapterError(
            f"{where}: {len(unmapped)} layer names could not be mapped: " + "; ".join(list(unmapped.values())[:8])
        )
    return parts, folded, names


def _layer(name: str, slot: dict, folded: bool, alpha_for: Callable[[str, int], float]) -> LoraWeights:
    """One checked layer (ValueError saying what is wrong)."""
    for kind in ("down", "up"):
        if problem := _check_factor(slot[kind], kind):
            raise ValueError(problem)
    down, up = slot["down"], slot["up"]
    rank = int(down.shape[0])
    given = alpha_for(name, rank)  # asked of every layer: it may refuse one
    if "alpha" in slot:
        alpha = check_alpha(slot["alpha"], "its .alpha")
    elif folded:
        alpha = float(rank)
    else:
        alpha = check_alpha(given, "its alpha")
    return LoraWeights(down=down, up=up, alpha=alpha)


def parse_lora_tensors(
    tensors: Mapping[str, torch.Tensor],
    where: str,
    alpha_for: Callable[[str, int], float] = lambda path, rank: float(rank),
    layout: UNetLayout = SD15_LAYOUT,
) -> dict[str, LoraWeights]:
    """Group a LoRA state dict in any supported naming into ``{diffusers path: LoraWeights}``.

    ``alpha_for(name, rank)`` gives the alpha of layers without an ``.alpha`` tensor (default: the
    rank, i.e. scale 1); ``name`` is the layer's module name as the file spells it (PEFT's
    ``base_model.model.`` removed), which is what a PEFT config's patterns are written against. It is
    asked of every layer and may raise an AdapterError to refuse one. LDM (ComfyUI) names are read
    with ``layout``. Unknown keys, incomplete pairs and tensors that are not usable factors are an
    error naming the file and the layer.
    """
    parts, folded, names = _group(tensors, where, layout)
    layers: dict[str, LoraWeights] = {}
    incomplete = []
    for path, slot in parts.items():
        if "down" not in slot or "up" not in slot:
            incomplete.append(f"{path} (has {sorted(slot)})")
            continue
        try:
            layers[path] = _layer(names[path], slot, path in folded, alpha_for)
        except AdapterError:  # alpha_for's own, complete message
            raise
        except ValueError as exc:
            raise AdapterError(f"{where}: layer {path!r}: {exc}") from None
    if incomplete:
        raise AdapterError(f"{where}: {len(incomplete)} layers lack a LoRA factor, e.g. {incomplete[:5]}")
    return layers
