"""Reading weights files: safetensors always, tensors-only pickles only when asked.

Pickle-based files (``.bin``, ``.ckpt``, ``.pt``, ``.pth``) can execute code when loaded; they are
refused unless the caller passes ``allow_pickle=True``, and then read with
``torch.load(weights_only=True)``, which rebuilds tensors and plain containers and nothing else.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .format import AdapterError

__all__ = [
    "PICKLE_SUFFIXES",
    "PickleRefusedError",
    "read_safetensors",
    "read_safetensors_metadata",
    "read_tensors",
    "read_weights",
    "refuse_pickle",
]

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")
#: How to get past a refused pickle, by what the file was given as (the commands work as printed).
PICKLE_HINTS = {
    "adapter": "If you trust its source, convert it once with "
    "`python -m mcm.weights convert {path} OUT.safetensors --to mcm --allow-pickle` and use the result.",
    "peft folder": "If you trust its source, convert the folder once with "
    "`python -m mcm.weights convert {source} OUT.safetensors --to mcm --allow-pickle` and use the result.",
    "weights": "If you trust its source, convert it once with "
    "`python -m mcm.weights to-safetensors {path} OUT.safetensors` and use the result "
    "(or pass --allow-pickle where the command offers it).",
}


class PickleRefusedError(AdapterError):
    """A pickle-based weights file was given without ``allow_pickle=True``."""


def _unreadable(path: Path, exc: Exception) -> AdapterError:
    return AdapterError(
        f"{path}: cannot be read as a safetensors file ({exc}). It may be truncated or corrupt "
        "(an interrupted download?) or another format: download or export it again."
    )


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors (on the CPU) and the header metadata of a safetensors file, or a clear error."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - a safetensors handle, not a dict
    except (SafetensorError, OSError, RuntimeError, ValueError, TypeError) as exc:
        raise _unreadable(path, exc) from None
    return tensors, metadata


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Only the header metadata (cheap: no tensor is read)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, RuntimeError, ValueError, TypeError) as exc:
        raise AdapterError(f"{path}: cannot be read as a safetensors file ({exc})") from None


def refuse_pickle(path: Path, given_as: str = "adapter", source: Path | None = None) -> None:
    """Refuse a pickle with a command that gets past it (``source``: what to convert, default ``path``)."""
    hint = PICKLE_HINTS[given_as].format(path=path, source=source or path)
    raise PickleRefusedError(
        f"{path}: a pickle-based file ({path.suffix}). Pickles can run arbitrary code when loaded, so "
        "comfyui-mcm reads .safetensors unless told otherwise. " + hint
    )


def _pickle_reason(exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, on one line: torch's reason without its paragraphs of
    advice (which include loading with ``weights_only=False``, the one thing not to do with an unknown file)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n")[0]
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__}: the file ends too early or is empty"


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise AdapterError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols: the outcome says what matters
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not a plain tensor pickle"
        raise AdapterError(f"{path}: cannot be read as a tensors-only pickle ({_pickle_reason(exc)})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise AdapterError(f"{path}: expected a dict of named tensors, found {type(obj).__name__}")
    return dict(obj)


def read_tensors(
    path: Path, allow_pickle: bool, given_as: str = "adapter"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header metadata) of a safetensors file or, with ``allow_pickle``, a tensors-only pickle."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            refuse_pickle(path, given_as)
        return _read_pickle(path), {}
    return read_safetensors(path)


def read_weights(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a weights file: safetensors, or (only with ``allow_pickle``) a tensors-only pickle."""
    return read_tensors(Path(path), allow_pickle, given_as="weights")[0]
