"""ModelScope's original checkpoint names (``UNetSD``), written from the architecture in the other direction
(diffusers → original), module by module, not key by key with :mod:`mcm.modelscope.checkpoint`'s tables: the
independent reference the checkpoint tests and the host tests write original-layout files with. Pure torch."""

from __future__ import annotations

import torch

RESNET_TO_ORIGINAL = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def module_plan(levels: int, per: int, upsampler_slot: int) -> list[tuple[str, str, str]]:
    """``(diffusers module, original module, kind)`` for every module of a UNetSD with ``levels`` levels."""
    plan = [
        ("time_embedding.linear_1", "time_embed.0", "plain"),
        ("time_embedding.linear_2", "time_embed.2", "plain"),
        ("conv_in", "input_blocks.0.0", "plain"),
        ("transformer_in", "input_blocks.0.1", "temporal"),
        ("conv_norm_out", "out.0", "plain"),
        ("conv_out", "out.2", "plain"),
    ]

    def layer(src: str, j: int, dst: str, attention: bool) -> None:
        plan.append((f"{src}.resnets.{j}", f"{dst}.0", "resnet"))
        plan.append((f"{src}.temp_convs.{j}", f"{dst}.0.temopral_conv", "plain"))
        if attention:
            plan.append((f"{src}.attentions.{j}", f"{dst}.1", "plain"))
            plan.append((f"{src}.temp_attentions.{j}", f"{dst}.2", "temporal"))

    index = 1
    for level in range(levels):
        last = level == levels - 1
        for j in range(per):
            layer(f"down_blocks.{level}", j, f"input_blocks.{index}", not last)
            index += 1
        if not last:
            plan.append((f"down_blocks.{level}.downsamplers.0.conv", f"input_blocks.{index}.op", "plain"))
            index += 1
    plan += [
        ("mid_block.resnets.0", "middle_block.0", "resnet"),
        ("mid_block.temp_convs.0", "middle_block.0.temopral_conv", "plain"),
        ("mid_block.attentions.0", "middle_block.1", "plain"),
        ("mid_block.temp_attentions.0", "middle_block.2", "temporal"),
        ("mid_block.resnets.1", "middle_block.3", "resnet"),
        ("mid_block.temp_convs.1", "middle_block.3.temopral_conv", "plain"),
    ]
    index = 0
    for level in range(levels):
        for j in range(per + 1):
            layer(f"up_blocks.{level}", j, f"output_blocks.{index}", level > 0)
            if j == per and level < levels - 1:
                slot = 1 if level == 0 else upsampler_slot
                plan.append((f"up_blocks.{level}.upsamplers.0", f"output_blocks.{index}.{slot}", "plain"))
            index += 1
    return plan


def original_state_dict(
    state_dict: dict[str, torch.Tensor],
    levels: int,
    per: int,
    upsampler_slot: int = 3,
    prefix: str = "",
    clone: bool = True,
) -> dict[str, torch.Tensor]:
    """A diffusers UNet3D state dict (``levels`` levels, ``per`` layers per block) in ModelScope's original names
    (temporal projections as Conv1d weights); the tensors are copies unless ``clone`` is false (then views)."""
    plan = module_plan(levels, per, upsampler_slot)
    out = {}
    for key, tensor in state_dict.items():
        src, dst, kind = max((p for p in plan if key.startswith(p[0] + ".")), key=lambda p: len(p[0]))
        rest = key[len(src) + 1 :]
        if kind == "resnet":
            head, _, leaf = rest.partition(".")
            rest = f"{RESNET_TO_ORIGINAL[head]}.{leaf}"
        if kind == "temporal" and rest in ("proj_in.weight", "proj_out.weight"):
            tensor = tensor[:, :, None]
        out[f"{prefix}{dst}.{rest}"] = tensor.clone() if clone else tensor
    assert len(out) == len(state_dict)
    return out
