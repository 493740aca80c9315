"""The ModelScope text-to-video loader node (V3 schema). Declarations only: ``execute`` is one call into
``glue.modelscope``."""

from __future__ import annotations

from .choices import NO_MODELSCOPE_UNET
from .glue import modelscope
from .schema import MCMNode, io


class MCMModelScopeLoader(MCMNode):
    """Loads a ModelScope text-to-video UNet (text-to-video-ms-1.7b, zeroscope and other fine-tunes) as a ComfyUI
    MODEL for the MCM ModelScope adapters and any ComfyUI sampler, with SD 2.x's text encoder from Load CLIP (type
    stable_diffusion) and the SD VAE from Load VAE.
    """

    node_id, display_name = "MCM_ModelScopeLoader", "Load ModelScope T2V Model"
    inputs = [
        io.Combo.Input(
            "weight_dtype",
            options=list(modelscope.WEIGHT_DTYPES),
            default="default",
            tooltip="The dtype the weights are held in. default: what ComfyUI picks for your device "
            "(fp16 or bf16 on most GPUs, fp32 on CPU).",
        ),
    ]
    outputs = [io.Model.Output(tooltip="The ModelScope T2V model (frames are the latent batch).")]

    @classmethod
    def current_inputs(cls):  # the installed files, listed anew whenever ComfyUI asks for the schema
        return [
            io.Combo.Input(
                "unet_name",
                options=modelscope.choices() or [NO_MODELSCOPE_UNET],
                tooltip="A ModelScope UNet in models/text2video or models/diffusion_models: a diffusers "
                "unet/diffusion_pytorch_model(.fp16).safetensors (keep its config.json beside it), or the "
                "original release's text2video_pytorch_model.pth (read as tensors only).",
            ),
            *cls.inputs,
        ]

    @classmethod
    def execute(cls, unet_name, weight_dtype):
        return io.NodeOutput(modelscope.load(unet_name, weight_dtype))


NODES = [MCMModelScopeLoader]
