"""PEFT adapter folders: ``adapter_config.json`` read and checked field by field.

A PEFT LoRA folder (what ``PeftModel.save_pretrained`` writes, and how the official MCM adapters are
released) holds ``adapter_config.json`` next to ``adapter_model.safetensors``. PEFT scales each layer
by ``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``), where ``alpha_pattern`` / ``rank_pattern``
override both per layer: a key matches a module path ``p`` when ``(.*\\.)?(key)$`` matches ``p``.
Every problem is an :class:`AdapterError` naming the config file and the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .format import MAX_RANK, AdapterError, _is_number, loads_json

try:  # the parser of the re module: Python >= 3.11
    from re import _parser as _sre
except ImportError:  # Python 3.10
    import sre_parse as _sre

__all__ = ["PEFT_CONFIG", "PEFT_WEIGHTS", "PEFT_WEIGHTS_PICKLE", "PeftConfig", "is_peft_folder", "read_peft_config"]

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_WEIGHTS_PICKLE = "adapter_model.bin"
PEFT_FILES = (PEFT_CONFIG, PEFT_WEIGHTS, PEFT_WEIGHTS_PICKLE)


def is_peft_folder(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in PEFT_FILES)


def _is_rank(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_RANK


@dataclass(frozen=True)
class PeftConfig:
    """The fields of ``adapter_config.json`` that decide what the LoRA does, checked."""

    path: Path
    r: int
    lora_alpha: float
    alpha_pattern: dict[str, float]
    rank_pattern: dict[str, int]
    use_rslora: bool
    base_model_name_or_path: str | None

    def _match(self, pattern: dict, path: str):
        for key, value in pattern.items():
            if re.match(rf"(.*\.)?({key})$", path):
                return key, value
        return None, None

    def alpha_for(self, name: str, rank: int) -> float:
        """The alpha that gives PEFT's scale with ``scale = alpha / rank`` (rsLoRA folded in), for the layer
        that the weights file names ``name`` (``base_model.model.`` removed: the module name PEFT matches
        ``rank_pattern`` and ``alpha_pattern`` against). PEFT builds each layer with the rank that the
        config gives it, so a tensor of another rank is an AdapterError: the config is not these weights'."""
        key, expected = self._match(self.rank_pattern, name)
        field, expected = (f"rank_pattern[{key!r}]", expected) if key is not None else ("r", self.r)
        if expected != rank:
            raise AdapterError(
                f"{self.path}: {field} = {expected} but layer {name!r} of the weights beside it has "
                f"rank {rank}; the config does not belong to these weights"
            )
        key, alpha = self._match(self.alpha_pattern, name)
        field, alpha = ("lora_alpha", self.lora_alpha) if key is None else (f"alpha_pattern[{key!r}]", float(alpha))
        if not self.use_rslora:
            return alpha
        folded = alpha * math.sqrt(rank)  # rsLoRA: alpha/sqrt(r) = alpha'/r
        if not math.isfinite(folded):
            raise AdapterError(
                f"{self.path}: {field} = {alpha:g} with use_rslora gives layer {name!r} (rank {rank}) the scale "
                f"alpha/sqrt(r), which as alpha'/r needs alpha' = {alpha:g}*sqrt({rank}), past the float range"
            )
        return folded


def _load_json(path: Path) -> dict:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise AdapterError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise AdapterError(f"{path}: not UTF-8 text (byte {exc.start}); expected a JSON object") from None
    try:
        config = loads_json(text)
    except ValueError as exc:
        raise AdapterError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{path}: holds a JSON {type(config).__name__}; expected a JSON object of LoraConfig fields")
    return config


#: At most this many repeats (``*``, ``+``, ``{m,n}``) in a pattern key: each one multiplies the worst-case work of
#: a match by the length of a module name.
MAX_KEY_REPEATS = 3
_REPEATS = {getattr(_sre, name) for name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT") if hasattr(_sre, name)}


def _slow_to_match(key: str) -> str | None:
    """Why ``re`` (a backtracking matcher, no time limit) may take exponential time to match ``key``, or None.

    A repeat of a group that itself repeats or branches (``(.*)*x``, ``(.|.)*x``) backtracks through 2**n ways
    of splitting a name of n characters: a crafted adapter_config.json would hang the host on load. PEFT's own
    keys are module names; hand-written patterns need neither.
    """
    count = 0

    def children(av):
        if isinstance(av, _sre.SubPattern):
            yield av
        elif isinstance(av, (tuple, list)):
            for item in av:
                yield from children(item)

    def walk(sub, repeated: bool) -> str | None:
        nonlocal count
        for op, av in sub:
            if op in _REPEATS and av[1] > 1:
                count += 1
                if repeated:
                    return "a repeat inside a repeat"
                why = walk(av[2], True)
            elif op == _sre.BRANCH and repeated:
                return "alternatives inside a repeat"
            else:
                why = next((w for child in children(av) if (w := walk(child, repeated))), None)
            if why:
                return why
        return None

    try:
        why = walk(_sre.parse(key), False)
    except RecursionError:
        return "groups nested too deeply"
    return why or (f"{count} repeats (at most {MAX_KEY_REPEATS})" if count > MAX_KEY_REPEATS else None)


def _pattern(config: dict, field: str, valid: Callable, expected: str, path: Path) -> dict:
    raw = config.get(field) or {}
    if not isinstance(raw, dict):
        raise AdapterError(f"{path}: {field} = {raw!r}; expected an object mapping module-name patterns to {expected}")
    for key, value in raw.items():
        try:
            re.compile(key)
        except (re.error, OverflowError, RecursionError) as exc:  # a{4294967296}: OverflowError
            raise AdapterError(f"{path}: {field} key {key!r} is not a valid regular expression ({exc})") from None
        try:  # how PEFT (and PeftConfig._match) uses it: "(?i)x" is valid alone but not in there
            re.compile(rf"(.*\.)?({key})$")
        except (re.error, OverflowError, RecursionError) as exc:
            raise AdapterError(
                f"{path}: {field} key {key!r} is not a valid regular expression where PEFT uses it, "
                f"inside (.*\\.)?(KEY)$ ({exc})"
            ) from None
        if why := _slow_to_match(key):
            raise AdapterError(
                f"{path}: {field} key {key!r} holds {why}, which can take a regular-expression matcher exponential "
                "time; PEFT writes module names here (hand-written patterns such as 'attn1.to_q' or "
                "'down_blocks.*to_q' are fine)"
            )
        if not valid(value):
            raise AdapterError(f"{path}: {field}[{key!r}] = {value!r}; expected {expected}")
    return dict(raw)


def _refuse_unsupported(config: dict, path: Path) -> None:
    """The LoRA variants an MCM adapter cannot be."""
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{path}: peft_type {config.get('peft_type')!r}; only LORA adapters are MCM adapters")
    if config.get("use_dora"):
        raise AdapterError(f"{path}: use_dora is set; DoRA adapters are not supported")
    if config.get("modules_to_save"):
        raise AdapterError(f"{path}: modules_to_save {config['modules_to_save']!r} (full layers) are not supported")
    if config.get("lora_bias"):
        raise AdapterError(f"{path}: lora_bias is set; LoRA with bias terms is not supported")
    if config.get("bias", "none") not in ("none", None):
        raise AdapterError(f"{path}: bias {config['bias']!r}; only bias 'none' LoRA is supported")


def _check_types(config: dict, path: Path) -> None:
    targets = config.get("target_modules")
    if (
        targets is not None
        and not isinstance(targets, str)
        and not (isinstance(targets, list) and all(isinstance(t, str) for t in targets))
    ):
        raise AdapterError(f"{path}: target_modules = {targets!r}; expected a module-name string or a list of them")
    for field in ("use_rslora", "use_dora", "lora_bias", "fan_in_fan_out", "inference_mode"):
        if config.get(field) is not None and not isinstance(config[field], bool):
            raise AdapterError(f"{path}: {field} = {config[field]!r}; expected true or false")
    base = config.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise AdapterError(f"{path}: base_model_name_or_path = {base!r}; expected a string or null")


def read_peft_config(path: Path) -> PeftConfig:
    """``adapter_config.json`` checked: a JSON object with a LoRA's fields of the right types."""
    config = _load_json(path)
    _check_types(config, path)
    _refuse_unsupported(config, path)
    r = config.get("r", 8)
    if not _is_rank(r):
        raise AdapterError(f"{path}: r = {r!r}; expected a positive whole number (the LoRA rank, at most 2**53)")
    alpha = config.get("lora_alpha", r)
    if not _is_number(alpha) or alpha <= 0:
        raise AdapterError(f"{path}: lora_alpha = {alpha!r}; expected a finite positive number")
    return PeftConfig(
        path=path,
        r=r,
        lora_alpha=float(alpha),
        alpha_pattern=_pattern(
            config, "alpha_pattern", lambda v: _is_number(v) and v > 0, "a finite positive number", path
        ),
        rank_pattern=_pattern(config, "rank_pattern", _is_rank, "a positive whole number (at most 2**53)", path),
        use_rslora=bool(config.get("use_rslora", False)),
        base_model_name_or_path=config.get("base_model_name_or_path"),
    )
