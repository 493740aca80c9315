"""The ``models/mcm`` model folder and the installed MCM adapters: what MCM Style Adapter lists.

Importing it needs no ComfyUI (``folder_paths`` is imported inside the functions).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from ...mcm.weights import AdapterError, check_mcm_marker
from ...mcm.weights.peft import PEFT_CONFIG, PEFT_WEIGHTS

log = logging.getLogger("comfyui-mcm")

MODEL_FOLDER = "mcm"
#: ModelScope text-to-video UNets (the name the original release's users know from other UIs); the loader also
#: lists ComfyUI's standard ``diffusion_models``. Files: safetensors and the original tensors-only ``.pth``.
TEXT2VIDEO_FOLDER = "text2video"
TEXT2VIDEO_EXTENSIONS = (".safetensors", ".pth", ".bin", ".ckpt")


def _register(name: str, extensions: tuple[str, ...]) -> None:
    """``models/<name>``, registered the way ADE registers its own folders."""
    import folder_paths

    path = os.path.join(folder_paths.models_dir, name)
    folder_paths.add_model_folder_path(name, path)
    # add to this folder's own extension set (never mutate the shared supported_pt_extensions)
    _, registered = folder_paths.folder_names_and_paths[name]
    registered.update(extensions)
    with contextlib.suppress(OSError):  # a read-only install still works with extra_model_paths
        os.makedirs(path, exist_ok=True)


def register_model_folders() -> None:
    """``models/mcm`` for MCM adapters (files or PEFT folders), ``models/text2video`` for ModelScope UNets."""
    _register(MODEL_FOLDER, (".safetensors",))
    _register(TEXT2VIDEO_FOLDER, TEXT2VIDEO_EXTENSIONS)


_MCM_FILE_CACHE: dict[tuple[str, float], bool | str] = {}
#: label → why a file was left out of the list (the node's error names it if the label is picked anyway)
SKIPPED: dict[str, str] = {}
_WARNED: set[tuple[str, float]] = set()


def _mtime(path: str) -> float | None:
    try:
        return os.path.getmtime(path)
    except OSError:
        return None


def _cached_is_mcm(path: str) -> bool | str:
    """True/False, or why the file cannot say (the header is unreadable, ``mcm.format`` is malformed)."""
    key = (path, _mtime(path))
    if key[1] is None:
        return f"{path}: cannot be read (it vanished or is not accessible)"
    if key not in _MCM_FILE_CACHE:
        try:
            _MCM_FILE_CACHE[key] = check_mcm_marker(path)
        except AdapterError as exc:
            _MCM_FILE_CACHE[key] = str(exc)
    return _MCM_FILE_CACHE[key]


def _skip(skipped: dict[str, str], label: str, full: str, reason: str) -> None:
    """Leave one file out of the list, with one console warning per file (and version of it)."""
    skipped[label] = reason
    key = (full, _mtime(full) or 0.0)
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning("MCM adapters: skipped %s: %s", label, reason)


def _entry(folder: str, rel: str, full: str) -> tuple[str, str] | str | None:
    """(label, target) of one listed file, None if it is not an adapter, or why it is skipped."""
    rel_path = Path(rel)
    if rel_path.name == PEFT_WEIGHTS and (Path(full).parent / PEFT_CONFIG).exists():
        label, target = rel_path.parent.as_posix(), str(Path(full).parent)
        if label == ".":
            return None  # a bare adapter_model.safetensors at the folder root: no folder name to show
    elif folder == MODEL_FOLDER:
        label, target = rel_path.as_posix(), full
    else:
        is_mcm = _cached_is_mcm(full)
        if is_mcm is not True:
            return is_mcm or None
        label, target = rel_path.as_posix(), full
    return (label if folder == MODEL_FOLDER else f"{folder}/{label}"), target


def _folder_files(folder: str):
    """(rel, full path) of the .safetensors files ComfyUI lists in a model folder (none if it has none)."""
    import folder_paths

    try:
        names = folder_paths.get_filename_list(folder)
    except KeyError:
        return
    for rel in names:
        full = folder_paths.get_full_path(folder, rel)
        if full and rel.lower().endswith(".safetensors"):
            yield rel, full


def list_adapters() -> dict[str, str]:
    """Installed adapters, ``{label: path}``: every .safetensors or PEFT folder in ``models/mcm``,
    and the files in ``models/loras`` that carry MCM metadata (or are PEFT adapter folders).

    Labels come only from walking the registered folders, so a label can never point outside them.
    A file that cannot be listed (unreadable header, malformed ``mcm.format``) is left out with one
    warning naming it, and remembered in :data:`SKIPPED`; it never stops the listing.
    """
    found: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for folder in (MODEL_FOLDER, "loras"):
        for rel, full in _folder_files(folder):
            try:
                entry = _entry(folder, rel, full)
            except OSError as exc:
                entry = f"{full}: cannot be read ({exc.strerror or exc})"
            if isinstance(entry, str):
                _skip(skipped, f"{folder}/{Path(rel).as_posix()}", full, entry)
            elif entry is not None:
                found.setdefault(*entry)
    SKIPPED.clear()
    SKIPPED.update({label: why for label, why in skipped.items() if label not in found})
    return dict(sorted(found.items()))
