"""LoRA factors and their arithmetic: the weight update ΔW = (α/r)·B·A, merging and un-merging.

Shapes follow PEFT: for a linear layer ``A`` (``down``) is ``[r, in]`` and ``B`` (``up``) is ``[out, r]``;
for a convolution ``A`` is ``[r, in, kh, kw]`` (the layer's own kernel) and ``B`` is ``[out, r, 1, 1]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

__all__ = ["LoraWeights", "merge_lora", "unmerge_lora"]


@dataclass
class LoraWeights:
    """One layer's LoRA: ``down`` (A), ``up`` (B) and ``alpha``; the update is ``alpha/rank · up @ down``."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    def __post_init__(self):
        down, up = self.down, self.up
        if down.ndim not in (2, 4) or up.ndim != down.ndim:
            raise ValueError(
                f"LoRA factors must both be 2-D (linear) or 4-D (conv); got {tuple(down.shape)} and {tuple(up.shape)}"
            )
        if down.shape[0] < 1:
            raise ValueError(f"LoRA rank must be at least 1; down {tuple(down.shape)} has rank {down.shape[0]}")
        if up.shape[1] != down.shape[0]:
            raise ValueError(
                f"LoRA rank mismatch: down {tuple(down.shape)} has rank {down.shape[0]}, "
                f"up {tuple(up.shape)} has {up.shape[1]}"
            )
        if up.ndim == 4 and tuple(up.shape[2:]) != (1, 1):
            raise ValueError(f"LoRA up factor of a conv must be 1×1, got {tuple(up.shape)}")

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the layer weight this LoRA updates."""
        return (int(self.up.shape[0]), *map(int, self.down.shape[1:]))

    def delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """ΔW = scale · B·A, computed in ``dtype`` and shaped like the layer weight."""
        up = self.up.to(dtype).reshape(self.up.shape[0], self.rank)
        down = self.down.to(dtype).reshape(self.rank, -1)
        return (self.scale * (up @ down)).reshape(self.weight_shape)


def _apply(
    state_dict: Mapping[str, torch.Tensor],
    layers: Mapping[str, LoraWeights],
    strength: float,
    weight_key: Callable[[str], str],
) -> dict[str, torch.Tensor]:
    out = dict(state_dict)
    missing = [p for p in layers if weight_key(p) not in out]
    if missing:
        raise KeyError(f"{len(missing)} LoRA targets are not in the state dict, e.g. {missing[:5]}")
    for path, lora in layers.items():
        key = weight_key(path)
        w = out[key]
        if tuple(w.shape) != lora.weight_shape:
            raise ValueError(f"{key}: weight shape {tuple(w.shape)} but the LoRA updates shape {lora.weight_shape}")
        out[key] = (w.to(torch.float32) + strength * lora.delta(torch.float32).to(w.device)).to(w.dtype)
    return out


def merge_lora(
    state_dict: Mapping[str, torch.Tensor],
    layers: Mapping[str, LoraWeights],
    strength: float = 1.0,
    weight_key: Callable[[str], str] = lambda path: f"{path}.weight",
) -> dict[str, torch.Tensor]:
    """A new state dict with ``W + strength·ΔW`` for every LoRA layer (float32 arithmetic, dtype kept).

    ``layers`` maps module paths to factors; ``weight_key`` turns a path into its state-dict key. The
    input is not modified; untouched tensors are shared.
    """
    return _apply(state_dict, layers, strength, weight_key)


def unmerge_lora(
    state_dict: Mapping[str, torch.Tensor],
    layers: Mapping[str, LoraWeights],
    strength: float = 1.0,
    weight_key: Callable[[str], str] = lambda path: f"{path}.weight",
) -> dict[str, torch.Tensor]:
    """Undo :func:`merge_lora` (exact up to float32 rounding)."""
    return _apply(state_dict, layers, -strength, weight_key)
