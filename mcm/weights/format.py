"""What an MCM adapter is: LoRA factors keyed by diffusers module path, described by metadata.

The metadata travels in the safetensors header as ``mcm.*`` entries whose values are JSON, so any
safetensors viewer shows them and the nodes can configure sampling without loading a tensor:

=========================  ==================================================================
``mcm.format``             ``"mcm-adapter"`` (marks the file)
``mcm.format_version``     ``1``
``mcm.base``               ``"sd15-animatediff"`` · ``"sd15"`` · ``"modelscope-t2v"``
``mcm.motion_module``      AnimateDiff motion module the adapter was trained with (``"v2"``, ``"v3"``)
``mcm.lora_rank``/``alpha`` LoRA rank and alpha (scale = alpha / rank)
``mcm.target_modules``     the module-name suffixes LoRA was put on
``mcm.beta_schedule``      diffusers name: ``"scaled_linear"`` (= ComfyUI ``linear``) or ``"linear"``
``mcm.timestep_scaling``   boundary-condition timestep scaling (MCM: 4)
``mcm.num_ddim_timesteps`` size of the DDIM skeleton the solver walked (50)
``mcm.prediction_type``    ``"epsilon"`` · ``"v_prediction"`` · ``"sample"``
``mcm.recommended_steps``  e.g. ``[1, 2, 4, 8]``; ``mcm.default_steps`` e.g. ``4``
``mcm.recommended_cfg``    guidance for the student (MCM: 1.0, no CFG)
``mcm.temporal_norm``      ``"frames"`` (motion-module GroupNorm over the frames of a video, as diffusers)
                           or ``"per_frame"`` (as stock AnimateDiff-Evolved); ``"video"``/``"frame"`` read as aliases
``mcm.style``/``name``     e.g. ``"webvid"``, ``"laion"``, ``"anime"``; a display name
``mcm.description``        free text
``mcm.training``           provenance: teacher, data, steps, code version … (a JSON object)
=========================  ==================================================================
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..boundary import MCM_TIMESTEP_SCALING, PREDICTION_TYPES
from ..schedule import NUM_DDIM_TIMESTEPS
from ..temporal_norm import FRAMES, TEMPORAL_NORMS, canonical_temporal_norm
from .keys import is_modelscope_temporal, is_motion
from .lora import LoraWeights

__all__ = [
    "ADAPTER_FORMAT",
    "BASES",
    "FORMAT_VERSION",
    "OFFICIAL_TARGET_MODULES",
    "Adapter",
    "AdapterError",
    "AdapterMeta",
    "detect_base",
]

ADAPTER_FORMAT = "mcm-adapter"
FORMAT_VERSION = 1
META_PREFIX = "mcm."

#: Base families an adapter can be made for, and what each needs in ComfyUI.
BASES = {
    "sd15-animatediff": "Stable Diffusion 1.5 UNet + AnimateDiff motion module",
    "sd15": "Stable Diffusion 1.5 UNet (image only)",
    "modelscope-t2v": "ModelScope text-to-video 1.7B (UNet3DConditionModel)",
}
#: Families recognised from their keys only to refuse them with a useful message.
FOREIGN_BASES = {
    "sdxl": "Stable Diffusion XL",
    "sdxl-animatediff": "Stable Diffusion XL + AnimateDiff-SDXL motion module",
    "sd2": "Stable Diffusion 2.x",
}
BETA_SCHEDULES = ("scaled_linear", "linear")

#: The official MCM LoRA targets (module-name suffixes), for both AnimateDiff and ModelScope.
OFFICIAL_TARGET_MODULES = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
)


#: The largest LoRA rank a file may declare: scales are alpha / rank in floating point, which holds every
#: integer up to here exactly (and no tensor is anywhere near it).
MAX_RANK = 2**53


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite int or float (JSON's NaN/Infinity, booleans and integers too large for a float are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past float's range (JSON allows 10**400)
        return False


#: How deeply a JSON value read from a file may nest: far more than any field needs, far less than Python's
#: recursion limit (deeper text fails inside ``json.loads``, and the value inside ``repr`` or ``asdict``).
MAX_JSON_DEPTH = 64


def loads_json(text: str):
    """``json.loads`` for text from a file: every way it fails is a ValueError saying why on one line
    (a ``json.JSONDecodeError``, nesting deeper than :data:`MAX_JSON_DEPTH`, a number too long to convert)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError:  # an integer of more digits than Python converts from text
        raise ValueError(f"holds a number of more than {sys.get_int_max_str_digits()} digits") from None
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep")
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return value


def brief(value, limit: int = 120) -> str:
    """``repr(value)`` for a message, cut to about ``limit`` characters (a file's value can be megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}… ({len(text):,} characters)"


class AdapterError(ValueError):
    """An adapter file or folder that cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class AdapterMeta:
    """Self-description of an MCM adapter (see the module docstring for the on-disk form)."""

    base: str = "sd15-animatediff"
    motion_module: str | None = "v2"
    lora_rank: int = 64
    lora_alpha: float = 64.0
    target_modules: tuple[str, ...] = OFFICIAL_TARGET_MODULES
    beta_schedule: str = "scaled_linear"
    timestep_scaling: float = MCM_TIMESTEP_SCALING
    num_ddim_timesteps: int = NUM_DDIM_TIMESTEPS
    prediction_type: str = "epsilon"
    recommended_steps: tuple[int, ...] = (1, 2, 4, 8)
    default_steps: int = 4
    recommended_cfg: float = 1.0
    temporal_norm: str = FRAMES  # what diffusers (MCM's training) computes; official adapters carry none
    style: str = "custom"
    name: str = ""
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        self._canonical_names()
        self.validate()

    def _canonical_names(self) -> None:
        """Earlier spellings (``temporal_norm`` ``video``/``frame``) become the current names."""
        name = canonical_temporal_norm(self.temporal_norm)
        if name is not None:
            object.__setattr__(self, "temporal_norm", name)

    # -- validation ------------------------------------------------------------------------------
    def validate(self, where: str = "adapter metadata") -> None:
        """Refuse a value the nodes cannot sample with, naming the ``mcm.*`` entry and what was expected."""

        def bad(name: str, value, expected: str):
            raise AdapterError(f"{where}: mcm.{name} = {brief(value)}; expected {expected}")

        self._validate_model(bad)
        self._validate_sampling(bad)
        self._validate_labels(bad)

    def _validate_model(self, bad) -> None:
        """The file's version, the base model and the LoRA."""
        if self.format_version != FORMAT_VERSION or isinstance(self.format_version, bool):
            if _is_int(self.format_version) and self.format_version > FORMAT_VERSION:
                bad(
                    "format_version",
                    self.format_version,
                    f"{FORMAT_VERSION}: this file was written by a newer comfyui-mcm, update the package",
                )
            bad("format_version", self.format_version, str(FORMAT_VERSION))
        if not isinstance(self.base, str) or self.base not in BASES:
            bad("base", self.base, f"one of {sorted(BASES)}")
        if self.base.endswith("animatediff"):
            if not isinstance(self.motion_module, str) or not self.motion_module:
                bad("motion_module", self.motion_module, "the AnimateDiff motion-module version, e.g. 'v2'")
        elif self.motion_module is not None:
            bad("motion_module", self.motion_module, f"null for base {self.base!r} (it has no motion module)")
        if not _is_int(self.lora_rank) or not 1 <= self.lora_rank <= MAX_RANK:
            bad("lora_rank", self.lora_rank, "a positive integer (at most 2**53)")
        if not _is_number(self.lora_alpha) or self.lora_alpha <= 0:
            bad("lora_alpha", self.lora_alpha, "a positive number")
        if (
            not isinstance(self.target_modules, (tuple, list))
            or not self.target_modules
            or not all(isinstance(t, str) and t for t in self.target_modules)
        ):
            bad("target_modules", self.target_modules, "a non-empty list of module-name suffixes")

    def _validate_sampling(self, bad) -> None:
        """What the sampler is configured from: betas, boundary scaling, grid, parameterisation, steps, cfg, norm."""
        if not isinstance(self.beta_schedule, str) or self.beta_schedule not in BETA_SCHEDULES:
            hint = " (ComfyUI names differ: diffusers 'scaled_linear' is ComfyUI 'linear')"
            bad("beta_schedule", self.beta_schedule, f"a diffusers name, one of {list(BETA_SCHEDULES)}{hint}")
        if not _is_number(self.timestep_scaling) or self.timestep_scaling <= 0:
            bad("timestep_scaling", self.timestep_scaling, "a positive number (MCM: 4)")
        n = self.num_ddim_timesteps
        if not _is_int(n) or n < 1 or 1000 % n:
            bad("num_ddim_timesteps", n, "a divisor of 1000 (MCM: 50)")
        if not isinstance(self.prediction_type, str) or self.prediction_type not in PREDICTION_TYPES:
            bad("prediction_type", self.prediction_type, f"one of {list(PREDICTION_TYPES)}")
        steps = self.recommended_steps
        if not isinstance(steps, (tuple, list)) or not steps or not all(_is_int(s) and 1 <= s <= n for s in steps):
            bad("recommended_steps", steps, f"a non-empty list of step counts in 1..{n}")
        if not _is_int(self.default_steps) or not 1 <= self.default_steps <= n:
            bad("default_steps", self.default_steps, f"a step count in 1..{n}")
        if not _is_number(self.recommended_cfg) or self.recommended_cfg < 0:
            bad("recommended_cfg", self.recommended_cfg, "a non-negative number (MCM: 1.0)")
        if not isinstance(self.temporal_norm, str) or self.temporal_norm not in TEMPORAL_NORMS:
            bad("temporal_norm", self.temporal_norm, f"one of {list(TEMPORAL_NORMS)}")

    def _validate_labels(self, bad) -> None:
        """The style, name, description and the training record."""
        for name in ("style", "name", "description"):
            if not isinstance(getattr(self, name), str):
                bad(name, getattr(self, name), "a string")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 _.+-]*", self.style):
            bad("style", self.style, "a short label such as 'webvid', 'laion', 'anime' or 'my-style'")
        if not isinstance(self.training, dict):
            bad("training", self.training, "a JSON object")

    # -- (de)serialisation -------------------------------------------------------------------------
    def to_metadata(self) -> dict[str, str]:
        """The ``mcm.*`` safetensors metadata entries (all values JSON)."""
        out = {f"{META_PREFIX}format": json.dumps(ADAPTER_FORMAT)}
        for key, value in asdict(self).items():
            out[META_PREFIX + key] = json.dumps(value, sort_keys=True)
        return out

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], where: str) -> AdapterMeta:
        """Parse ``mcm.*`` entries; unknown or malformed entries are an error naming the entry."""
        entries = {k[len(META_PREFIX) :]: v for k, v in metadata.items() if k.startswith(META_PREFIX)}
        fmt = entries.pop("format", None)
        if fmt is None:
            raise AdapterError(f"{where}: no 'mcm.format' entry; this is not an MCM adapter file")
        values: dict[str, Any] = {}
        for key, raw in [("format", fmt), *entries.items()]:
            try:
                values[key] = loads_json(raw)
            except (TypeError, ValueError) as exc:
                entry = META_PREFIX + key
                entry = entry if entry.isprintable() else repr(entry)  # one line, whatever the file's key holds
                raise AdapterError(
                    f"{where}: metadata entry {entry} = {brief(raw)} is not valid JSON ({exc})"
                ) from None
        if values.pop("format") != ADAPTER_FORMAT:
            raise AdapterError(f"{where}: mcm.format = {brief(fmt)}; expected {json.dumps(ADAPTER_FORMAT)}")
        version = values.get("format_version")
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise AdapterError(
                f"{where}: mcm.format_version = {version}; this comfyui-mcm reads version {FORMAT_VERSION}. "
                "The file was written by a newer comfyui-mcm: update the package."
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise AdapterError(
                f"{where}: unknown metadata entries {['mcm.' + k for k in unknown]} for format version {version}"
            )
        missing = sorted({"format_version", "base", "lora_rank", "lora_alpha", "beta_schedule"} - set(values))
        if missing:
            raise AdapterError(f"{where}: required metadata entries missing: {['mcm.' + k for k in missing]}")
        for key in ("target_modules", "recommended_steps"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        # Bypass __post_init__ so that validation errors name the file, not "adapter metadata".
        meta = cls.__new__(cls)
        for f in fields(cls):
            default = f.default_factory() if callable(f.default_factory) else f.default
            object.__setattr__(meta, f.name, values.get(f.name, default))
        meta._canonical_names()
        meta.validate(where)
        return meta

    def replace(self, **changes) -> AdapterMeta:
        return replace(self, **changes)

    def summary(self) -> str:
        """One line for UIs and logs."""
        steps = "/".join(map(str, self.recommended_steps))
        label = self.name or self.style
        return (
            f"{label} [{self.base}{' ' + self.motion_module if self.motion_module else ''}] "
            f"rank {self.lora_rank}, {steps} steps (default {self.default_steps}), cfg {self.recommended_cfg:g}, "
            f"betas {self.beta_schedule}, scaling {self.timestep_scaling:g}, temporal norm {self.temporal_norm}"
        )


@dataclass
class Adapter:
    """LoRA factors keyed by diffusers module path, with their metadata and where they came from.

    ``metadata_source`` is ``"file"`` when the metadata was read from the file, ``"defaults"`` when it
    was filled in (official PEFT releases carry none): the sampler then uses the official demo's
    settings and says so.
    """

    meta: AdapterMeta
    layers: dict[str, LoraWeights]
    source: str = "<memory>"
    metadata_source: str = "file"

    def __post_init__(self):
        if not self.layers:
            raise AdapterError(f"{self.source}: the adapter holds no LoRA layers")

    def motion_layers(self) -> dict[str, LoraWeights]:
        return {p: w for p, w in self.layers.items() if is_motion(p)}

    def spatial_layers(self) -> dict[str, LoraWeights]:
        return {p: w for p, w in self.layers.items() if not is_motion(p) and not is_modelscope_temporal(p)}

    def temporal_layers(self) -> dict[str, LoraWeights]:
        """ModelScope's temporal layers (no ComfyUI counterpart)."""
        return {p: w for p, w in self.layers.items() if is_modelscope_temporal(p)}

    @property
    def num_parameters(self) -> int:
        return sum(w.down.numel() + w.up.numel() for w in self.layers.values())

    def require_base(self, model_base: str, where: str = "") -> None:
        """Refuse an adapter made for another model family, with a message a UI can show."""
        ok = {
            "sd15-animatediff": {"sd15-animatediff", "sd15"},
            "sd15": {"sd15-animatediff", "sd15"},
            "modelscope-t2v": {"modelscope-t2v"},
        }
        if model_base not in ok.get(self.meta.base, set()):
            have = BASES.get(self.meta.base, self.meta.base)
            want = BASES.get(model_base, FOREIGN_BASES.get(model_base, model_base))
            raise AdapterError(
                f"{where or self.source}: this adapter was made for {have} ({self.meta.base}) "
                f"and cannot be applied to a {want} model"
            )

    def check_shapes(
        self, shapes: dict[str, tuple[int, ...]], where: str = "the model", layers: dict[str, LoraWeights] | None = None
    ) -> None:
        """Every layer must exist in ``shapes`` (path → weight shape) with the shape the LoRA updates.

        ``layers`` checks a translated subset instead (e.g. the spatial layers under ComfyUI's names).
        """
        missing, wrong = [], []
        for path, lora in (self.layers if layers is None else layers).items():
            if path not in shapes:
                missing.append(path)
            elif tuple(shapes[path]) != lora.weight_shape:
                wrong.append(f"{path}: model {tuple(shapes[path])}, adapter (rank {lora.rank}) {lora.weight_shape}")
        if missing or wrong:
            lines = [f"{self.source}: does not fit {where}"]
            if missing:
                lines.append(f"{len(missing)} layers not in the model, e.g. {missing[:5]}")
            if wrong:
                lines.append(f"{len(wrong)} layers with another shape, e.g. " + "; ".join(wrong[:5]))
            raise AdapterError(". ".join(lines))


def detect_base(paths) -> str:
    """The model family a set of diffusers module paths (with their LoRA shapes) belongs to.

    ``paths`` maps module path → :class:`LoraWeights` (shapes tell SD1.5's 768-wide cross-attention
    from SD2/ModelScope's 1024 and SDXL's 2048).
    """
    names = list(paths)
    context_dims = {int(w.down.shape[1]) for p, w in paths.items() if p.endswith("attn2.to_k") and not is_motion(p)}
    if any(is_modelscope_temporal(p) for p in names):
        return "modelscope-t2v"
    motion = any(is_motion(p) for p in names)
    sdxl = (
        2048 in context_dims
        or any(p.startswith("add_embedding") for p in names)
        or any(re.match(r"(down|up)_blocks\.\d+\.attentions\.\d+\.transformer_blocks\.[1-9]", p) for p in names)
    )
    if sdxl:
        return "sdxl-animatediff" if motion else "sdxl"
    if 1024 in context_dims:
        return "sd2"
    return "sd15-animatediff" if motion else "sd15"
