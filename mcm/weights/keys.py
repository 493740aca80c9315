"""Module names: diffusers ↔ ComfyUI's UNet layout, and diffusers motion modules ↔ AnimateDiff's.

An MCM adapter names each LoRA by the *diffusers* module path it modifies (the names PEFT sees on a
``UNet2DConditionModel``, ``UNetMotionModel`` or ``UNet3DConditionModel``). ComfyUI holds the
Stable Diffusion UNet in the original LDM layout (``input_blocks.4.1.transformer_blocks.0.attn1.to_q``)
and AnimateDiff-Evolved holds the motion module in the original AnimateDiff layout
(``down_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q``).
The functions here translate module paths (no ``.weight`` suffix) between them, both ways, from the
block structure alone, so they work for whole state dicts as well as for LoRA targets.

Every translation either succeeds or raises :class:`KeyMappingError`; nothing is guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "KeyMappingError",
    "RESNET_FROM_LDM",
    "SD15_LAYOUT",
    "UNetLayout",
    "ade_to_motion",
    "diffusers_to_ldm",
    "is_motion",
    "is_modelscope_temporal",
    "ldm_to_diffusers",
    "motion_to_ade",
]


class KeyMappingError(KeyError):
    """A module path that has no counterpart in the requested layout."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class UNetLayout:
    """The block structure that fixes the LDM numbering of a diffusers UNet.

    ``down_attention[i]`` / ``up_attention[i]``: whether down/up block ``i`` has cross-attention
    transformers (``CrossAttnDownBlock2D`` …). ``layers_per_block`` resnets per down block, one more
    per up block. SD1.5 (and ModelScope's spatial blocks) use the defaults.
    """

    layers_per_block: int = 2
    down_attention: tuple[bool, ...] = (True, True, True, False)
    up_attention: tuple[bool, ...] = (False, True, True, True)

    @classmethod
    def from_diffusers_config(cls, config) -> UNetLayout:
        """From a diffusers UNet config (a dict or an object with attributes)."""
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        layers = get("layers_per_block", 2)
        if not isinstance(layers, int):
            if len(set(layers)) != 1:
                raise ValueError(f"layers_per_block={layers!r}: per-block counts are not supported")
            layers = layers[0]
        down = tuple("CrossAttn" in t for t in get("down_block_types"))
        up = tuple("CrossAttn" in t for t in get("up_block_types"))
        return cls(layers_per_block=int(layers), down_attention=down, up_attention=up)

    @property
    def num_blocks(self) -> int:
        return len(self.down_attention)


SD15_LAYOUT = UNetLayout()

# Inside a ResNet block the two layouts name the same layers differently.
_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
#: The same, from the LDM names (ComfyUI's, and the original ModelScope release's) to diffusers'.
RESNET_FROM_LDM = {v: k for k, v in _RESNET_TO_LDM.items()}
_TOP_TO_LDM = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_TOP_FROM_LDM = {v: k for k, v in _TOP_TO_LDM.items()}


def _split_leaf(rest: str, table: dict[str, str], what: str, path: str) -> str:
    """Rename the leading layer name of ``rest`` (e.g. ``conv1`` or ``in_layers.2``) via ``table``."""
    for src, dst in table.items():
        if rest == src or rest.startswith(src + "."):
            return dst + rest[len(src) :]
    raise KeyMappingError(f"{path!r}: {what} has no layer {rest.split('.')[0]!r}")


_DOWN = re.compile(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)(?:\.(.+))?$")
_DOWN_SAMPLER = re.compile(r"down_blocks\.(\d+)\.downsamplers\.0\.conv(\..+)?$")
_MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)(?:\.(.+))?$")
_UP = re.compile(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)(?:\.(.+))?$")
_UP_SAMPLER = re.compile(r"up_blocks\.(\d+)\.upsamplers\.0\.conv(\..+)?$")


def _join(*parts: str | None) -> str:
    return ".".join(p for p in parts if p)


def _block_layer_to_ldm(path: str, m: re.Match, layout: UNetLayout, up: bool) -> str:
    """Layer ``j`` (a ResNet or an attention) of down block ``i`` (an input block) or up block ``i`` (an output
    block, which has one layer more)."""
    n = layout.layers_per_block
    i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
    attention = layout.up_attention if up else layout.down_attention
    if i >= layout.num_blocks or j >= n + up or (kind == "attentions" and not attention[i]):
        raise KeyMappingError(f"{path!r}: no such layer in a UNet with layout {layout}")
    block = f"output_blocks.{i * (n + 1) + j}" if up else f"input_blocks.{1 + i * (n + 1) + j}"
    if kind == "resnets":
        return _join(block, "0", rest and _split_leaf(rest, _RESNET_TO_LDM, "a ResNet block", path))
    return _join(block, "1", rest)


def _sampler_to_ldm(path: str, m: re.Match, layout: UNetLayout, up: bool) -> str:
    """The downsampler of down block ``i`` (an input block of its own) or the upsampler of up block ``i`` (in the
    output block of its last layer, after the attention where the block has one)."""
    n, i = layout.layers_per_block, int(m[1])
    if i >= layout.num_blocks - 1:
        raise KeyMappingError(
            f"{path!r}: the last {'up' if up else 'down'} block has no {'up' if up else 'down'}sampler"
        )
    if not up:
        return f"input_blocks.{(i + 1) * (n + 1)}.0.op{m[2] or ''}"
    slot = 2 if layout.up_attention[i] else 1
    return f"output_blocks.{i * (n + 1) + n}.{slot}.conv{m[2] or ''}"


def _mid_to_ldm(path: str, m: re.Match, layout: UNetLayout, up: bool) -> str:
    kind, j, rest = m[1], int(m[2]), m[3]
    if kind == "resnets" and j in (0, 1):
        return _join(f"middle_block.{2 * j}", rest and _split_leaf(rest, _RESNET_TO_LDM, "a ResNet block", path))
    if kind == "attentions" and j == 0:
        return _join("middle_block.1", rest)
    raise KeyMappingError(f"{path!r}: the middle block has resnets 0-1 and attention 0 only")


def diffusers_to_ldm(path: str, layout: UNetLayout = SD15_LAYOUT) -> str:
    """Diffusers UNet module path → LDM path (without ComfyUI's ``diffusion_model.`` prefix)."""
    for src, dst in _TOP_TO_LDM.items():
        if path == src or path.startswith(src + "."):
            return dst + path[len(src) :]
    for pattern, translate, up in (
        (_DOWN, _block_layer_to_ldm, False),
        (_DOWN_SAMPLER, _sampler_to_ldm, False),
        (_MID, _mid_to_ldm, False),
        (_UP, _block_layer_to_ldm, True),
        (_UP_SAMPLER, _sampler_to_ldm, True),
    ):
        if m := pattern.match(path):
            return translate(path, m, layout, up)
    raise KeyMappingError(f"{path!r} is not a module of the spatial UNet (no LDM counterpart)")


_IN = re.compile(r"input_blocks\.(\d+)\.(\d+)(?:\.(.+))?$")
_MIDDLE = re.compile(r"middle_block\.(\d+)(?:\.(.+))?$")
_OUT = re.compile(r"output_blocks\.(\d+)\.(\d+)(?:\.(.+))?$")


def _input_to_diffusers(path: str, m: re.Match, layout: UNetLayout) -> str:
    n = layout.layers_per_block
    k, slot, rest = int(m[1]), int(m[2]), m[3]
    i, j = divmod(k - 1, n + 1)
    if k < 1 or i >= layout.num_blocks:
        raise KeyMappingError(f"{path!r}: input block {k} does not exist in layout {layout}")
    if j == n:  # the downsampler slot
        if slot != 0 or not (rest == "op" or (rest or "").startswith("op.")):
            raise KeyMappingError(f"{path!r}: input block {k} holds only a downsampler 'op'")
        return f"down_blocks.{i}.downsamplers.0.conv{rest[2:]}"
    if slot == 0:
        return _join(
            f"down_blocks.{i}.resnets.{j}", rest and _split_leaf(rest, RESNET_FROM_LDM, "a ResNet block", path)
        )
    if slot == 1 and layout.down_attention[i]:
        return _join(f"down_blocks.{i}.attentions.{j}", rest)
    raise KeyMappingError(f"{path!r}: input block {k} has no slot {slot}")


def ldm_to_diffusers(path: str, layout: UNetLayout = SD15_LAYOUT) -> str:
    """LDM UNet module path (``diffusion_model.`` prefix optional) → diffusers module path."""
    path = path.removeprefix("diffusion_model.")
    n = layout.layers_per_block
    for src, dst in _TOP_FROM_LDM.items():
        if path == src or path.startswith(src + "."):
            return dst + path[len(src) :]
    if m := _IN.match(path):
        return _input_to_diffusers(path, m, layout)
    if m := _MIDDLE.match(path):
        slot, rest = int(m[1]), m[2]
        if slot in (0, 2):
            return _join(
                f"mid_block.resnets.{slot // 2}", rest and _split_leaf(rest, RESNET_FROM_LDM, "a ResNet block", path)
            )
        if slot == 1:
            return _join("mid_block.attentions.0", rest)
        raise KeyMappingError(f"{path!r}: the middle block has slots 0-2 only")
    if m := _OUT.match(path):
        k, slot, rest = int(m[1]), int(m[2]), m[3]
        i, j = divmod(k, n + 1)
        if i >= layout.num_blocks:
            raise KeyMappingError(f"{path!r}: output block {k} does not exist in layout {layout}")
        if slot == 0:
            return _join(
                f"up_blocks.{i}.resnets.{j}", rest and _split_leaf(rest, RESNET_FROM_LDM, "a ResNet block", path)
            )
        upsampler_slot = 2 if layout.up_attention[i] else 1
        if j == n and slot == upsampler_slot and (rest == "conv" or (rest or "").startswith("conv.")):
            return f"up_blocks.{i}.upsamplers.0.conv{rest[4:]}"
        if slot == 1 and layout.up_attention[i]:
            return _join(f"up_blocks.{i}.attentions.{j}", rest)
        raise KeyMappingError(f"{path!r}: output block {k} has no slot {slot} in layout {layout}")
    raise KeyMappingError(f"{path!r} is not a module of the LDM UNet layout")


# --- motion modules --------------------------------------------------------------------------------

_MOTION = re.compile(r"((?:down_blocks|up_blocks)\.\d+|mid_block)\.motion_modules\.(\d+)(?:\.(.+))?$")
_ADE_MOTION = re.compile(
    r"((?:down_blocks|up_blocks)\.\d+|mid_block)\.motion_modules\.(\d+)\.temporal_transformer(?:\.(.+))?$"
)
# Inside a temporal transformer block: diffusers (BasicTransformerBlock) ↔ AnimateDiff.
_BLOCK_TO_ADE = {
    "attn1": "attention_blocks.0",
    "attn2": "attention_blocks.1",
    "norm1": "norms.0",
    "norm2": "norms.1",
    "norm3": "ff_norm",
    "ff": "ff",
}
_BLOCK_FROM_ADE = {v: k for k, v in _BLOCK_TO_ADE.items()}
_TRANSFORMER_LEAVES = ("norm", "proj_in", "proj_out")
_TBLOCK = re.compile(r"transformer_blocks\.(\d+)\.(.+)$")


def is_motion(path: str) -> bool:
    """Whether a diffusers module path lies in an AnimateDiff motion module."""
    return ".motion_modules." in f".{path}"


def is_modelscope_temporal(path: str) -> bool:
    """Whether a diffusers ``UNet3DConditionModel`` path is one of ModelScope's temporal layers."""
    return path.startswith("transformer_in") or ".temp_attentions." in path or ".temp_convs." in path


def _rename_block(rest: str, table: dict[str, str], path: str) -> str:
    for src, dst in table.items():
        if rest == src or rest.startswith(src + "."):
            return dst + rest[len(src) :]
    raise KeyMappingError(f"{path!r}: a temporal transformer block has no layer {rest.split('.')[0]!r}")


def _motion_inner(rest: str | None, table: dict[str, str], path: str) -> str | None:
    if rest is None:
        return None
    if m := _TBLOCK.match(rest):
        # diffusers keeps a sinusoidal table per block (pos_embed.pe); AnimateDiff one per attention
        if m[2].startswith("pos_embed") or "pos_encoder" in m[2]:
            raise KeyMappingError(f"{path!r}: positional-encoding tables are buffers, not mapped layers")
        return f"transformer_blocks.{m[1]}.{_rename_block(m[2], table, path)}"
    if rest.split(".")[0] in _TRANSFORMER_LEAVES:
        return rest
    raise KeyMappingError(f"{path!r}: a temporal transformer has no layer {rest.split('.')[0]!r}")


def _motion_path(path: str, pattern: re.Pattern, table: dict[str, str], module: str, what: str) -> str:
    """Translate a motion-module path matched by ``pattern``: the module prefix, then its inner layer by ``table``."""
    m = pattern.match(path)
    if not m:
        raise KeyMappingError(f"{path!r} is not {what}")
    return _join(module.format(block=m[1], index=m[2]), _motion_inner(m[3], table, path))


def motion_to_ade(path: str) -> str:
    """Diffusers motion-module path (``UNetMotionModel``/``MotionAdapter``) → AnimateDiff/ADE path."""
    module = "{block}.motion_modules.{index}.temporal_transformer"
    return _motion_path(path, _MOTION, _BLOCK_TO_ADE, module, "a diffusers motion-module path")


def ade_to_motion(path: str) -> str:
    """AnimateDiff/ADE motion-module path → diffusers ``UNetMotionModel`` path."""
    module = "{block}.motion_modules.{index}"
    return _motion_path(path, _ADE_MOTION, _BLOCK_FROM_ADE, module, "an AnimateDiff motion-module path")
