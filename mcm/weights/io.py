"""Compatibility names: the weights I/O now lives in modules named by what they do.

``read`` (files), ``layers`` (LoRA keys → checked layers), ``peft`` (PEFT configs), ``guess``
(metadata for files without it), ``load`` (adapters from any source), ``atomic`` (safe writes) and
``export`` (the writers and their registry). Import from those, or from :mod:`mcm.weights`.
"""

from __future__ import annotations

from .atomic import atomic_dir, atomic_file, prepare_destination
from .export import (
    EXPORTERS,
    ade_motion_layers,
    comfy_spatial_layers,
    export_ade_motion_lora,
    export_comfy_lora,
    export_peft,
    merge_motion_module,
    save_adapter,
)
from .layers import PEFT_PREFIX, parse_lora_tensors
from .load import find_adapters, is_mcm_file, load_adapter, spatial_and_motion_counts
from .peft import PEFT_CONFIG, PEFT_WEIGHTS, PEFT_WEIGHTS_PICKLE
from .read import PICKLE_SUFFIXES, PickleRefusedError, read_safetensors, read_safetensors_metadata, read_tensors, read_weights

# the earlier private names, for code written against them
_atomic_file = atomic_file
_prepare_destination = prepare_destination
_read_tensors = read_tensors

__all__ = [
    "EXPORTERS",
    "PEFT_CONFIG",
    "PEFT_PREFIX",
    "PEFT_WEIGHTS",
    "PEFT_WEIGHTS_PICKLE",
    "PICKLE_SUFFIXES",
    "PickleRefusedError",
    "ade_motion_layers",
    "atomic_dir",
    "comfy_spatial_layers",
    "export_ade_motion_lora",
    "export_comfy_lora",
    "export_peft",
    "find_adapters",
    "is_mcm_file",
    "load_adapter",
    "merge_motion_module",
    "parse_lora_tensors",
    "read_safetensors",
    "read_safetensors_metadata",
    "read_weights",
    "save_adapter",
    "spatial_and_motion_counts",
]
