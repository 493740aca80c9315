"""Reading the ModelScope T2V UNet3D checkpoints users have, as a state dict for :class:`ModelScopeUNet3D`.

Three forms are read, all ending in diffusers' ``UNet3DConditionModel`` names (the network's own):

* a diffusers model folder (the repository root with ``unet/``, or ``unet/`` itself): ``diffusion_pytorch_model
  .safetensors``, else its ``.fp16`` variant (``.bin`` files only with ``allow_pickle``), with ``config.json``;
* a single ``.safetensors`` file, in diffusers' names or in the original ones;
* the original release (``text2video_pytorch_model.pth``) and the A1111-format fine-tunes (zeroscope, animov): a
  bare ``UNetSD`` state dict, optionally under ``model.diffusion_model.`` and/or a ``{"state_dict": ...}``
  wrapper. Pickles are read only with ``allow_pickle=True``, and then only through ``torch.load(weights_only=True)``
  (:mod:`mcm.weights.read`).

Without a ``config.json`` the config comes from the tensor shapes (see :func:`infer_config`). Whatever was read is
checked against the network built on the ``meta`` device (every key, every shape): anything else (a Stable
Diffusion checkpoint, a motion module, a truncated file, a partial or reshaped state dict) is one
:class:`ModelScopeCheckpointError` naming the file and what is missing or wrong.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from ..weights.format import AdapterError
from ..weights.keys import RESNET_FROM_LDM
from ..weights.read import PICKLE_SUFFIXES, read_tensors
from .config import MS_1_7B, ModelScopeUNetConfig
from .unet import ModelScopeUNet3D

__all__ = [
    "ModelScopeCheckpointError",
    "check_state_dict",
    "detect_layout",
    "infer_config",
    "load_unet_state_dict",
    "original_to_diffusers",
    "to_unet_state_dict",
]

#: The prefix of the UNet in a full LDM / A1111 checkpoint.
LDM_PREFIX = "model.diffusion_model."
#: A diffusers UNet folder's weights, in the order they are preferred.
FOLDER_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
EXPECTED = "a ModelScope T2V UNet3D (text-to-video-ms-1.7b or a fine-tune of it) was expected"
#: How many names an error lists before it only counts.
LISTED = 3

_DIFFUSERS_ROOTS = (
    "conv_in.",
    "time_embedding.",
    "transformer_in.",
    "down_blocks.",
    "mid_block.",
    "up_blocks.",
    "conv_norm_out.",
    "conv_out.",
)
_ORIGINAL_ROOTS = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.")
_ORIGINAL_TOP = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "input_blocks.0.0": "conv_in",
    "input_blocks.0.1": "transformer_in",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}
_TEMPORAL_CONV = "temopral_conv."  # sic: the original's attribute name
_BLOCK_KEY = re.compile(r"(input_blocks|output_blocks)\.(\d+)\.(.+)$")
_MIDDLE_KEY = re.compile(r"middle_block\.(\d+)\.(.+)$")
_SAMPLER_LEAF = re.compile(r"(?:0\.)?op\.(weight|bias)")
_DOWNSAMPLER_KEY = re.compile(r"input_blocks\.(\d+)\.(?:0\.)?op\.(weight|bias)$")
_UPSAMPLER_KEY = re.compile(r"output_blocks\.(\d+)\.([1-9]\d*)\.conv\.(weight|bias)$")


class ModelScopeCheckpointError(ValueError):
    """A file or state dict that is not a usable ModelScope T2V UNet3D; the one-line message names it and says why."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def _some(names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:LISTED])
    return shown + (f", … ({len(names) - LISTED} more)" if len(names) > LISTED else "")


def _dims(shape: Iterable[int]) -> str:
    return "x".join(str(d) for d in shape) or "a scalar"


def _unwrap(state_dict: Mapping) -> dict:
    """The UNet's tensors: a ``{"state_dict": ...}`` wrapper opened, only the ``model.diffusion_model.`` keys
    (prefix removed) when there are any."""
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    if any(k.startswith(LDM_PREFIX) for k in state_dict):
        return {k[len(LDM_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(LDM_PREFIX)}
    return dict(state_dict)


def _attn_width(shapes: Mapping) -> int | None:
    """The context width of the first cross-attention (``attn2.to_k``'s input features), if any."""
    for key, value in shapes.items():
        if key.endswith("attn2.to_k.weight") and hasattr(value, "shape") and len(value.shape) == 2:
            return int(value.shape[1])
    return None


def _looks_like(state_dict: Mapping | Iterable[str]) -> str | None:
    """What a state dict without ModelScope's temporal layers seems to be (a phrase for an error), if known."""
    keys = list(state_dict)
    if any("motion_modules." in k for k in keys):
        return "an AnimateDiff motion module"
    if any("lora" in k.lower() for k in keys):
        return "a LoRA or adapter file"
    width = _attn_width(state_dict) if isinstance(state_dict, Mapping) else None
    family = {768: "Stable Diffusion 1.5", 1024: "Stable Diffusion 2.x", 2048: "SDXL"}.get(width)
    names = [k.removeprefix(LDM_PREFIX) for k in keys]
    if any(k.startswith(_ORIGINAL_ROOTS) for k in names):
        return f"a {family or 'Stable Diffusion (2-D)'} checkpoint"
    if any(k.startswith(_DIFFUSERS_ROOTS) for k in names):
        return f"a diffusers 2-D UNet (UNet2DConditionModel{', ' + family if family else ''})"
    return None


def detect_layout(keys: Iterable[str], source: str = "state dict") -> str:
    """``"diffusers"`` (``UNet3DConditionModel``'s names) or ``"original"`` (ModelScope's ``UNetSD``, with or
    without ``model.diffusion_model.``), from the key names only; otherwise a ModelScopeCheckpointError."""
    keys = list(keys)
    if any(k.startswith(_DIFFUSERS_ROOTS) for k in keys):
        return "diffusers"
    if any(k.removeprefix(LDM_PREFIX).startswith(_ORIGINAL_ROOTS) for k in keys):
        return "original"
    if not keys:
        raise ModelScopeCheckpointError(f"{source}: holds no tensors; {EXPECTED}")
    seems = _looks_like(keys)
    raise ModelScopeCheckpointError(
        f"{source}: has neither diffusers UNet3D keys (conv_in, down_blocks.…) nor original ModelScope keys "
        f"(input_blocks.…, middle_block.…){': it looks like ' + seems if seems else ''} "
        f"(first keys: {', '.join(keys[:LISTED])}); {EXPECTED}"
    )


def _resnet_part(rest: str, resnet: str, temp_conv: str) -> str | None:
    """``rest`` inside an original ResBlock → the diffusers name under ``resnet`` or ``temp_conv`` (None: unknown)."""
    if rest.startswith(_TEMPORAL_CONV):
        return f"{temp_conv}.{rest[len(_TEMPORAL_CONV) :]}"
    for old, new in RESNET_FROM_LDM.items():  # the original's ResBlocks use the LDM names
        if rest.startswith(old + "."):
            return f"{resnet}.{new}{rest[len(old) :]}"
    return None


def _layers_per_block(keys: Iterable[str]) -> int:
    """From the first downsampler's input-block index (ModelScope's 2 if there is none: the check then says so)."""
    samplers = sorted(int(m[1]) for k in keys if (m := _DOWNSAMPLER_KEY.match(k)))
    return samplers[0] - 1 if samplers and samplers[0] > 1 else 2


def _output_slots(keys: Iterable[str]) -> tuple[set[tuple[int, str]], dict[tuple[int, str], str]]:
    """The upsamplers ``{(output block, slot)}``, found by their keys ``conv.weight``/``conv.bias`` at any slot above 0
    (1 and 3 in the original, 2 from community converters), and the role of every other slot above 0:
    ``attentions`` then ``temp_attentions``, in slot order."""
    keys = list(keys)
    samplers = {(int(m[1]), m[2]) for k in keys if (m := _UPSAMPLER_KEY.match(k))}
    slots: dict[int, set[int]] = {}
    for key in keys:
        m = _BLOCK_KEY.match(key)
        if not m or m[1] != "output_blocks" or _UPSAMPLER_KEY.match(key):
            continue
        slot = m[3].split(".")[0]
        if slot.isdigit() and slot != "0":
            slots.setdefault(int(m[2]), set()).add(int(slot))
    roles = {}
    for index, found in slots.items():
        for role, slot in zip(("attentions", "temp_attentions"), sorted(found)):
            roles[(index, str(slot))] = role
    return samplers, roles


def _original_name(key: str, per_level: int, samplers: set, roles: dict) -> str | None:
    """The diffusers name of an original ``UNetSD`` key (None: no counterpart)."""
    for old, new in _ORIGINAL_TOP.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]
    if m := _MIDDLE_KEY.match(key):
        slot, rest = int(m[1]), m[2]
        if slot in (0, 3):
            return _resnet_part(rest, f"mid_block.resnets.{slot // 3}", f"mid_block.temp_convs.{slot // 3}")
        return f"mid_block.{'attentions' if slot == 1 else 'temp_attentions'}.0.{rest}" if slot in (1, 2) else None
    m = _BLOCK_KEY.match(key)
    if not m or (m[1] == "input_blocks" and m[2] == "0"):
        return None
    index, rest = int(m[2]), m[3]
    slot, _, inner = rest.partition(".")
    if m[1] == "input_blocks":
        block, layer = divmod(index - 1, per_level + 1)
        prefix = f"down_blocks.{block}"
        if layer == per_level:
            leaf = _SAMPLER_LEAF.fullmatch(rest)
            return f"{prefix}.downsamplers.0.conv.{leaf[1]}" if leaf else None
        role = {"1": "attentions", "2": "temp_attentions"}.get(slot)
    else:
        block, layer = divmod(index, per_level + 1)
        prefix = f"up_blocks.{block}"
        if (index, slot) in samplers and inner in ("conv.weight", "conv.bias"):
            return f"{prefix}.upsamplers.0.{inner}"
        role = roles.get((index, slot))
    if slot == "0":
        return _resnet_part(inner, f"{prefix}.resnets.{layer}", f"{prefix}.temp_convs.{layer}")
    return f"{prefix}.{role}.{layer}.{inner}" if role else None


def _as_linear(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """A Conv1d (or 1×1 conv) projection weight ``(out, in, 1[, 1])`` as the Linear weight ``(out, in)`` (a view)."""
    if name.endswith(("proj_in.weight", "proj_out.weight")) and tensor.ndim > 2 and set(tensor.shape[2:]) == {1}:
        return tensor.reshape(tensor.shape[0], tensor.shape[1])
    return tensor


def original_to_diffusers(state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> dict:
    """An original ModelScope ``UNetSD`` state dict in diffusers' ``UNet3DConditionModel`` names.

    Accepts the ``model.diffusion_model.`` prefix (then only those keys are kept) and a ``{"state_dict": ...}``
    wrapper. The temporal transformers' Conv1d projections become Linear weights (views, nothing copied); keys
    with no counterpart keep their names (the check against the network then reports them). Layers per block
    come from where the first downsampler sits, so other depths convert too.
    """
    state_dict = _unwrap(state_dict)
    per_level = _layers_per_block(state_dict)
    samplers, roles = _output_slots(state_dict)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        name = _original_name(key, per_level, samplers, roles) or key
        if name in out:
            raise ModelScopeCheckpointError(f"{source}: two keys give {name} (one is {key}); {EXPECTED}")
        out[name] = _as_linear(name, tensor) if isinstance(tensor, torch.Tensor) else tensor
    return out


def _has_temporal(keys: Iterable[str], layout: str) -> bool:
    """Any of ModelScope's temporal layers (in the original layout: the ones a 2-D UNet's numbering cannot give)."""
    if layout == "original":
        return any(_TEMPORAL_CONV in k or k.startswith("input_blocks.0.1.") for k in keys)
    return any(k.startswith("transformer_in.") or ".temp_convs." in k or ".temp_attentions." in k for k in keys)


def infer_config(state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> ModelScopeUNetConfig:
    """The config of a diffusers-named ModelScope UNet3D state dict, from its tensor shapes.

    Levels and ``block_out_channels`` from the first ResNet of each down block, ``layers_per_block`` from the
    ResNets of the first, ``in/out_channels`` from ``conv_in``/``conv_out``, ``cross_attention_dim`` from the mid
    block's ``attn2.to_k``, and ``attention_head_dim`` from ``transformer_in``'s width (it has
    ``temporal_in_heads`` = 8 heads). The shapes do not hold ``norm_num_groups`` and ``norm_eps``: they are
    ModelScope's (32, 1e-5).
    """

    def shape(key: str) -> torch.Size:
        tensor = state_dict.get(key)
        if not isinstance(tensor, torch.Tensor) or tensor.ndim < 2:
            raise ModelScopeCheckpointError(f"{source}: has no usable {key}, which gives the UNet's shape; {EXPECTED}")
        return tensor.shape

    levels = sorted({int(m[1]) for k in state_dict if (m := re.match(r"down_blocks\.(\d+)\.resnets\.", k))})
    per_level = {m[1] for k in state_dict if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))}
    if len(levels) < 2 or levels != list(range(len(levels))):
        raise ModelScopeCheckpointError(
            f"{source}: its down blocks with ResNets are {levels}, not levels 0, 1, …; {EXPECTED}"
        )
    inner = shape("transformer_in.proj_in.weight")[0]
    heads = MS_1_7B.temporal_in_heads
    if inner % heads:
        raise ModelScopeCheckpointError(
            f"{source}: transformer_in is {inner} wide, not {heads} heads of equal width; {EXPECTED}"
        )
    try:
        return ModelScopeUNetConfig(
            in_channels=shape("conv_in.weight")[1],
            out_channels=shape("conv_out.weight")[0],
            block_out_channels=tuple(shape(f"down_blocks.{i}.resnets.0.conv1.weight")[0] for i in levels),
            layers_per_block=len(per_level),
            cross_attention_dim=shape("mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight")[1],
            attention_head_dim=inner // heads,
        )
    except ValueError as exc:
        raise ModelScopeCheckpointError(
            f"{source}: its tensor shapes give no usable UNet config ({exc}); {EXPECTED}"
        ) from None


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: ModelScopeUNetConfig, source: str = "state dict", given: str = ""
) -> None:
    """That ``state_dict`` has exactly the keys and shapes of ``ModelScopeUNet3D(config)`` (built on ``meta``) and
    only floating-point tensors; else one ModelScopeCheckpointError listing a few of each problem with counts."""
    expected = {k: v.shape for k, v in ModelScopeUNet3D(config, device="meta").state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    wrong = [
        f"{k} is {_dims(tensors[k].shape)} (expected {_dims(shape)})"
        for k, shape in expected.items()
        if k in tensors and tensors[k].shape != shape
    ]
    not_float = [
        f"{k} ({v.dtype if isinstance(v, torch.Tensor) else type(v).__name__})"
        for k, v in state_dict.items()
        if not isinstance(v, torch.Tensor) or not v.is_floating_point()
    ]
    problems = [
        f"{len(missing)} keys missing ({_some(missing)})" if missing else "",
        f"{len(unexpected)} unexpected keys ({_some(unexpected)})" if unexpected else "",
        f"{len(wrong)} tensors of the wrong shape ({_some(wrong)})" if wrong else "",
        f"{len(not_float)} tensors not floating-point ({_some(not_float)})" if not_float else "",
    ]
    problems = [p for p in problems if p]
    if problems:
        raise ModelScopeCheckpointError(
            f"{source}: does not match the ModelScope UNet3D {given or 'of its config'}: "
            + "; ".join(problems)
            + f"; {EXPECTED}"
        )


def to_unet_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: ModelScopeUNetConfig | None = None,
    source: str = "state dict",
    config_source: str = "its config",
) -> tuple[dict[str, torch.Tensor], ModelScopeUNetConfig]:
    """``(state dict in diffusers' names, config)`` from tensors already read, in either layout, checked against
    the network (``config``, else :func:`infer_config`); ``source`` names them in errors."""
    state_dict = _unwrap(state_dict)
    layout = detect_layout(state_dict, source)
    if not _has_temporal(state_dict, layout):
        seems = _looks_like(state_dict)
        raise ModelScopeCheckpointError(
            f"{source}: has no ModelScope temporal layers (temp_convs / temp_attentions / transformer_in)"
            f"{': it looks like ' + seems if seems else ''}; {EXPECTED}"
        )
    converted = original_to_diffusers(state_dict, source) if layout == "original" else state_dict
    if config is None:
        config, config_source = infer_config(converted, source), "its tensor shapes give"
    check_state_dict(converted, config, source, given=f"{config_source} ({_describe(config)})")
    return converted, config


def _describe(config: ModelScopeUNetConfig) -> str:
    return (
        f"block_out_channels={list(config.block_out_channels)}, layers_per_block={config.layers_per_block}, "
        f"cross_attention_dim={config.cross_attention_dim}"
    )


def _read_config(path: Path) -> ModelScopeUNetConfig:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelScopeCheckpointError(f"{path}: cannot be read as JSON ({exc}); {EXPECTED}") from None
    if not isinstance(config, dict):
        raise ModelScopeCheckpointError(f"{path}: holds a {type(config).__name__}, not a UNet config; {EXPECTED}")
    kind = config.get("_class_name", "UNet3DConditionModel")
    if kind != "UNet3DConditionModel":
        raise ModelScopeCheckpointError(f"{path}: describes a {kind}, not a UNet3DConditionModel; {EXPECTED}")
    try:
        return ModelScopeUNetConfig.from_diffusers_config(config)
    except (ValueError, TypeError) as exc:
        raise ModelScopeCheckpointError(f"{path}: {exc}; {EXPECTED}") from None


def _folder_weights(folder: Path) -> Path:
    unet = folder / "unet" if (folder / "unet").is_dir() else folder
    for name in FOLDER_WEIGHTS:
        if (unet / name).is_file():
            return unet / name
    raise ModelScopeCheckpointError(
        f"{unet}: holds none of {', '.join(FOLDER_WEIGHTS)}; a diffusers model folder (with unet/), its unet/ "
        "folder, or a UNet file (.safetensors, or .pth/.bin/.ckpt with allow_pickle) was expected"
    )


def _read(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """The tensors of a file through :mod:`mcm.weights.read` (pickles only with ``allow_pickle``)."""
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise ModelScopeCheckpointError(
            f"{path}: a pickle-based file ({path.suffix}). Pickles can run arbitrary code when loaded, so "
            "comfyui-mcm reads .safetensors unless told otherwise. If you trust its source, convert it once with "
            f"`python -m mcm.weights to-safetensors {path} OUT.safetensors` and use the result, or load it with "
            "allow_pickle=True."
        )
    try:
        return read_tensors(path, allow_pickle, given_as="weights")[0]
    except AdapterError as exc:
        raise ModelScopeCheckpointError(str(exc)) from None


def load_unet_state_dict(
    path: str | os.PathLike, allow_pickle: bool = False
) -> tuple[dict[str, torch.Tensor], ModelScopeUNetConfig]:
    """``(state dict, config)`` of a ModelScope T2V UNet3D file or diffusers folder, ready for
    ``ModelScopeUNet3D(config).load_state_dict(state_dict, strict=True)``.

    ``path``: a diffusers model folder (repository root with ``unet/``, or ``unet/``; the fp32 weights, else the
    ``.fp16`` ones; its ``config.json``), a ``.safetensors`` file in diffusers' or the original names, or (only
    with ``allow_pickle``) an original ``.pth``/``.bin``/``.ckpt``. Tensors keep the file's dtype. A file named
    like diffusers' weights takes the ``config.json`` beside it; any other file's config comes from its shapes.
    Raises ModelScopeCheckpointError (one line naming the file) for anything that is not a complete ModelScope UNet.
    """
    path = Path(path)
    if path.is_dir():
        weights = _folder_weights(path)
    elif path.is_file():
        weights = path
    else:
        raise ModelScopeCheckpointError(f"{path}: no such file or folder; {EXPECTED}")
    config_path = weights.parent / "config.json"
    config = None
    if weights.name in FOLDER_WEIGHTS and config_path.is_file():
        config = _read_config(config_path)
    state_dict = _read(weights, allow_pickle)
    return to_unet_state_dict(state_dict, config, source=str(weights), config_source=f"{config_path} gives")
