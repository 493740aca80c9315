"""Memory levers of the trainer and how the dry run measures them.

Levers (flags of ``training/distill.py``): ``--mixed-precision`` (autocast), ``--frozen-dtype`` (the
frozen teacher UNet weights, VAE and text encoder stored in half precision; the LoRA and heads stay
fp32), ``--gradient-checkpointing`` (the student's UNet), ``--use-8bit-adam`` (bitsandbytes),
``--offload-frozen`` (VAE and text encoder live on the CPU and visit the accelerator per call, through
:class:`training.frozen.FrozenParts`), ``--teacher-cfg-batch`` (one teacher call on [cond; uncond]), and
the adversarial branch's sparse decoding (only ``--disc-frames`` frames are decoded, always on).

:class:`PartTimer` gives seconds and peak memory per part of a step: on CUDA the allocator's peak; on a
CPU the process's peak resident set (Linux: reset per part through ``/proc/self/clear_refs``).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def frozen_dtype(name: str | None, mixed_precision: str) -> torch.dtype:
    """``--frozen-dtype``; by default the mixed-precision dtype (as the diffusers scripts do)."""
    if name in (None, "auto"):
        name = {"fp16": "fp16", "bf16": "bf16"}.get(mixed_precision, "fp32")
    if name != "fp32" and mixed_precision == "no":
        raise ValueError(
            f"--frozen-dtype {name}: half-precision frozen weights need --mixed-precision fp16 or bf16 (autocast)"
        )
    return DTYPES[name]


def _cpu_rss_peak_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (the peak resident set)
        return True
    except OSError:
        return False


def cpu_rss_peak() -> int:
    """Peak resident set of this process in bytes (since the last reset; without ``/proc``, e.g. on
    macOS, since the process started)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux and the BSDs


def peak_memory() -> int:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else cpu_rss_peak()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    else:
        _cpu_rss_peak_reset()


class PartTimer:
    """``with timer("part"):`` adds the part's seconds and raises its peak memory (when enabled).

    Parts may nest: a nested part's seconds and peak count in the enclosing part too (the nested part
    resets the peak counter, so the enclosing part's peak so far is kept aside until it ends)."""

    def __init__(self, enabled: bool):
        self.enabled, self.seconds, self.peak_bytes, self.overall = enabled, {}, {}, 0
        self._open: list[int] = []  # per enclosing part still running: its peak before the latest reset

    @contextmanager
    def __call__(self, name):
        if not self.enabled:
            yield
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        outer = peak_memory()
        if self._open:
            self._open[-1] = max(self._open[-1], outer)
        self._open.append(0)
        reset_peak()
        start = time.perf_counter()
        try:
            yield
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            here = max(peak_memory(), self._open.pop())
            self.peak_bytes[name] = max(self.peak_bytes.get(name, 0), here)
            if self._open:
                self._open[-1] = max(self._open[-1], here)
            self.overall = max(self.overall, outer, here)
