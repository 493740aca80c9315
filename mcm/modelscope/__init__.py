"""Native ModelScope text-to-video (damo-vilab/text-to-video-ms-1.7b): the UNet3D in pure torch.

Host-independent: layers come from an ``operations`` namespace, so a host (ComfyUI's ``comfy.ops``) can
supply its own; the state-dict keys are diffusers' ``UNet3DConditionModel``'s.
"""

from .config import MS_1_7B, ModelScopeUNetConfig
from .unet import ModelScopeUNet3D, sdpa_attention, torch_ops

__all__ = ["MS_1_7B", "ModelScopeUNet3D", "ModelScopeUNetConfig", "sdpa_attention", "torch_ops"]
