"""Reading and writing MCM adapters: our file, official PEFT folders, single-file LoRAs, exports.

Only safetensors are read. Pickle-based files (``.bin``, ``.ckpt``, ``.pt``, ``.pth``) can execute
code when loaded; they are refused unless the caller passes ``allow_pickle=True``, and then read with
``torch.load(weights_only=True)`` so that they can be converted once.

Every write goes to a temporary name next to the destination and is renamed into place, so a crash
never leaves a half-written adapter and an existing file is only replaced when asked to.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .format import ADAPTER_FORMAT, BASES, FOREIGN_BASES, META_PREFIX, OFFICIAL_TARGET_MODULES, Adapter, AdapterError, AdapterMeta, detect_base
from .keys import SD15_LAYOUT, KeyMappingError, UNetLayout, ade_to_motion, diffusers_to_ldm, is_motion, ldm_to_diffusers, motion_to_ade
from .lora import LoraWeights, merge_lora

__all__ = [
    "PICKLE_SUFFIXES",
    "PickleRefusedError",
    "ade_motion_layers",
    "comfy_spatial_layers",
    "export_ade_motion_lora",
    "export_comfy_lora",
    "export_peft",
    "find_adapters",
    "load_adapter",
    "merge_motion_module",
    "read_safetensors",
    "save_adapter",
]

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_WEIGHTS_PICKLE = "adapter_model.bin"
PEFT_PREFIX = "base_model.model."


class PickleRefusedError(AdapterError):
    """A pickle-based weights file was given without ``allow_pickle=True``."""


# --- low-level reading -----------------------------------------------------------------------------


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors (on the CPU) and the header metadata of a safetensors file, or a clear error."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise AdapterError(
            f"{path}: cannot be read as a safetensors file ({exc}). It may be truncated or corrupt "
            "(an interrupted download?) or another format: download or export it again."
        ) from None
    return tensors, metadata


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Only the header metadata (cheap: no tensor is read)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise AdapterError(f"{path}: cannot be read as a safetensors file ({exc})") from None


def _refuse_pickle(path: Path) -> None:
    raise PickleRefusedError(
        f"{path}: a pickle-based file ({path.suffix}). Pickles can run arbitrary code when loaded, so "
        "comfyui-mcm only reads .safetensors. If you trust its source, convert it once with "
        f"`python -m mcm.weights convert {path} OUT.safetensors --allow-pickle` and use the result."
    )


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not a plain tensor pickle"
        raise AdapterError(f"{path}: cannot be read as a tensors-only pickle ({exc})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AdapterError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return dict(obj)


def _read_tensors(path: Path, allow_pickle: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            _refuse_pickle(path)
        return _read_pickle(path), {}
    return read_safetensors(path)


def read_weights(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a weights file: safetensors, or (only with ``allow_pickle``) a tensors-only pickle."""
    return _read_tensors(Path(path), allow_pickle)[0]


# --- key formats -----------------------------------------------------------------------------------

_FACTOR_SUFFIXES = (
    (".lora_A.default.weight", "down"),
    (".lora_B.default.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    ("_lora.down.weight", "down"),  # AnimateDiff motion LoRA (ADE's "Load AnimateDiff LoRA")
    ("_lora.up.weight", "up"),
    (".alpha", "alpha"),
)
# diffusers' old attention-processor LoRA names (also ADE's motion-LoRA format)
_PROCESSOR = re.compile(r"(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_LDM_ROOTS = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "out.")


def _module_path(raw: str, layout: UNetLayout = SD15_LAYOUT) -> str:
    """A file's module name → diffusers module path (raises KeyMappingError / AdapterError)."""
    name = raw
    for prefix in (PEFT_PREFIX, "unet."):
        name = name.removeprefix(prefix)
    if name.startswith(("lora_unet_", "lora_te", "text_encoder", "te_", "lycoris_")):
        raise KeyMappingError(
            f"{raw!r}: kohya/text-encoder names are not part of an MCM adapter "
            "(MCM trains only UNet and motion-module LoRA; apply such files with ComfyUI's LoraLoader)"
        )
    if ".temporal_transformer" in name:
        return ade_to_motion(name)
    if name.startswith("diffusion_model.") or name.startswith(_LDM_ROOTS):
        return ldm_to_diffusers(name, layout)
    return name


def parse_lora_tensors(
    tensors: Mapping[str, torch.Tensor],
    where: str,
    alpha_for: Callable[[str, int], float] = lambda path, rank: float(rank),
    layout: UNetLayout = SD15_LAYOUT,
) -> dict[str, LoraWeights]:
    """Group a LoRA state dict in any supported naming into ``{diffusers path: LoraWeights}``.

    ``alpha_for(path, rank)`` gives the alpha of layers without an ``.alpha`` tensor (default: the
    rank, i.e. scale 1). LDM (ComfyUI) names are read with ``layout``. Unknown keys and incomplete
    pairs are an error listing them.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {}
    folded = set()  # layers in formats whose consumers add up @ down with no alpha (scale folded in)
    unknown, unmapped = [], {}
    for key, tensor in tensors.items():
        if m := _PROCESSOR.match(key):
            stem, kind = f"{m[1]}.{'to_out.0' if m[2] == 'to_out' else m[2]}", m[3]
            is_folded = True
        else:
            is_folded = False
            for suffix, kind in _FACTOR_SUFFIXES:
                if key.endswith(suffix):
                    stem = key[: -len(suffix)]
                    is_folded = suffix.startswith("_lora.")
                    break
            else:
                unknown.append(key)
                continue
        try:
            path = _module_path(stem, layout)
        except KeyMappingError as exc:
            unmapped.setdefault(stem, str(exc))
            continue
        if is_folded:
            folded.add(path)
        slot = parts.setdefault(path, {})
        if kind in slot:
            raise AdapterError(f"{where}: two tensors give the {kind} factor of layer {path!r} (second: {key!r})")
        slot[kind] = tensor
    if unknown:
        hint = "DoRA/LoHa/LoKr and other non-LoRA adapters are not supported" if any(
            "magnitude" in k or "hada" in k or "lokr" in k for k in unknown
        ) else "expected LoRA factors such as '<layer>.lora_A.weight' / '<layer>.lora_B.weight'"
        raise AdapterError(f"{where}: {len(unknown)} tensors are not LoRA factors ({hint}), e.g. {unknown[:8]}")
    if unmapped:
        raise AdapterError(f"{where}: {len(unmapped)} layer names could not be mapped: " + "; ".join(list(unmapped.values())[:8]))
    layers: dict[str, LoraWeights] = {}
    incomplete = []
    for path, slot in parts.items():
        if "down" not in slot or "up" not in slot:
            incomplete.append(f"{path} (has {sorted(slot)})")
            continue
        down, up = slot["down"], slot["up"]
        if "alpha" in slot:
            alpha = float(slot["alpha"])
        elif path in folded:
            alpha = float(down.shape[0])
        else:
            alpha = float(alpha_for(path, int(down.shape[0])))
        try:
            layers[path] = LoraWeights(down=down, up=up, alpha=alpha)
        except ValueError as exc:
            raise AdapterError(f"{where}: layer {path!r}: {exc}") from None
    if incomplete:
        raise AdapterError(f"{where}: {len(incomplete)} layers lack a LoRA factor, e.g. {incomplete[:5]}")
    return layers


def _suffixes(paths) -> tuple[str, ...]:
    """The official target suffixes a set of module paths uses (anything else by its last name)."""
    found = set()
    for p in paths:
        match = [s for s in OFFICIAL_TARGET_MODULES if p == s or p.endswith("." + s)]
        found.add(max(match, key=len) if match else p.rsplit(".", 1)[-1])
    return tuple(sorted(found))


def _check_base(base: str, where: str) -> None:
    if base in FOREIGN_BASES:
        raise AdapterError(
            f"{where}: this is a LoRA for {FOREIGN_BASES[base]} ({base}); MCM adapters are made for "
            f"{' or '.join(BASES[b] for b in ('sd15-animatediff', 'modelscope-t2v'))}"
        )


def _default_meta(layers: dict[str, LoraWeights], where: str, *, rank: int, alpha: float, style: str, name: str,
                  training: dict) -> AdapterMeta:  # fmt: skip
    """Metadata for files that carry none (the official releases): the official demo's settings."""
    base = detect_base(layers)
    _check_base(base, where)
    return AdapterMeta(
        base=base,
        motion_module="v2" if base.endswith("animatediff") else None,
        lora_rank=rank,
        lora_alpha=float(alpha),
        target_modules=_suffixes(layers),
        beta_schedule="linear",  # the official demo samples with diffusers "linear" (ComfyUI sqrt_linear)
        style=style,
        name=name,
        training=training,
    )


def _style_from_name(name: str) -> str:
    """``animatediff-webvid`` → ``webvid``; ``modelscopet2v-3d-cartoon`` → ``3d-cartoon``."""
    stem = re.sub(r"\.safetensors$", "", name)
    for family in ("animatediff-", "modelscopet2v-", "modelscope-", "mcm-", "mcm_"):
        if stem.lower().startswith(family):
            stem = stem[len(family) :]
            break
    style = re.sub(r"[^A-Za-z0-9 _.+-]", "-", stem).strip("-_. ") or "custom"
    return style if re.match(r"[A-Za-z0-9]", style) else "custom"


def _check_consistent(adapter: Adapter) -> None:
    detected = detect_base(adapter.layers)
    _check_base(detected, adapter.source)
    declared = adapter.meta.base
    fits = detected == declared or (declared == "sd15-animatediff" and detected == "sd15")
    if not fits:
        raise AdapterError(
            f"{adapter.source}: metadata says base {declared!r} but the tensors are those of a {detected!r} adapter"
        )


# --- loading ---------------------------------------------------------------------------------------


def _is_peft_folder(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in (PEFT_CONFIG, PEFT_WEIGHTS, PEFT_WEIGHTS_PICKLE))


def find_adapters(root: str | os.PathLike) -> dict[str, Path]:
    """Adapters at ``root``: the file or PEFT folder itself, or the adapters directly inside it.

    Returns ``{name: path}``; names are file stems or folder names (``animatediff-webvid``).
    """
    root = Path(root)
    if root.is_file() or _is_peft_folder(root):
        return {root.stem if root.is_file() else root.name: root}
    if not root.is_dir():
        raise AdapterError(f"{root}: no such file or folder")
    found = {}
    for child in sorted(root.iterdir()):
        if _is_peft_folder(child):
            found[child.name] = child
        elif child.is_file() and child.suffix.lower() == ".safetensors":
            found[child.stem] = child
    return found


def _alpha_lookup(config: dict, where: str) -> Callable[[str, int], float]:
    """PEFT's per-layer alpha: ``alpha_pattern`` overrides, rsLoRA folded into an equivalent alpha."""
    alpha = float(config.get("lora_alpha", config.get("r", 8)))
    patterns = dict(config.get("alpha_pattern") or {})
    rslora = bool(config.get("use_rslora", False))

    def alpha_for(path: str, rank: int) -> float:
        a = alpha
        for key, value in patterns.items():
            if re.match(rf"(.*\.)?({key})$", path):
                a = float(value)
                break
        # rsLoRA scales by alpha/sqrt(r); express that as alpha'/r
        return a * math.sqrt(rank) if rslora else a

    return alpha_for


def _load_peft_folder(folder: Path, allow_pickle: bool, layout: UNetLayout) -> Adapter:
    config_path = folder / PEFT_CONFIG
    weights = folder / PEFT_WEIGHTS
    if not weights.exists() and (folder / PEFT_WEIGHTS_PICKLE).exists():
        weights = folder / PEFT_WEIGHTS_PICKLE
    if not config_path.exists():
        raise AdapterError(
            f"{folder}: missing {PEFT_CONFIG}. A PEFT adapter folder holds {PEFT_CONFIG} next to "
            f"{PEFT_WEIGHTS}; copy the whole folder (e.g. animatediff-webvid/ from the yhzhai/mcm model repo)."
        )
    if not weights.exists():
        raise AdapterError(f"{folder}: {PEFT_CONFIG} is there but {PEFT_WEIGHTS} is missing")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{config_path}: not valid JSON ({exc})") from None
    where = str(folder)
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{config_path}: peft_type {config.get('peft_type')!r}; only LORA adapters are MCM adapters")
    if config.get("use_dora"):
        raise AdapterError(f"{config_path}: use_dora is set; DoRA adapters are not supported")
    if config.get("modules_to_save"):
        raise AdapterError(f"{config_path}: modules_to_save {config['modules_to_save']!r} (full layers) are not supported")
    if config.get("lora_bias"):
        raise AdapterError(f"{config_path}: lora_bias is set; LoRA with bias terms is not supported")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"{config_path}: bias {config['bias']!r}; only bias 'none' LoRA is supported")
    tensors, metadata = _read_tensors(weights, allow_pickle)
    layers = parse_lora_tensors(tensors, str(weights), _alpha_lookup(config, where), layout)
    if any(k.startswith(META_PREFIX) for k in metadata):
        meta, how = AdapterMeta.from_metadata(metadata, str(weights)), "file"
    else:
        rank = int(config.get("r", next(iter(layers.values())).rank))
        meta = _default_meta(
            layers, where, rank=rank, alpha=float(config.get("lora_alpha", rank)), style=_style_from_name(folder.name),
            name=folder.name, training={"source": "peft", "base_model_name_or_path": config.get("base_model_name_or_path")},
        )  # fmt: skip
        how = "defaults"
    adapter = Adapter(meta=meta, layers=layers, source=where, metadata_source=how)
    _check_consistent(adapter)
    return adapter


def _load_file(path: Path, allow_pickle: bool, layout: UNetLayout) -> Adapter:
    tensors, metadata = _read_tensors(path, allow_pickle)
    where = str(path)
    if any(k.startswith(META_PREFIX) for k in metadata):
        meta = AdapterMeta.from_metadata(metadata, where)
        layers = parse_lora_tensors(tensors, where, lambda p, r: meta.lora_alpha, layout)
        adapter = Adapter(meta=meta, layers=layers, source=where, metadata_source="file")
    else:
        default_alpha = _diffusers_alpha(metadata)
        layers = parse_lora_tensors(tensors, where, lambda p, r: default_alpha or float(r), layout)
        rank = max(w.rank for w in layers.values())
        meta = _default_meta(
            layers, where, rank=rank, alpha=default_alpha or rank, style=_style_from_name(path.name), name=path.stem,
            training={"source": "lora-file"},
        )  # fmt: skip
        adapter = Adapter(meta=meta, layers=layers, source=where, metadata_source="defaults")
    _check_consistent(adapter)
    return adapter


def _diffusers_alpha(metadata: dict[str, str]) -> float | None:
    """diffusers ≥ 0.33 stores the LoraConfig as JSON under ``lora_adapter_metadata``."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return None
    try:
        info = json.loads(raw)
    except json.JSONDecodeError:
        return None
    for key in ("unet.lora_alpha", "lora_alpha"):
        if isinstance(info.get(key), (int, float)):
            return float(info[key])
    return None


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
    if path.is_dir() and not _is_peft_folder(path):
        found = find_adapters(path)
        if variant is not None:
            if variant not in found:
                raise AdapterError(f"{path}: no adapter {variant!r} here; found {sorted(found) or 'none'}")
            path = found[variant]
        elif len(found) == 1:
            path = next(iter(found.values()))
        else:
            raise AdapterError(
                f"{path}: " + (f"holds several adapters {sorted(found)}; choose one" if found else
                               "holds no adapter (no .safetensors file and no PEFT folder)")  # fmt: skip
            )
    if path.is_dir():
        return _load_peft_folder(path, allow_pickle, layout)
    return _load_file(path, allow_pickle, layout)


# --- writing ---------------------------------------------------------------------------------------


def _prepare_destination(dst: Path, overwrite: bool) -> None:
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst}: already exists; choose another name or pass overwrite=True (--force)")
    dst.parent.mkdir(parents=True, exist_ok=True)


def _atomic_file(dst: Path, write: Callable[[Path], None], overwrite: bool) -> Path:
    _prepare_destination(dst, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


@contextmanager
def atomic_dir(final: Path, overwrite: bool = False):
    """Yield a temporary sibling folder to write into; on success it is renamed to ``final``.

    A failure leaves ``final`` as it was. An existing ``final`` is an error unless ``overwrite``.
    """
    final = Path(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            if not overwrite:
                raise FileExistsError(f"{final}: already exists; not overwritten")
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _tensor(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous()


def save_adapter(adapter: Adapter, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the canonical MCM adapter file (atomically)."""
    tensors: dict[str, torch.Tensor] = {}
    for p, w in sorted(adapter.layers.items()):
        tensors[f"{p}.lora_A.weight"] = _tensor(w.down)
        tensors[f"{p}.lora_B.weight"] = _tensor(w.up)
        if w.alpha != adapter.meta.lora_alpha:
            tensors[f"{p}.alpha"] = torch.tensor(float(w.alpha))
    return _atomic_file(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=adapter.meta.to_metadata()), overwrite)


def export_peft(adapter: Adapter, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """A PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``), as the official release.

    ``PeftModel.from_pretrained(unet, folder)`` loads it onto the matching diffusers model; the MCM
    metadata rides along in the safetensors header so that nothing is lost on the way back.
    """
    folder = Path(folder)
    _prepare_destination(folder, overwrite)
    meta = adapter.meta
    ranks = {p: w.rank for p, w in adapter.layers.items() if w.rank != meta.lora_rank}
    alphas = {p: w.alpha for p, w in adapter.layers.items() if w.alpha != meta.lora_alpha}
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "r": meta.lora_rank,
        "lora_alpha": meta.lora_alpha,
        "lora_dropout": 0.0,
        "target_modules": sorted(adapter.layers),
        "rank_pattern": ranks,
        "alpha_pattern": alphas,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }
    tensors = {}
    for p, w in sorted(adapter.layers.items()):
        tensors[f"{PEFT_PREFIX}{p}.lora_A.weight"] = _tensor(w.down)
        tensors[f"{PEFT_PREFIX}{p}.lora_B.weight"] = _tensor(w.up)
    with atomic_dir(folder, overwrite=True) as tmp:  # _prepare_destination already refused an unwanted overwrite
        (tmp / PEFT_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(tensors, str(tmp / PEFT_WEIGHTS), metadata={"format": "pt", **meta.to_metadata()})
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


def comfy_spatial_layers(adapter: Adapter, layout: UNetLayout = SD15_LAYOUT) -> dict[str, LoraWeights]:
    """The spatial LoRA layers keyed by ComfyUI's LDM UNet path (``input_blocks.1.1…``, no prefix)."""
    if adapter.temporal_layers():
        raise AdapterError(
            f"{adapter.source}: a ModelScope T2V adapter; ComfyUI has no ModelScope model to apply it to "
            "(export it with --to peft and use it with diffusers)"
        )
    return _mapped(adapter.spatial_layers(), lambda p: diffusers_to_ldm(p, layout), adapter.source, "ComfyUI UNet")


def ade_motion_layers(adapter: Adapter) -> dict[str, LoraWeights]:
    """The motion-module LoRA layers keyed by AnimateDiff/ADE path (``…temporal_transformer…``)."""
    return _mapped(adapter.motion_layers(), motion_to_ade, adapter.source, "AnimateDiff motion-module")


def _export_meta(adapter: Adapter, part: str, **changes) -> dict[str, str]:
    training = dict(adapter.meta.training)
    training["exported_part"] = part
    return adapter.meta.replace(training=training, **changes).to_metadata()


def export_comfy_lora(adapter: Adapter, path: str | os.PathLike, *, layout: UNetLayout = SD15_LAYOUT,
                      overwrite: bool = False) -> Path:  # fmt: skip
    """The spatial part as a LoRA that ComfyUI's core ``LoraLoader`` applies to the SD1.5 MODEL.

    Keys are ``diffusion_model.<LDM path>.lora_up/lora_down.weight`` + ``.alpha``. The motion part is
    not in this file (core ComfyUI has no motion module): see :func:`export_ade_motion_lora`.
    """
    layers = comfy_spatial_layers(adapter, layout)
    if not layers:
        raise AdapterError(f"{adapter.source}: has no spatial (UNet) layers to export")
    tensors = {}
    for p, w in sorted(layers.items()):
        tensors[f"diffusion_model.{p}.lora_down.weight"] = _tensor(w.down)
        tensors[f"diffusion_model.{p}.lora_up.weight"] = _tensor(w.up)
        tensors[f"diffusion_model.{p}.alpha"] = torch.tensor(float(w.alpha))
    metadata = _export_meta(adapter, "spatial", base="sd15", motion_module=None)
    return _atomic_file(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata), overwrite)


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
        tensors[f"{p}_lora.up.weight"] = _tensor(w.up.to(torch.float32) * w.scale).to(w.up.dtype)
    metadata = _export_meta(adapter, "motion", lora_alpha=float(adapter.meta.lora_rank))  # scale folded in
    return _atomic_file(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata), overwrite)


def merge_motion_module(adapter: Adapter, base: str | os.PathLike, path: str | os.PathLike, *,
                        strength: float = 1.0, overwrite: bool = False) -> Path:  # fmt: skip
    """A motion-module file with the adapter's motion LoRA merged in (``W + strength·ΔW``).

    ``base`` is the motion module the adapter was trained on, in AnimateDiff layout (``mm_sd_v15_v2``
    …) or diffusers ``MotionAdapter`` layout; the output keeps the base's layout and dtype.
    """
    base = Path(base)
    tensors, metadata = _read_tensors(base, allow_pickle=False)
    motion = adapter.motion_layers()
    if not motion:
        raise AdapterError(f"{adapter.source}: has no motion-module layers to merge")
    ade_layout = any(".temporal_transformer." in k for k in tensors)
    layers = _mapped(motion, motion_to_ade, adapter.source, "AnimateDiff") if ade_layout else motion
    missing = [p for p in layers if f"{p}.weight" not in tensors]
    if missing:
        raise AdapterError(f"{base}: is not the motion module this adapter fits; {len(missing)} layers missing, e.g. {missing[:5]}")
    try:
        merged = merge_lora(tensors, layers, strength)
    except ValueError as exc:
        raise AdapterError(f"{base}: {exc}") from None
    out_meta = {k: v for k, v in metadata.items() if not k.startswith(META_PREFIX)}
    out_meta["mcm.merged_from"] = json.dumps({"adapter": adapter.source, "strength": strength, "style": adapter.meta.style,
                                              "temporal_norm": adapter.meta.temporal_norm})  # fmt: skip
    merged = {k: _tensor(v) for k, v in merged.items()}
    return _atomic_file(Path(path), lambda tmp: save_file(merged, str(tmp), metadata=out_meta), overwrite)


def is_mcm_file(path: str | os.PathLike) -> bool:
    """Whether a safetensors file carries MCM adapter metadata (reads the header only)."""
    try:
        meta = read_safetensors_metadata(path)
    except AdapterError:
        return False
    return json.loads(meta.get(f"{META_PREFIX}format", "null")) == ADAPTER_FORMAT


def spatial_and_motion_counts(adapter: Adapter) -> dict[str, int]:
    return {
        "spatial": len(adapter.spatial_layers()),
        "motion": sum(1 for p in adapter.layers if is_motion(p)),
        "temporal": len(adapter.temporal_layers()),
    }
