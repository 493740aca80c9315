"""Memory levers of the trainer and how the dry run measures them.

Levers (flags of ``training/distill.py``): ``--mixed-precision`` (autocast), ``--frozen-dtype`` (the
frozen teacher UNet weights, VAE and text encoder stored in half precision; the LoRA and heads stay
fp32), ``--gradient-checkpointing`` (the student's UNet), ``--use-8bit-adam`` (bitsandbytes),
``--offload-frozen`` (VAE and text encoder live on the CPU and visit the accelerator per call, through
:class:`FrozenParts`),
``--teacher-cfg-batch`` (one teacher call on [cond; uncond]), and the adversarial branch's sparse
decoding (only ``--disc-frames`` frames are decoded, always on).

:class:`PartTimer` gives seconds and peak memory per part of a step: on CUDA the allocator's peak; on a
CPU the process's peak resident set (Linux: reset per part through ``/proc/self/clear_refs``).
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager, nullcontext
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


@contextmanager
def visiting(module: torch.nn.Module, device, offload: bool):
    """With ``offload``, ``module`` is moved to ``device`` for the block and back to the CPU after it.

    Inside the block (nested blocks too) the module counts as placed for compute, offload or not:
    :func:`is_placed` says so, on a CPU as well, where no move can be seen."""
    move = offload and torch.device(device).type != "cpu"
    module._mcm_visits = getattr(module, "_mcm_visits", 0) + 1
    if move and module._mcm_visits == 1:
        module.to(device)
    try:
        yield module
    finally:
        module._mcm_visits -= 1
        if move and module._mcm_visits == 0:
            module.to("cpu")


def is_placed(module: torch.nn.Module) -> bool:
    """Whether ``module`` is inside a :func:`visiting` block (placed for compute)."""
    return getattr(module, "_mcm_visits", 0) > 0


class FrozenParts:
    """The teacher's VAE and text encoder, called only through these methods, which own their placement.

    With ``offload`` each module lives on the CPU and visits ``device`` per call. :meth:`decode_frames`
    with gradient keeps the VAE placed until :meth:`release` (call it after the backward pass: the
    graph holds the VAE's weights, which must still be on the device when the gradient flows back)."""

    def __init__(self, teacher, device, offload: bool):
        self.teacher, self.device, self.offload = teacher, torch.device(device), offload
        self._held = ExitStack()

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token embeddings (the UNet's conditioning) and the pooled one (the discriminator's)."""
        with visiting(self.teacher.text_encoder, self.device, self.offload) as text_encoder:
            out = text_encoder(self.teacher.tokenizer(captions).to(self.device))
        return out[0], out.pooler_output.float()

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``(b, c, f, h, w)`` pixels in [-1, 1] → scaled latents ``(b, c', f, h', w')`` (sampled, in chunks of 32 frames)."""
        b, c, f, h, w = video.shape
        frames = video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w).to(self.device, self.teacher.vae.dtype)
        with visiting(self.teacher.vae, self.device, self.offload) as vae:
            latents = torch.cat([vae.encode(chunk).latent_dist.sample(generator) for chunk in frames.split(32)])
        latents = latents * self.teacher.scaling_factor
        return latents.reshape(b, f, *latents.shape[1:]).permute(0, 2, 1, 3, 4).float()

    def decode_frames(self, latents: torch.Tensor, index: list[int]) -> torch.Tensor:
        """Decode only frames ``index`` of ``(b, c, f, h, w)`` latents → ``(b·len(index), 3, H, W)``,
        keeping the graph to the latents (the VAE stays placed until :meth:`release`)."""
        vae = self.teacher.vae
        placement = visiting(vae, self.device, self.offload)
        if torch.is_grad_enabled():  # held until release(), after the backward pass
            self._held.enter_context(placement)
            placement = nullcontext()
        with placement:
            picked = latents[:, :, index].permute(0, 2, 1, 3, 4).flatten(0, 1)
            return vae.decode((picked / self.teacher.scaling_factor).to(vae.dtype)).sample.float()

    @contextmanager
    def placed(self):
        """The VAE and the text encoder, both placed for compute for the block (for code that calls them directly)."""
        with visiting(self.teacher.vae, self.device, self.offload) as vae:
            with visiting(self.teacher.text_encoder, self.device, self.offload) as text_encoder:
                yield vae, text_encoder

    def release(self) -> None:
        """Undo the placements :meth:`decode_frames` kept for the backward pass."""
        self._held.close()
        self._held = ExitStack()
