"""Tiny random diffusers models with PEFT LoRA on the official MCM targets (CPU-sized)."""

from __future__ import annotations

import torch

from training import models

#: The tiny teachers' SD-style 2D UNet (training/models.py), the one ``tiny_motion_unet`` extends.
TINY_UNET = {**models.TINY_UNET, **models.TINY_BLOCKS["animatediff"]}


def tiny_motion_unet(seed: int = 0):
    """A random ``UNetMotionModel`` (SD-style UNet + motion modules), small enough for the CPU."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET)
    return UNetMotionModel.from_unet2d(unet, MotionAdapter(**models.TINY_MOTION)).eval()


def official_targets(model, drop_temporal_convs: bool = False) -> list[str]:
    """Module names the official code hands to PEFT: everything ending in one of its suffixes."""
    from mcm.weights import OFFICIAL_TARGET_MODULES

    names = [n for n, _ in model.named_modules() if any(n == s or n.endswith("." + s) for s in OFFICIAL_TARGET_MODULES)]
    if drop_temporal_convs:  # ModelScope: PEFT cannot wrap temp_convs
        names = [n for n in names if not ("temp" in n and "conv" in n)]
    return names


def with_random_lora(model, rank: int = 4, alpha: float = 8.0, seed: int = 1, targets=None):
    """``model`` wrapped by peft with LoRA on ``targets`` and random (non-zero) factors."""
    from peft import LoraConfig, get_peft_model

    targets = targets if targets is not None else official_targets(model)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return peft_model
