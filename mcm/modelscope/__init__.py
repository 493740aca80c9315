"""Native ModelScope text-to-video (damo-vilab/text-to-video-ms-1.7b): the UNet3D in pure torch.

Host-independent: layers come from an ``operations`` namespace, so a host (ComfyUI's ``comfy.ops``) can
supply its own; the state-dict keys are diffusers' ``UNet3DConditionModel``'s. ``load_unet_state_dict`` reads
the checkpoints users have (diffusers folders, original-layout ``.safetensors``/``.pth``) into those keys.
"""

from .checkpoint import (
    ModelScopeCheckpointError,
    check_state_dict,
    detect_layout,
    infer_config,
    load_unet_state_dict,
    original_to_diffusers,
    to_unet_state_dict,
)
from .config import MS_1_7B, ModelScopeUNetConfig
from .unet import ModelScopeUNet3D, sdpa_attention, torch_ops

__all__ = [
    "MS_1_7B",
    "ModelScopeCheckpointError",
    "ModelScopeUNet3D",
    "ModelScopeUNetConfig",
    "check_state_dict",
    "detect_layout",
    "infer_config",
    "load_unet_state_dict",
    "original_to_diffusers",
    "sdpa_attention",
    "to_unet_state_dict",
    "torch_ops",
]
