"""ComfyUI glue for ModelScope text-to-video: the UNet3D as a native ComfyUI diffusion model, and its loader.

The network is :class:`mcm.modelscope.ModelScopeUNet3D`, built on ComfyUI's ``comfy.ops`` (so ComfyUI's dtype
casting, memory management, weight patches and LoRA apply) inside a core ``BaseModel``, the way ComfyUI builds
its own models. What ComfyUI needs to know about it:

* Latents are SD's (KL-f8 VAE, scale 0.18215): ``latent_formats.SD15``; frames are the latent batch.
* Noise schedule: ComfyUI's default discrete sampling, ``linear`` 0.00085 to 0.012 (ComfyUI's ``linear`` is
  diffusers' ``scaled_linear``, what the ms-1.7b scheduler uses), epsilon prediction.
* Frames per video: ComfyUI's sampler concatenates each conditioning's copy of the whole latent batch (cond,
  uncond, ... as ``transformer_options["cond_or_uncond"]`` lists them; how many go in one call depends on free
  memory), so every call holds ``len(cond_or_uncond)`` videos of ``batch // len(cond_or_uncond)`` frames. cfg 1
  (no uncond pass), cfg > 1 and ComfyUI's memory-driven batching all follow from that.

Importing this module needs no ComfyUI: ``comfy`` is imported when a function runs.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

from ...mcm.modelscope import ModelScopeCheckpointError, ModelScopeUNet3D, ModelScopeUNetConfig, load_unet_state_dict
from .folders import TEXT2VIDEO_EXTENSIONS, TEXT2VIDEO_FOLDER

log = logging.getLogger("comfyui-mcm")

#: The model-config class name the loader's models carry (what Load MCM LoRA checks adapters against).
CONFIG_NAME = "ModelScopeT2V"
#: Model folders the loader lists: its own, and ComfyUI's standard one for diffusion models.
MODEL_FOLDERS = (TEXT2VIDEO_FOLDER, "diffusion_models")
#: The parts of a diffusers model folder that are not the UNet (left out of the dropdown).
NOT_UNET_PARTS = ("text_encoder", "vae", "tokenizer", "scheduler")
#: Weight dtypes the loader offers: ``default`` lets ComfyUI choose for the device, as its own loaders do.
WEIGHT_DTYPES = {"default": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _comfy_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """ComfyUI's attention for the running device and flags (``optimized_attention`` is chosen at start-up)."""
    import comfy.ldm.modules.attention as attention

    return attention.optimized_attention(q, k, v, heads)


class ModelScopeDiffusionModel(ModelScopeUNet3D):
    """The UNet3D with ComfyUI's diffusion-model call: ``(x, timesteps, context, control, transformer_options)``.

    Built by ComfyUI's ``BaseModel`` as ``unet_model(**unet_config, device=..., operations=...)``: the config
    fields arrive as keyword arguments, ``dtype`` among them.
    """

    def __init__(self, dtype=None, device=None, operations=None, **config):
        kwargs = {"operations": operations} if operations is not None else {}
        super().__init__(
            ModelScopeUNetConfig(**config), dtype=dtype, device=device, attention=_comfy_attention, **kwargs
        )
        self.dtype = dtype or torch.float32  # ComfyUI's BaseModel.get_dtype() reads it, as from its own UNets

    def forward(self, x, timesteps, context=None, control=None, transformer_options=None, **kwargs):
        if control is not None:
            raise ValueError(
                "ModelScope T2V: a ControlNet reached the model; there is no ModelScope ControlNet "
                "(remove Apply ControlNet from this graph)"
            )
        if context is None:
            raise ValueError("ModelScope T2V: no text conditioning reached the model (connect a CLIP Text Encode)")
        chunks = len((transformer_options or {}).get("cond_or_uncond") or ()) or 1
        if x.shape[0] % chunks:
            raise ValueError(f"ModelScope T2V: a batch of {x.shape[0]} frames does not split into {chunks} videos")
        return super().forward(x, timesteps, context, num_frames=x.shape[0] // chunks)


@functools.cache
def _config_class():
    """The ``supported_models_base.BASE`` subclass for ModelScope T2V (defined once ComfyUI is importable)."""
    import comfy.latent_formats
    import comfy.model_base
    import comfy.supported_models_base

    class ModelScopeT2V(comfy.supported_models_base.BASE):
        unet_config: dict = {}  # never matched against a checkpoint: only Load ModelScope T2V Model builds it
        unet_extra_config: dict = {}  # BASE's extras (num_heads, num_head_channels) are the SD UNet's
        latent_format = comfy.latent_formats.SD15
        sampling_settings: dict = {}  # ModelSamplingDiscrete: linear 0.00085..0.012 = diffusers scaled_linear
        supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]
        memory_usage_factor = 2.0

        def get_model(self, state_dict, prefix="", device=None):
            return comfy.model_base.BaseModel(
                self, model_type=comfy.model_base.ModelType.EPS, device=device, unet_model=ModelScopeDiffusionModel
            )

        def clip_target(self, state_dict=None):
            return None  # the text encoder is SD 2.x's CLIP-H: Load CLIP (type stable_diffusion) reads it

    ModelScopeT2V.__name__ = ModelScopeT2V.__qualname__ = CONFIG_NAME
    return ModelScopeT2V


def is_modelscope(model_patcher) -> bool:
    model = getattr(model_patcher, "model", None)
    return type(getattr(model, "model_config", None)).__name__ == CONFIG_NAME


def _unet_config(config: ModelScopeUNetConfig) -> dict:
    """The network's config as the keyword arguments ``BaseModel`` passes on to :class:`ModelScopeDiffusionModel`."""
    fields = ModelScopeUNetConfig.__dataclass_fields__
    return {name: getattr(config, name) for name in fields}


def build_model(state_dict: dict[str, torch.Tensor], config: ModelScopeUNetConfig, weight_dtype=None):
    """A ComfyUI ``ModelPatcher`` holding the ModelScope model with ``state_dict`` (diffusers names, checked).

    The dtype and the cast dtype are what ComfyUI's own diffusion-model loader picks for the device
    (``weight_dtype`` overrides the first). The network is built on the ``meta`` device and takes the tensors
    by assignment, so loading needs the weights' memory once, not twice.
    """
    import comfy.model_management as mm
    import comfy.model_patcher

    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    model_config = _config_class()(_unet_config(config))
    params = sum(t.numel() for t in state_dict.values())
    stored = next(iter(state_dict.values())).dtype
    supported = list(model_config.supported_inference_dtypes)
    unet_dtype = weight_dtype or mm.unet_dtype(model_params=params, supported_dtypes=supported, weight_dtype=stored)
    manual_cast = mm.unet_manual_cast(unet_dtype, load_device, supported)
    model_config.unet_config["dtype"] = unet_dtype  # what set_inference_dtype does (its signature varies)
    model_config.manual_cast_dtype = manual_cast
    model = model_config.get_model({}, "", device="meta")
    weights = {k: v.to(unet_dtype) for k, v in state_dict.items()}
    model.diffusion_model.load_state_dict(weights, strict=True, assign=True)
    model.diffusion_model.to(offload_device)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def _read(path: str) -> tuple[dict[str, torch.Tensor], ModelScopeUNetConfig]:
    """The file's tensors in diffusers' names; ``.pth``/``.bin``/``.ckpt`` with ``torch.load(weights_only=True)``,
    which rebuilds tensors and plain containers only (the original release's ``text2video_pytorch_model.pth``
    is such a file: a bare state dict)."""
    allow = os.path.splitext(path)[1].lower() in TEXT2VIDEO_EXTENSIONS[1:]
    return load_unet_state_dict(path, allow_pickle=allow)


def load(name: str, weight_dtype: str = "default"):
    """Load ModelScope T2V Model: the MODEL of a file listed in the loader's folders."""
    import folder_paths

    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(
            f"Load ModelScope T2V Model: weight_dtype = {weight_dtype!r}; expected one of {list(WEIGHT_DTYPES)}"
        )
    path = None
    for folder in MODEL_FOLDERS:
        try:
            path = folder_paths.get_full_path(folder, name)
        except KeyError:  # a folder this ComfyUI does not register
            path = None
        if path:
            break
    if not path:
        raise ValueError(
            f"Load ModelScope T2V Model: {name!r} is not in models/{MODEL_FOLDERS[0]} or models/{MODEL_FOLDERS[1]}"
        )
    try:
        state_dict, config = _read(path)
    except ModelScopeCheckpointError as exc:
        raise ValueError(f"Load ModelScope T2V Model: {exc}") from None
    patcher = build_model(state_dict, config, WEIGHT_DTYPES[weight_dtype])
    log.info("Load ModelScope T2V Model: %s (%d tensors, %s)", path, len(state_dict), patcher.model.get_dtype())
    return patcher


def choices() -> list[str]:
    """The loader's dropdown: the weight files in its model folders (relative names, as ComfyUI lists them);
    empty outside ComfyUI."""
    try:
        import folder_paths
    except ImportError:
        return []

    names: list[str] = []
    for folder in MODEL_FOLDERS:
        try:
            listed = folder_paths.get_filename_list(folder)
        except KeyError:
            continue
        for name in listed:
            parts = name.replace("\\", "/").split("/")
            wanted = name.lower().endswith(TEXT2VIDEO_EXTENSIONS) and not set(parts[:-1]) & set(NOT_UNET_PARTS)
            if wanted and name not in names:
                names.append(name)
    return names
