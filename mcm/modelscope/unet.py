"""The ModelScope text-to-video UNet3D (damo-vilab/text-to-video-ms-1.7b) in pure torch.

Same architecture, numerics and state-dict keys as diffusers' ``UNet3DConditionModel``: a diffusers
``unet/diffusion_pytorch_model.safetensors`` loads with ``load_state_dict(strict=True)`` and LoRA module
paths are the module names. Inference only (no dropout).

Layout: frames in the batch, as ComfyUI passes video latents. ``x`` is ``(b·f, c, h, w)`` with the ``f``
frames of each video contiguous; the temporal layers see ``(b, c, f, h, w)``. Every parameterised layer is
built from an ``operations`` namespace (``Linear``, ``Conv2d``, ``Conv3d``, ``GroupNorm``, ``LayerNorm``
taking torch.nn's arguments plus ``dtype=`` and ``device=``), e.g. ComfyUI's ``comfy.ops.manual_cast``.
Attention goes through an ``attention(q, k, v, heads)`` callable on ``(batch, tokens, heads·dim)`` tensors,
the signature of ComfyUI's ``optimized_attention``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelScopeUNetConfig


class torch_ops:
    """The default ``operations``: torch.nn's layers (a namespace like ``comfy.ops.disable_weight_init``)."""

    Linear = nn.Linear
    Conv2d = nn.Conv2d
    Conv3d = nn.Conv3d
    GroupNorm = nn.GroupNorm
    LayerNorm = nn.LayerNorm


#: Batch·heads above which the default attention runs in chunks (large batches fail in some CUDA kernels).
SDPA_BATCH_LIMIT = 2**15


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax attention with scale ``dim**-0.5``.

    ``q (b, n, heads·dim)``, ``k, v (b, m, heads·dim)`` -> ``(b, n, heads·dim)``.
    """
    b, n, inner = q.shape
    if b * heads > SDPA_BATCH_LIMIT and b > 1:
        step = max(1, SDPA_BATCH_LIMIT // heads)
        return torch.cat(
            [sdpa_attention(q[i : i + step], k[i : i + step], v[i : i + step], heads) for i in range(0, b, step)]
        )
    q, k, v = (t.reshape(b, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, inner)


class Layers:
    """The layer classes of ``operations`` with ``dtype`` and ``device`` bound: ``Layers(...).Linear(4, 8)``."""

    def __init__(self, operations=torch_ops, dtype: torch.dtype | None = None, device=None):
        for name in ("Linear", "Conv2d", "Conv3d", "GroupNorm", "LayerNorm"):
            setattr(self, name, functools.partial(getattr(operations, name), dtype=dtype, device=device))


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``(n,) -> (n, dim)`` in float32, cosines first (diffusers' flip_sin_to_cos, shift 0)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def videos(batch: int, num_frames: int) -> int:
    """How many videos ``batch`` frames hold; ValueError if ``num_frames`` does not divide ``batch``."""
    if num_frames < 1 or batch % num_frames:
        raise ValueError(f"a batch of {batch} frames is not a whole number of videos of num_frames={num_frames}")
    return batch // num_frames


class TimestepEmbedding(nn.Module):
    """``(n, c) -> (n, d)``: linear_1, SiLU, linear_2."""

    def __init__(self, channels: int, dim: int, make: Layers):
        super().__init__()
        self.linear_1 = make.Linear(channels, dim)
        self.linear_2 = make.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class Attention(nn.Module):
    """Multi-head attention ``(n, t, dim) -> (n, t, dim)``; over ``context (n, m, context_dim)`` if given, else self."""

    def __init__(self, dim: int, heads: int, head_dim: int, make: Layers, attention: Callable, context_dim=None):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.attention = attention
        self.to_q = make.Linear(dim, inner, bias=False)
        self.to_k = make.Linear(context_dim or dim, inner, bias=False)
        self.to_v = make.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.ModuleList([make.Linear(inner, dim)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        out = self.attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads)
        return self.to_out[0](out)


class GEGLU(nn.Module):
    """``(…, dim_in) -> (…, dim_out)``: one projection to value and gate, value · gelu(gate) (exact gelu)."""

    def __init__(self, dim_in: int, dim_out: int, make: Layers):
        super().__init__()
        self.proj = make.Linear(dim_in, 2 * dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU to ``4·dim``, back to ``dim``. ``net.1`` is diffusers' dropout slot, kept so the keys match."""

    def __init__(self, dim: int, make: Layers):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, 4 * dim, make), nn.Identity(), make.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm (eps 1e-5) block on ``(n, t, dim)``: self-attention, a second attention, GEGLU feed-forward.

    The second attention attends to ``context`` when ``context_dim`` is given (spatial), else it is a
    second self-attention (temporal).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, make: Layers, attention: Callable, context_dim=None):
        super().__init__()
        self.norm1 = make.LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(dim, heads, head_dim, make, attention)
        self.norm2 = make.LayerNorm(dim, eps=1e-5)
        self.attn2 = Attention(dim, heads, head_dim, make, attention, context_dim=context_dim)
        self.norm3 = make.LayerNorm(dim, eps=1e-5)
        self.ff = FeedForward(dim, make)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Per-frame transformer over the ``h·w`` tokens, cross-attending to the text: ``(n, c, h, w) -> (n, c, h, w)``.

    GroupNorm eps 1e-6, linear projections in and out, a residual around the whole.
    """

    def __init__(self, channels: int, head_dim: int, context_dim: int, groups: int, make: Layers, attention):
        super().__init__()
        heads = channels // head_dim
        inner = heads * head_dim
        self.norm = make.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = make.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(inner, heads, head_dim, make, attention, context_dim=context_dim)]
        )
        self.proj_out = make.Linear(inner, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).permute(0, 2, 3, 1).reshape(n, h * w, c))
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return x + self.proj_out(tokens).reshape(n, h, w, c).permute(0, 3, 1, 2)


class TemporalTransformer(nn.Module):
    """Transformer over the frames of each pixel: ``(b·f, c, h, w) -> (b·f, c, h, w)``.

    GroupNorm (eps 1e-6) on ``(b, c, f, h, w)``, so its statistics span all frames of a video; then
    ``b·h·w`` sequences of ``f`` tokens, two self-attentions and GEGLU, no positional embedding; a residual.
    """

    def __init__(self, channels: int, heads: int, head_dim: int, groups: int, make: Layers, attention):
        super().__init__()
        inner = heads * head_dim
        self.norm = make.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = make.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(inner, heads, head_dim, make, attention)])
        self.proj_out = make.Linear(inner, channels)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        bf, c, h, w = x.shape
        b = videos(bf, num_frames)
        video = self.norm(x.reshape(b, num_frames, c, h, w).permute(0, 2, 1, 3, 4))
        tokens = self.proj_in(video.permute(0, 3, 4, 2, 1).reshape(b * h * w, num_frames, c))
        for block in self.transformer_blocks:
            tokens = block(tokens)
        out = self.proj_out(tokens).reshape(b, h, w, num_frames, c).permute(0, 3, 4, 1, 2)
        return x + out.reshape(bf, c, h, w)


class TemporalConv(nn.Module):
    """Four (GroupNorm eps 1e-5, SiLU, Conv3d kernel (3, 1, 1)) over the frames, a residual: ``(b·f, c, h, w)``.

    The norms run on ``(b, c, f, h, w)``. Index 2 of conv2..conv4 is diffusers' dropout slot.
    """

    def __init__(self, channels: int, groups: int, make: Layers):
        super().__init__()

        def conv(dropout_slot: bool) -> nn.Sequential:
            layers = [make.GroupNorm(groups, channels), nn.SiLU()] + ([nn.Identity()] if dropout_slot else [])
            return nn.Sequential(*layers, make.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)))

        self.conv1 = conv(False)
        self.conv2 = conv(True)
        self.conv3 = conv(True)
        self.conv4 = conv(True)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        bf, c, h, w = x.shape
        video = x.reshape(videos(bf, num_frames), num_frames, c, h, w).permute(0, 2, 1, 3, 4)
        out = video + self.conv4(self.conv3(self.conv2(self.conv1(video))))
        return out.permute(0, 2, 1, 3, 4).reshape(bf, c, h, w)


class ResBlock(nn.Module):
    """Per-frame ResNet block with the time embedding added after conv1: ``(n, c_in, h, w) -> (n, c_out, h, w)``."""

    def __init__(self, c_in: int, c_out: int, temb_dim: int, groups: int, eps: float, make: Layers):
        super().__init__()
        self.norm1 = make.GroupNorm(groups, c_in, eps=eps)
        self.conv1 = make.Conv2d(c_in, c_out, 3, padding=1)
        self.time_emb_proj = make.Linear(temb_dim, c_out)
        self.norm2 = make.GroupNorm(groups, c_out, eps=eps)
        self.conv2 = make.Conv2d(c_out, c_out, 3, padding=1)
        self.conv_shortcut = make.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Downsample(nn.Module):
    """Conv 3×3, stride 2, padding 1: ``(n, c, h, w) -> (n, c, ⌈h/2⌉, ⌈w/2⌉)``."""

    def __init__(self, channels: int, make: Layers):
        super().__init__()
        self.conv = make.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest ×2 (or to ``size``), then conv 3×3."""

    def __init__(self, channels: int, make: Layers):
        super().__init__()
        self.conv = make.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size=None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


class Level(nn.Module):
    """One resolution of the encoder or decoder: ``num_layers`` × (ResBlock, TemporalConv[, SpatialTransformer,
    TemporalTransformer]), then optionally a down- or upsampler.

    diffusers' (CrossAttn)DownBlock3D and (CrossAttn)UpBlock3D; without attention ``attentions`` and
    ``temp_attentions`` stay empty. ``in_channels`` lists each ResBlock's input channels.
    """

    def __init__(
        self,
        in_channels: list[int],
        c_out: int,
        cfg: ModelScopeUNetConfig,
        make: Layers,
        attention,
        *,
        cross_attention: bool = False,
        downsample: bool = False,
        upsample: bool = False,
    ):
        super().__init__()
        groups, head_dim, eps = cfg.norm_num_groups, cfg.attention_head_dim, cfg.norm_eps
        n = len(in_channels)
        self.resnets = nn.ModuleList([ResBlock(c, c_out, cfg.time_embed_dim, groups, eps, make) for c in in_channels])
        self.temp_convs = nn.ModuleList([TemporalConv(c_out, groups, make) for _ in range(n)])
        n_attn = n if cross_attention else 0
        self.attentions = nn.ModuleList(
            [
                SpatialTransformer(c_out, head_dim, cfg.cross_attention_dim, groups, make, attention)
                for _ in range(n_attn)
            ]
        )
        self.temp_attentions = nn.ModuleList(
            [TemporalTransformer(c_out, c_out // head_dim, head_dim, groups, make, attention) for _ in range(n_attn)]
        )
        if downsample:
            self.downsamplers = nn.ModuleList([Downsample(c_out, make)])
        if upsample:
            self.upsamplers = nn.ModuleList([Upsample(c_out, make)])

    def layer(self, i: int, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor, num_frames: int):
        x = self.temp_convs[i](self.resnets[i](x, temb), num_frames)
        if len(self.attentions):
            x = self.temp_attentions[i](self.attentions[i](x, context), num_frames)
        return x


class MidBlock(nn.Module):
    """ResBlock, TemporalConv, SpatialTransformer, TemporalTransformer, ResBlock, TemporalConv at the deepest level."""

    def __init__(self, channels: int, cfg: ModelScopeUNetConfig, make: Layers, attention: Callable):
        super().__init__()
        groups, head_dim, eps = cfg.norm_num_groups, cfg.attention_head_dim, cfg.norm_eps
        self.resnets = nn.ModuleList(
            [ResBlock(channels, channels, cfg.time_embed_dim, groups, eps, make) for _ in range(2)]
        )
        self.temp_convs = nn.ModuleList([TemporalConv(channels, groups, make) for _ in range(2)])
        self.attentions = nn.ModuleList(
            [SpatialTransformer(channels, head_dim, cfg.cross_attention_dim, groups, make, attention)]
        )
        self.temp_attentions = nn.ModuleList(
            [TemporalTransformer(channels, channels // head_dim, head_dim, groups, make, attention)]
        )

    def forward(self, x, temb, context, num_frames):
        x = self.temp_convs[0](self.resnets[0](x, temb), num_frames)
        x = self.temp_attentions[0](self.attentions[0](x, context), num_frames)
        return self.temp_convs[1](self.resnets[1](x, temb), num_frames)


def per_frame(t: torch.Tensor, frames: int, num_frames: int, name: str) -> torch.Tensor:
    """``t`` with one row per frame: as is if it has ``frames`` rows, repeated per frame if it has one per video."""
    if t.shape[0] == frames:
        return t
    if t.shape[0] * num_frames == frames:
        return t.repeat_interleave(num_frames, dim=0)
    raise ValueError(
        f"{name} has {t.shape[0]} rows: expected {frames} (per frame) or {frames // num_frames} (per video)"
    )


class ModelScopeUNet3D(nn.Module):
    """The ModelScope T2V UNet3D: ``forward(x (b·f, c, h, w), timesteps, context, num_frames) -> (b·f, c_out, h, w)``.

    ``timesteps`` is ``(b·f,)`` or ``(b,)`` (or a scalar), ``context`` ``(b·f, tokens, dim)`` or ``(b, tokens, dim)``.
    The computation follows the input's dtype; the sinusoidal time embedding is computed in float32 first.
    """

    def __init__(
        self,
        config: ModelScopeUNetConfig | None = None,
        operations=torch_ops,
        dtype: torch.dtype | None = None,
        device=None,
        attention: Callable = sdpa_attention,
    ):
        super().__init__()
        cfg = self.config = config or ModelScopeUNetConfig()
        make = Layers(operations, dtype=dtype, device=device)
        chans, per_level, groups = cfg.block_out_channels, cfg.layers_per_block, cfg.norm_num_groups
        self.conv_in = make.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(chans[0], cfg.time_embed_dim, make)
        self.transformer_in = TemporalTransformer(
            chans[0], cfg.temporal_in_heads, cfg.attention_head_dim, groups, make, attention
        )
        last = len(chans) - 1
        down = []
        for i, c in enumerate(chans):
            ins = [chans[max(i - 1, 0)]] + [c] * (per_level - 1)
            down.append(Level(ins, c, cfg, make, attention, cross_attention=i < last, downsample=i < last))
        self.down_blocks = nn.ModuleList(down)
        self.mid_block = MidBlock(chans[-1], cfg, make, attention)
        up = []
        rev = chans[::-1]
        for i, c in enumerate(rev):
            prev, skip_last = rev[max(i - 1, 0)], rev[min(i + 1, last)]
            ins = [(prev if j == 0 else c) + (skip_last if j == per_level else c) for j in range(per_level + 1)]
            up.append(Level(ins, c, cfg, make, attention, cross_attention=i > 0, upsample=i < last))
        self.up_blocks = nn.ModuleList(up)
        self.conv_norm_out = make.GroupNorm(groups, chans[0], eps=cfg.norm_eps)
        self.conv_out = make.Conv2d(chans[0], cfg.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, timesteps, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        frames = x.shape[0]
        videos(frames, num_frames)
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1)
        timesteps = (
            timesteps.expand(frames)
            if timesteps.numel() == 1
            else per_frame(timesteps, frames, num_frames, "timesteps")
        )
        context = per_frame(context, frames, num_frames, "context").to(x.dtype)
        temb = timestep_embedding(timesteps, self.config.block_out_channels[0]).to(x.dtype)
        temb = self.time_embedding(temb)

        h = self.transformer_in(self.conv_in(x), num_frames)
        skips = [h]
        for level in self.down_blocks:
            for i in range(len(level.resnets)):
                h = level.layer(i, h, temb, context, num_frames)
                skips.append(h)
            if hasattr(level, "downsamplers"):
                h = level.downsamplers[0](h)
                skips.append(h)
        h = self.mid_block(h, temb, context, num_frames)

        factor = 2 ** (len(self.up_blocks) - 1)
        exact = x.shape[-2] % factor == 0 and x.shape[-1] % factor == 0
        for level in self.up_blocks:
            for i in range(len(level.resnets)):
                h = level.layer(i, torch.cat([h, skips.pop()], dim=1), temb, context, num_frames)
            if hasattr(level, "upsamplers"):
                h = level.upsamplers[0](h, None if exact else skips[-1].shape[-2:])
        return self.conv_out(F.silu(self.conv_norm_out(h)))
