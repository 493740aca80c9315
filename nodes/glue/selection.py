"""What MCM Style Adapter does: the installed adapters it offers, and the adapter it hands on.

Importing it needs no ComfyUI; the list of installed adapters comes from ComfyUI's model folders
(``folder_paths``, through :mod:`.folders`) and is empty outside ComfyUI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ...mcm.weights import Adapter, AdapterError, load_adapter
from ..choices import AUTO_SCHEDULE, BETA_CHOICES, NONE_INSTALLED, SCHEDULE_CHOICES
from . import folders


@dataclass(frozen=True)
class SelectedAdapter:
    """What travels on an ``MCM_ADAPTER`` wire: the loaded adapter and how to sample it."""

    label: str
    adapter: Adapter
    beta_schedule: str  # diffusers name
    schedule_note: str

    @property
    def timestep_scaling(self) -> float:
        return float(self.adapter.meta.timestep_scaling)

    def describe(self) -> str:
        meta = self.adapter.meta
        lines = [
            f"{self.label}: {meta.summary()}",
            f"sampling: betas {self.beta_schedule} (diffusers name; {self.schedule_note}), "
            f"timestep scaling {meta.timestep_scaling:g}, cfg {meta.recommended_cfg:g}, steps {meta.default_steps}",
        ]
        if self.adapter.metadata_source != "file":
            lines.append("no MCM metadata in the file: the official release's settings are assumed")
        return "\n".join(lines)


def installed() -> dict[str, str]:
    """``{label: path}`` of the installed adapters; empty outside ComfyUI."""
    try:
        import folder_paths  # noqa: F401  (only inside ComfyUI)
    except ImportError:
        return {}
    return folders.list_adapters()


def adapter_choices() -> list[str]:
    """The adapter dropdown: the installed labels, or one entry saying where to put adapters."""
    return list(installed()) or [NONE_INSTALLED]


def fingerprint(adapter: str, beta_schedule: str):
    """Changes when the chosen adapter's file does (NaN: always re-run, and fail with the node's message)."""
    path = installed().get(adapter)
    if path is None:
        return float("nan")
    target = os.path.join(path, "adapter_model.safetensors") if os.path.isdir(path) else path
    try:
        return f"{path}:{os.path.getmtime(target)}:{beta_schedule}"
    except OSError:
        return float("nan")


def _schedule(loaded: Adapter, beta_schedule: str) -> tuple[str, str]:
    """(diffusers beta-schedule name, where it came from) for the node's dropdown label."""
    if beta_schedule == AUTO_SCHEDULE:
        note = "from the adapter" if loaded.metadata_source == "file" else "official demo default"
        return loaded.meta.beta_schedule, note
    if beta_schedule in BETA_CHOICES:
        return BETA_CHOICES[beta_schedule], "chosen in the node"
    raise AdapterError(
        f"MCM Style Adapter: unknown beta_schedule {beta_schedule!r}; expected one of {SCHEDULE_CHOICES}"
    )


def select(adapter: str, beta_schedule: str) -> tuple[SelectedAdapter, int, float, str]:
    """MCM Style Adapter: (the selected adapter, its recommended steps and cfg, what it says about itself)."""
    found = installed()
    if adapter not in found:
        if adapter in folders.SKIPPED:
            raise AdapterError(f"MCM Style Adapter: {adapter!r} cannot be used: {folders.SKIPPED[adapter]}")
        raise AdapterError(
            f"MCM Style Adapter: {adapter!r} is not installed. Put MCM adapters (a .safetensors file or a PEFT "
            f"folder such as animatediff-webvid/) in models/mcm; found: {sorted(found) or 'none'}"
        )
    loaded = load_adapter(found[adapter])
    name, note = _schedule(loaded, beta_schedule)
    selected = SelectedAdapter(label=adapter, adapter=loaded, beta_schedule=name, schedule_note=note)
    meta = loaded.meta
    return selected, int(meta.default_steps), float(meta.recommended_cfg), selected.describe()
