"""Writing adapters: our file, a PEFT folder, ComfyUI and AnimateDiff-Evolved layouts, merged motion modules.

:data:`EXPORTERS` is the one registry of output formats (name → writer and whether it writes a file
or a folder); ``python -m mcm.weights convert --to NAME`` dispatches on it. Every write is atomic
(:mod:`.atomic`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .atomic import (
    FILE,
    FOLDER,
    atomic_dir,
    atomic_file,
    new_file_mode,
    parent_folders,
    prepare_destination,
    replace_files_in,
)
from .format import META_PREFIX, Adapter, AdapterError
from .keys import SD15_LAYOUT, KeyMappingError, UNetLayout, diffusers_to_ldm, motion_to_ade
from .layers import PEFT_PREFIX
from .lora import LoraWeights, merge_lora
from .peft import PEFT_CONFIG, PEFT_WEIGHTS
from .read import read_tensors, read_weights

__all__ = [
    "EXPORTERS",
    "ExportOptions",
    "Exporter",
    "ade_motion_layers",
    "comfy_modelscope_layers",
    "comfy_spatial_layers",
    "export_ade_motion_lora",
    "export_comfy_lora",
    "export_peft",
    "merge_motion_module",
    "save_adapter",
    "save_tensors",
    "to_safetensors",
]


def _tensor(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous()


def _own_storage(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, none sharing storage with another (safetensors refuses shared ones)."""
    seen, out = set(), {}
    for key, t in tensors.items():
        t = _tensor(t)
        ptr = t.untyped_storage().data_ptr()
        out[key] = t.clone() if ptr in seen and t.numel() else t
        seen.add(ptr)
    return out


def _all_finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t.float()).all())  # float(): no CPU isfinite for the float8 dtypes


def _alpha_tensor(alpha: float) -> torch.Tensor:
    """A layer's ``.alpha`` entry: float32, as LoRA files store it, unless float32 cannot hold the value (past
    3.4e38 it would be inf, below 1e-45 zero: a file no reader accepts); then float64."""
    t = torch.tensor(float(alpha))
    return t if bool(torch.isfinite(t)) and float(t) > 0 else torch.tensor(float(alpha), dtype=torch.float64)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str], overwrite: bool) -> Path:
    """A safetensors file, atomically."""
    tensors = _own_storage(tensors)
    return atomic_file(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata), overwrite)


def save_adapter(adapter: Adapter, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the canonical MCM adapter file (atomically)."""
    tensors: dict[str, torch.Tensor] = {}
    for p, w in sorted(adapter.layers.items()):
        tensors[f"{p}.lora_A.weight"] = _tensor(w.down)
        tensors[f"{p}.lora_B.weight"] = _tensor(w.up)
        if w.alpha != adapter.meta.lora_alpha:
            tensors[f"{p}.alpha"] = _alpha_tensor(w.alpha)
    return atomic_file(
        Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=adapter.meta.to_metadata()), overwrite
    )


def _peft_config(adapter: Adapter) -> dict:
    meta = adapter.meta
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "r": meta.lora_rank,
        "lora_alpha": meta.lora_alpha,
        "lora_dropout": 0.0,
        "target_modules": sorted(adapter.layers),
        "rank_pattern": {p: w.rank for p, w in adapter.layers.items() if w.rank != meta.lora_rank},
        "alpha_pattern": {p: w.alpha for p, w in adapter.layers.items() if w.alpha != meta.lora_alpha},
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }


def export_peft(adapter: Adapter, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """A PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``), as the official release.

    ``PeftModel.from_pretrained(unet, folder)`` loads it onto the matching diffusers model; the MCM
    metadata rides along in the safetensors header so that nothing is lost on the way back. An
    existing folder (with ``overwrite``) keeps its permission bits and every other file it holds;
    only the two adapter files are replaced.
    """
    folder = Path(folder)
    prepare_destination(folder, overwrite, FOLDER)
    config = json.dumps(_peft_config(adapter), indent=2, sort_keys=True) + "\n"
    tensors = {}
    for p, w in sorted(adapter.layers.items()):
        tensors[f"{PEFT_PREFIX}{p}.lora_A.weight"] = _tensor(w.down)
        tensors[f"{PEFT_PREFIX}{p}.lora_B.weight"] = _tensor(w.up)
    metadata = {"format": "pt", **adapter.meta.to_metadata()}
    writes: dict[str, Callable[[Path], None]] = {
        PEFT_WEIGHTS: lambda tmp: save_file(tensors, str(tmp), metadata=metadata),
        PEFT_CONFIG: lambda tmp: tmp.write_text(config),
    }
    if folder.is_dir():
        return replace_files_in(folder, writes)
    with parent_folders(folder), atomic_dir(folder) as tmp:
        for name, write in writes.items():
            write(tmp / name)
            os.chmod(
                tmp / name, new_file_mode()
            )  # safetensors creates its files 0600: a shared models folder could not read them
    return folder


def _mapped(layers: dict[str, LoraWeights], fn: Callable[[str], str], where: str, what: str) -> dict[str, LoraWeights]:
    out, failed = {}, []
    for path, w in layers.items():
        try:
            out[fn(path)] = w
        except KeyMappingError as exc:
            failed.append(str(exc))
    if failed:
        raise AdapterError(f"{where}: {len(failed)} layers have no {what} counterpart: " + "; ".join(failed[:8]))
    return out


def is_modelscope_adapter(adapter: Adapter) -> bool:
    return adapter.meta.base == "modelscope-t2v" or bool(adapter.temporal_layers())


def comfy_spatial_layers(adapter: Adapter, layout: UNetLayout = SD15_LAYOUT) -> dict[str, LoraWeights]:
    """The spatial LoRA layers keyed by ComfyUI's LDM UNet path (``input_blocks.1.1…``, no prefix)."""
    if is_modelscope_adapter(adapter):
        raise AdapterError(
            f"{adapter.source}: a ModelScope T2V adapter: it applies to a ModelScope model (Load ModelScope T2V "
            "Model), not to a Stable Diffusion UNet"
        )
    return _mapped(adapter.spatial_layers(), lambda p: diffusers_to_ldm(p, layout), adapter.source, "ComfyUI UNet")


def comfy_modelscope_layers(adapter: Adapter) -> dict[str, LoraWeights]:
    """Every layer of a ModelScope adapter, keyed by the module path of the ComfyUI ModelScope model (no prefix).

    That model (``Load ModelScope T2V Model``) is the UNet3D with diffusers' module names, so the paths are the
    adapter's own: spatial and temporal layers alike.
    """
    if not is_modelscope_adapter(adapter):
        raise AdapterError(
            f"{adapter.source}: made for {adapter.meta.base}, not for ModelScope text-to-video (modelscope-t2v)"
        )
    return dict(adapter.layers)


def ade_motion_layers(adapter: Adapter) -> dict[str, LoraWeights]:
    """The motion-module LoRA layers keyed by AnimateDiff/ADE path (``…temporal_transformer…``)."""
    return _mapped(adapter.motion_layers(), motion_to_ade, adapter.source, "AnimateDiff motion-module")


def _export_meta(adapter: Adapter, part: str, **changes) -> dict[str, str]:
    training = dict(adapter.meta.training)
    training["exported_part"] = part
    return adapter.meta.replace(training=training, **changes).to_metadata()


def export_comfy_lora(
    adapter: Adapter, path: str | os.PathLike, *, layout: UNetLayout = SD15_LAYOUT, overwrite: bool = False
) -> Path:
    """The spatial part as a LoRA that ComfyUI's core ``LoraLoader`` applies to the SD1.5 MODEL.

    Keys are ``diffusion_model.<LDM path>.lora_up/lora_down.weight`` + ``.alpha``. The motion part is
    not in this file (core ComfyUI has no motion module): see :func:`export_ade_motion_lora`.
    """
    modelscope = is_modelscope_adapter(adapter)
    layers = comfy_modelscope_layers(adapter) if modelscope else comfy_spatial_layers(adapter, layout)
    if not layers:
        raise AdapterError(f"{adapter.source}: has no spatial (UNet) layers to export")
    tensors = {}
    for p, w in sorted(layers.items()):
        tensors[f"diffusion_model.{p}.lora_down.weight"] = _tensor(w.down)
        tensors[f"diffusion_model.{p}.lora_up.weight"] = _tensor(w.up)
        tensors[f"diffusion_model.{p}.alpha"] = _alpha_tensor(w.alpha)
    if modelscope:  # the whole adapter, spatial and temporal: the file keeps its base
        return save_tensors(tensors, Path(path), _export_meta(adapter, "all"), overwrite)
    return save_tensors(
        tensors, Path(path), _export_meta(adapter, "spatial", base="sd15", motion_module=None), overwrite
    )


def export_ade_motion_lora(adapter: Adapter, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """The motion part in AnimateDiff's motion-LoRA format, for ADE's ``Load AnimateDiff LoRA``.

    Keys are ``<AnimateDiff module>_lora.down.weight`` / ``_lora.up.weight``; ADE maps them onto any
    linear layer of the motion module (attention, proj_in/out, feed-forward) and adds ``up @ down``
    with no alpha, so the LoRA scale is folded into the up factor. Put the file in
    ``models/animatediff_motion_lora``.
    """
    layers = ade_motion_layers(adapter)
    if not layers:
        raise AdapterError(f"{adapter.source}: has no motion-module layers to export")
    tensors = {}
    for p, w in sorted(layers.items()):
        tensors[f"{p}_lora.down.weight"] = _tensor(w.down)
        up = _tensor(w.up.to(torch.float32) * w.scale).to(w.up.dtype)
        if not _all_finite(up):
            raise AdapterError(
                f"{adapter.source}: layer {p!r}: its scale {w.scale:g} (alpha / rank) folded into the up factor "
                f"overflows {str(up.dtype).removeprefix('torch.')}; the ADE motion-LoRA format has no alpha to "
                "keep it in, so this adapter cannot be written as one"
            )
        tensors[f"{p}_lora.up.weight"] = up
    metadata = _export_meta(adapter, "motion", lora_alpha=float(adapter.meta.lora_rank))  # scale folded in
    return save_tensors(tensors, Path(path), metadata, overwrite)


def merge_motion_module(
    adapter: Adapter,
    base: str | os.PathLike,
    path: str | os.PathLike,
    *,
    strength: float = 1.0,
    overwrite: bool = False,
    allow_pickle: bool = False,
) -> Path:
    """A motion-module file with the adapter's motion LoRA merged in (``W + strength·ΔW``).

    ``base`` is the motion module the adapter was trained on, in AnimateDiff layout (``mm_sd_v15_v2``
    …) or diffusers ``MotionAdapter`` layout; the output keeps the base's layout and dtype. A
    pickle-based base (the official ``.ckpt``) is read only with ``allow_pickle``, tensors only.
    """
    base = Path(base)
    if not math.isfinite(strength):
        raise AdapterError(f"strength = {strength}; expected a finite number")
    prepare_destination(Path(path), overwrite, FILE)  # before the (large) base is read
    tensors, metadata = read_tensors(base, allow_pickle, given_as="weights")
    motion = adapter.motion_layers()
    if not motion:
        raise AdapterError(f"{adapter.source}: has no motion-module layers to merge")
    ade_layout = any(".temporal_transformer." in k for k in tensors)
    layers = _mapped(motion, motion_to_ade, adapter.source, "AnimateDiff") if ade_layout else motion
    missing = [p for p in layers if f"{p}.weight" not in tensors]
    if missing:
        raise AdapterError(
            f"{base}: is not the motion module this adapter fits; {len(missing)} layers missing, e.g. {missing[:5]}"
        )
    not_float = [f"{p}.weight" for p in layers if not tensors[f"{p}.weight"].is_floating_point()]
    if not_float:
        raise AdapterError(f"{base}: {len(not_float)} weights are not floating-point tensors, e.g. {not_float[:3]}")
    try:
        merged = merge_lora(tensors, layers, strength)
    except ValueError as exc:
        raise AdapterError(f"{base}: {exc}") from None
    keys = [f"{p}.weight" for p in layers]
    overflowed = [k for k in keys if _all_finite(tensors[k]) and not _all_finite(merged[k])]  # a NaN base: its own
    if overflowed:
        raise AdapterError(
            f"{adapter.source}: merged into {base} at strength {strength:g}, {len(overflowed)} weights overflow to "
            f"NaN/inf, e.g. {overflowed[:3]}; use a smaller --strength"
        )
    out_meta = {k: v for k, v in metadata.items() if not k.startswith(META_PREFIX)}
    out_meta["mcm.merged_from"] = json.dumps(
        {
            "adapter": adapter.source,
            "strength": strength,
            "style": adapter.meta.style,
            "temporal_norm": adapter.meta.temporal_norm,
        }
    )
    return save_tensors(merged, Path(path), out_meta, overwrite)


def to_safetensors(
    src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False, prefix: str | None = None
) -> Path:
    """A tensors-only pickle (``.ckpt``/``.bin``/``.pt``) rewritten as safetensors, read with ``weights_only=True``.

    ``prefix`` keeps only the tensors whose names start with it, and writes them without it: e.g.
    ``first_stage_model.`` takes the VAE out of a whole LDM checkpoint, such as ModelScope's original
    ``VQGAN_autoencoder.pth``, as a file ComfyUI's Load VAE reads."""
    prepare_destination(Path(dst), overwrite, FILE)
    tensors = read_weights(src, allow_pickle=True)
    if prefix is not None:
        tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix) and len(k) > len(prefix)}
        if not tensors:
            raise AdapterError(f"{src}: no tensor name starts with --prefix {prefix!r}")
    return save_tensors(tensors, Path(dst), {"format": "pt"}, overwrite)


# --- the registry the CLI dispatches on --------------------------------------------------------------


@dataclass(frozen=True)
class ExportOptions:
    layout: UNetLayout = SD15_LAYOUT
    base_motion_module: str | None = None
    strength: float = 1.0
    allow_pickle: bool = False


@dataclass(frozen=True)
class Exporter:
    """One output format: ``write(adapter, dst, overwrite, options)`` writes a ``target`` (file or folder)."""

    name: str
    target: str
    write: Callable[[Adapter, Path, bool, ExportOptions], Path]
    help: str
    leaves_out: Callable[[Adapter], str | None] = lambda adapter: None


def _write_ade(adapter: Adapter, dst: Path, overwrite: bool, options: ExportOptions) -> Path:
    if options.base_motion_module:
        return merge_motion_module(
            adapter,
            options.base_motion_module,
            dst,
            strength=options.strength,
            overwrite=overwrite,
            allow_pickle=options.allow_pickle,
        )
    return export_ade_motion_lora(adapter, dst, overwrite=overwrite)


def _no_motion(adapter: Adapter) -> str | None:
    n = len(adapter.motion_layers())
    return f"the {n} motion-module layers are not in a ComfyUI LoRA; write them with --to ade" if n else None


def _no_spatial(adapter: Adapter) -> str | None:
    n = len(adapter.spatial_layers())
    return f"the {n} spatial layers are not in this file; write them with --to comfy-lora" if n else None


EXPORTERS: dict[str, Exporter] = {
    e.name: e
    for e in (
        Exporter("mcm", FILE, lambda a, dst, ow, o: save_adapter(a, dst, overwrite=ow), "the MCM adapter file"),
        Exporter(
            "comfy-lora",
            FILE,
            lambda a, dst, ow, o: export_comfy_lora(a, dst, layout=o.layout, overwrite=ow),
            "the spatial part, for ComfyUI's LoraLoader (ModelScope: the whole adapter, for LoraLoader after "
            "Load ModelScope T2V Model)",
            _no_motion,
        ),
        Exporter(
            "ade",
            FILE,
            _write_ade,
            "the motion part: an ADE motion LoRA, or merged into --base-motion-module",
            _no_spatial,
        ),
        Exporter(
            "peft", FOLDER, lambda a, dst, ow, o: export_peft(a, dst, overwrite=ow), "a PEFT folder, for diffusers"
        ),
    )
}
