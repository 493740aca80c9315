"""How an AnimateDiff motion module normalises its input: over the frames of a video, or per frame.

The motion module starts with a GroupNorm. diffusers' ``UNetMotionModel`` (and so MCM's training, its
demo and this project's trainer) reshapes ``(b·f, c, h, w)`` to ``(b, c, f, h, w)`` first, so each group's
statistics span every frame of one video. The original AnimateDiff code and AnimateDiff-Evolved apply it
to ``(b·f, c, h, w)``: statistics per frame. Measured on full-size SD1.5 + AnimateDiff v2 weights this is
the one difference between the two hosts: about 1.1% of the output's maximum on random full-size weights
at 64 px and 8 frames (``tests/host/check_temporal_norm.py`` measures it in a real ComfyUI host).

Names (adapter metadata ``mcm.temporal_norm`` and the node option):

* ``frames``: statistics over the frames of each video (diffusers; what MCM trains with);
* ``per_frame``: statistics per frame (original AnimateDiff, stock ADE).

Files written before these names carry ``video`` / ``frame``; they are read as aliases.
"""

from __future__ import annotations

import torch

FRAMES = "frames"
PER_FRAME = "per_frame"
TEMPORAL_NORMS = (FRAMES, PER_FRAME)
#: Earlier spellings, accepted when reading.
TEMPORAL_NORM_ALIASES = {"video": FRAMES, "frame": PER_FRAME}

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def canonical_temporal_norm(value) -> str | None:
    """The current name for ``value`` (an alias is translated), or None if it is not a known name."""
    if not isinstance(value, str):
        return None
    value = TEMPORAL_NORM_ALIASES.get(value, value)
    return value if value in TEMPORAL_NORMS else None


def group_norm_over_frames(
    x: torch.Tensor,
    frames: int,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """GroupNorm of frames-as-batch ``x`` (``(b·f, c, *spatial)``) with statistics over each video's frames.

    Equal to diffusers' reshape to ``(b, c, f, …)`` → ``GroupNorm`` → back. ``x.shape[0]`` must be a
    whole number of ``frames``-frame videos; the batch may hold several videos (cond and uncond,
    several prompts) and their statistics never mix.

    Float32/64: torch's fused per-frame kernel gives each frame's normalised values and statistics;
    these are combined into per-video statistics (``var = mean_f(var_f) + mean_f((mean_f − mean)²)``)
    and one in-place multiply-add turns the per-frame result into the per-video one, so no copy of
    ``x`` is made (a permuted copy costs up to 6× a GroupNorm on the CPU). Half precision goes through
    ``torch.group_norm`` on the permuted tensor, which keeps float32 statistics.
    """
    if x.ndim < 2:
        raise ValueError(f"expected (b·f, c, ...) input, got shape {tuple(x.shape)}")
    n, c = x.shape[0], x.shape[1]
    if frames < 1 or n % frames:
        raise ValueError(f"a batch of {n} frames is not a whole number of {frames}-frame videos")
    if c % num_groups:
        raise ValueError(f"{c} channels do not split into {num_groups} groups")
    b = n // frames
    if x.dtype in _LOW_PRECISION:
        video = x.reshape(b, frames, *x.shape[1:]).transpose(1, 2)  # (b, c, f, *spatial)
        y = torch.nn.functional.group_norm(video, num_groups, weight, bias, eps)
        return y.transpose(1, 2).reshape(x.shape)
    x = x.contiguous()
    y, mean_f, rstd_f = torch.native_group_norm(x, None, None, n, c, x[0, 0].numel(), num_groups, eps)
    mean_f, rstd_f = mean_f.reshape(b, frames, num_groups), rstd_f.reshape(b, frames, num_groups)
    var_f = rstd_f.pow(-2) - eps
    mean = mean_f.mean(dim=1, keepdim=True)
    var = var_f.mean(dim=1, keepdim=True) + (mean_f - mean).square().mean(dim=1, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    # y_f = (x − mean_f)·rstd_f  →  (x − mean)·rstd = y_f·(rstd/rstd_f) + (mean_f − mean)·rstd
    scale = (rstd / rstd_f).repeat_interleave(c // num_groups, dim=2)  # (b, f, c)
    shift = ((mean_f - mean) * rstd).repeat_interleave(c // num_groups, dim=2)
    if weight is not None:
        w = weight.to(scale.dtype)
        scale, shift = scale * w, shift * w
    if bias is not None:
        shift = shift + bias.to(shift.dtype)
    out = y.view(b, frames, c, -1)
    out.mul_(scale.unsqueeze(-1).to(y.dtype)).add_(shift.unsqueeze(-1).to(y.dtype))
    return y
