"""Tiny random diffusers models with PEFT LoRA on the official MCM targets (CPU-sized)."""

from __future__ import annotations

import torch

TINY_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
    sample_size=8,
)


def tiny_motion_unet(seed: int = 0):
    """A random ``UNetMotionModel`` (SD-style UNet + motion modules), small enough for the CPU."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET)
    adapter = MotionAdapter(
        block_out_channels=(32, 64),
        motion_layers_per_block=1,
        motion_norm_num_groups=8,
        motion_num_attention_heads=2,
        motion_max_seq_length=32,
    )
    return UNetMotionModel.from_unet2d(unet, adapter).eval()


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
