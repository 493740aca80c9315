"""Loading an adapter from any supported source: our file, a PEFT folder, a folder of them, a LoRA file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .format import ADAPTER_FORMAT, META_PREFIX, Adapter, AdapterError, AdapterMeta, brief, loads_json
from .guess import check_consistent, default_meta, diffusers_alpha, style_from_name
from .keys import SD15_LAYOUT, UNetLayout, is_motion
from .layers import parse_lora_tensors
from .peft import PEFT_CONFIG, PEFT_WEIGHTS, PEFT_WEIGHTS_PICKLE, is_peft_folder, read_peft_config
from .read import read_safetensors_metadata, read_tensors, refuse_pickle

__all__ = ["check_mcm_marker", "find_adapters", "is_mcm_file", "load_adapter", "spatial_and_motion_counts"]


def find_adapters(root: str | os.PathLike) -> dict[str, Path]:
    """Adapters at ``root``: the file or PEFT folder itself, or the adapters directly inside it.

    Returns ``{name: path}``; names are file stems or folder names (``animatediff-webvid``).
    """
    root = Path(root)
    if root.is_file() or is_peft_folder(root):
        return {root.stem if root.is_file() else root.name: root}
    if not root.is_dir():
        raise AdapterError(f"{root}: no such file or folder")
    found = {}
    for child in sorted(root.iterdir()):
        if is_peft_folder(child):
            found[child.name] = child
        elif child.is_file() and child.suffix.lower() == ".safetensors":
            found[child.stem] = child
    return found


def _has_mcm_metadata(metadata: dict[str, str]) -> bool:
    return any(k.startswith(META_PREFIX) for k in metadata)


def _load_peft_folder(folder: Path, allow_pickle: bool, layout: UNetLayout) -> Adapter:
    config_path = folder / PEFT_CONFIG
    weights = folder / PEFT_WEIGHTS
    if not weights.exists() and (folder / PEFT_WEIGHTS_PICKLE).exists():
        weights = folder / PEFT_WEIGHTS_PICKLE
    if not config_path.is_file():
        raise AdapterError(
            f"{folder}: missing {PEFT_CONFIG}. A PEFT adapter folder holds {PEFT_CONFIG} next to "
            f"{PEFT_WEIGHTS}; copy the whole folder (e.g. animatediff-webvid/ from the yhzhai/mcm model repo)."
        )
    if not weights.is_file():
        raise AdapterError(f"{folder}: {PEFT_CONFIG} is there but {PEFT_WEIGHTS} is missing")
    config = read_peft_config(config_path)
    if weights.name == PEFT_WEIGHTS_PICKLE and not allow_pickle:
        refuse_pickle(weights, "peft folder", folder)  # convert the folder, so that its config is used
    tensors, metadata = read_tensors(weights, allow_pickle)
    layers = parse_lora_tensors(tensors, str(weights), config.alpha_for, layout)
    where = str(folder)
    if _has_mcm_metadata(metadata):
        meta, how = AdapterMeta.from_metadata(metadata, str(weights)), "file"
    else:
        meta = default_meta(
            layers,
            where,
            rank=config.r,
            alpha=config.lora_alpha,
            style=style_from_name(folder.name),
            name=folder.name,
            training={"source": "peft", "base_model_name_or_path": config.base_model_name_or_path},
        )
        how = "defaults"
    adapter = Adapter(meta=meta, layers=layers, source=where, metadata_source=how)
    check_consistent(adapter)
    return adapter


def _load_file(path: Path, allow_pickle: bool, layout: UNetLayout) -> Adapter:
    tensors, metadata = read_tensors(path, allow_pickle)
    where = str(path)
    if _has_mcm_metadata(metadata):
        meta = AdapterMeta.from_metadata(metadata, where)
        layers = parse_lora_tensors(tensors, where, lambda p, r: meta.lora_alpha, layout)
        adapter = Adapter(meta=meta, layers=layers, source=where, metadata_source="file")
    else:
        default_alpha = diffusers_alpha(metadata)
        layers = parse_lora_tensors(tensors, where, lambda p, r: default_alpha or float(r), layout)
        rank = max(w.rank for w in layers.values()) if layers else 1
        meta = default_meta(
            layers,
            where,
            rank=rank,
            alpha=default_alpha or rank,
            style=style_from_name(path.name),
            name=path.stem,
            training={"source": "lora-file"},
        )
        adapter = Adapter(meta=meta, layers=layers, source=where, metadata_source="defaults")
    check_consistent(adapter)
    return adapter


def _pick(path: Path, variant: str | None) -> Path:
    """The one adapter a folder of adapters holds, or the ``variant`` asked for."""
    found = find_adapters(path)
    if variant is not None:
        if variant not in found:
            raise AdapterError(f"{path}: no adapter {variant!r} here; found {sorted(found) or 'none'}")
        return found[variant]
    if len(found) == 1:
        return next(iter(found.values()))
    raise AdapterError(
        f"{path}: "
        + (
            f"holds several adapters {sorted(found)}; choose one (--variant NAME)"
            if found
            else "holds no adapter (no .safetensors file and no PEFT folder)"
        )
    )


def load_adapter(
    path: str | os.PathLike,
    variant: str | None = None,
    *,
    allow_pickle: bool = False,
    layout: UNetLayout = SD15_LAYOUT,
) -> Adapter:
    """Load an MCM adapter from our file, a PEFT folder, a parent of PEFT folders or a LoRA file.

    ``variant`` picks a subfolder/file of a parent folder (``"animatediff-webvid"``). ``layout`` is
    the UNet structure used to read ComfyUI (LDM) layer names; SD1.5 unless told otherwise.
    """
    path = Path(path)
    if not path.exists():
        raise AdapterError(f"{path}: no such file or folder")
    if path.is_dir() and not is_peft_folder(path):
        path = _pick(path, variant)
    if path.is_dir():
        return _load_peft_folder(path, allow_pickle, layout)
    return _load_file(path, allow_pickle, layout)


def check_mcm_marker(path: str | os.PathLike) -> bool:
    """Whether a safetensors file says it is an MCM adapter (header only); AdapterError if it cannot say.

    False for a readable file without ``mcm.*`` entries; an error for an unreadable header or an
    ``mcm.format`` entry that is not the JSON string ``"mcm-adapter"``.
    """
    metadata = read_safetensors_metadata(path)
    raw = metadata.get(f"{META_PREFIX}format")
    if raw is None:
        if _has_mcm_metadata(metadata):
            raise AdapterError(f"{path}: has mcm.* metadata but no mcm.format entry")
        return False
    try:
        value = loads_json(raw)
    except (TypeError, ValueError) as exc:
        raise AdapterError(f"{path}: metadata entry mcm.format = {brief(raw)} is not valid JSON ({exc})") from None
    if value != ADAPTER_FORMAT:
        raise AdapterError(f"{path}: mcm.format = {brief(raw)}; expected {json.dumps(ADAPTER_FORMAT)}")
    return True


def is_mcm_file(path: str | os.PathLike) -> bool:
    """Whether a safetensors file carries valid MCM adapter marking (reads the header only; never raises)."""
    try:
        return check_mcm_marker(path)
    except AdapterError:
        return False


def spatial_and_motion_counts(adapter: Adapter) -> dict[str, int]:
    return {
        "spatial": len(adapter.spatial_layers()),
        "motion": sum(1 for p in adapter.layers if is_motion(p)),
        "temporal": len(adapter.temporal_layers()),
    }
