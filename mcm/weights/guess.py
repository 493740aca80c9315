"""Metadata for adapters that carry none (the official releases): guessed from tensors and names.

The guesses are the official demo's settings; what cannot be guessed (a base family MCM does not
serve, metadata that contradicts the tensors) is an error naming the file.
"""

from __future__ import annotations

import re

from .format import (
    BASES,
    FOREIGN_BASES,
    OFFICIAL_TARGET_MODULES,
    Adapter,
    AdapterError,
    AdapterMeta,
    _is_number,
    detect_base,
    loads_json,
)
from .lora import LoraWeights

__all__ = ["DEMO_BETA_SCHEDULE", "check_consistent", "default_meta", "diffusers_alpha", "style_from_name"]

#: The beta schedule the official demo samples each base with (diffusers names). For AnimateDiff it overrides
#: the scheduler to ``linear`` (ComfyUI's ``sqrt_linear``); for ModelScope it keeps the ms-1.7b scheduler's
#: ``scaled_linear`` (ComfyUI's ``linear``) and overrides only the timestep scaling (4).
DEMO_BETA_SCHEDULE = {"sd15-animatediff": "linear", "sd15": "linear", "modelscope-t2v": "scaled_linear"}


def _suffixes(paths) -> tuple[str, ...]:
    """The official target suffixes a set of module paths uses (anything else by its last name)."""
    found = set()
    for p in paths:
        match = [s for s in OFFICIAL_TARGET_MODULES if p == s or p.endswith("." + s)]
        found.add(max(match, key=len) if match else p.rsplit(".", 1)[-1])
    return tuple(sorted(found))


def check_base(base: str, where: str) -> None:
    if base in FOREIGN_BASES:
        raise AdapterError(
            f"{where}: this is a LoRA for {FOREIGN_BASES[base]} ({base}); MCM adapters are made for "
            f"{' or '.join(BASES[b] for b in ('sd15-animatediff', 'modelscope-t2v'))}"
        )


def default_meta(
    layers: dict[str, LoraWeights], where: str, *, rank: int, alpha: float, style: str, name: str, training: dict
) -> AdapterMeta:
    """Metadata for files that carry none (the official releases): the official demo's settings."""
    if not layers:  # before AdapterMeta, whose complaint (no target modules) would name no file
        raise AdapterError(f"{where}: the adapter holds no LoRA layers")
    base = detect_base(layers)
    check_base(base, where)
    return AdapterMeta(
        base=base,
        motion_module="v2" if base.endswith("animatediff") else None,
        lora_rank=rank,
        lora_alpha=float(alpha),
        target_modules=_suffixes(layers),
        beta_schedule=DEMO_BETA_SCHEDULE[base],
        style=style,
        name=name,
        training=training,
    )


def style_from_name(name: str) -> str:
    """``animatediff-webvid`` → ``webvid``; ``modelscopet2v-3d-cartoon`` → ``3d-cartoon``."""
    stem = re.sub(r"\.safetensors$", "", name)
    for family in ("animatediff-", "modelscopet2v-", "modelscope-", "mcm-", "mcm_"):
        if stem.lower().startswith(family):
            stem = stem[len(family) :]
            break
    style = re.sub(r"[^A-Za-z0-9 _.+-]", "-", stem).strip("-_. ") or "custom"
    return style if re.match(r"[A-Za-z0-9]", style) else "custom"


def check_consistent(adapter: Adapter) -> None:
    """The declared base must be the one the tensors show."""
    detected = detect_base(adapter.layers)
    check_base(detected, adapter.source)
    declared = adapter.meta.base
    fits = detected == declared or (declared == "sd15-animatediff" and detected == "sd15")
    if not fits:
        raise AdapterError(
            f"{adapter.source}: metadata says base {declared!r} (mcm.base) but the tensors are those of a "
            f"{detected!r} adapter"
        )


def diffusers_alpha(metadata: dict[str, str]) -> float | None:
    """diffusers ≥ 0.33 stores the LoraConfig as JSON under ``lora_adapter_metadata``."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return None
    try:
        info = loads_json(raw)
    except ValueError:
        return None
    if not isinstance(info, dict):
        return None
    for key in ("unet.lora_alpha", "lora_alpha"):
        value = info.get(key)
        if _is_number(value) and value > 0:  # not NaN/inf, nor an int past float's range
            return float(value)
    return None
