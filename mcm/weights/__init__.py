"""MCM adapter weights: the self-describing file format, readers for the official PEFT releases and
other LoRA files, and conversion to the layouts ComfyUI and AnimateDiff-Evolved use.

Command line: ``python -m mcm.weights inspect PATH`` and ``python -m mcm.weights convert SRC DST --to …``.
"""

from .export import (
    EXPORTERS,
    ade_motion_layers,
    comfy_modelscope_layers,
    comfy_spatial_layers,
    export_ade_motion_lora,
    export_comfy_lora,
    export_peft,
    merge_motion_module,
    save_adapter,
    to_safetensors,
)
from .format import (
    ADAPTER_FORMAT,
    BASES,
    FORMAT_VERSION,
    OFFICIAL_TARGET_MODULES,
    Adapter,
    AdapterError,
    AdapterMeta,
    detect_base,
)
from .keys import (
    SD15_LAYOUT,
    KeyMappingError,
    UNetLayout,
    ade_to_motion,
    diffusers_to_ldm,
    is_modelscope_temporal,
    is_motion,
    ldm_to_diffusers,
    motion_to_ade,
)
from .layers import parse_lora_tensors
from .load import check_mcm_marker, find_adapters, is_mcm_file, load_adapter
from .lora import LoraWeights, merge_lora, unmerge_lora
from .read import PICKLE_SUFFIXES, PickleRefusedError, read_safetensors, read_safetensors_metadata, read_weights

__all__ = [
    "ADAPTER_FORMAT",
    "BASES",
    "EXPORTERS",
    "FORMAT_VERSION",
    "OFFICIAL_TARGET_MODULES",
    "PICKLE_SUFFIXES",
    "SD15_LAYOUT",
    "Adapter",
    "AdapterError",
    "AdapterMeta",
    "KeyMappingError",
    "LoraWeights",
    "PickleRefusedError",
    "UNetLayout",
    "ade_motion_layers",
    "ade_to_motion",
    "comfy_modelscope_layers",
    "comfy_spatial_layers",
    "detect_base",
    "diffusers_to_ldm",
    "export_ade_motion_lora",
    "export_comfy_lora",
    "export_peft",
    "check_mcm_marker",
    "find_adapters",
    "is_mcm_file",
    "is_modelscope_temporal",
    "is_motion",
    "ldm_to_diffusers",
    "load_adapter",
    "merge_lora",
    "merge_motion_module",
    "motion_to_ade",
    "parse_lora_tensors",
    "read_safetensors",
    "read_safetensors_metadata",
    "read_weights",
    "save_adapter",
    "to_safetensors",
    "unmerge_lora",
]
