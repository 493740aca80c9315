"""Motion representations M(·) of a latent video, on which MCM takes its consistency loss.

MCM's disentangled motion distillation compares student and target not on the raw latents but on a
representation that keeps motion and drops per-frame appearance (paper §3.2). The learnable head
(``learn``) works best and is the default; the handcrafted ones are the paper's ablations.

Latent videos are ``(b, c, f, h, w)`` (diffusers' video layout). Every representation is a function of
one video at a time, so batching never mixes videos.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MOTION_REPRESENTATIONS",
    "MotionHead",
    "butterworth_low_pass",
    "ema_update",
    "frequency_split",
    "global_correlation",
    "latent_difference",
    "local_correlation",
    "make_motion_representation",
]


class MotionHead(nn.Module):
    """The learnable motion head: per frame, ``x + conv_out(SiLU(GN(conv(...SiLU(x)))))``.

    ``learn`` (the official default): SiLU → 1×1 conv c→64 → GroupNorm(32) → SiLU → 1×1 conv 64→c,
    residual. ``hlearn``: four conv–GN–SiLU blocks with 3×3 kernels. The output conv is zero-initialised
    (weight and bias), so the head starts as the identity.
    """

    def __init__(
        self, channels: int = 4, hidden: int = 64, num_layers: int = 2, kernel_size: int = 1, groups: int = 32
    ):
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"num_layers must be >= 2 (one hidden block and the output conv), got {num_layers}")
        layers: list[nn.Module] = [nn.SiLU()]
        width = channels
        for _ in range(num_layers - 1):
            layers += [
                nn.Conv2d(width, hidden, kernel_size, padding=kernel_size // 2),
                nn.GroupNorm(min(groups, hidden), hidden, eps=1e-5),
                nn.SiLU(),
            ]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(width, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.config = {
            "channels": channels,
            "hidden": hidden,
            "num_layers": num_layers,
            "kernel_size": kernel_size,
            "groups": groups,
        }

    @classmethod
    def preset(cls, name: str, channels: int = 4) -> MotionHead:
        if name == "learn":
            return cls(channels, num_layers=2, kernel_size=1)
        if name == "hlearn":
            return cls(channels, num_layers=5, kernel_size=3)
        raise ValueError(f"unknown motion head {name!r}; expected 'learn' or 'hlearn'")

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5:
            raise ValueError(f"expected a latent video (b, c, f, h, w), got shape {tuple(video.shape)}")
        b, c, f, h, w = video.shape
        frames = video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        frames = frames + self.out(self.body(frames))
        return frames.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, decay: float) -> None:
    """``θ_target ← decay·θ_target + (1 − decay)·θ_online`` for every parameter (buffers copied)."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
    for p_t, p_o in zip(target.parameters(), online.parameters(), strict=True):
        p_t.lerp_(p_o.detach().to(p_t.dtype), 1.0 - decay)
    for b_t, b_o in zip(target.buffers(), online.buffers(), strict=True):
        b_t.copy_(b_o)


def latent_difference(video: torch.Tensor) -> torch.Tensor:
    """Temporal difference of consecutive latent frames, ``x[:, :, 1:] − x[:, :, :-1]``."""
    return video[:, :, 1:] - video[:, :, :-1]


def butterworth_low_pass(
    shape: tuple[int, int, int], cutoff: float = 0.25, order: int = 4, temporal_cutoff: float | None = None, device=None
) -> torch.Tensor:
    """A 3-D Butterworth low-pass mask over (f, h, w) in centred (fftshift) frequency coordinates.

    Normalised frequency d ∈ [−1, 1) per axis; the temporal axis is rescaled by cutoff/temporal_cutoff
    (FreeInit's form); mask = 1 / (1 + (d² / cutoff²)^order).
    """
    f, h, w = shape
    temporal_cutoff = cutoff if temporal_cutoff is None else temporal_cutoff

    def axis(n):
        return 2.0 * torch.arange(n, dtype=torch.float64, device=device) / n - 1.0

    df = (cutoff / temporal_cutoff) * axis(f)
    d2 = df.view(-1, 1, 1) ** 2 + axis(h).view(1, -1, 1) ** 2 + axis(w).view(1, 1, -1) ** 2
    return 1.0 / (1.0 + (d2 / cutoff**2) ** order)


def frequency_split(video: torch.Tensor, cutoff: float = 0.25, order: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low, high)``: the video's spatio-temporal low- and high-frequency parts (low + high = video)."""
    dims = (-3, -2, -1)
    mask = butterworth_low_pass(tuple(video.shape[-3:]), cutoff, order, device=video.device).to(torch.float32)
    spectrum = torch.fft.fftshift(torch.fft.fftn(video.float(), dim=dims), dim=dims)
    low = torch.fft.ifftn(torch.fft.ifftshift(spectrum * mask, dim=dims), dim=dims).real.to(video.dtype)
    return low, video - low


def local_correlation(video: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Correlation of each position in frame i with a (2r+1)² neighbourhood in frame i+1.

    Returns ``(b, (2r+1)², f−1, h, w)``: ``<x_i(p), x_{i+1}(p+d)> / c`` per offset d (zero padding).
    """
    b, c, f, h, w = video.shape
    cur, nxt = video[:, :, :-1], video[:, :, 1:]
    padded = F.pad(nxt, (radius, radius, radius, radius))
    out = []
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            shifted = padded[..., dy : dy + h, dx : dx + w]
            out.append((cur * shifted).sum(dim=1) / c)
    return torch.stack(out, dim=1)


def global_correlation(video: torch.Tensor) -> torch.Tensor:
    """All-pairs correlation between consecutive frames: ``(b, f−1, h·w, h·w)``, scaled by 1/√c."""
    b, c, f, h, w = video.shape
    cur = video[:, :, :-1].reshape(b, c, f - 1, h * w)
    nxt = video[:, :, 1:].reshape(b, c, f - 1, h * w)
    return torch.einsum("bcfp,bcfq->bfpq", cur, nxt) / c**0.5


#: name → what it is (the flag's choices)
MOTION_REPRESENTATIONS = {
    "learn": "learnable head (1×1 convs, official default)",
    "hlearn": "heavier learnable head (3×3 convs, 5 layers)",
    "raw": "the latents themselves (plain consistency distillation)",
    "diff": "temporal difference of consecutive latents",
    "freql": "spatio-temporal low frequencies (Butterworth, cutoff 0.25, order 4)",
    "freqh": "spatio-temporal high frequencies",
    "lcor": "local correlation of consecutive frames (radius 3)",
    "gcor": "global correlation of consecutive frames (memory ∝ (h·w)²)",
}


def make_motion_representation(name: str, channels: int = 4):
    """``(online, target)`` callables for representation ``name``.

    For ``learn``/``hlearn`` they are a trainable :class:`MotionHead` and its frozen EMA copy; for
    the handcrafted ones both are the same parameter-free function.
    """
    if name in ("learn", "hlearn"):
        head = MotionHead.preset(name, channels)
        target = copy.deepcopy(head).requires_grad_(False)
        return head, target
    fns = {
        "raw": lambda x: x,
        "diff": latent_difference,
        "freql": lambda x: frequency_split(x)[0],
        "freqh": lambda x: frequency_split(x)[1],
        "lcor": local_correlation,
        "gcor": global_correlation,
    }
    if name not in fns:
        raise ValueError(f"unknown motion representation {name!r}; expected one of {sorted(MOTION_REPRESENTATIONS)}")
    return fns[name], fns[name]
